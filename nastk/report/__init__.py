"""Reporting for ``nastk report``: leaderboards laid out like Table 2 of the DiNTS paper, the
cross-validation table laid out like Table 1, the paper's own numbers for reference, per-case summaries
and figures (search curves, Fig. 8's gap G, score distributions)."""

from __future__ import annotations

from nastk.report.figures import dice_distribution, gap_curves, gap_figure, search_curves
from nastk.report.leaderboard import (
    cases_frame,
    leaderboard,
    markdown_table,
    metric_columns,
    rank_rows,
    summary,
    write_report,
)
from nastk.report.paper import UnknownTaskError, paper_rows, resolve_task, table1_rows

__all__ = [
    "MSD_CLASSES",
    "PAPER_TABLE2",
    "SOURCE",
    "TASKS",
    "UnknownTaskError",
    "cases_frame",
    "dice_distribution",
    "gap_curves",
    "gap_figure",
    "leaderboard",
    "markdown_table",
    "metric_columns",
    "paper_rows",
    "rank_rows",
    "resolve_task",
    "search_curves",
    "summary",
    "table1_rows",
    "write_report",
]


def __getattr__(name: str):
    # the reference tables are a plugin's data (nastk.references): read them only when asked for
    if name in ("MSD_CLASSES", "PAPER_TABLE2", "SOURCE", "TASKS"):
        from nastk.report import paper

        return getattr(paper, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
