"""Published reference rows for ``nastk report --reference NAME``, laid out like this run's tables.

The numbers belong to the plugin that publishes them (``nastk.references`` entry points, shaped as
``nastk.protocols.ReferenceTables``; the reference plugin publishes ``paper``: Tables 1 and 2 of the
DiNTS paper). This module only lays them out: the test-set rows in the leaderboard layout of
:mod:`nastk.report.ranking`, the cross-validation rows in the layout of the architectures table.

The names of the paper's former tables (``TASKS``, ``METHODS``, ``PAPER_TABLE2``, ``MSD_CLASSES``,
``SOURCE``, ``TABLE1_*``) still read the ``paper`` entry, on first use.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from nastk import registry
from nastk.errors import NastkError
from nastk.protocols import ReferenceTables
from nastk.report.ranking import metric_columns, rank_rows

DEFAULT = "paper"  # what ``--reference paper`` names


class UnknownTaskError(NastkError, KeyError):
    """A task name that the reference's test table does not report (a ``KeyError`` and a ``NastkError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def tables(name: str = DEFAULT) -> ReferenceTables:
    """The reference tables a plugin registered under ``name`` in ``nastk.references``."""
    return registry.load("references", name)


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def resolve_task(task: str, reference: str = DEFAULT) -> str:
    """The reference's task name for ``task`` ("pancreas", "Task07_Pancreas", "HepaticVessel", ...): any
    case, with or without spaces and underscores, an MSD "TaskNN_" prefix dropped.

    Raises :class:`UnknownTaskError` (a ``KeyError``), listing the known tasks, for a task that the
    reference's test table does not report.
    """
    ref = tables(reference)
    aliases = {_key(t): t for t in ref.tasks} | dict(ref.task_aliases)
    k = _key(task)
    if k.startswith("task") and len(k) > 6 and k[4:6].isdigit():
        k = k[6:]
    if k in aliases:
        return aliases[k]
    raise UnknownTaskError(f"task {task!r} is not in {ref.test_title}; known: {', '.join(ref.tasks)}")


def _by_method(ref: ReferenceTables) -> dict[str, dict[str, dict[str, float]]]:
    """task -> method -> column -> value, exactly as published."""
    return {
        task: {m: dict(zip(cols, row, strict=True)) for m, row in zip(ref.methods, rows, strict=True)}
        for task, (cols, rows) in ref.test.items()
    }


def paper_rows(task: str | None = None, reference: str = DEFAULT) -> pd.DataFrame:
    """The reference's test table as a DataFrame in the leaderboard layout.

    With ``task``: one row per method, columns ``rank, method, source, <the task's columns>``,
    ranked like the leaderboard (``DSC avg`` then ``NSD avg``, or ``DSC1``/``NSD1`` for a
    single-class task, both descending; ties share the lower rank). ``source`` is the reference's
    label (``"paper Table 2"``).

    Without ``task``: every task stacked, with a ``task`` column first; columns a task does not
    have are NaN.
    """
    ref = tables(reference)
    if task is None:
        frames = [paper_rows(t, reference).assign(task=t) for t in ref.tasks]
        out = pd.concat(frames, ignore_index=True)
        widest = max(len([c for c in cols if c[3:].isdigit()]) for cols, _ in ref.test.values()) // 2
        return out[["task", "rank", "method", "source", *metric_columns(widest)]]
    name = resolve_task(task, reference)
    cols = list(ref.test[name][0])
    table = _by_method(ref)[name]
    df = pd.DataFrame([{"method": m, **table[m]} for m in ref.methods], columns=["method", *cols])
    df.insert(1, "source", ref.test_label)
    return rank_rows(df)


def table1_rows(with_dice_only: bool = False, reference: str = DEFAULT) -> pd.DataFrame:
    """The reference's cross-validation table as published: ``method, source, GMACs, params_M,
    est_train_MB, DSC1, DSC2, DSC avg`` (the memory is the published retraining GPU memory);
    ``with_dice_only`` keeps the rows with a DSC."""
    ref = tables(reference)
    cols = list(ref.cv_columns)
    df = pd.DataFrame([dict(zip(cols, row)) for row in ref.cv], columns=cols).astype(
        {c: float for c in cols[1:]}
    )
    df.insert(1, "source", ref.cv_label)
    return df.dropna(subset=["DSC1"]).reset_index(drop=True) if with_dice_only else df


# The former module constants, read from the ``paper`` entry when first asked for.
_LEGACY = {
    "TASKS": lambda ref: ref.tasks,
    "METHODS": lambda ref: ref.methods,
    "MSD_CLASSES": lambda ref: ref.class_names,
    "PAPER_TABLE2": _by_method,
    "SOURCE": lambda ref: ref.test_source,
    "PAPER_SOURCE_LABEL": lambda ref: ref.test_label,
    "TABLE1_SOURCE": lambda ref: ref.cv_source,
    "TABLE1_LABEL": lambda ref: ref.cv_label,
    "TABLE1_TASK": lambda ref: ref.cv_task,
}


def __getattr__(name: str) -> Any:
    if name in _LEGACY:
        return _LEGACY[name](tables())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
