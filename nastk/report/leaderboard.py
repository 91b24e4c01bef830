"""Per-case scores -> per-class summary -> a leaderboard laid out like Table 2 of the paper.

Scores come in as one row per (case, class): ``dsc`` and ``nsd`` as fractions in [0, 1] and the
NSD ``tolerance`` in mm. A score is NaN when it is undefined: the prediction and the reference
are both empty for that class in that case.

NaN policy (the same everywhere in this module): NaN scores are left out of every mean, median
and standard deviation, and counted separately (``n_nan`` in :func:`summary`). A class whose
scores are all NaN has a NaN mean, and class averages (``DSC avg``/``NSD avg``) are taken over
the classes that have a value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nastk.errors import DataError
from nastk.io import atomic_write_text, make_dir
from nastk.report import paper
from nastk.report.ranking import _sort_keys, metric_columns, rank_rows

CASE_COLUMNS: tuple[str, ...] = ("case", "class", "dsc", "nsd", "tolerance")
THIS_RUN = "this run"
NAN_POLICY = (
    "NaN scores (prediction and reference both empty for the class) are excluded from mean, "
    "median and std and counted in n_nan; std is the sample standard deviation (ddof=1)."
)


def cases_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Per-case scores in long format: columns ``case, class, dsc, nsd, tolerance``.

    ``rows`` are dicts with at least those keys (extra keys are kept as further columns).
    ``case`` becomes a string, ``class`` an int, the scores floats (``None`` -> NaN).
    """
    rows = list(rows)
    for i, r in enumerate(rows):
        missing = [k for k in CASE_COLUMNS if k not in r]
        if missing:
            raise DataError(f"score row {i} lacks {', '.join(missing)}: {dict(r)}")
    extra: list[str] = []
    for r in rows:
        extra += [k for k in r if k not in CASE_COLUMNS and k not in extra]
    df = pd.DataFrame(rows, columns=[*CASE_COLUMNS, *extra])
    df["case"] = df["case"].astype(str)
    df["class"] = df["class"].astype(int)
    for c in ("dsc", "nsd", "tolerance"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df


def _check_cases(cases: pd.DataFrame, what: str) -> None:
    missing = [c for c in CASE_COLUMNS if c not in cases.columns]
    if missing:
        raise DataError(f"{what}: scores lack column(s) {', '.join(missing)}")
    for c in ("dsc", "nsd"):
        v = pd.to_numeric(cases[c], errors="coerce")
        if ((v < -1e-6) | (v > 1 + 1e-6)).any():
            raise DataError(f"{what}: {c} must be a fraction in [0, 1] (got {v.min():g}..{v.max():g})")


def _num(x: Any) -> float | int | None:
    """A JSON-safe number: NaN/inf -> None, numpy scalars -> Python."""
    if x is None:
        return None
    if isinstance(x, (int, np.integer)):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else None


def _stats(values: pd.Series) -> dict[str, float | int | None]:
    v = pd.to_numeric(values, errors="coerce").astype(float)
    ok = v.dropna()
    return {
        "mean": _num(ok.mean()) if len(ok) else None,
        "median": _num(ok.median()) if len(ok) else None,
        "std": _num(ok.std(ddof=1)) if len(ok) > 1 else None,
        "min": _num(ok.min()) if len(ok) else None,
        "max": _num(ok.max()) if len(ok) else None,
        "n": int(len(ok)),
        "n_nan": int(v.isna().sum()),
    }


def class_name(label: int, class_names: Mapping[Any, str] | None) -> str:
    """``class_names[label]`` (int or str keys), else ``"class <label>"``."""
    names = {int(k): str(v) for k, v in (class_names or {}).items()}
    return names.get(int(label), f"class {int(label)}")


def summary(cases: pd.DataFrame, class_names: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Per-class statistics of DSC and NSD over cases, JSON-ready (fractions, not percent).

    Returns ``{"n_cases", "nan_policy", "classes": {name: {"label", "tolerance", "dsc": stats,
    "nsd": stats}}, "mean_over_classes": {"dsc", "nsd"}}`` where ``stats`` is ``{"mean",
    "median", "std", "min", "max", "n", "n_nan"}``. NaN scores (both empty) are excluded from
    the statistics and counted in ``n_nan``; ``n`` counts the scores used. Statistics without
    data are ``None``. Classes are those present in ``cases``, in label order; ``class_names``
    only names them.
    """
    _check_cases(cases, "summary")
    classes: dict[str, Any] = {}
    means: dict[str, list[float]] = {"dsc": [], "nsd": []}
    for label, g in cases.groupby("class", sort=True):
        tol = sorted({float(t) for t in g["tolerance"].dropna()})
        entry: dict[str, Any] = {
            "label": int(label),
            "tolerance": tol[0] if len(tol) == 1 else (tol or None),
        }
        for metric in ("dsc", "nsd"):
            entry[metric] = _stats(g[metric])
            if entry[metric]["mean"] is not None:
                means[metric].append(entry[metric]["mean"])
        name = class_name(int(label), class_names)
        classes[name if name not in classes else f"{name} ({int(label)})"] = entry
    missing = cases.loc[cases["prediction"] != "file", "case"] if "prediction" in cases.columns else []
    return {
        "n_cases": int(cases["case"].nunique()),
        "n_missing_scored_empty": int(pd.Series(missing).nunique()),
        "nan_policy": NAN_POLICY,
        "classes": classes,
        "mean_over_classes": {m: (_num(np.mean(v)) if v else None) for m, v in means.items()},
    }


def _class_labels(method_frames: Mapping[str, pd.DataFrame]) -> list[int]:
    sets = {m: frozenset(int(c) for c in f["class"].unique()) for m, f in method_frames.items()}
    if len(set(sets.values())) > 1:
        detail = "; ".join(f"{m}: {sorted(s)}" for m, s in sets.items())
        raise DataError(f"methods scored different classes, their averages do not compare ({detail})")
    return sorted(next(iter(sets.values())))


def method_row(cases: pd.DataFrame, labels: list[int]) -> dict[str, float]:
    """One leaderboard row (percent, 2 decimals) from one method's per-case scores."""
    cols = metric_columns(len(labels))
    row: dict[str, float] = {}
    for metric, prefix in (("dsc", "DSC"), ("nsd", "NSD")):
        per_class = [
            float(pd.to_numeric(cases.loc[cases["class"] == lab, metric], errors="coerce").mean()) * 100
            for lab in labels
        ]
        for i, v in enumerate(per_class, 1):
            row[f"{prefix}{i}"] = v
        if f"{prefix} avg" in cols:
            finite = [v for v in per_class if not math.isnan(v)]
            row[f"{prefix} avg"] = float(np.mean(finite)) if finite else math.nan
    return {c: round(row[c], 2) for c in cols}


def leaderboard(
    method_frames: Mapping[str, pd.DataFrame], task: str, reference: bool = False
) -> pd.DataFrame:
    """A Table 2-style leaderboard: one row per method, best first.

    Columns: ``rank, method, [source,] DSC1..DSCk, DSC avg, NSD1..NSDk, NSD avg`` in percent,
    rounded to 2 decimals (``DSC1, NSD1`` only for a single-class task). DSCi is the mean over
    cases of class i, classes in label order (i counts classes; it is not the label value).
    Ranked by :func:`rank_rows`.

    With ``reference=True`` the paper's rows for ``task`` (see
    :func:`nastk.report.paper.paper_rows`) join the ranking and a ``source`` column tells them
    apart: ``"paper Table 2"`` or ``"this run"``. The task must be in Table 2 and have the same
    number of classes as the scores.
    """
    if not method_frames:
        raise DataError("leaderboard: no methods to rank")
    for m, f in method_frames.items():
        _check_cases(f, f"method {m!r}")
    labels = _class_labels(method_frames)
    cols = metric_columns(len(labels))
    df = pd.DataFrame(
        [{"method": m, **method_row(f, labels)} for m, f in method_frames.items()],
        columns=["method", *cols],
    )
    if reference:
        published = paper.paper_rows(task).drop(columns=["rank"])
        paper_cols = [c for c in published.columns if c not in ("method", "source")]
        if paper_cols != cols:
            raise DataError(
                f"task {task!r}: {paper.tables().test_title} has columns {paper_cols}, this run has {cols} "
                f"({len(labels)} classes); they do not compare"
            )
        df.insert(1, "source", THIS_RUN)
        df = pd.concat([df, published], ignore_index=True)
    return rank_rows(df)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        s = f"{float(v):.2f}"
        return s if abs(float(s) - float(v)) < 1e-9 else f"{float(v):.10g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """``df`` as a GitHub pipe table (no index); numbers right-aligned, floats with 2 decimals
    unless printed with more (e.g. the paper's 83.605), NaN as an empty cell."""
    cols = [str(c) for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    cells = [[_fmt(v) for v in row] for row in df.itertuples(index=False, name=None)]
    width = [max([len(h), 3, *(len(r[i]) for r in cells)]) for i, h in enumerate(cols)]

    def line(items: list[str]) -> str:
        return "| " + " | ".join(items) + " |"

    head = line([h.ljust(w) for h, w in zip(cols, width)])
    sep = line([("-" * (w - 1) + ":") if n else "-" * w for w, n in zip(width, numeric)])
    body = [line([c.rjust(w) if n else c.ljust(w) for c, w, n in zip(r, width, numeric)]) for r in cells]
    return "\n".join([head, sep, *body]) + "\n"


def _tolerance_note(method_frames: Mapping[str, pd.DataFrame], class_names) -> str:
    allc = pd.concat(list(method_frames.values()), ignore_index=True)
    parts = []
    for label, g in allc.groupby("class", sort=True):
        tol = sorted({float(t) for t in g["tolerance"].dropna()})
        if tol:
            parts.append(f"{class_name(int(label), class_names)} {'/'.join(f'{t:g}' for t in tol)} mm")
    return ", ".join(parts) if parts else "not given"


def _predictions_note(method_frames: Mapping[str, pd.DataFrame]) -> str | None:
    """Which reference cases had no prediction and were scored as empty ones (``prediction`` column)."""
    if not all("prediction" in f.columns for f in method_frames.values()):
        return None
    parts = []
    for method, f in method_frames.items():
        empty = sorted(set(f.loc[f["prediction"] != "file", "case"]))
        if empty:
            shown = ", ".join(empty[:10]) + (", ..." if len(empty) > 10 else "")
            parts.append(f"{method}: {len(empty)} of {f['case'].nunique()} ({shown})")
    if not parts:
        return "Predictions: every reference case has one."
    return "Missing predictions scored as empty (--missing empty): " + "; ".join(parts) + "."


def write_report(
    out_dir: str | Path,
    method_frames: Mapping[str, pd.DataFrame],
    task: str,
    class_names: Mapping[int, str] | None = None,
    reference: bool = False,
) -> dict[str, Path]:
    """Write the report files of ``task`` into ``out_dir`` (created if needed), each atomically.

    * ``cases.csv``: every per-case score; a ``method`` column first when there are several;
    * ``summary.json``: ``{"task", "methods": {method: summary(...)}}``;
    * ``leaderboard.csv`` / ``leaderboard.md``: :func:`leaderboard` as CSV and a Markdown pipe
      table with a short legend.

    Returns ``{"cases": path, "summary": path, "leaderboard_csv": path, "leaderboard_md": path}``.
    """
    out = Path(out_dir)
    board = leaderboard(method_frames, task, reference=reference)

    frames = []
    for m, f in method_frames.items():
        f = f.drop(columns=["method"], errors="ignore")
        frames.append(f.assign(method=m) if len(method_frames) > 1 else f)
    cases = pd.concat(frames, ignore_index=True)
    if "method" in cases.columns:
        cases = cases[["method", *[c for c in cases.columns if c != "method"]]]

    summ = {
        "task": task,
        "methods": {m: summary(f, class_names) for m, f in method_frames.items()},
    }
    labels = _class_labels(method_frames)
    legend = [
        f"Classes: {', '.join(f'{i}={class_name(lab, class_names)}' for i, lab in enumerate(labels, 1))}.",
        "DSC and NSD in percent, mean over cases; " + NAN_POLICY.split(";")[0] + ".",
        f"NSD tolerance: {_tolerance_note(method_frames, class_names)}.",
        "Ranked by " + " then ".join(_sort_keys(board.columns)) + ", descending.",
    ]
    predictions = _predictions_note(method_frames)
    if predictions:
        legend.append(predictions)
    if reference:
        tables = paper.tables()
        legend.append(f"Rows with source '{tables.test_label}': {tables.test_source}")
    md = (
        f"# Leaderboard: {task}\n\n"
        + markdown_table(board)
        + "\n"
        + "\n".join(f"- {x}" for x in legend)
        + "\n"
    )

    paths = {
        "cases": out / "cases.csv",
        "summary": out / "summary.json",
        "leaderboard_csv": out / "leaderboard.csv",
        "leaderboard_md": out / "leaderboard.md",
    }
    make_dir(out)
    atomic_write_text(paths["cases"], cases.to_csv(index=False))
    atomic_write_text(paths["summary"], json.dumps(summ, indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["leaderboard_csv"], board.to_csv(index=False))
    atomic_write_text(paths["leaderboard_md"], md)
    return paths
