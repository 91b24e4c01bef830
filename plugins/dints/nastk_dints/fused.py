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

from nastk_dints.kernels import KernelConv, same_conv3d
from nastk_dints.ops import ActConvNorm

__all__ = ["fusable", "fused_ops"]

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


def fused_ops(ops: list[ActConvNorm], x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """sum_k alpha_k op_k(x) for fusable ops (see the module docstring)."""
    convs = [op.convs for op in ops]  # a property that scans the op's layers: read it once per op
    h = KernelConv.apply(torch.relu(x), *[cs[0].weight for cs in convs])
    if any(len(cs) > 1 for cs in convs):
        chunks = list(h.split([cs[0].out_channels for cs in convs], dim=1))
        for k, cs in enumerate(convs):
            for conv in cs[1:]:
                chunks[k] = same_conv3d(chunks[k], conv.weight)
        h = torch.cat(chunks, dim=1)
    norms = [op.norm for op in ops]
    # InstanceNorm of every stacked channel, as a GroupNorm with one group per channel (see kernels.py)
    weight, bias = torch.cat([n.weight for n in norms]), torch.cat([n.bias for n in norms])
    h = F.group_norm(h, h.shape[1], weight, bias, _EPS)
    b, c = h.shape[0], convs[0][0].out_channels
    return torch.einsum("bnc...,n->bc...", h.view(b, len(ops), c, *h.shape[2:]), alpha.to(h.dtype))
