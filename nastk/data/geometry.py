"""Geometry steps of preprocessing (reorient, resample, crop) and their undoing for a predicted label map."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from nastk.data.imageio import Geometry, from_array

CANONICAL = "LPS"


def reorient(image: sitk.Image) -> sitk.Image:
    return sitk.DICOMOrient(image, CANONICAL)


def resample(image: sitk.Image, spacing, interpolator) -> sitk.Image:
    """Resample onto a grid with ``spacing`` covering the same physical extent (outer edges aligned)."""
    old = np.array(image.GetSpacing())
    new = np.array(spacing, dtype=float)
    if np.allclose(old, new, rtol=1e-6, atol=0):
        return image
    size = np.maximum(1, np.round(np.array(image.GetSize()) * old / new)).astype(int)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((new - old) / 2)
    return sitk.Resample(
        image,
        [int(s) for s in size],
        sitk.Transform(),
        interpolator,
        origin.tolist(),
        new.tolist(),
        image.GetDirection(),
        0.0,
        image.GetPixelID(),
    )


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """[[start, stop] per axis] of the True voxels; the whole array when there are none."""
    if not mask.any():
        return [[0, s] for s in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def _crop(array: np.ndarray, box) -> np.ndarray:
    return array[(..., *(slice(a, b) for a, b in box))]


def restore_geometry(label: np.ndarray, meta: dict) -> sitk.Image:
    """Undo crop, resampling and reorientation: a label map on the case's original grid (nearest)."""
    full = np.zeros(meta["resampled"]["size"], dtype=np.uint8)
    full[tuple(slice(a, b) for a, b in meta["crop"])] = label
    on_resampled = from_array(full, Geometry.from_dict(meta["resampled"]))
    original = Geometry.from_dict(meta["original"])
    return sitk.Resample(
        on_resampled, original.reference(), sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
