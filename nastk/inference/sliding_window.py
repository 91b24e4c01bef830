"""Sliding-window inference for 3D volumes.

A volume ``[C, X, Y, Z]`` is covered by a regular grid of ``patch``-sized windows spaced ``stride``
apart (the last window on each axis is shifted back so it ends flush with the volume).  Windows
are gathered ``batch_size`` at a time, passed through ``predictor`` and their softmax
probabilities are blended into full-size accumulators with a per-window weight map (constant or
Gaussian).  The result is the weighted average of the per-window probabilities, so every voxel's
class probabilities sum to one.

Only window *batches* are iterated in Python; the window grid is built with a meshgrid and no
more than one batch of windows is materialised at a time.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["window_starts", "gaussian_weights", "sliding_window_predict", "predict_labels"]

_OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)
_BLENDS = ("gaussian", "constant")
_PREDICTOR_OUTPUTS = ("logits", "probabilities")
# All 8 subsets of the three spatial axes of a [B, C, X, Y, Z] batch (the empty one first).
_FLIP_DIMS: tuple[tuple[int, ...], ...] = tuple(
    dims for r in range(4) for dims in itertools.combinations((2, 3, 4), r)
)


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start offsets of windows of length ``patch`` spaced ``stride`` apart covering ``[0, size)``.

    The starts are ``0, stride, 2*stride, ...`` and the last one is ``size - patch`` so the final
    window ends flush with the axis.  If ``size <= patch`` a single window at 0 is returned (the
    caller pads the axis up to ``patch``).
    """
    size, patch, stride = int(size), int(patch), int(stride)
    if size < 1 or patch < 1:
        raise ValueError(f"size and patch must be >= 1, got size={size}, patch={patch}")
    if not 1 <= stride <= patch:
        raise ValueError(f"stride must be in [1, patch={patch}], got {stride}")
    if size <= patch:
        return [0]
    last = size - patch
    n = math.ceil(last / stride) + 1
    return [min(i * stride, last) for i in range(n)]


def gaussian_weights(
    patch: Sequence[int],
    sigma_scale: float = 0.125,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Separable Gaussian importance map of shape ``patch``.

    Centred on the geometric centre of the patch (``(p - 1) / 2`` per axis, so the map is
    symmetric under flips), ``sigma = sigma_scale * p`` per axis, ``exp(-d^2 / (2 sigma^2))``
    unnormalised (its peak is 1 for odd sizes and just under 1 for even ones) and clamped below at
    ``1e-3`` so no voxel of a window ever has zero weight.  This is the map MONAI's
    ``sliding_window_inference`` uses, so the two blend identically.
    """
    patch = tuple(int(p) for p in patch)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"patch must be three positive ints, got {patch}")
    if not sigma_scale > 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
    axes = []
    for p in patch:
        coords = torch.arange(p, dtype=torch.float64) - (p - 1) / 2.0
        sigma = sigma_scale * p
        axes.append(torch.exp(-0.5 * (coords / sigma) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w = w.clamp_min(1e-3)
    return w.to(device=device, dtype=dtype)


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        value = (value,) * 3
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} must have 3 entries, got {value}")
    return value  # type: ignore[return-value]


def _allocate_accumulators(
    num_classes: int, shape: tuple[int, int, int], device: torch.device, fallback: bool, with_wsum: bool
) -> tuple[Tensor, Tensor | None]:
    def allocate(on: torch.device) -> tuple[Tensor, Tensor | None]:
        acc = torch.zeros((num_classes, *shape), dtype=torch.float32, device=on)
        wsum = torch.zeros(shape, dtype=torch.float32, device=on) if with_wsum else None
        return acc, wsum

    try:
        return allocate(device)
    except _OOM_ERRORS:
        if not fallback or device.type == "cpu":
            raise
    if device.type == "cuda":
        torch.cuda.empty_cache()
    warnings.warn(
        f"not enough memory on {device} for [{num_classes}, {shape[0]}, {shape[1]}, {shape[2]}] "
        "sliding-window accumulators; accumulating on CPU",
        RuntimeWarning,
        stacklevel=3,
    )
    return allocate(torch.device("cpu"))


@torch.inference_mode()
def sliding_window_predict(
    volume: Tensor,
    predictor: Callable[[Tensor], Tensor],
    patch: Sequence[int],
    stride: Sequence[int],
    num_classes: int,
    batch_size: int = 4,
    blend: str = "gaussian",
    device: torch.device | str | None = None,
    accumulate_on: torch.device | str | None = None,
    amp: bool = False,
    flip_tta: bool = False,
    progress: Callable[[int, int], None] | None = None,
    predictor_outputs: str = "logits",
    sigma_scale: float = 0.125,
    pad_value: float | Sequence[float] = 0.0,
) -> Tensor:
    """Blend per-window softmax probabilities of ``predictor`` over a whole volume.

    Args:
        volume: ``[C, X, Y, Z]`` input, on CPU or GPU.  Axes shorter than the patch are padded (``pad_value``)
            symmetrically (like MONAI) and the result is cropped back.
        predictor: maps ``[B, C, *patch]`` to ``[B, num_classes, *patch]`` logits (or
            probabilities, see ``predictor_outputs``).  Put modules in ``eval()`` mode yourself.
        patch, stride: window size and spacing per axis; ``1 <= stride <= patch``.
        num_classes: number of output channels ``K``.
        batch_size: windows per predictor call.
        blend: ``"gaussian"`` (see :func:`gaussian_weights`) or ``"constant"`` (plain average).
        device: where the predictor runs; default ``volume.device``.  Windows are sliced from
            ``volume`` where it lives and moved per batch.
        accumulate_on: device of the ``[K, X, Y, Z]`` accumulators.  ``None`` means the predictor
            device, falling back to CPU (with a ``RuntimeWarning``) if allocating there runs out of
            memory.
        amp: run the predictor under ``torch.autocast("cuda", dtype=torch.float16)``; ignored
            unless ``device`` is CUDA.
        flip_tta: average the probabilities over the 8 flip combinations of the spatial axes
            (flip input, predict, flip the prediction back), per window.
        progress: called as ``progress(done_windows, total_windows)`` after each batch.
        predictor_outputs: ``"logits"`` (softmax is applied) or ``"probabilities"`` (used as is;
            then the output sums to one only if the predictor's outputs do).
        sigma_scale: Gaussian sigma as a fraction of the patch size (``blend="gaussian"`` only).
        pad_value: what padding gets, one value or one per channel (a case's ``pad_value``).

    Returns:
        ``[K, X, Y, Z]`` float32 blended probabilities on the accumulation device.
    """
    if volume.ndim != 4:
        raise ValueError(f"volume must be [C, X, Y, Z], got shape {tuple(volume.shape)}")
    patch = _triple(patch, "patch")
    stride = _triple(stride, "stride")
    if min(patch) < 1:
        raise ValueError(f"patch must be positive, got {patch}")
    for p, s in zip(patch, stride):
        if not 1 <= s <= p:
            raise ValueError(f"stride must be in [1, patch] per axis, got stride={stride}, patch={patch}")
    if blend not in _BLENDS:
        raise ValueError(f"blend must be one of {_BLENDS}, got {blend!r}")
    if predictor_outputs not in _PREDICTOR_OUTPUTS:
        raise ValueError(f"predictor_outputs must be one of {_PREDICTOR_OUTPUTS}, got {predictor_outputs!r}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num_classes, batch_size = int(num_classes), int(batch_size)

    run_device = torch.device(device) if device is not None else volume.device
    if accumulate_on is None:
        acc_device, fallback = run_device, True
    else:
        acc_device, fallback = torch.device(accumulate_on), False

    # Pad axes shorter than the patch, split as MONAI does (floor before, rest after).
    orig = tuple(volume.shape[1:])
    before = [max(p - n, 0) // 2 for p, n in zip(patch, orig)]
    after = [max(p - n, 0) - b for p, n, b in zip(patch, orig, before)]
    if any(before) or any(after):
        fill = torch.as_tensor(pad_value, dtype=volume.dtype, device=volume.device).reshape(-1, 1, 1, 1)
        widths = (before[2], after[2], before[1], after[1], before[0], after[0])
        volume = F.pad(volume - fill, widths) + fill if fill.any() else F.pad(volume, widths)
    shape = tuple(volume.shape[1:])

    # Window grid: meshgrid of the per-axis starts, [N, 3].
    axes = [torch.tensor(window_starts(n, p, s)) for n, p, s in zip(shape, patch, stride)]
    starts = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    total = starts.shape[0]

    # Softmax outputs sum to one over classes, so the blended weight of a voxel is the class sum
    # of ``acc``: one reduction at the end instead of adding the weight map once per window.
    weights_from_acc = predictor_outputs == "logits"
    acc, wsum = _allocate_accumulators(num_classes, shape, acc_device, fallback, not weights_from_acc)
    acc_device = acc.device
    if blend == "gaussian":
        weight = gaussian_weights(patch, sigma_scale, device=acc_device)
    else:
        weight = torch.ones(patch, dtype=torch.float32, device=acc_device)

    use_amp = amp and run_device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if use_amp else contextlib.nullcontext
    px, py, pz = patch
    expected = (num_classes, *patch)

    def predict(x: Tensor) -> Tensor:
        with autocast():
            out = predictor(x)
        if not isinstance(out, Tensor) or tuple(out.shape[1:]) != expected or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"predictor returned {got}, expected [{x.shape[0]}, {num_classes}, {px}, {py}, {pz}]"
            )
        out = out.float()
        return torch.softmax(out, dim=1) if predictor_outputs == "logits" else out

    for lo in range(0, total, batch_size):
        batch_starts = starts[lo : lo + batch_size].tolist()
        x = torch.stack([volume[:, i : i + px, j : j + py, k : k + pz] for i, j, k in batch_starts])
        x = x.to(run_device, non_blocking=True)
        if flip_tta:
            probs = None
            for dims in _FLIP_DIMS:
                p = predict(torch.flip(x, dims) if dims else x)
                p = torch.flip(p, dims) if dims else p
                probs = p if probs is None else probs.add_(p)
            probs = probs.mul_(1.0 / len(_FLIP_DIMS))
        else:
            probs = predict(x)
        del x
        probs = probs.to(acc_device, non_blocking=True)
        for (i, j, k), p in zip(batch_starts, probs):
            if blend == "gaussian":  # weight and add in one pass over the window
                acc[:, i : i + px, j : j + py, k : k + pz].addcmul_(p, weight)
            else:
                acc[:, i : i + px, j : j + py, k : k + pz] += p
            if wsum is not None:
                wsum[i : i + px, j : j + py, k : k + pz] += weight
        del probs
        if progress is not None:
            progress(min(lo + batch_size, total), total)

    if wsum is None:
        wsum = acc.sum(dim=0)
    acc /= wsum  # every voxel is covered by >= 1 window with weight >= 1e-3
    if shape != orig:
        acc = acc[
            :,
            before[0] : before[0] + orig[0],
            before[1] : before[1] + orig[1],
            before[2] : before[2] + orig[2],
        ].contiguous()
    return acc


@torch.inference_mode()
def predict_labels(
    volume: Tensor,
    predictor: Callable[[Tensor], Tensor],
    patch: Sequence[int],
    stride: Sequence[int],
    num_classes: int,
    **kwargs,
) -> Tensor:
    """``argmax`` over classes of :func:`sliding_window_predict` (same arguments): ``[X, Y, Z]`` uint8."""
    if int(num_classes) > 256:
        raise ValueError(f"uint8 labels hold at most 256 classes, got num_classes={num_classes}")
    probs = sliding_window_predict(volume, predictor, patch, stride, num_classes, **kwargs)
    return probs.argmax(dim=0).to(torch.uint8)
