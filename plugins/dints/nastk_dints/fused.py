"""Fused evaluation of a supernet cell's ReLU-conv-InstanceNorm ops (the four DiNTS conv ops).

sum_k alpha_k op_k(x) over ops op_k = InstanceNorm_k(conv_k,m(...conv_k,1(ReLU(x)))) is computed with
one shared ReLU, one convolution whose kernel stacks every op's first kernel zero-padded to 3x3x3
(output channels c*K), each op's remaining convs on its slice, one InstanceNorm over the c*K stacked
channels (it normalises every channel on its own, so this is exact) and one contraction with alpha.

The stacked kernel is never a parameter and never saved for backward: :class:`KernelConv` keeps
the ops' own kernels and rebuilds the stack when it needs it, so the fusion costs no memory (a
saved stacked copy would hold about as many bytes as the conv parameters themselves) and the zero
padding gets no gradient, staying exactly zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nastk_dints.ops import ActConvNorm

__all__ = ["fusable", "fused_ops", "KernelConv"]

_EPS = 1e-5  # nn.InstanceNorm3d's default; fusable() only admits ops that use it


def fusable(op: nn.Module, channels: int) -> bool:
    """Whether ``op`` is ReLU -> plain same-size convs (the first at most 3x3x3) -> InstanceNorm."""
    if not isinstance(op, ActConvNorm):
        return False
    convs, norm = op.convs, op.norm
    if not convs or len(op) != len(convs) + 2 or not isinstance(op[0], nn.ReLU):
        return False
    first = convs[0]
    plain = all(
        c.groups == 1
        and c.bias is None
        and tuple(c.stride) == (1, 1, 1)
        and tuple(c.dilation) == (1, 1, 1)
        and c.padding_mode == "zeros"
        and all(k % 2 == 1 and p == k // 2 for k, p in zip(c.kernel_size, c.padding))
        for c in convs
    )
    return (
        plain
        and isinstance(norm, nn.InstanceNorm3d)
        and norm.affine
        and not norm.track_running_stats
        and norm.eps == _EPS
        and first.in_channels == channels
        and first.out_channels == channels
        and all(k in (1, 3) for k in first.kernel_size)
    )


def _stack(kernels: tuple[torch.Tensor, ...], dtype: torch.dtype) -> tuple[torch.Tensor, list[int]]:
    """The kernel to convolve with and its padding: one kernel as it is, several stacked 3x3x3."""
    if len(kernels) == 1:
        return kernels[0].to(dtype), [k // 2 for k in kernels[0].shape[2:]]
    padded = []
    for w in kernels:
        # (3 - k) // 2 zeros on both sides of every kernel axis of size 1
        pad = [(3 - k) // 2 for k in reversed(w.shape[2:]) for _ in (0, 1)]
        padded.append(F.pad(w, pad) if any(pad) else w)
    return torch.cat(padded).to(dtype), [1, 1, 1]


def _use_mkldnn(x: torch.Tensor) -> bool:
    # PyTorch sends a batch-1 float32 CPU conv3d with fewer than 20480 N*C*D*H elements to its
    # unfold-and-GEMM kernel, about three times slower here than oneDNN's (bench/run.py's search
    # step is such a case). Larger inputs and batches already get oneDNN.
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.shape[0] == 1
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def _mkldnn_conv(x: torch.Tensor, w: torch.Tensor, padding: list[int]) -> torch.Tensor:
    return torch.ops.aten.mkldnn_convolution(x, w, None, padding, [1, 1, 1], [1, 1, 1], 1)


def _conv(x: torch.Tensor, w: torch.Tensor, padding: list[int]) -> torch.Tensor:
    return _mkldnn_conv(x, w, padding) if _use_mkldnn(x) else F.conv3d(x, w, padding=padding)


def _conv_grads(
    grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor, padding: list[int], need: tuple[bool, bool]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(d/dx, d/dw) of a stride-1 bias-free conv3d, each only if asked for."""
    if _use_mkldnn(grad):
        # Both are stride-1 convolutions themselves: d/dx correlates grad with the flipped,
        # transposed kernel; d/dw correlates the input with grad, channels taking the batch's place.
        grad_x = grad_w = None
        if need[0]:
            back = [k - 1 - p for k, p in zip(w.shape[2:], padding)]
            grad_x = _mkldnn_conv(grad, w.flip(2, 3, 4).transpose(0, 1).contiguous(), back)
        if need[1]:
            grad_w = _mkldnn_conv(x.transpose(0, 1), grad.transpose(0, 1), padding).transpose(0, 1)
        return grad_x, grad_w
    grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
        grad, x, w, None, [1, 1, 1], padding, [1, 1, 1], False, [0, 0, 0], 1, [need[0], need[1], False]
    )
    return (grad_x if need[0] else None), (grad_w if need[1] else None)


class KernelConv(torch.autograd.Function):
    """Stride-1 bias-free conv3d with one kernel, or several stacked on the output channels.

    Saves the kernels, never the stack; the input only when kernel gradients are needed.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, *kernels: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        x = x.to(dtype)
        weight, padding = _stack(kernels, dtype)
        with torch.autocast(device, enabled=False):
            out = _conv(x, weight, padding)
        need_weight = any(ctx.needs_input_grad[1:])
        ctx.save_for_backward(x if need_weight else None, *kernels)
        ctx.dtype = dtype
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, *kernels = ctx.saved_tensors
        weight, padding = _stack(tuple(kernels), ctx.dtype)
        need = (ctx.needs_input_grad[0], any(ctx.needs_input_grad[1:]))
        if x is None and not _use_mkldnn(grad):  # only the input gradient: its shape is all it takes
            x = grad.new_empty((grad.shape[0], weight.shape[1], *grad.shape[2:]))
        grad_x, grad_w = _conv_grads(grad.to(ctx.dtype).contiguous(), x, weight, padding, need)
        grads: list[torch.Tensor | None] = [grad_x]
        if grad_w is None:
            return (grad_x, *[None] * len(kernels))
        if len(kernels) == 1:
            return grad_x, grad_w.to(kernels[0].dtype)
        offset = 0
        for w in kernels:
            lo = [(3 - k) // 2 for k in w.shape[2:]]
            hi = [a + k for a, k in zip(lo, w.shape[2:])]
            piece = grad_w[offset : offset + w.shape[0], :, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
            grads.append(piece.to(w.dtype).contiguous())
            offset += w.shape[0]
        return tuple(grads)


def fused_ops(ops: list[ActConvNorm], x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """sum_k alpha_k op_k(x) for fusable ops (see the module docstring)."""
    h = KernelConv.apply(torch.relu(x), *[op.convs[0].weight for op in ops])
    if any(len(op.convs) > 1 for op in ops):
        chunks = list(h.split([op.convs[0].out_channels for op in ops], dim=1))
        for k, op in enumerate(ops):
            for conv in op.convs[1:]:
                chunks[k] = KernelConv.apply(chunks[k], conv.weight)
        h = torch.cat(chunks, dim=1)
    norms = [op.norm for op in ops]
    h = F.instance_norm(
        h,
        weight=torch.cat([n.weight for n in norms]),
        bias=torch.cat([n.bias for n in norms]),
        eps=_EPS,
    )
    b, c = h.shape[0], ops[0].convs[0].out_channels
    return torch.einsum("bnc...,n->bc...", h.view(b, len(ops), c, *h.shape[2:]), alpha.to(h.dtype))
