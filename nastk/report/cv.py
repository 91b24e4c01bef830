"""The cross-validation table: out-of-fold DSC and NSD in the layout of the paper's Table 1.

Input: per run, the scores of :func:`nastk.crossval.score_folds` (one row per fold, case, class and
post-processing variant, fractions) and the post-processing decision of :func:`nastk.crossval.choose`.
Means and standard deviations are over cases, NaN scores (class in neither prediction nor reference) left
out and counted, as in :mod:`nastk.report.leaderboard`.

* ``cv_cases.csv``: every score, long format (``method`` first when there are several runs);
* ``cv_leaderboard.csv`` / ``.md``: per run a row without post-processing and, where cross-validation
  chose some, a row with it; ``DSC1 .. DSCk, DSC avg, NSD1 .. NSDk, NSD avg`` in percent (the
  Markdown shows mean ± std), then each class's std; ranked like the test leaderboard. With the paper's
  reference rows (Table 1) when asked;
* a per-class table (Markdown, in ``cv_leaderboard.md``): each class with and without its largest
  component, and the choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from nastk.crossval import LARGEST, NONE, chosen_scores
from nastk.io import atomic_write_text, make_dir
from nastk.report.leaderboard import class_name, markdown_table, metric_columns, rank_rows

THIS_RUN = "this run"


def _pct(values: pd.Series) -> tuple[float, float, int]:
    """(mean, sample std, n) in percent of the defined values."""
    v = pd.to_numeric(values, errors="coerce").dropna() * 100
    mean = float(v.mean()) if len(v) else math.nan
    std = float(v.std(ddof=1)) if len(v) > 1 else math.nan
    return mean, std, len(v)


def postprocessing_label(decision: Mapping[int, Mapping]) -> str:
    keep = [c for c, d in decision.items() if d["largest_component"]]
    return f"largest component: {', '.join(map(str, keep))}" if keep else NONE


def _row(method: str, scores: pd.DataFrame, labels: list[int], post: str) -> dict:
    cols = metric_columns(len(labels))
    row: dict = {"method": method, "post-processing": post}
    row["folds"] = int(scores["fold"].nunique())
    row["cases"] = int(scores["case"].nunique())
    stds: dict = {}
    for metric, prefix in (("dsc", "DSC"), ("nsd", "NSD")):
        means = []
        for i, lab in enumerate(labels, 1):
            mean, std, _ = _pct(scores.loc[scores["class"] == lab, metric])
            row[f"{prefix}{i}"] = mean
            stds[f"{prefix}{i} std"] = std
            means.append(mean)
        if f"{prefix} avg" in cols:
            defined = [m for m in means if not math.isnan(m)]
            row[f"{prefix} avg"] = float(np.mean(defined)) if defined else math.nan
    out = {k: row[k] for k in ("method", "post-processing", "folds", "cases")}
    out.update({c: row[c] for c in cols})
    out.update(stds)
    return out


def cv_leaderboard(
    frames: Mapping[str, pd.DataFrame],
    decisions: Mapping[str, Mapping[int, Mapping]],
    labels: list[int],
    reference: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per run without post-processing, one with the chosen one (when it chose any), ranked; the
    paper's rows (``reference``, already in this layout) join the ranking with a ``source`` column."""
    rows = []
    for method, frame in frames.items():
        rows.append(_row(method, frame[frame["postprocessing"] == NONE], labels, NONE))
        post = postprocessing_label(decisions[method])
        if post != NONE:
            rows.append(_row(method, chosen_scores(frame, decisions[method]), labels, post))
    board = pd.DataFrame(rows)
    if reference is not None:
        board.insert(1, "source", THIS_RUN)
        board = pd.concat([board, reference], ignore_index=True)
    return rank_rows(board)


def class_table(
    frame: pd.DataFrame, decision: Mapping[int, Mapping], class_names: Mapping[int, str] | None
) -> pd.DataFrame:
    """Each class with and without its largest component (DSC and NSD, mean ± std in percent)."""
    rows = []
    for lab in sorted(int(c) for c in frame["class"].unique()):
        sub = frame[frame["class"] == lab]
        row: dict = {"class": f"{lab} {class_name(lab, class_names)}"}
        for metric in ("dsc", "nsd"):
            for variant, title in ((NONE, "as predicted"), (LARGEST, "largest component")):
                mean, std, _ = _pct(sub.loc[sub["postprocessing"] == variant, metric])
                row[f"{metric.upper()} {title}"] = _mean_std(mean, std)
        raw = sub[sub["postprocessing"] == NONE]["dsc"]
        row["cases (no score)"] = f"{int(raw.notna().sum())} ({int(raw.isna().sum())})"
        row["chosen"] = "largest component" if decision[lab]["largest_component"] else "as predicted"
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_std(mean: float, std: float) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _display(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard for Markdown: metric cells as mean ± std, no separate std columns."""
    shown = board[[c for c in board.columns if not c.endswith(" std")]].copy()
    for col in ("folds", "cases"):  # counts, NaN for the paper's rows
        shown[col] = ["" if pd.isna(v) else str(int(v)) for v in shown[col]]
    for col in shown.columns:
        if f"{col} std" in board.columns:
            shown[col] = [_mean_std(m, s) for m, s in zip(board[col], board[f"{col} std"])]
        elif col.endswith(" avg"):
            shown[col] = [_mean_std(m, math.nan) for m in board[col]]
    return shown


def write_cv(
    out: Path,
    frames: Mapping[str, pd.DataFrame],
    decisions: Mapping[str, Mapping[int, Mapping]],
    class_names: Mapping[int, str] | None,
    task: str,
    reference: pd.DataFrame | None = None,
    reference_note: str | None = None,
    board: pd.DataFrame | None = None,
) -> tuple[dict[str, Path], str]:
    """Write ``cv_cases.csv``, ``cv_leaderboard.csv`` and ``cv_leaderboard.md``; returns their paths and
    the Markdown."""
    labels = sorted(int(c) for c in next(iter(frames.values()))["class"].unique())
    board = board if board is not None else cv_leaderboard(frames, decisions, labels, reference)
    several = len(frames) > 1
    cases = pd.concat([f.assign(method=m) if several else f for m, f in frames.items()], ignore_index=True)
    if several:
        cases = cases[["method", *[c for c in cases.columns if c != "method"]]]
    parts = [f"# Cross-validation: {task}\n", markdown_table(_display(board))]
    for method, frame in frames.items():
        title = f"## {method}: each class as predicted and with its largest component\n"
        parts += [title, markdown_table(class_table(frame, decisions[method], class_names))]
    legend = [
        f"Classes: {', '.join(f'{i}={class_name(lab, class_names)}' for i, lab in enumerate(labels, 1))}.",
        "Out-of-fold predictions (each case predicted by the fold that did not train on it, in its original "
        "geometry) against the original labels; DSC and NSD in percent, mean ± std (sample) over cases.",
        "A class in neither prediction nor reference of a case has no score: it is left out of the means and "
        "counted under 'cases (no score)'.",
        "Post-processing chosen per class by nnU-Net's rule: keep the largest connected component where "
        "that raises the class's mean out-of-fold Dice.",
    ]
    if reference is not None and reference_note:
        legend.append(reference_note)
    md = "\n".join(parts) + "\n" + "\n".join(f"- {x}" for x in legend) + "\n"
    paths = {
        "cv_cases": out / "cv_cases.csv",
        "cv_leaderboard_csv": out / "cv_leaderboard.csv",
        "cv_leaderboard_md": out / "cv_leaderboard.md",
    }
    make_dir(out)
    atomic_write_text(paths["cv_cases"], cases.to_csv(index=False))
    atomic_write_text(paths["cv_leaderboard_csv"], board.to_csv(index=False))
    atomic_write_text(paths["cv_leaderboard_md"], md)
    return paths, md
