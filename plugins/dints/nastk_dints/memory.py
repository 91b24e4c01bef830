"""Per-op memory cost M_n, measured rather than written by hand.

The cost of a module is the bytes its forward saves for backward (activations kept alive until
the backward pass), found with ``torch.autograd.graph.saved_tensors_hooks``. Parameters are not
counted. Each distinct storage counts once. A module is measured at two small sizes and the
cost is fitted as a + b * voxels (exact for the ops here, whose saved tensors are per-voxel
feature maps plus per-channel statistics), then evaluated at any size. Results are cached per
(key, channels, dtype), so an op added by a plugin gets its cost with no extra code.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from torch import nn

# Target spatial sides used for the two-point fit; even, so stride-2 inputs stay whole.
_FIT_SIDES = (4, 8)


def saved_bytes(module: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> int:
    """Bytes of distinct non-parameter storages saved for backward by one forward of ``module``."""
    param_storages = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_storages and ptr != 0:
            storages[ptr] = storage.nbytes()
        # Detached: packing a saved output itself would make output -> grad_fn -> packed output,
        # a cycle through C++ that Python's collector cannot free (every call leaked its graph).
        return t.detach()

    # enable_grad: called under no_grad (e.g. from diagnostics) nothing would be saved, and the
    # zero would be cached.
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x = torch.randn(input_shape, dtype=dtype, requires_grad=True)
        module(x)
    return sum(storages.values())


@lru_cache(maxsize=4096)
def _fit(
    key: tuple, build: Callable[[], nn.Module], in_channels: int, in_scale: float, dtype
) -> tuple[float, float]:
    module = build().to(dtype)
    points = []
    for side in _FIT_SIDES:
        in_side = int(side * in_scale)
        points.append((side**3, saved_bytes(module, (1, in_channels, in_side, in_side, in_side), dtype)))
    (v0, b0), (v1, b1) = points
    slope = (b1 - b0) / (v1 - v0)
    return b0 - slope * v0, slope


def cost_per_sample(
    key: tuple,
    build: Callable[[], nn.Module],
    in_channels: int,
    voxels: int,
    in_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Saved bytes for one sample whose output has ``voxels`` voxels.

    ``in_scale`` is the input side over the output side (2 for a stride-2 downsampling module,
    0.5 for an upsampling one). ``key`` must identify what ``build`` builds, channels included.
    """
    intercept, slope = _fit(key, build, in_channels, in_scale, dtype)
    return intercept + slope * voxels
