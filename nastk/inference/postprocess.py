"""Post-processing: keep the largest connected component of a class, where cross-validation says it helps.

The rule (nnU-Net v2's per-class step, ``determine_postprocessing``): for each foreground class c, on the
out-of-fold predictions of every fold, compare the mean over cases of class c's Dice with and without
keeping only c's largest 26-connected component (the other components of c become background). Keep it
for c when the mean is strictly higher with it. Cases where c is in neither the prediction nor the
reference have an undefined Dice (MSD's convention, ``nan``); they are left out of both means, and as
removing components never empties a class, the two means are over the same cases. Removing components of
c changes no other class's Dice, so the classes are decided independently and the order does not matter.

nnU-Net first also tries keeping the largest component of all foreground classes taken together (kept
when the mean over classes improves and no class gets worse); nastk does not, since its post-processing is
per class. For a single-class task the two steps are the same test.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nastk.errors import DataError
from nastk.io import atomic_write_text, read_json

POSTPROCESSING_FILE = "postprocessing.json"
RULE = (
    "per class, keep only the largest connected component (26-connected) when that strictly raises the "
    "class's mean Dice over the out-of-fold cases (nnU-Net's per-class rule); cases where the class is in "
    "neither prediction nor reference are left out of both means"
)


def largest_component(labels: np.ndarray, classes: Iterable[int]) -> np.ndarray:
    """For each class in ``classes``, keep only its largest 26-connected component (others -> 0)."""
    out = labels.copy()
    for c in classes:
        mask = labels == c
        if not mask.any():
            continue
        cc = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
        ranked = sitk.GetArrayFromImage(sitk.RelabelComponent(cc, sortByObjectSize=True))
        out[mask & (ranked != 1)] = 0
    return out


def choose_largest_component(scores: Iterable[Mapping]) -> dict[int, dict]:
    """The per-class decision of :data:`RULE` from out-of-fold Dice scores.

    ``scores`` holds one mapping per (case, class) with ``class``, ``dice`` (raw prediction) and
    ``dice_largest_component`` (only that class's largest component kept). Returns, per class, the two
    means, the number of cases with a defined Dice and with none (``n_nan``), and ``largest_component``
    (the decision).
    """
    by_class: dict[int, list[tuple[float, float]]] = {}
    for row in scores:
        by_class.setdefault(int(row["class"]), []).append(
            (float(row["dice"]), float(row["dice_largest_component"]))
        )
    out = {}
    for c in sorted(by_class):
        pairs = by_class[c]
        defined = [(a, b) for a, b in pairs if not math.isnan(a)]
        raw = float(np.mean([a for a, _ in defined])) if defined else math.nan
        kept = float(np.mean([b for _, b in defined])) if defined else math.nan
        out[c] = {
            "mean_dice": raw,
            "mean_dice_largest_component": kept,
            "cases": len(defined),
            "n_nan": len(pairs) - len(defined),
            "largest_component": bool(defined) and kept > raw,
        }
    return out


def _json_number(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def write_postprocessing(run: Path, decision: Mapping[int, Mapping], folds: list[int], cases: int) -> Path:
    """``RUN/postprocessing.json``: the classes to post-process and the numbers behind each decision."""
    body = {
        "rule": RULE,
        "largest_component": [c for c, d in decision.items() if d["largest_component"]],
        "classes": {
            str(c): {
                "mean_dice": _json_number(d["mean_dice"]),
                "mean_dice_largest_component": _json_number(d["mean_dice_largest_component"]),
                "cases": d["cases"],
                "n_nan": d["n_nan"],
                "largest_component": d["largest_component"],
            }
            for c, d in decision.items()
        },
        "folds": folds,
        "cases": cases,
    }
    return atomic_write_text(Path(run) / POSTPROCESSING_FILE, json.dumps(body, indent=2) + "\n")


def read_postprocessing(path: Path, num_classes: int) -> list[int]:
    """The classes ``postprocessing.json`` keeps the largest component of; one-line errors naming the
    file and the field."""
    data = read_json(path)
    if "largest_component" not in data:
        raise DataError(f"{path}: 'largest_component' is missing (a list of classes is expected)")
    chosen = data["largest_component"]
    if not isinstance(chosen, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in chosen
    ):
        raise DataError(f"{path}: 'largest_component' must be a list of class numbers, got {chosen!r}"[:300])
    bad = [c for c in chosen if not 1 <= c < num_classes]
    if bad:
        raise DataError(
            f"{path}: 'largest_component' names {bad}, not foreground classes of this spec "
            f"(1..{num_classes - 1})"
        )
    return sorted(set(chosen))
