"""What every transform checks and draws: the (image, label) pair, its parameters, its random numbers."""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Transform(Protocol):
    """What :class:`Compose` runs: ``(image, label, generator) -> (image, label)``."""

    name: str

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]: ...


def _check_pair(image: Tensor, label: Tensor) -> None:
    if image.ndim != 5:
        raise ValueError(f"image must be [B, C, X, Y, Z], got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be floating point, got {image.dtype}")
    if label.ndim != 4 or label.shape[0] != image.shape[0] or label.shape[1:] != image.shape[2:]:
        raise ValueError(
            f"label must be [B, X, Y, Z] matching image {tuple(image.shape)}, got {tuple(label.shape)}"
        )
    if label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
        raise ValueError(f"label must have an integer dtype, got {label.dtype}")


def _rand(generator: torch.Generator | None, *size: int) -> Tensor:
    """Uniform [0, 1) float64 numbers on the generator's device (CPU for ``None``)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(size, generator=generator, device=device, dtype=torch.float64)


def _check_prob(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _check_number(name: str, value: object, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and not value > lo:
        raise ValueError(f"{name} must be > {lo}, got {value!r}")
    if hi is not None and not value <= hi:
        raise ValueError(f"{name} must be <= {hi}, got {value!r}")
    return float(value)


def _check_range(lo_name: str, lo: float, hi_name: str, hi: float) -> None:
    if lo > hi:
        raise ValueError(f"{lo_name} ({lo}) must be <= {hi_name} ({hi})")


_PADDING_MODES = ("zeros", "border", "reflection")


def _check_padding(value: object) -> str:
    if value not in _PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {list(_PADDING_MODES)}, got {value!r}")
    return str(value)
