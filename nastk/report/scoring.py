"""Scoring a folder of predictions against reference labels: Dice and NSD per case and class."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from nastk.data.dataset import images_by_name, read_dataset
from nastk.errors import DataError
from nastk.metrics import evaluate_files, evaluate_missing
from nastk.metrics.evaluate import label_values
from nastk.progress import track
from nastk.report.leaderboard import cases_frame

DEFAULT_TOLERANCE_MM = 1.0
MISSING_POLICIES = ("error", "empty")
SCORED_EMPTY = "missing, scored as empty"


def parse_tolerances(items: list[str]) -> dict[int, float]:
    out = {}
    for item in items:
        try:
            cls, mm = item.split("=")
            label, value = int(cls), float(mm)
        except ValueError:
            raise DataError(f"--tolerance: {item!r} is not CLASS=MM, e.g. 1=2.0") from None
        if not (math.isfinite(value) and value >= 0):
            raise DataError(f"--tolerance: {item!r}: the tolerance must be a finite number of mm >= 0")
        out[label] = value
    return out


def check_tolerance_classes(
    tolerances: dict[int, float], classes: list[int], source: str, where: str
) -> None:
    """Every class given a tolerance is a foreground class of the task (``where`` names the option or
    field, ``source`` the file the classes come from)."""
    unknown = sorted(set(tolerances) - set(classes))
    if unknown:
        raise DataError(
            f"{where}: class(es) {unknown} are not foreground classes of {source} "
            f"(classes: {', '.join(map(str, classes)) or 'none'})"
        )


def references(ref: Path) -> tuple[dict[str, Path], dict[int, str], list[set[str]]]:
    """Reference label files by case id: a folder of labels, or a dataset.json (labelsTr, and labelsTs
    when present) with its declared labels; and the groups of cases that are scored together (a
    dataset.json's training cases, its test cases; a folder's files)."""
    if ref.name == "dataset.json" or (ref / "dataset.json").is_file():
        info = read_dataset(ref.parent if ref.name == "dataset.json" else ref)
        refs = {c.id: c.label for c in info.training}
        groups = [set(refs)]
        if (info.root / "labelsTs").is_dir():
            test = images_by_name(info.root / "labelsTs")
            refs.update(test)
            groups.append(set(test))
        return refs, info.labels, groups
    if not ref.is_dir():
        raise DataError(f"{ref}: not a folder of labels or a dataset.json")
    refs = images_by_name(ref)
    return refs, {}, [set(refs)]


def evaluate_folder(
    pred: Path,
    ref: Path,
    classes: list[int],
    tolerances: dict[int, float],
    quiet: bool,
    missing: str = "error",
) -> pd.DataFrame:
    """Scores of every prediction in ``pred``; a ``prediction`` column says which cases had none.

    The cases expected are every reference case of the groups the predictions fall in. Cases without
    a prediction are an error, or with ``missing="empty"`` scored as empty predictions: silently
    ranking over fewer cases would compare methods on different data.
    """
    if not pred.is_dir():
        raise DataError(f"{pred}: predictions folder not found")
    preds = images_by_name(pred)
    if not preds:
        raise DataError(f"{pred}: no predictions")
    refs, _, groups = references(ref)
    extra = sorted(set(preds) - set(refs))
    if extra:
        raise DataError(f"case {extra[0]!r}: no reference label in {ref} ({len(extra)} case(s) missing)")
    expected = set().union(*(g for g in groups if g & set(preds)))
    absent = sorted(expected - set(preds))
    if absent and missing != "empty":
        shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
        raise DataError(
            f"{pred}: no prediction for {len(absent)} of the {len(expected)} reference cases ({shown}); "
            "predict them, or pass --missing empty to score them as empty predictions"
        )
    rows = []
    tol = {c: tolerances.get(c, DEFAULT_TOLERANCE_MM) for c in classes}
    for case_id in track(sorted(preds), len(preds), "evaluate", quiet):
        scores = evaluate_files(preds[case_id], refs[case_id], classes, tol, case_id)
        rows += [{**r, "prediction": "file"} for r in scores]
    for case_id in absent:
        scores = evaluate_missing(refs[case_id], classes, tol, case_id)
        rows += [{**r, "prediction": SCORED_EMPTY} for r in scores]
    return cases_frame(rows)


def _classes_in(pred: Path, refs: dict[str, Path]) -> list[int]:
    """Without a dataset.json: the union of the label values in the predictions and the references."""
    values: set[int] = set()
    for case_id, path in images_by_name(pred).items():
        values |= label_values(path, "prediction", case_id)
    for case_id, path in refs.items():
        values |= label_values(path, "reference", case_id)
    return sorted(values - {0})
