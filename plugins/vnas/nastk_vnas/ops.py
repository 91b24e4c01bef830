"""V-NAS's 2D candidate: a 3x3x1 convolution alone (no through-plane partner, unlike the P3D ops).

Registered as ``vnas.conv3x3x1`` in ``nastk.ops``, so any space (DiNTS's too) can use it by name.
"""

from __future__ import annotations

from torch import nn


def conv3x3x1(channels: int) -> nn.Module:
    """ReLU, bias-free 3x3x1 conv, InstanceNorm (affine): same channels, same size."""
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv3d(channels, channels, (3, 3, 1), padding=(1, 1, 0), bias=False),
        nn.InstanceNorm3d(channels, affine=True),
    )
