"""Cross-validation folds, and the two halves of a fold's training cases that a search uses."""

from __future__ import annotations

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
