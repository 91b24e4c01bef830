"""Per-class DSC and NSD of one case, from label maps in memory or on disk."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nastk.errors import DataError
from nastk.metrics.dice import dice
from nastk.metrics.surface import surface_dice

__all__ = ["evaluate_case", "evaluate_files", "evaluate_missing", "label_values", "read_pair"]

GEOMETRY_ATOL = 1e-3


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float],
    classes: Sequence[int],
    tolerances: Mapping[int, float],
) -> list[dict]:
    """DSC and NSD for each foreground class of a predicted and a reference label map.

    ``pred`` and ``ref`` are integer label maps of the same shape in ``[x, y, z]`` order and
    ``spacing_mm`` is the voxel size in the same order. ``tolerances`` maps each class to its
    NSD tolerance in mm. Class 0 (background) is skipped if listed.

    Returns one row per class: ``{"class": c, "dsc": ..., "nsd": ..., "tolerance": tol}``.
    A class absent from both maps gets ``nan`` for both metrics; absent from exactly one,
    ``0.0`` (see :func:`nastk.metrics.dice` and :func:`nastk.metrics.surface_dice`).
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"label maps differ in shape: {pred.shape} vs {ref.shape}")
    rows = []
    for c in classes:
        c = int(c)
        if c == 0:
            continue
        if c not in tolerances:
            raise ValueError(f"no NSD tolerance given for class {c}")
        tol = float(tolerances[c])
        p, r = pred == c, ref == c
        rows.append(
            {"class": c, "dsc": dice(p, r), "nsd": surface_dice(p, r, spacing_mm, tol), "tolerance": tol}
        )
    return rows


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _read(path: str | Path, role: str, case_id: str) -> sitk.Image:
    from nastk.data.imageio import READ_ERRORS, read_file

    what = f"case {case_id!r}: {role} file"
    try:
        img = read_file(Path(path), what)
    except READ_ERRORS as exc:
        reason = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise DataError(f"case {case_id!r}: cannot read {role} file {path}: {reason[:200]}") from None
    if img.GetDimension() != 3:
        raise DataError(f"case {case_id!r}: {role} file {path} is {img.GetDimension()}D, expected 3D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"case {case_id!r}: {role} file {path} has vector pixels, expected a label map")
    return img


def _check_geometry(pred: sitk.Image, ref: sitk.Image, case_id: str) -> None:
    if pred.GetSize() != ref.GetSize():
        raise DataError(
            f"case {case_id!r}: prediction and reference differ in size: "
            f"{_fmt(pred.GetSize())} vs {_fmt(ref.GetSize())}"
        )
    for name in ("spacing", "origin", "direction"):
        a = getattr(pred, f"Get{name.capitalize()}")()
        b = getattr(ref, f"Get{name.capitalize()}")()
        if np.max(np.abs(np.subtract(a, b))) > GEOMETRY_ATOL:
            raise DataError(
                f"case {case_id!r}: prediction and reference differ in {name}: {_fmt(a)} vs {_fmt(b)}"
            )


def _labels(img: sitk.Image, path: str | Path, role: str, case_id: str, allowed: set[int]) -> np.ndarray:
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    values = np.unique(arr)
    bad = [v for v in values.tolist() if v not in allowed]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:10]) + (
            f", ... ({len(bad)} values)" if len(bad) > 10 else ""
        )
        raise DataError(
            f"case {case_id!r}: {role} file {path} has label values [{shown}] outside "
            f"classes {sorted(allowed - {0})} and background 0"
        )
    return arr


def evaluate_files(
    pred_path: str | Path,
    ref_path: str | Path,
    classes: Sequence[int],
    tolerances: Mapping[int, float],
    case_id: str,
) -> list[dict]:
    """:func:`evaluate_case` on two label-map files, each row tagged with ``"case": case_id``.

    Raises :class:`nastk.errors.DataError` (one line, naming the case) if a file cannot be
    read, if the two images differ in size, or in spacing, origin or direction by more than
    1e-3, or if either holds a label value other than 0 and ``classes``.
    """
    pred, ref, spacing = read_pair(pred_path, ref_path, classes, case_id)
    rows = evaluate_case(pred, ref, spacing, classes, tolerances)
    return [{"case": case_id, **row} for row in rows]


def read_pair(
    pred_path: str | Path, ref_path: str | Path, classes: Sequence[int], case_id: str
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """A predicted and a reference label map ``[x, y, z]`` and the reference's spacing, with the checks
    of :func:`evaluate_files` (readable, same grid, only background and ``classes``)."""
    pred_img = _read(pred_path, "prediction", case_id)
    ref_img = _read(ref_path, "reference", case_id)
    _check_geometry(pred_img, ref_img, case_id)
    allowed = {0, *(int(c) for c in classes)}
    pred = _labels(pred_img, pred_path, "prediction", case_id, allowed)
    ref = _labels(ref_img, ref_path, "reference", case_id, allowed)
    return pred, ref, tuple(ref_img.GetSpacing())


def label_values(path: str | Path, role: str, case_id: str) -> set[int]:
    """The label values in a label-map file, from a copy of its voxels (a view into a temporary image
    would dangle once the image is freed); non-integer values are refused naming the file."""
    arr = sitk.GetArrayFromImage(_read(path, role, case_id))
    values = np.unique(arr)
    if values.dtype.kind == "f" and not np.all(values == np.round(values)):
        raise DataError(f"case {case_id!r}: {role} file {path} has non-integer label values")
    if values.size and values.min() < 0:
        raise DataError(f"case {case_id!r}: {role} file {path} has negative label values")
    return {int(v) for v in values}


def evaluate_missing(
    ref_path: str | Path, classes: Sequence[int], tolerances: Mapping[int, float], case_id: str
) -> list[dict]:
    """:func:`evaluate_files` for a case without a prediction, scored as an empty (all-background) one."""
    ref_img = _read(ref_path, "reference", case_id)
    ref = _labels(ref_img, ref_path, "reference", case_id, {0, *(int(c) for c in classes)})
    rows = evaluate_case(np.zeros_like(ref), ref, ref_img.GetSpacing(), classes, tolerances)
    return [{"case": case_id, **row} for row in rows]
