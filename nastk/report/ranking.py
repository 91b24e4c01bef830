"""The leaderboard's columns and its order: shared by this run's rows and a plugin's reference rows."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from nastk.errors import DataError


def metric_columns(n_classes: int) -> list[str]:
    """Table 2 column layout: ``DSC1..DSCk, DSC avg, NSD1..NSDk, NSD avg``.

    A single-class task has just ``DSC1, NSD1``, as in the paper (no "Avg." column).
    """
    if n_classes < 1:
        raise DataError("no classes to score")
    if n_classes == 1:
        return ["DSC1", "NSD1"]
    dsc = [f"DSC{i}" for i in range(1, n_classes + 1)]
    nsd = [f"NSD{i}" for i in range(1, n_classes + 1)]
    return [*dsc, "DSC avg", *nsd, "NSD avg"]


def _sort_keys(columns: Iterable[str]) -> list[str]:
    cols = list(columns)
    keys = [c for c in ("DSC avg", "NSD avg") if c in cols]
    return keys or [c for c in ("DSC1", "NSD1") if c in cols]


def rank_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Sort rows best first and put a ``rank`` column first.

    Order: ``DSC avg`` then ``NSD avg`` (``DSC1``/``NSD1`` when there is no average), both
    descending, NaN last, ties keep their input order. Rows equal on both keys share a rank
    (1, 2, 2, 4).
    """
    df = df.drop(columns=["rank"], errors="ignore")
    keys = _sort_keys(df.columns)
    if not keys:
        raise DataError(f"nothing to rank by among columns {list(df.columns)}")
    out = df.sort_values(keys, ascending=False, na_position="last", kind="mergesort")
    out = out.reset_index(drop=True)
    ranks: list[int] = []
    prev: tuple | None = None
    for i, row in enumerate(out[keys].itertuples(index=False, name=None)):
        norm = tuple(None if pd.isna(v) else float(v) for v in row)
        ranks.append(ranks[-1] if prev is not None and norm == prev else i + 1)
        prev = norm
    out.insert(0, "rank", ranks)
    return out
