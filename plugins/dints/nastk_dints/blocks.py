"""Fixed building blocks around the cells: stem (Fig. 2), edge resampling and output head.

Their structure is the one of the authors' implementation (MONAI's DiNTS), which reproduces the
parameter and multiply-accumulate counts of the paper's Table 1:

* stem, per depth d: downsample the image by 2^d (average pooling; the paper only says
  "down-sampling"), 3x3x3 conv to f*2^d channels, InstanceNorm, ReLU, stride-2 3x3x3 conv to
  f*2^(d+1) channels, InstanceNorm. Depth d of the search space therefore runs at 1/2^(d+1) of
  the input with f*2^(d+1) channels, f being the filter count at input scale.
* downsampling edge: ReLU, two stride-2 1x1x1 convs (the second shifted by one voxel) whose
  outputs are concatenated, InstanceNorm ("factorized reduce");
* upsampling edge: trilinear x2, ReLU, 1x1x1 conv, InstanceNorm;
* head: starting from the coarsest active node of the last layer, each depth d adds its node to
  the running feature map, then ReLU, 3x3x3 conv to f*2^d channels, InstanceNorm and trilinear x2.
  At input resolution: ReLU, 3x3x3 conv, InstanceNorm and a 1x1x1 conv (with bias) to the classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nastk_dints.kernels import InstanceNorm, same_conv3d


def depth_channels(filters: float, depth: int) -> int:
    """Channels of search-space depth d (resolution 1/2^(d+1))."""
    return int(filters * 2 ** (depth + 1))


def scale_channels(filters: float, scale: int) -> int:
    """Channels at resolution 1/2^scale (scale 0 is the input)."""
    return int(filters * 2**scale)


class Stem(nn.Module):
    def __init__(self, in_channels: int, filters: float, depth: int):
        super().__init__()
        mid, out = scale_channels(filters, depth), scale_channels(filters, depth + 1)
        self.factor = 2**depth
        self.conv = nn.Conv3d(in_channels, mid, 3, padding=1, bias=False)
        self.norm = InstanceNorm(mid)
        self.down = nn.Conv3d(mid, out, 3, stride=2, padding=1, bias=False)
        self.down_norm = InstanceNorm(out)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool3d(image, self.factor) if self.factor > 1 else image
        x = torch.relu(self.norm(same_conv3d(x, self.conv.weight)))
        return self.down_norm(self.down(x))


class Downsample(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv_a = nn.Conv3d(in_channels, out_channels // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv3d(in_channels, out_channels - out_channels // 2, 1, stride=2, bias=False)
        self.norm = InstanceNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        return self.norm(torch.cat([self.conv_a(x), self.conv_b(x[:, :, 1:, 1:, 1:])], dim=1))


class Upsample(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 1, bias=False)
        self.norm = InstanceNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
        return self.norm(same_conv3d(torch.relu(x), self.conv.weight))


def resample(source: int, target: int, filters: float) -> nn.Module:
    c_in, c_out = depth_channels(filters, source), depth_channels(filters, target)
    if target == source + 1:
        return Downsample(c_in, c_out)
    if target == source - 1:
        return Upsample(c_in, c_out)
    return nn.Identity()


class HeadUp(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = InstanceNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(same_conv3d(torch.relu(x), self.conv.weight))
        return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)


class HeadOut(nn.Module):
    """At input resolution: ReLU, 3x3x3 conv, InstanceNorm, 1x1x1 conv (with bias) to the classes."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.norm = InstanceNorm(channels)
        self.classifier = nn.Conv3d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(same_conv3d(torch.relu(x), self.conv.weight)))


class Head(nn.Module):
    """Combines the last layer's active nodes, from ``top_depth`` down to depth 0."""

    def __init__(self, filters: float, top_depth: int, num_classes: int):
        super().__init__()
        self.top_depth = top_depth
        self.up = nn.ModuleList(
            HeadUp(depth_channels(filters, d), scale_channels(filters, d)) for d in range(top_depth + 1)
        )
        self.out = HeadOut(scale_channels(filters, 0), num_classes)

    def forward(self, nodes: dict[int, torch.Tensor]) -> torch.Tensor:
        h: torch.Tensor | None = None
        for d in range(self.top_depth, -1, -1):
            node = nodes.get(d)
            if node is not None:
                h = node if h is None else h + node
            assert h is not None, "the coarsest head depth must be an active node"
            h = self.up[d](h)
        return self.out(h)
