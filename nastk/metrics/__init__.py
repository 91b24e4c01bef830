"""Segmentation metrics as the Medical Segmentation Decathlon scored them: DSC and NSD."""

from __future__ import annotations

from nastk.metrics.dice import dice, dice_from_counts, dice_per_class, nan_mean
from nastk.metrics.evaluate import evaluate_case, evaluate_files, evaluate_missing
from nastk.metrics.surface import surface_dice

__all__ = [
    "dice",
    "dice_from_counts",
    "dice_per_class",
    "evaluate_case",
    "evaluate_files",
    "evaluate_missing",
    "nan_mean",
    "surface_dice",
]
