"""The threshold oracle: the best global intensity interval per class, which a model must beat."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def threshold_baseline_dice(
    image: np.ndarray, label: np.ndarray, classes: int, quantiles: int = 64
) -> list[float]:
    """Best Dice per foreground class (1..classes-1) of a global intensity-interval segmenter.

    For each class ``c`` every interval ``lo <= image < hi`` with ``lo < hi`` taken from ``quantiles``
    quantiles of the nonzero (body) intensities (the top one open-ended) is tried as a prediction within
    the body, and the highest Dice against ``label == c`` is kept: an optimistic oracle, since it picks
    the interval with the answer in hand. A class absent from ``label`` gives ``nan``.
    """
    image = np.asarray(image)
    label = np.asarray(label)
    if image.shape != label.shape:
        raise ValueError(f"image shape {image.shape} != label shape {label.shape}")
    body = image != 0
    values = image[body].astype(np.float64)
    if values.size == 0:
        return [float("nan")] * (classes - 1)
    edges = np.quantile(values, np.linspace(0.0, 1.0, quantiles))
    edges[-1] = np.inf
    bins = np.searchsorted(edges, values, side="right") - 1  # bin k: edges[k] <= v < edges[k+1]
    nbins = quantiles - 1
    pred_cum = np.concatenate([[0], np.cumsum(np.bincount(bins, minlength=nbins))])
    lab_body = label[body]
    lo, hi = np.triu_indices(quantiles, k=1)  # interval [edges[lo], edges[hi]) = bins lo..hi-1
    dice = []
    for c in range(1, classes):
        n_true = int((label == c).sum())
        if n_true == 0:
            dice.append(float("nan"))
            continue
        tp_cum = np.concatenate([[0], np.cumsum(np.bincount(bins[lab_body == c], minlength=nbins))])
        tp = tp_cum[hi] - tp_cum[lo]
        pred = pred_cum[hi] - pred_cum[lo]
        dice.append(float(np.max(2.0 * tp / (pred + n_true))))
    return dice


def threshold_baseline(task_dir: str | Path) -> dict:
    """``threshold_baseline_dice`` over the test cases of a synthetic task (labels from ``labelsTs/``).

    Returns ``{"cases": n, "per_class": {"1": dice, ...}, "labels": {"1": name, ...}, "mean": dice,
    "per_case": [{"case": file, "dice": [...]}, ...]}`` where ``per_class`` averages over cases (ignoring
    cases without the class) and ``mean`` averages ``per_class`` over the foreground classes.
    """
    task_dir = Path(task_dir)
    meta = json.loads((task_dir / "dataset.json").read_text())
    classes = len(meta["labels"])
    per_case = []
    for rel in meta["test"]:
        name = Path(rel).name
        label_path = task_dir / "labelsTs" / name
        if not label_path.exists():
            continue
        image = np.asarray(nib.load(task_dir / rel).dataobj, dtype=np.float32)
        label = np.asarray(nib.load(label_path).dataobj).astype(np.int64)
        per_case.append({"case": name, "dice": threshold_baseline_dice(image, label, classes)})
    if not per_case:
        raise ValueError(f"{task_dir}: no test cases with labels in labelsTs/")
    table = np.array([row["dice"] for row in per_case], dtype=np.float64)
    per_class = {
        str(c): float(np.nanmean(table[:, c - 1])) if np.isfinite(table[:, c - 1]).any() else float("nan")
        for c in range(1, classes)
    }
    return {
        "cases": len(per_case),
        "per_class": per_class,
        "labels": {str(c): meta["labels"][str(c)] for c in range(1, classes)},
        "mean": float(np.nanmean(list(per_class.values()))),
        "per_case": per_case,
    }
