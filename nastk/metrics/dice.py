"""Volumetric Dice similarity coefficient (DSC): the one convention nastk scores with everywhere.

Training logs, validation, cross-validation and ``nastk report`` all go through this module, so the same
case gets the same score wherever it is shown. The convention is the Medical Segmentation Decathlon's
(DeepMind's ``surface_distance.compute_dice_coefficient``, what the challenge used):

* a class empty in both prediction and reference: ``nan`` (undefined, not perfect);
* empty in exactly one of them: ``0.0``.

Means leave the ``nan`` scores out and count them (:func:`nan_mean`); a mean over only ``nan`` scores is
``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["dice", "dice_from_counts", "dice_per_class", "nan_mean"]


def dice_from_counts(intersection: int, pred_volume: int, ref_volume: int) -> float:
    """``2 |pred & ref| / (|pred| + |ref|)`` from voxel counts; ``nan`` when both are empty."""
    total = int(pred_volume) + int(ref_volume)
    if total == 0:
        return float("nan")
    return 2 * int(intersection) / total


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Sørensen-Dice coefficient of two masks of the same shape (non-zero means foreground).

    Both empty: ``nan`` (returned without a warning); exactly one empty: ``0.0``.
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    ref = np.asarray(ref).astype(bool, copy=False)
    if pred.shape != ref.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {ref.shape}")
    return dice_from_counts(np.count_nonzero(pred & ref), np.count_nonzero(pred), np.count_nonzero(ref))


def dice_per_class(pred, ref, classes: Iterable[int]) -> list[float]:
    """Dice of each class in ``classes`` between two label maps (numpy arrays or torch tensors of the
    same shape, on any device); a batch counts as one volume. ``nan`` where a class is in neither."""
    if tuple(pred.shape) != tuple(ref.shape):
        raise ValueError(f"label maps differ in shape: {tuple(pred.shape)} vs {tuple(ref.shape)}")
    out = []
    for c in classes:
        p, r = pred == c, ref == c
        out.append(dice_from_counts(int((p & r).sum()), int(p.sum()), int(r.sum())))
    return out


def nan_mean(values: Sequence[float] | Iterable[float]) -> tuple[float, int]:
    """(mean of the defined scores, how many were ``nan``); the mean is ``nan`` when none is defined."""
    values = [float(v) for v in values]
    defined = [v for v in values if not math.isnan(v)]
    mean = float(np.mean(defined)) if defined else float("nan")
    return mean, len(values) - len(defined)
