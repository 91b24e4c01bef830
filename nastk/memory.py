"""Per-op memory cost M_n, measured rather than written by hand.

The cost of a module is the bytes its forward saves for backward (activations kept alive until
the backward pass), found with ``torch.autograd.graph.saved_tensors_hooks``. Parameters are not
counted. Each distinct storage counts once. A module is measured at two small sizes and two batch
sizes, and the cost is fitted as c + batch * (a + b * voxels), then evaluated at any size: per-voxel
feature maps and per-sample statistics scale with the batch, what is saved once per step (under
autocast, the half-precision copy of a weight) does not. The fit is exact for the modules here.
Results are cached per (key, channels, dtype, amp, input dtype), so an op added by a plugin gets its
cost with no extra code.

Mixed precision is measured under CPU autocast, with each module fed the dtype it receives in the
network (``input_dtype``; see ``output_dtype``): what a module saves depends on which of its
functions autocast runs in half precision and which in float32, and on the dtype coming in (a
float32 input to a half-precision conv is saved twice: as it is by the ReLU, and cast by the conv).
CUDA's autocast lists differ from the CPU's for some functions (CUDA runs ``group_norm`` in float32,
the CPU in half precision), so on a GPU a network under AMP may save more than this says.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable

import torch
from torch import nn

# Target spatial sides used for the two-point fit; even, so stride-2 inputs stay whole.
_FIT_SIDES = (4, 8)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(amp: str):
    """CPU autocast for "bf16"/"fp16", nothing for "off" (how every measurement here runs mixed precision)."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=AMP_DTYPES[amp])


def saved_bytes(
    module: nn.Module,
    input_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    amp: str = "off",
    input_requires_grad: bool = True,
    input_dtype: torch.dtype | None = None,
) -> int:
    """Bytes of distinct non-parameter storages saved for backward by one forward of ``module``.

    ``amp`` ("off", "bf16", "fp16") runs the forward under autocast, on an input of ``input_dtype``
    (default ``dtype``). The input is a feature map that requires grad, or with
    ``input_requires_grad=False`` an image that does not (functions then keep less of it: average
    pooling, for one, keeps nothing of an input it need not differentiate).
    """
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
        x = torch.randn(input_shape, dtype=input_dtype or dtype, requires_grad=input_requires_grad)
        with autocast(amp):
            module(x)
    return sum(storages.values())


def live_saved_storages(module: nn.Module, run: Callable[[], object]) -> dict[int, int]:
    """The distinct non-parameter storages (address -> bytes) that ``run()`` leaves saved for backward
    while its result is held: a branch of the graph that the forward dropped (a value computed and not
    used) frees what it saved, and its addresses can be reused, which makes a count by address alone
    depend on the allocator."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    packed: list[tuple[weakref.ref, int, int]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        out = t.detach()
        if storage.data_ptr() not in params and storage.data_ptr() != 0:
            packed.append((weakref.ref(out), storage.data_ptr(), storage.nbytes()))
        return out

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = run()
    alive = {ptr: n for ref, ptr, n in packed if ref() is not None}
    del result
    return alive


def live_saved_bytes(
    module: nn.Module,
    input_shape: tuple[int, ...],
    amp: str = "off",
    input_requires_grad: bool = True,
    input_dtype: torch.dtype = torch.float32,
) -> int:
    """Like :func:`saved_bytes`, but counts only what is still saved when the forward has returned (its
    output held; :func:`live_saved_storages`)."""
    x = torch.randn(input_shape, dtype=input_dtype, requires_grad=input_requires_grad)

    def run():
        with autocast(amp):
            return module(x)

    return sum(live_saved_storages(module, run).values())


# Keyed by what identifies the measurement, never by ``build``: callers pass a fresh lambda each
# time, so a cache keyed on it would never hit.
_FITS: dict[tuple, tuple[float, float]] = {}
_PARAMS: dict[tuple, int] = {}
_DTYPES: dict[tuple, torch.dtype] = {}


def _fit(
    key: tuple,
    build: Callable[[], nn.Module],
    in_channels: int,
    in_scale: float,
    dtype,
    amp: str,
    input_requires_grad: bool,
    input_dtype,
) -> tuple[float, ...]:
    cache_key = (key, in_channels, in_scale, dtype, amp, input_requires_grad, input_dtype)
    if cache_key not in _FITS:
        module = build().to(dtype)
        _FITS[cache_key] = _measure_fit(
            module, in_channels, in_scale, dtype, amp, input_requires_grad, input_dtype
        )
    return _FITS[cache_key]


def _measure_fit(
    module, in_channels, in_scale, dtype, amp, input_requires_grad, input_dtype
) -> tuple[float, ...]:
    """(c, a, b) of c + batch * (a + b * voxels), from batch 1 at two sizes and batch 2 at one."""

    def measure(batch: int, side: int) -> int:
        in_side = int(side * in_scale)
        shape = (batch, in_channels, in_side, in_side, in_side)
        return saved_bytes(module, shape, dtype, amp, input_requires_grad, input_dtype)

    (s0, s1), (v0, v1) = _FIT_SIDES, (_FIT_SIDES[0] ** 3, _FIT_SIDES[1] ** 3)
    b0, b1, twice = measure(1, s0), measure(1, s1), measure(2, s0)
    slope = (b1 - b0) / (v1 - v0)
    per_sample_at_v0 = twice - b0
    return b0 - per_sample_at_v0, per_sample_at_v0 - slope * v0, slope


def cost(
    key: tuple,
    build: Callable[[], nn.Module],
    in_channels: int,
    voxels: int,
    in_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
    amp: str = "off",
    input_requires_grad: bool = True,
    input_dtype: torch.dtype | None = None,
    batch: int = 1,
) -> float:
    """Saved bytes for a batch of ``batch`` samples whose output has ``voxels`` voxels each.

    ``in_scale`` is the input side over the output side (2 for a stride-2 downsampling module,
    0.5 for an upsampling one). ``key`` must identify what ``build`` builds, channels included.
    """
    once, intercept, slope = _fit(
        key, build, in_channels, in_scale, dtype, amp, input_requires_grad, input_dtype
    )
    return once + batch * (intercept + slope * voxels)


def cost_per_sample(key: tuple, build: Callable[[], nn.Module], in_channels: int, voxels: int, **kw) -> float:
    """``cost`` of one sample."""
    return cost(key, build, in_channels, voxels, batch=1, **kw)


def output_dtype(
    key: tuple, build: Callable[[], nn.Module], in_channels: int, amp: str, input_dtype: torch.dtype
) -> torch.dtype:
    """The dtype of what ``build``'s module returns for an ``input_dtype`` input under ``amp``: how
    dtypes flow from module to module in a network trained with autocast."""
    if amp == "off":
        return input_dtype
    cache_key = ("dtype", key, in_channels, amp, input_dtype)
    if cache_key not in _DTYPES:
        side = 2 * _FIT_SIDES[0]
        x = torch.zeros(1, in_channels, side, side, side, dtype=input_dtype)
        with torch.no_grad(), autocast(amp):
            _DTYPES[cache_key] = build()(x).dtype
    return _DTYPES[cache_key]


def parameter_count(key: tuple, build: Callable[[], nn.Module]) -> int:
    """Trainable parameters of what ``build`` builds; ``key`` identifies it, as for the costs."""
    if key not in _PARAMS:
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            _PARAMS[key] = sum(p.numel() for p in build().parameters() if p.requires_grad)
    return _PARAMS[key]
