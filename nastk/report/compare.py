"""Runs compared at equal compute: ``nastk report runA runB ...`` with runs of different search spaces
and baselines (an architecture retrained with ``--arch`` and no search).

One table, ``compare.csv`` / the report's "Compared at equal compute" section: per run its space, the
cross-validation DSC and NSD per class (mean ± std over cases, with the post-processing each run's
cross-validation chose), GMACs, parameters, estimated training memory, search and retraining wall time
(the last ``time`` of ``search/log.csv`` and the sum over folds of ``retrain/fold_K/log.csv``). "Equal
compute" means the same retraining: iterations (warm-up included), global batch, patch, folds and the
same preprocessed data (the folds' provenance hashes of plan, splits and data);
a run that differs from the first run in any of these is flagged in the ``trained alike`` column with
what differs. The search is extra compute a searched run spent: it is shown, never hidden.
``compare.png`` plots mean DSC against GMACs and marks the Pareto front (no other run has at most the
GMACs and at least the Dice, one of them strictly).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd

EQUAL_COMPUTE = (
    "Equal compute: every run retrained with the same iterations (warm-up included), global batch, "
    "patch and folds, on the same preprocessed data and splits (network sizes differ: see GMACs and "
    "params_M). Search time is the extra compute a searched run spent before retraining."
)


def pareto_front(cost: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Which points no other point dominates (cost at most and gain at least, one strictly); NaN never
    dominates and is never on the front."""
    cost, gain = np.asarray(cost, float), np.asarray(gain, float)
    ok = ~(np.isnan(cost) | np.isnan(gain))
    front = np.zeros(len(cost), bool)
    for i in np.flatnonzero(ok):
        others = ok.copy()
        others[i] = False
        better = (cost <= cost[i]) & (gain >= gain[i]) & ((cost < cost[i]) | (gain > gain[i])) & others
        front[i] = not better.any()
    return front


def _last_time(log: Path) -> float:
    try:
        with log.open() as fh:
            rows = list(csv.DictReader(fh))
        return float(rows[-1]["time"]) if rows and rows[-1].get("time") else math.nan
    except (OSError, ValueError, KeyError):
        return math.nan


def wall_times(run: Path) -> tuple[float, float]:
    """(search, retraining) seconds; retraining summed over folds; NaN where nothing was logged."""
    search = _last_time(run / "search" / "log.csv")
    folds = [_last_time(p) for p in sorted((run / "retrain").glob("fold_*/log.csv"))]
    folds = [t for t in folds if not math.isnan(t)]
    return search, (float(sum(folds)) if folds else math.nan)


def training_key(part) -> dict[str, object]:
    """What must agree for two runs to have been retrained at equal compute."""
    r = part.spec.retrain
    key: dict[str, object] = {
        "iterations": r.warmup_iters + r.iters,
        "global batch": part.spec.search.batch_size * r.batch_multiplier,
        "patch": list(r.patch_size),
        "folds": part.spec.dataset.num_folds,
    }
    records = [f for f in part.folds if f.get("plan")]
    if records:
        for name in ("plan", "splits", "dataset"):
            key[name] = records[0].get(name)
    return key


def compare_table(parts, board: pd.DataFrame, labels: list[int], class_names: dict[int, str]) -> pd.DataFrame:
    """One row per run (see the module's docstring); ``board`` is the cross-validation leaderboard."""
    reference = training_key(parts[0])
    rows = []
    for part in parts:
        mine = board[board["method"] == part.name]
        if mine.empty:
            continue
        # the post-processing the run's cross-validation chose: its second row when it chose any
        best = mine.iloc[-1] if len(mine) > 1 else mine.iloc[0]
        row: dict[str, object] = {"run": part.name, "space": part.spec.space.name}
        for metric in ("DSC", "NSD"):
            for i, lab in enumerate(labels, 1):
                name = class_names.get(lab, str(lab))
                row[f"{metric} {lab} {name}"] = best[f"{metric}{i}"]
                row[f"{metric} {lab} {name} std"] = best[f"{metric}{i} std"]
        row["DSC mean"] = float(np.nanmean([best[f"DSC{i}"] for i in range(1, len(labels) + 1)]))
        stats = part.arch_row
        row["GMACs"] = stats.get("GMACs", math.nan)
        row["params_M"] = stats.get("params_M", math.nan)
        row["est_train_MB"] = stats.get("est_train_MB", math.nan)
        search, retrain = wall_times(part.run)
        row["search_s"], row["retrain_s"] = search, retrain
        key = training_key(part)
        differs = [k for k in reference if key.get(k) != reference[k]]
        row["trained alike"] = (
            "yes"
            if not differs
            else "NO: " + ", ".join(f"{k} {key.get(k)} vs {reference[k]}" for k in differs)
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        table["pareto"] = pareto_front(table["GMACs"].to_numpy(float), table["DSC mean"].to_numpy(float))
    return table


def compare_markdown(table: pd.DataFrame, first: str) -> str:
    from nastk.report.leaderboard import markdown_table

    shown = pd.DataFrame({"run": table["run"], "space": table["space"]})
    metric_cols = [c for c in table.columns if c.startswith(("DSC ", "NSD ")) and not c.endswith(" std")]
    for col in metric_cols:
        if col == "DSC mean":
            shown[col] = [f"{v:.2f}" for v in table[col]]
        else:
            shown[col] = [
                "" if math.isnan(m) else f"{m:.2f}" if math.isnan(s) else f"{m:.2f} ± {s:.2f}"
                for m, s in zip(table[col], table[f"{col} std"])
            ]
    for col, fmt in (("GMACs", "{:.3f}"), ("params_M", "{:.3f}"), ("est_train_MB", "{:,.1f}")):
        shown[col] = ["" if math.isnan(v) else fmt.format(v) for v in table[col]]
    for col in ("search_s", "retrain_s"):
        shown[col] = ["" if math.isnan(v) else f"{v:,.1f}" for v in table[col]]
    shown["Pareto"] = ["yes" if p else "" for p in table["pareto"]]
    shown["trained alike"] = table["trained alike"]
    flagged = [r for r, t in zip(table["run"], table["trained alike"]) if t != "yes"]
    notes = [
        EQUAL_COMPUTE,
        "DSC and NSD: percent, mean ± std over the out-of-fold cases, with each run's chosen "
        "post-processing; 'DSC mean' averages the classes. Pareto: no other run has at most the GMACs "
        "and at least the DSC mean.",
    ]
    if flagged:
        notes.append(
            f"**Not trained alike** (compared with {first}): {', '.join(flagged)}. Their rows are not a "
            "comparison at equal compute."
        )
    return (
        "## Compared at equal compute\n\n"
        + markdown_table(shown)
        + "\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n\n![DSC against GMACs](compare.png)\n"
    )


def compare_figure(table: pd.DataFrame, out_png: str | Path) -> Path:
    from matplotlib.figure import Figure

    from nastk.report.figures import _save

    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    x, y = table["GMACs"].to_numpy(float), table["DSC mean"].to_numpy(float)
    front = table["pareto"].to_numpy(bool)
    ax.scatter(x[~front], y[~front], color="0.5", label="dominated")
    ax.scatter(x[front], y[front], color="C3", label="Pareto front")
    order = np.argsort(x[front])
    ax.plot(x[front][order], y[front][order], color="C3", lw=1, drawstyle="steps-post")
    for xi, yi, name, alike in zip(x, y, table["run"], table["trained alike"]):
        ax.annotate(
            name + ("" if alike == "yes" else " (not alike)"),
            (xi, yi),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xlabel("GMACs per patch (retraining setting)")
    ax.set_ylabel("cross-validation DSC, mean over classes (%)")
    ax.set_title("Dice against compute", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, out_png)
