"""The planning rules of ``nastk plan``, as small pure functions (docs/planning.md).

Where nnU-Net has a published rule it is taken (Isensee et al., "nnU-Net: a self-configuring method
for deep learning-based biomedical image segmentation", Nature Methods 18, 2021, and the nnU-Net v2
``ExperimentPlanner``); where nastk chooses differently, the function says why. Constants that come
from the DiNTS paper (He et al., CVPR 2021, Sec. 4.1) say so.
"""

from __future__ import annotations

import math
import re

import numpy as np

from nastk.data.normalize import FOREGROUND_SHARE, STRIPPED_SHARE, auto_scheme, background

# nnU-Net: an axis is anisotropic when its spacing is more than 3x the next largest.
ANISOTROPY = 3.0
# nnU-Net: at least 2 patches per GPU (also the paper's retraining: 16 patches on 8 GPUs), and a batch
# covering at most 5% of the dataset's voxels.
MIN_BATCH = 2
MAX_DATASET_SHARE = 0.05
# nastk: the budget must admit networks 80% of the way from the space's smallest to its largest,
# the paper's sigma = 0.8 (Sec. 4.2) read over the span of the space.
ROOM = 0.8
# The paper's schedules (Sec. 4.1): search 1k warm-up + 10k weight + 10k joint iterations at a global
# batch of 8; retraining 1k warm-up + 40k iterations at 16, LR x0.5 at 8k, 16k (search) and 8k, 16k,
# 24k, 32k (retraining) after the warm-up; Pancreas: 282 cases, 5 folds.
PAPER_SEARCH = {"warmup_iters": 1000, "weight_iters": 10000, "joint_iters": 10000, "batch": 8}
PAPER_RETRAIN = {"warmup_iters": 1000, "iters": 40000, "batch": 16}
PAPER_SEARCH_MILESTONES = (0.4, 0.8)  # of weight + joint iterations
PAPER_RETRAIN_MILESTONES = (0.2, 0.4, 0.6, 0.8)  # of the iterations after warm-up
PAPER_TRAIN_CASES = 282 * 4 / 5
# The paper's search speed, the one timing it gives: 21k iterations in 5.8 GPU-days on 8 V100s, one
# 96^3 patch per GPU, so 2.98 s per iteration; 11k iterations take one forward-backward pass, the 10k
# joint ones two (a weight and an architecture step); a pass is taken as 3 forwards; nastk counts 806
# GFLOPs for one forward of that supernet (L=12, D=4, 16 filters, the five ops, 1 channel, 3 classes;
# tests/test_plan.py recomputes it). The rate this implies is what time estimates assume per GPU.
PAPER_SUPERNET_GFLOPS = 806.03
PAPER_SECONDS_PER_ITERATION = 5.8 * 86400 / 8 / 21000
PAPER_PASSES_PER_ITERATION = (11000 * 1 + 10000 * 2) / 21000
FLOPS_PER_SECOND = PAPER_SUPERNET_GFLOPS * 1e9 * 3 * PAPER_PASSES_PER_ITERATION / PAPER_SECONDS_PER_ITERATION


# ------------------------------------------------------------------------------------------- geometry


def target_spacing(spacings: np.ndarray, crop_shapes: np.ndarray) -> tuple[np.ndarray, str]:
    """The median spacing per axis (nnU-Net). For anisotropic data by nnU-Net's test (the coarsest
    axis more than 3x the next, and fewer than a third as many voxels along it) nnU-Net takes the 10th
    percentile of that axis's spacings and keeps the voxels anisotropic, because its U-Net then pools
    only in-plane until the spacings match. nastk's search spaces cannot: they take one patch divisor
    for every axis, and the paper's space halves all three axes before its first cell and at every
    depth, so thick slices run out first. nastk resamples such data to isotropic voxels at the other
    axes' spacing instead (the paper used isotropic 1 mm for every task); in the ablation
    (docs/planning.md) nnU-Net's spacing cost the head task's lesion most of its Dice. Returns
    (spacing, why)."""
    spacings = np.asarray(spacings, dtype=np.float64)
    target = np.median(spacings, 0)
    sizes = np.median(np.asarray(crop_shapes, dtype=np.float64), 0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    aniso_spacing = target[worst] > ANISOTROPY * max(target[others])
    aniso_voxels = sizes[worst] * ANISOTROPY < min(sizes[others])
    ratio = target[worst] / min(target[others])
    if aniso_spacing and aniso_voxels:
        target[worst] = float(max(target[others]))
        why = (
            f"median spacing per axis, except axis {worst}: {ratio:.1f}x the finest with {sizes[worst]:.0f} "
            f"voxels against {min(sizes[others]):.0f}, anisotropic by nnU-Net's test (> 3x, fewer than a "
            "third of the voxels), so it is resampled to the spacing of the others: the search space "
            "downsamples every axis alike (nnU-Net keeps thick slices and pools in-plane first)"
        )
    else:
        why = (
            f"median spacing per axis (nnU-Net); coarsest axis {ratio:.1f}x the finest, "
            f"{'but with enough voxels along it' if aniso_spacing else 'not'} anisotropic by nnU-Net's "
            "test (> 3x, and fewer than a third of the voxels)"
        )
    return np.round(target, 4), why


def resampled_shapes(crop_shapes: np.ndarray, spacings: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[N, 3] shapes of the cropped cases at the target spacing (preprocessing's rounding)."""
    shapes = np.asarray(crop_shapes, np.float64) * np.asarray(spacings, np.float64) / np.asarray(target)
    return np.maximum(1, np.round(shapes))


def covering_patch(median_shape: np.ndarray, divisor: int) -> list[int]:
    """The smallest patch, each side a multiple of ``divisor``, that covers the median shape."""
    return [int(max(1, math.ceil(s / divisor)) * divisor) for s in median_shape]


def axis_to_shrink(patch: list[int], median_shape: np.ndarray, divisor: int) -> int | None:
    """nnU-Net's rule: shrink the axis whose patch is largest relative to the median shape (only
    axes that can still lose ``divisor``); None when every side is at its smallest."""
    ratios = [p / max(s, 1.0) if p > divisor else -1.0 for p, s in zip(patch, median_shape)]
    best = int(np.argmax(ratios))
    return best if ratios[best] > 0 else None


def batch_cap(patch: list[int], dataset_voxels: float, gpus: int) -> int:
    """Per-GPU batch whose global batch covers at most 5% of the dataset's voxels (nnU-Net), never
    below the minimum of 2."""
    per_gpu = MAX_DATASET_SHARE * dataset_voxels / (float(np.prod(patch)) * gpus)
    return max(MIN_BATCH, int(per_gpu))


def sliding_stride(patch: list[int]) -> list[int]:
    """The paper's stride, a sixth of the patch (16 for 96). nnU-Net steps half a patch, which runs up
    to 27x fewer windows where a volume is larger than the patch; in the ablation (docs/planning.md) half a
    patch cost the head task 0.049 mean Dice and nowhere gained, so nastk keeps the paper's."""
    return [max(1, round(p / 6)) for p in patch]


def nsd_tolerance(median_spacing: np.ndarray) -> float:
    """The largest side of the median voxel as acquired, in mm: report scores predictions in the
    images' own geometry, where a boundary can only be placed to within a voxel; a tolerance below
    that would score the sampling, not the segmentation. (The MSD challenge set tolerances per task
    from its annotators; nothing of that is in the data.)"""
    return round(float(np.max(median_spacing)), 2)


# ---------------------------------------------------------------------------------------- intensities


def normalization(
    modalities: list[str],
    zero_shares: list[list[float]],
    foreground_shares: list[float],
    stripped_share: float = STRIPPED_SHARE,
    foreground_share: float = FOREGROUND_SHARE,
) -> tuple[list[str], str]:
    """Per channel, what ``dataset.normalization: auto`` resolves to (``nastk.data.normalize.auto_scheme``):
    ``ct`` for CT (nnU-Net, and the paper's C2FNAS preprocessing); for any other modality the paper's
    z-score over the nonzero region with 0 outside only where every case has an exact-zero outside and
    the foreground is a small part of the nonzero region, else the same statistics with the outside
    keeping its value, so that it is never given a tissue's intensity. ``zero_shares[c][i]`` is case
    i's share of exact zeros in channel c, ``foreground_shares[i]`` the share of its nonzero region that
    is foreground. The ablation behind it is in docs/planning.md."""
    schemes, notes = [], []
    for c, modality in enumerate(modalities):
        bg = background(c, zero_shares[c], foreground_shares, stripped_share)
        scheme, why = auto_scheme(modality, bg, foreground_share)
        schemes.append(scheme)
        notes.append(why if len(modalities) == 1 else f"channel {c}: {why}")
    return schemes, "; ".join(notes)


# ------------------------------------------------------------------------------------------- schedule


def data_scale(train_cases: float) -> float:
    """How many times the paper's training samples: 1 up to Pancreas's 226 training cases per fold
    (the paper kept its schedule for every MSD task, down to Prostate's 26, and nnU-Net keeps a fixed
    count too), proportionally more above, so each case is sampled about as often as in the paper."""
    return max(1.0, train_cases / PAPER_TRAIN_CASES)


def schedule(scale: float, search_batch: int, retrain_batch: int) -> dict[str, dict[str, int | list[int]]]:
    """The paper's iteration counts times ``scale``, in samples: iterations x global batch."""

    def its(paper: int, paper_batch: int, batch: int) -> int:
        return max(1, round(scale * paper * paper_batch / batch))

    s, r = PAPER_SEARCH, PAPER_RETRAIN
    weight = its(s["weight_iters"], s["batch"], search_batch)
    joint = its(s["joint_iters"], s["batch"], search_batch)
    iters = its(r["iters"], r["batch"], retrain_batch)
    return {
        "search": {
            "warmup_iters": its(s["warmup_iters"], s["batch"], search_batch),
            "weight_iters": weight,
            "joint_iters": joint,
            "milestones": sorted({max(1, round(f * (weight + joint))) for f in PAPER_SEARCH_MILESTONES}),
        },
        "retrain": {
            "warmup_iters": its(r["warmup_iters"], r["batch"], retrain_batch),
            "iters": iters,
            "milestones": sorted({max(1, round(f * iters)) for f in PAPER_RETRAIN_MILESTONES}),
        },
    }


def seconds(plan: dict, search_step: float, retrain_step: float, folds: int) -> float:
    """Wall time of a schedule: the search (joint iterations take two passes) and every fold."""
    s, r = plan["search"], plan["retrain"]
    search = (s["warmup_iters"] + s["weight_iters"] + 2 * s["joint_iters"]) * search_step
    return search + folds * (r["warmup_iters"] + r["iters"]) * retrain_step


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``2d``, ``36h``, ``90m``, ``3600s`` or ``3600``; ValueError otherwise."""
    match = _DURATION.match(str(text).lower())
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 2d, 36h, 90m or 3600s")
    value = float(match[1]) * _UNIT[match[2]]
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{text!r} is not a positive duration")
    return value
