"""Cross-validation folds, and the two halves of a fold's training cases that a search uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nastk.errors import DataError


def make_splits(case_ids: list[str], num_folds: int, seed: int) -> list[dict[str, list[str]]]:
    """Seeded k-fold split in nnU-Net's splits_final.json shape: [{"train": [...], "val": [...]}, ...]."""
    ids = sorted(case_ids)
    if len(ids) < num_folds:
        raise DataError(f"dataset.num_folds: {len(ids)} training cases cannot make {num_folds} folds")
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = np.array_split(order, num_folds)
    out = []
    for k in range(num_folds):
        val = sorted(ids[i] for i in folds[k])
        out.append({"train": [i for i in ids if i not in set(val)], "val": val})
    return out


def search_halves(train_ids: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Sec. 3.6: split a fold's training cases into train1 (weights) and train2 (architecture)."""
    ids = sorted(train_ids)
    order = np.random.default_rng([seed, 1]).permutation(len(ids))
    half = (len(ids) + 1) // 2
    return sorted(ids[i] for i in order[:half]), sorted(ids[i] for i in order[half:])


def read_splits_file(path: str | Path, case_ids: list[str], num_folds: int) -> list[dict[str, list[str]]]:
    """Folds from a file in nnU-Net's splits_final.json shape, checked against the dataset's training cases:
    ``num_folds`` folds, each a train and a val list of known cases with none in both."""
    where = f"dataset.splits_file {path}"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{where}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{where}: not a readable JSON file ({type(exc).__name__})") from None
    if not isinstance(data, list) or not all(_is_fold(f) for f in data):
        raise DataError(f'{where}: expected a list of {{"train": [case, ...], "val": [case, ...]}}')
    if len(data) != num_folds:
        raise DataError(f"{where}: {len(data)} folds, but dataset.num_folds is {num_folds}")
    known = set(case_ids)
    for k, fold in enumerate(data):
        unknown = sorted(set(fold["train"] + fold["val"]) - known)
        if unknown:
            shown = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
            raise DataError(f"{where}: fold {k} names cases that are not training cases: {shown}")
        both = sorted(set(fold["train"]) & set(fold["val"]))
        if both:
            raise DataError(f"{where}: fold {k} has {both[0]} in both train and val")
        if not fold["val"] or not fold["train"]:
            raise DataError(f"{where}: fold {k} has an empty train or val list")
    problem = overlap_problem(data)
    if problem:
        raise DataError(f"{where}: {problem}")
    return [{"train": list(f["train"]), "val": list(f["val"])} for f in data]


def overlap_problem(folds: list[dict[str, list[str]]]) -> str | None:
    """Why ``folds`` are not a partition for cross-validation (a case twice in one list, or validated by two
    folds), or None: each case must be scored once."""
    seen: dict[str, int] = {}
    for k, fold in enumerate(folds):
        for key in ("train", "val"):
            cases = fold.get(key, [])
            twice = sorted({c for c in cases if cases.count(c) > 1})
            if twice:
                return f"fold {k} lists {twice[0]} twice in its {key} list"
        for case in fold.get("val", []):
            if case in seen:
                return (
                    f"{case} is in the val lists of folds {seen[case]} and {k} (each case is validated once)"
                )
            seen[case] = k
    return None


def _is_fold(item) -> bool:
    return (
        isinstance(item, dict)
        and all(isinstance(item.get(key), list) for key in ("train", "val"))
        and all(isinstance(c, str) for key in ("train", "val") for c in item[key])
    )
