"""The five cell ops of DiNTS (Sec. 3.2), each registered in ``nastk.ops``.

An op is a function ``channels -> nn.Module`` keeping channels and size. Conv ops are
ReLU -> conv -> InstanceNorm (affine), convolutions without bias (the norm follows).
P3D ops are a 2D-in-3D conv followed by the complementary 1D conv, as in Sec. 3.2:
3x3x1 then 1x1x3, 3x1x3 then 1x3x1, 1x3x3 then 3x1x1.
"""

from __future__ import annotations

import torch
from torch import nn

from nastk_dints.kernels import InstanceNorm, same_conv3d


def _pad(kernel: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(k // 2 for k in kernel)  # type: ignore[return-value]


class ActConvNorm(nn.Sequential):
    """ReLU -> one or more bias-free convs -> InstanceNorm."""

    def __init__(self, in_channels: int, out_channels: int, kernels: list[tuple[int, int, int]]):
        layers: list[nn.Module] = [nn.ReLU()]
        channels = in_channels
        for i, k in enumerate(kernels):
            out = out_channels if i == len(kernels) - 1 else in_channels
            layers.append(nn.Conv3d(channels, out, k, padding=_pad(k), bias=False))
            channels = out
        layers.append(InstanceNorm(out_channels))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        for conv in self.convs:  # stride-1 same-size convs; see nastk_dints.kernels
            x = same_conv3d(x, conv.weight)
        return self.norm(x)

    @property
    def convs(self) -> list[nn.Conv3d]:
        return [m for m in self if isinstance(m, nn.Conv3d)]

    @property
    def norm(self) -> nn.InstanceNorm3d:
        return self[-1]


def skip(channels: int) -> nn.Module:
    """Identity (skip connection)."""
    return nn.Identity()


def conv3x3x3(channels: int) -> nn.Module:
    return ActConvNorm(channels, channels, [(3, 3, 3)])


def p3d_3x3x1(channels: int) -> nn.Module:
    return ActConvNorm(channels, channels, [(3, 3, 1), (1, 1, 3)])


def p3d_3x1x3(channels: int) -> nn.Module:
    return ActConvNorm(channels, channels, [(3, 1, 3), (1, 3, 1)])


def p3d_1x3x3(channels: int) -> nn.Module:
    return ActConvNorm(channels, channels, [(1, 3, 3), (3, 1, 1)])
