"""Cross-validation as the paper's Table 1 and nnU-Net report it: out-of-fold predictions, their scores
against the original labels, and the post-processing they choose.

At the end of each retrained fold, ``nastk retrain`` predicts the fold's validation cases with the fold's
final model through `predict`'s pipeline (the spec's inference settings, the case's original geometry, no
post-processing) into ``RUN/retrain/fold_K/validation/CASE.nii.gz``; ``RUN/splits.json`` says which cases
each fold validates on. This module knows that layout, scores the predictions (DSC and NSD per case and
class, each class with and without keeping its largest component) and writes ``RUN/postprocessing.json``
once every fold is complete (the rule: :mod:`nastk.inference.postprocess`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nastk.data.splits import overlap_problem
from nastk.errors import DataError
from nastk.inference.postprocess import choose_largest_component, largest_component, write_postprocessing
from nastk.metrics.dice import dice
from nastk.metrics.evaluate import read_pair
from nastk.metrics.surface import surface_dice
from nastk.progress import track

SPLITS_FILE = "splits.json"
NONE, LARGEST = "none", "largest_component"
CV_COLUMNS = ("fold", "case", "class", "postprocessing", "dsc", "nsd", "tolerance")


def validation_dir(run: Path, fold: int) -> Path:
    return Path(run) / "retrain" / f"fold_{fold}" / "validation"


def prediction_file(run: Path, fold: int, case_id: str) -> Path:
    return validation_dir(run, fold) / f"{case_id}.nii.gz"


def missing_predictions(run: Path, fold: int, case_ids: Sequence[str]) -> list[str]:
    return [c for c in case_ids if not prediction_file(run, fold, c).is_file()]


def read_splits(run: Path) -> list[dict[str, list[str]]] | None:
    """``RUN/splits.json`` (a copy of the cache's folds, written by retrain), or None without one."""
    path = Path(run) / SPLITS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable splits file ({type(exc).__name__})") from None
    ok = isinstance(data, list) and all(
        isinstance(f, dict) and isinstance(f.get("val"), list) and all(isinstance(c, str) for c in f["val"])
        for f in data
    )
    if not ok:
        raise DataError(f"{path}: 'val' must be a list of case ids in every fold")
    problem = overlap_problem(data)
    if problem:
        raise DataError(f"{path}: {problem}")
    return data


@dataclass(frozen=True)
class FoldStatus:
    fold: int
    cases: list[str]  # the fold's validation cases
    missing: list[str]  # those without an out-of-fold prediction
    trained: bool  # model_final.pt exists

    @property
    def complete(self) -> bool:
        return self.trained and not self.missing


def fold_status(run: Path, splits: list[dict[str, list[str]]]) -> list[FoldStatus]:
    out = []
    for k, split in enumerate(splits):
        trained = (Path(run) / "retrain" / f"fold_{k}" / "model_final.pt").is_file()
        out.append(FoldStatus(k, list(split["val"]), missing_predictions(run, k, split["val"]), trained))
    return out


def score_case(
    pred_path: Path,
    ref_path: Path,
    classes: Sequence[int],
    tolerances: Mapping[int, float],
    case_id: str,
    nsd: bool = True,
) -> list[dict]:
    """DSC (and NSD) of each class of one out-of-fold prediction, as predicted (``postprocessing``
    "none") and with only that class's largest component kept ("largest_component")."""
    pred, ref, spacing = read_pair(pred_path, ref_path, classes, case_id)
    rows = []
    for c in classes:
        tol = float(tolerances[c])
        p, r = pred == c, ref == c
        raw = {"dsc": dice(p, r), "nsd": surface_dice(p, r, spacing, tol) if nsd else math.nan}
        kept = largest_component(pred, [c]) == c
        # a class in one piece is its own largest component: no need to score it twice
        same = np.array_equal(kept, p)
        lcc = (
            raw
            if same
            else {"dsc": dice(kept, r), "nsd": surface_dice(kept, r, spacing, tol) if nsd else math.nan}
        )
        for variant, scores in ((NONE, raw), (LARGEST, lcc)):
            rows.append(
                {"case": case_id, "class": int(c), "postprocessing": variant, **scores, "tolerance": tol}
            )
    return rows


def score_folds(
    run: Path,
    splits: list[dict[str, list[str]]],
    folds: Sequence[int],
    references: Mapping[str, Path],
    classes: Sequence[int],
    tolerances: Mapping[int, float],
    nsd: bool = True,
    quiet: bool = True,
) -> pd.DataFrame:
    """Scores of every out-of-fold prediction of ``folds`` (columns :data:`CV_COLUMNS`)."""
    jobs = [(k, case) for k in folds for case in splits[k]["val"]]
    rows = []
    for k, case in track(jobs, len(jobs), "cross-validation", quiet):
        if case not in references:
            raise DataError(f"case {case!r} (fold {k}): no reference label in the dataset's training cases")
        scores = score_case(prediction_file(run, k, case), references[case], classes, tolerances, case, nsd)
        rows += [{"fold": k, **r} for r in scores]
    return pd.DataFrame(rows, columns=list(CV_COLUMNS))


def choose(frame: pd.DataFrame) -> dict[int, dict]:
    """The post-processing decision per class from a :func:`score_folds` frame."""
    wide = frame.set_index(["fold", "case", "class", "postprocessing"])["dsc"].unstack().reset_index()
    scores = [
        {"class": row["class"], "dice": row[NONE], "dice_largest_component": row[LARGEST]}
        for _, row in wide.iterrows()
    ]
    return choose_largest_component(scores)


def chosen_scores(frame: pd.DataFrame, decision: Mapping[int, Mapping]) -> pd.DataFrame:
    """Each class's scores with the chosen post-processing (its largest component where chosen)."""
    keep = {c for c, d in decision.items() if d["largest_component"]}
    want = np.where(frame["class"].isin(keep), LARGEST, NONE)
    return frame[frame["postprocessing"] == want].reset_index(drop=True)


def update_postprocessing(run: Path, num_classes: int, references: Mapping[str, Path]) -> Path | None:
    """Write ``RUN/postprocessing.json`` when every fold has all its out-of-fold predictions; None
    (nothing written) while some fold is missing."""
    splits = read_splits(run)
    if splits is None or not all(s.complete for s in fold_status(run, splits)):
        return None
    classes = list(range(1, num_classes))
    tolerances = dict.fromkeys(classes, 1.0)  # Dice only: no NSD needed to decide
    frame = score_folds(run, splits, range(len(splits)), references, classes, tolerances, nsd=False)
    return write_postprocessing(run, choose(frame), list(range(len(splits))), int(frame["case"].nunique()))
