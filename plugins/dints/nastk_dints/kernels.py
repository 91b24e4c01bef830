"""Compute kernels for the DiNTS networks: a lean stride-1 conv3d and InstanceNorm.

:class:`KernelConv` convolves with one kernel, or several zero-padded to 3x3x3 and stacked on the
output channels (the fused supernet cells, :mod:`nastk_dints.fused`). It saves the kernels, never
the stack, and the input only when kernel gradients are needed. On CPU it takes oneDNN for batch-1
inputs that PyTorch would send to its unfold-and-GEMM kernel, where oneDNN is the faster of the two.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InstanceNorm", "KernelConv", "same_conv3d"]


class InstanceNorm(nn.InstanceNorm3d):
    """Affine InstanceNorm3d computed as a GroupNorm with one group per channel.

    The same maths and parameters; PyTorch's instance_norm repeats the affine parameters per sample
    and runs batch norm over a reshaped tensor, which on CPU takes 2-4 times as long.
    """

    def __init__(self, channels: int):
        super().__init__(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


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


# PyTorch sends a batch-1 float32 CPU conv3d with fewer than 20480 N*C*D*H elements to its
# unfold-and-GEMM kernel. That kernel's cost grows with the unfolded input (kernel taps x input
# channels x voxels), oneDNN's has a larger fixed part: measured per conv, forward + backward, oneDNN
# won from about this size up (16 channels at 16^3 with 3 taps: 0.56 vs 0.77 ms; 16 channels at 16^3
# with 27 taps: 1.2 vs 5.9 ms) and lost below it (32 channels at 8^3 with 3 taps: 0.47 vs 0.28 ms;
# 64 channels at 4^3 with 27 taps: 0.67 vs 0.59 ms), on a 2-core x86_64 VM. A 1x1x1 kernel needs no
# unfolding, PyTorch's kernel is one GEMM, and oneDNN's kernel-gradient formula below (a conv whose
# kernel is the whole volume) is far slower (16 -> 8 channels at 32^3: 6.2 vs 1.8 ms), so those never
# take oneDNN.
ONEDNN_MIN_UNFOLDED = 160_000


def _use_mkldnn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    taps = math.prod(weight.shape[2:])  # shapes, not tensor indexing: this runs for every conv
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.shape[0] == 1
        and 1 < taps
        and taps * math.prod(x.shape[1:]) >= ONEDNN_MIN_UNFOLDED
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def _mkldnn_conv(x: torch.Tensor, w: torch.Tensor, padding: list[int]) -> torch.Tensor:
    return torch.ops.aten.mkldnn_convolution(x, w, None, padding, [1, 1, 1], [1, 1, 1], 1)


def _conv_grads(
    grad: torch.Tensor,
    x: torch.Tensor | None,
    w: torch.Tensor,
    padding: list[int],
    need: tuple[bool, bool],
    mkldnn: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(d/dx, d/dw) of a stride-1 bias-free conv3d, each only if asked for."""
    if mkldnn:
        # Both are stride-1 convolutions themselves: d/dx correlates grad with the flipped,
        # transposed kernel; d/dw correlates the input with grad, channels taking the batch's place.
        grad_x = grad_w = None
        if need[0]:
            back = [k - 1 - p for k, p in zip(w.shape[2:], padding)]
            grad_x = _mkldnn_conv(grad, w.flip(2, 3, 4).transpose(0, 1).contiguous(), back)
        if need[1]:
            grad_w = _mkldnn_conv(x.transpose(0, 1), grad.transpose(0, 1), padding).transpose(0, 1)
        return grad_x, grad_w
    if x is None:  # only the input gradient: the input's shape is all it takes
        x = grad.new_empty((grad.shape[0], w.shape[1], *grad.shape[2:]))
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
        amp = device in ("cpu", "cuda") and torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if amp else x.dtype
        x = x.to(dtype)
        weight, padding = _stack(kernels, dtype)
        ctx.mkldnn = _use_mkldnn(x, weight)
        with torch.autocast(device, enabled=False) if amp else contextlib.nullcontext():
            out = _mkldnn_conv(x, weight, padding) if ctx.mkldnn else F.conv3d(x, weight, padding=padding)
        need_weight = any(ctx.needs_input_grad[1:])
        ctx.save_for_backward(x if need_weight else None, *kernels)
        ctx.dtype = dtype
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, *kernels = ctx.saved_tensors
        weight, padding = _stack(tuple(kernels), ctx.dtype)
        need = (ctx.needs_input_grad[0], any(ctx.needs_input_grad[1:]))
        grad_x, grad_w = _conv_grads(grad.to(ctx.dtype).contiguous(), x, weight, padding, need, ctx.mkldnn)
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


def same_conv3d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv3d(x, weight, padding=k // 2)`` for odd kernels; through :class:`KernelConv` where
    that takes oneDNN, else directly (an autograd.Function costs tens of microseconds a call)."""
    if _use_mkldnn(x, weight):
        return KernelConv.apply(x, weight)
    return F.conv3d(x, weight, padding=[k // 2 for k in weight.shape[2:]])
