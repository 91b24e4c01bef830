"""The fixed skeleton of the space: which searched layers exist, at which level and width.

Level 0 is the input resolution; level d is downsampled by 2^d and has ``filters * 2^d`` channels.
The encoder has ``convs`` searched layers at each level 0..D-1, the decoder ``convs`` at each level
D-2..0, so a space has L = (2D - 1) * convs searched layers, ordered as the data flows:
enc0.1, enc0.2, enc1.1, ..., enc{D-1}.{convs}, dec{D-2}.1, ..., dec0.{convs}.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layer:
    name: str  # "enc1.2": the second searched layer of the encoder at level 1
    part: str  # "enc" | "dec"
    level: int


def layers(depths: int, convs: int) -> list[Layer]:
    out = [Layer(f"enc{d}.{k + 1}", "enc", d) for d in range(depths) for k in range(convs)]
    out += [Layer(f"dec{d}.{k + 1}", "dec", d) for d in range(depths - 2, -1, -1) for k in range(convs)]
    return out


def channels(filters: float, level: int) -> int:
    """Channels at ``level`` for ``filters`` (already times the filter multiplier) at level 0."""
    return max(1, int(round(filters))) * 2**level
