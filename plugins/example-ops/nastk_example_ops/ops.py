"""A depthwise-separable 3x3x3 cell op.

ReLU -> depthwise 3x3x3 conv -> pointwise 1x1x1 conv -> InstanceNorm (affine), convolutions
without bias (the norm follows), the same ReLU -> conv -> norm order as the DiNTS ops. It sees the
same 3x3x3 neighbourhood as ``conv3x3x3`` with about (27 + C) / (27 C) of its weights and FLOPs
(C = channels: ~1/6 at C = 8, ~1/10 at C = 16), which makes it a cheap alternative a search can
trade against ``conv3x3x3`` and the P3D ops. Its memory cost (one more saved activation than
``conv3x3x3``) is measured by nastk; nothing here declares it.
"""

from __future__ import annotations

from torch import nn


class DWConv3x3x3(nn.Sequential):
    """[B, C, X, Y, Z] -> [B, C, X, Y, Z]."""

    def __init__(self, channels: int):
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        super().__init__(
            nn.ReLU(),
            nn.Conv3d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.Conv3d(channels, channels, 1, bias=False),
            nn.InstanceNorm3d(channels, affine=True),
        )


def dwconv3x3x3(channels: int) -> nn.Module:
    """``nastk.ops`` entry ``example.dwconv3x3x3``: keeps channels and spatial size."""
    return DWConv3x3x3(channels)
