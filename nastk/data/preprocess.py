"""Preprocessing (Sec. 4 of the paper, as C2FNAS) into a cache of memory-mappable arrays.

Per case: reorient to a canonical orientation (LPS, so the direction is the identity for
axis-aligned scans), resample to the target spacing (cubic B-spline for images, nearest for
labels), crop to the nonzero region of the image, and normalise intensities per channel:

* CT: clip to the 0.5-99.5 percentiles of the dataset's foreground voxels, then z-score with the
  dataset's foreground mean and standard deviation;
* anything else (MRI): z-score each case over its nonzero voxels, zero outside them.

The cache lives in ``<cache_dir>/<hash of the settings>/``, so a changed setting never reuses a
stale cache. Each case is ``<id>_image.npy`` [C, X, Y, Z] float32, ``<id>_label.npy`` [X, Y, Z]
uint8, ``<id>_fg.npy`` (sampled foreground voxel coordinates per class) and ``<id>.json`` (the
original geometry and crop box), written atomically with the JSON last: a case whose JSON exists
is complete, so a second run does nothing and an interrupted one leaves no corrupt case.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nastk.data.dataset import Case, DatasetInfo, read_dataset
from nastk.data.imageio import Geometry, from_array, read_image, read_label, to_array
from nastk.errors import DataError
from nastk.io import atomic_write_bytes, atomic_write_text
from nastk.progress import track

VERSION = 1
CANONICAL = "LPS"
FG_SAMPLES = 10_000  # foreground locations kept per class and case, for oversampling
STAT_SAMPLES = 10_000  # foreground intensities per case for CT statistics


@dataclass(frozen=True)
class Plan:
    """Everything that determines the cache content; its hash names the cache folder."""

    dataset: str  # fingerprint of dataset.json and the files it lists
    spacing: tuple[float, float, float]
    normalization: tuple[str, ...]  # per channel: "ct" or "zscore_nonzero"
    labels: tuple[int, ...]
    crop_nonzero: bool = True
    version: int = VERSION

    def key(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def normalization_for(modality: str) -> str:
    return "ct" if modality.strip().upper() == "CT" else "zscore_nonzero"


def dataset_fingerprint(info: DatasetInfo) -> str:
    h = hashlib.sha256((info.root / "dataset.json").read_bytes())
    for case in info.training + info.test:
        for p in (*case.images, case.label):
            if p is not None:
                h.update(f"{p.relative_to(info.root.resolve())}:{p.stat().st_size}".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- geometry steps


def reorient(image: sitk.Image) -> sitk.Image:
    return sitk.DICOMOrient(image, CANONICAL)


def resample(image: sitk.Image, spacing, interpolator) -> sitk.Image:
    """Resample onto a grid with ``spacing`` covering the same physical extent (outer edges aligned)."""
    old = np.array(image.GetSpacing())
    new = np.array(spacing, dtype=float)
    if np.allclose(old, new, rtol=1e-6, atol=0):
        return image
    size = np.maximum(1, np.round(np.array(image.GetSize()) * old / new)).astype(int)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((new - old) / 2)
    return sitk.Resample(
        image,
        [int(s) for s in size],
        sitk.Transform(),
        interpolator,
        origin.tolist(),
        new.tolist(),
        image.GetDirection(),
        0.0,
        image.GetPixelID(),
    )


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """[[start, stop] per axis] of the True voxels; the whole array when there are none."""
    if not mask.any():
        return [[0, s] for s in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def _crop(array: np.ndarray, box) -> np.ndarray:
    return array[(..., *(slice(a, b) for a, b in box))]


# --------------------------------------------------------------------------- statistics


def _foreground_samples(args) -> list[np.ndarray]:
    case, allowed, seed = args
    what = f"case {case.id}"
    channels = read_image(case.images, what)
    label = to_array(read_label(case.label, Geometry.of(channels[0]), allowed, what)) > 0
    rng = np.random.default_rng([seed, int(hashlib.sha256(case.id.encode()).hexdigest()[:8], 16)])
    out = []
    for image in channels:
        values = to_array(image)[label]
        if len(values) > STAT_SAMPLES:
            values = rng.choice(values, STAT_SAMPLES, replace=False)
        out.append(values.astype(np.float64))
    return out


def ct_statistics(
    info: DatasetInfo, channels: list[int], workers: int, quiet: bool
) -> dict[int, dict[str, float]]:
    """Dataset foreground statistics per CT channel: 0.5/99.5 percentiles, and mean/std after clipping."""
    allowed = set(info.labels)
    jobs = [(case, allowed, 0) for case in info.training]
    samples: list[list[np.ndarray]] = []
    with _pool(workers) as pool:
        for result in track(pool.map(_foreground_samples, jobs), len(jobs), "CT statistics", quiet):
            samples.append(result)
    stats = {}
    for c in channels:
        values = np.concatenate([s[c] for s in samples]) if samples else np.zeros(1)
        if values.size == 0:
            raise DataError(f"{info.root / 'dataset.json'}: no foreground voxels to compute CT statistics")
        lo, hi = np.percentile(values, [0.5, 99.5])
        clipped = np.clip(values, lo, hi)
        stats[c] = {
            "lo": float(lo),
            "hi": float(hi),
            "mean": float(clipped.mean()),
            "std": float(clipped.std()),
        }
    return stats


# --------------------------------------------------------------------------- one case


def normalize(image: np.ndarray, mask: np.ndarray, scheme: str, stats: dict[str, float] | None) -> np.ndarray:
    if scheme == "ct":
        assert stats is not None
        return (np.clip(image, stats["lo"], stats["hi"]) - stats["mean"]) / max(stats["std"], 1e-8)
    values = image[mask]
    if values.size == 0:
        return np.zeros_like(image)
    out = (image - values.mean()) / max(float(values.std()), 1e-8)
    out[~mask] = 0
    return out


def process_case(
    case: Case, plan: Plan, stats: dict[int, dict[str, float]], labels: set[int]
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read and preprocess one case. Returns (image [C,X,Y,Z], label [X,Y,Z] or None, meta)."""
    what = f"case {case.id}"
    channels = read_image(case.images, what)
    original = Geometry.of(channels[0])
    label_img = read_label(case.label, original, labels, what) if case.label is not None else None
    channels = [reorient(c) for c in channels]
    canonical = Geometry.of(channels[0])
    nonzero = np.zeros(canonical.size[::-1], dtype=np.uint8)
    for c in channels:
        nonzero |= sitk.GetArrayViewFromImage(c) != 0
    nonzero_img = canonical.apply(sitk.GetImageFromArray(nonzero))
    channels = [resample(c, plan.spacing, sitk.sitkBSpline) for c in channels]
    resampled = Geometry.of(channels[0])
    mask = to_array(resample(nonzero_img, plan.spacing, sitk.sitkNearestNeighbor)) > 0
    box = bounding_box(mask) if plan.crop_nonzero else [[0, s] for s in mask.shape]
    mask = _crop(mask, box)
    image = np.stack([_crop(to_array(c), box) for c in channels]).astype(np.float32)
    for c, scheme in enumerate(plan.normalization):
        image[c] = normalize(image[c], mask, scheme, stats.get(c))
    label = None
    if label_img is not None:
        label_img = resample(reorient(label_img), plan.spacing, sitk.sitkNearestNeighbor)
        label = np.ascontiguousarray(_crop(to_array(label_img), box)).astype(np.uint8)
    meta = {
        "id": case.id,
        "version": VERSION,
        "original": original.to_dict(),
        "canonical": canonical.to_dict(),
        "resampled": resampled.to_dict(),
        "crop": box,
        "shape": list(image.shape[1:]),
        "classes": sorted(int(v) for v in np.unique(label) if v > 0) if label is not None else [],
    }
    return np.ascontiguousarray(image), label, meta


def foreground_locations(label: np.ndarray, seed: int) -> np.ndarray:
    """[K, 4] int32 rows (class, x, y, z): up to FG_SAMPLES random voxels of each class present."""
    rng = np.random.default_rng(seed)
    rows = []
    for value in np.unique(label):
        if value == 0:
            continue
        coords = np.argwhere(label == value)
        if len(coords) > FG_SAMPLES:
            coords = coords[np.sort(rng.choice(len(coords), FG_SAMPLES, replace=False))]
        rows.append(np.column_stack([np.full(len(coords), value), coords]))
    return np.concatenate(rows).astype(np.int32) if rows else np.zeros((0, 4), np.int32)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _write_case(args) -> str:
    case, plan, stats, labels, out_dir = args
    image, label, meta = process_case(case, plan, stats, labels)
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / f"{case.id}_image.npy", _npy_bytes(image))
    if label is not None:
        atomic_write_bytes(out_dir / f"{case.id}_label.npy", _npy_bytes(label))
        atomic_write_bytes(out_dir / f"{case.id}_fg.npy", _npy_bytes(foreground_locations(label, 0)))
    atomic_write_text(out_dir / f"{case.id}.json", json.dumps(meta, indent=1))
    return case.id


def _init_worker() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


class _Serial:
    """A stand-in for a process pool when workers <= 1 (debuggable, no fork)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items):
        return map(fn, items)


def _pool(workers: int):
    if workers <= 1:
        return _Serial()
    return ProcessPoolExecutor(max_workers=workers, initializer=_init_worker)


# --------------------------------------------------------------------------- splits


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


# --------------------------------------------------------------------------- the whole dataset


@dataclass(frozen=True)
class Cache:
    root: Path  # the hashed folder
    plan: Plan
    case_ids: list[str]
    num_channels: int
    labels: dict[int, str]

    def splits(self) -> list[dict[str, list[str]]]:
        return json.loads((self.root / "splits.json").read_text())


def cache_dir_for(dataset_spec) -> Path:
    if dataset_spec.cache_dir:
        return Path(dataset_spec.cache_dir)
    return Path(dataset_spec.root) / ".nastk-cache"


def preprocess(dataset_spec, seed: int = 0, workers: int | None = None, quiet: bool = False) -> Cache:
    """Preprocess every training case of ``dataset_spec`` into the cache (skipping finished cases)."""
    if not dataset_spec.root:
        raise DataError("dataset.root: no dataset folder set in the spec")
    info = read_dataset(dataset_spec.root, dataset_spec.format)
    if dataset_spec.in_channels != info.num_channels:
        raise DataError(
            f"{info.root / 'dataset.json'}: {info.num_channels} channels, but dataset.in_channels is "
            f"{dataset_spec.in_channels}"
        )
    if dataset_spec.num_classes != len(info.labels):
        raise DataError(
            f"{info.root / 'dataset.json'}: {len(info.labels)} labels, but dataset.num_classes is "
            f"{dataset_spec.num_classes}"
        )
    if sorted(info.labels) != list(range(len(info.labels))):
        raise DataError(f"{info.root / 'dataset.json'}: labels must be 0..{len(info.labels) - 1}")
    workers = workers if workers is not None else dataset_spec.num_workers
    plan = Plan(
        dataset=dataset_fingerprint(info),
        spacing=tuple(float(s) for s in dataset_spec.spacing),
        normalization=tuple(normalization_for(info.modalities[c]) for c in sorted(info.modalities)),
        labels=tuple(sorted(info.labels)),
        crop_nonzero=dataset_spec.crop_nonzero,
    )
    out = cache_dir_for(dataset_spec) / plan.key()
    out.mkdir(parents=True, exist_ok=True)
    plan_file = out / "plan.json"
    if plan_file.exists():
        stats = {int(k): v for k, v in json.loads(plan_file.read_text())["ct_statistics"].items()}
    else:
        ct_channels = [c for c, s in enumerate(plan.normalization) if s == "ct"]
        stats = ct_statistics(info, ct_channels, workers, quiet) if ct_channels else {}
        atomic_write_text(
            plan_file,
            json.dumps(
                {"plan": plan.__dict__, "ct_statistics": stats, "modalities": info.modalities},
                indent=1,
                default=list,
            ),
        )
    todo = [case for case in info.training if not (out / f"{case.id}.json").exists()]
    jobs = [(case, plan, stats, set(info.labels), str(out)) for case in todo]
    with _pool(workers) as pool:
        for _ in track(pool.map(_write_case, jobs), len(jobs), "preprocess", quiet):
            pass
    ids = [case.id for case in info.training]
    splits = json.dumps(make_splits(ids, dataset_spec.num_folds, seed), indent=1)
    splits_file = out / "splits.json"
    if not splits_file.exists() or splits_file.read_text() != splits:
        atomic_write_text(splits_file, splits)
    return Cache(out, plan, ids, info.num_channels, info.labels)


def load_plan(plan_file: Path) -> tuple[Plan, dict[int, dict[str, float]]]:
    """The preprocessing plan and CT statistics saved in a cache (or copied into a run)."""
    data = json.loads(Path(plan_file).read_text())
    raw = data["plan"]
    plan = Plan(
        dataset=raw["dataset"],
        spacing=tuple(raw["spacing"]),
        normalization=tuple(raw["normalization"]),
        labels=tuple(raw["labels"]),
        crop_nonzero=raw["crop_nonzero"],
        version=raw["version"],
    )
    return plan, {int(k): v for k, v in data["ct_statistics"].items()}


def load_case(
    cache_root: Path, case_id: str, mmap: bool = True
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    mode = "r" if mmap else None
    image = np.load(cache_root / f"{case_id}_image.npy", mmap_mode=mode)
    label_file = cache_root / f"{case_id}_label.npy"
    label = np.load(label_file, mmap_mode=mode) if label_file.exists() else None
    meta = json.loads((cache_root / f"{case_id}.json").read_text())
    return image, label, meta


def restore_geometry(label: np.ndarray, meta: dict) -> sitk.Image:
    """Undo crop, resampling and reorientation: a label map on the case's original grid (nearest)."""
    full = np.zeros(meta["resampled"]["size"], dtype=np.uint8)
    full[tuple(slice(a, b) for a, b in meta["crop"])] = label
    on_resampled = from_array(full, Geometry.from_dict(meta["resampled"]))
    original = Geometry.from_dict(meta["original"])
    return sitk.Resample(
        on_resampled, original.reference(), sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))
