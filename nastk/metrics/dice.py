"""Volumetric Dice similarity coefficient (DSC)."""

from __future__ import annotations

import numpy as np

__all__ = ["dice"]


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Sørensen-Dice coefficient ``2 |pred & ref| / (|pred| + |ref|)`` of two masks.

    ``pred`` and ``ref`` are arrays of the same shape; non-zero means foreground.

    Empty masks follow DeepMind's ``surface_distance.compute_dice_coefficient`` (the
    implementation the MSD challenge used): if both masks are empty the result is ``nan``
    (returned without a warning, as there), and if exactly one is empty it is ``0.0``.
    """
    pred = np.asarray(pred).astype(bool, copy=False)
    ref = np.asarray(ref).astype(bool, copy=False)
    if pred.shape != ref.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {ref.shape}")
    volume_sum = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    if volume_sum == 0:
        return float("nan")
    intersection = int(np.count_nonzero(pred & ref))
    return 2 * intersection / volume_sum
