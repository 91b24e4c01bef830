"""``predict --save-probabilities``: the ensemble's class probabilities on each case's original grid, as a
compressed ``CASE.npz`` next to ``CASE.nii.gz`` (what nnU-Net users reach for to ensemble or calibrate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nastk.data.imageio import Geometry, from_array
from nastk.io import atomic_path


def restore_probabilities(probs: np.ndarray, meta: dict) -> np.ndarray:
    """Probabilities ``[K, ...]`` on the cropped, resampled grid -> ``[K, X, Y, Z]`` on the original grid.

    The inverse of preprocessing's geometry steps, as for labels but linear: outside the crop box the image
    was background, so class 0 has probability 1 there. Resampling each class separately leaves sums a hair
    off 1; they are normalised again."""
    resampled, original = Geometry.from_dict(meta["resampled"]), Geometry.from_dict(meta["original"])
    box = tuple(slice(a, b) for a, b in meta["crop"])
    restored = []
    for k, channel in enumerate(probs):
        outside = 1.0 if k == 0 else 0.0
        full = np.full(meta["resampled"]["size"], outside, dtype=np.float32)
        full[box] = channel
        image = sitk.Resample(
            from_array(full, resampled),
            original.reference(),
            sitk.Transform(),
            sitk.sitkLinear,
            outside,
            sitk.sitkFloat32,
        )
        restored.append(sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    out = np.stack(restored).clip(0, 1)
    return out / np.maximum(out.sum(0, keepdims=True), 1e-6)


def write_probabilities(probs: np.ndarray, out: Path) -> Path:
    """``out`` (``CASE.npz``) with one array, ``probabilities`` ``[K, X, Y, Z]`` float16, in the axis order of
    the written ``CASE.nii.gz`` as nibabel reads it; written atomically."""
    with atomic_path(out, ext=".npz") as tmp:
        np.savez_compressed(tmp, probabilities=probs.astype(np.float16))
    return out
