"""The fixed parts of the skeleton, shared by the supernet and the discrete network.

Each starts from a fresh tensor (a ReLU or a resampling) so that the bytes it saves for backward never
share storage with what the layer before it saved: the network's memory is then exactly the sum of
its parts' (``memory.py``, tested against the whole network).
"""

from __future__ import annotations

import torch
from torch import nn

from nastk_vnas.layout import channels


class Stem(nn.Module):
    """Image -> level 0: 3x3x3 conv + InstanceNorm."""

    def __init__(self, in_channels: int, filters: float):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, channels(filters, 0), 3, padding=1, bias=False)
        self.norm = nn.InstanceNorm3d(channels(filters, 0), affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Down(nn.Module):
    """Level d-1 -> level d: ReLU, stride-2 3x3x3 conv doubling the channels, InstanceNorm."""

    def __init__(self, filters: float, level: int):
        super().__init__()
        c_in, c_out = channels(filters, level - 1), channels(filters, level)
        self.conv = nn.Conv3d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.norm = nn.InstanceNorm3d(c_out, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(torch.relu(x)))


class Up(nn.Module):
    """Level d+1 -> level d: trilinear x2, ReLU, 1x1x1 conv halving the channels, InstanceNorm; the
    encoder's feature map of level d is added afterwards (the skip connection)."""

    def __init__(self, filters: float, level: int):
        super().__init__()
        c_in, c_out = channels(filters, level + 1), channels(filters, level)
        self.conv = nn.Conv3d(c_in, c_out, 1, bias=False)
        self.norm = nn.InstanceNorm3d(c_out, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
        return self.norm(self.conv(torch.relu(x)))


class Head(nn.Module):
    """Level 0 -> logits: ReLU, 1x1x1 conv to the classes."""

    def __init__(self, filters: float, num_classes: int):
        super().__init__()
        self.conv = nn.Conv3d(channels(filters, 0), num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(x))


class Skeleton(nn.Module):
    """The encoder-decoder around ``layer_modules`` (one module per searched layer, ``layout`` order)."""

    def __init__(self, layout, layer_modules, in_channels, num_classes, filters, depths):
        super().__init__()
        self.depths = depths
        self.names = [layer.name for layer in layout]
        self.levels = [(layer.part, layer.level) for layer in layout]
        self.stem = Stem(in_channels, filters)
        self.downs = nn.ModuleList(Down(filters, d) for d in range(1, depths))
        self.ups = nn.ModuleList(Up(filters, d) for d in range(depths - 1))  # ups[d]: level d+1 -> d
        self.layers = nn.ModuleList(layer_modules)
        self.head = Head(filters, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image)
        skips: dict[int, torch.Tensor] = {}
        current = ("enc", 0)
        for (part, level), module in zip(self.levels, self.layers):
            if (part, level) != current:  # entering a new level
                if part == "enc":
                    x = self.downs[level - 1](x)
                else:
                    x = self.ups[level](x) + skips[level]
                current = (part, level)
            x = module(x)
            if part == "enc":
                skips[level] = x
        return self.head(x)
