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
is complete, so a second run does nothing and an interrupted one leaves no corrupt case. A second
run still checks each finished case's array headers and sizes (cheap), so outside damage to the
cache is reported, naming the file, rather than trained on.
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
from nastk.data.imageio import Geometry, check_headers, from_array, read_image, read_label, to_array
from nastk.errors import DataError
from nastk.io import atomic_write_bytes, atomic_write_text, make_dir, remove_stale_temps
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
    normalization: tuple[str, ...]  # per channel: one of SCHEMES
    labels: tuple[int, ...]
    crop_nonzero: bool = True
    version: int = VERSION

    def key(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


SCHEMES = ("ct", "zscore_nonzero", "zscore_nonzero_keep", "zscore")


def normalization_for(modality: str) -> str:
    """The paper's scheme for a modality (what preprocessing uses without ``dataset.normalization``)."""
    return "ct" if modality.strip().upper() == "CT" else "zscore_nonzero"


def normalization_schemes(dataset_spec, info: DatasetInfo) -> tuple[str, ...]:
    """Per channel: ``dataset.normalization`` where the spec sets it, else by modality."""
    if dataset_spec.normalization is not None:
        if len(dataset_spec.normalization) != info.num_channels:
            raise DataError(
                f"{info.root / 'dataset.json'}: {info.num_channels} channels, but dataset.normalization "
                f"names {len(dataset_spec.normalization)}"
            )
        return tuple(dataset_spec.normalization)
    return tuple(normalization_for(info.modalities[c]) for c in sorted(info.modalities))


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
    case, allowed, seed, n_channels = args
    what = f"case {case.id}"
    channels = read_image(case.images, what, n_channels)
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
    jobs = [(case, allowed, 0, info.num_channels) for case in info.training]
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
    return normalize_with_pad(image, mask, scheme, stats)[0]


def normalize_with_pad(
    image: np.ndarray, mask: np.ndarray, scheme: str, stats: dict[str, float] | None
) -> tuple[np.ndarray, float]:
    """One channel normalised with ``scheme``, and the value padding gets (what the outside has)."""
    # In float64: the float32 sum of squares of intensities near 1e18 overflows, and an infinite std
    # would silently turn the whole case into zeros.
    image = image.astype(np.float64)
    if scheme == "ct":
        assert stats is not None
        out = (np.clip(image, stats["lo"], stats["hi"]) - stats["mean"]) / max(stats["std"], 1e-8)
        return out.astype(np.float32), 0.0
    if scheme not in SCHEMES:
        raise DataError(f"unknown normalization {scheme!r} (one of {', '.join(SCHEMES)})")
    values = image if scheme == "zscore" else image[mask]
    if values.size == 0:
        return np.zeros(image.shape, np.float32), 0.0
    mean, std = float(values.mean()), max(float(values.std()), 1e-8)
    out = (image - mean) / std
    if scheme == "zscore_nonzero":
        out[~mask] = 0
        return out.astype(np.float32), 0.0
    # Beyond the crop box the image is 0 (it was cropped to its nonzero region), so padding gets
    # what intensity 0 maps to, like the outside inside the box.
    return out.astype(np.float32), float(np.float32(-mean / std))


def process_case(
    case: Case, plan: Plan, stats: dict[int, dict[str, float]], labels: set[int]
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read and preprocess one case. Returns (image [C,X,Y,Z], label [X,Y,Z] or None, meta)."""
    what = f"case {case.id}"
    channels = read_image(case.images, what, len(plan.normalization))
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
    pad = []
    for c, scheme in enumerate(plan.normalization):
        image[c], value = normalize_with_pad(image[c], mask, scheme, stats.get(c))
        pad.append(value)
    if not np.isfinite(image).all():
        raise DataError(f"{what}: {case.images[0]}: intensities are not finite after normalisation")
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
        "pad_value": pad,
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
        normalization=normalization_schemes(dataset_spec, info),
        labels=tuple(sorted(info.labels)),
        crop_nonzero=dataset_spec.crop_nonzero,
    )
    ids = [case.id for case in info.training]
    splits = json.dumps(make_splits(ids, dataset_spec.num_folds, seed), indent=1)
    # Everything that can be checked without reading voxels is checked before anything is written.
    out = cache_dir_for(dataset_spec) / plan.key()
    remove_stale_temps(out)
    plan_file = out / "plan.json"
    stats = _cached_plan(plan_file, plan) if plan_file.exists() else None
    todo = [case for case in info.training if not _case_done(out, case, info.num_channels)]
    for case in todo:
        check_headers(case.images, case.label, f"case {case.id}", info.num_channels)
    make_dir(out)
    if stats is None:
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
    jobs = [(case, plan, stats, set(info.labels), str(out)) for case in todo]
    with _pool(workers) as pool:
        for _ in track(pool.map(_write_case, jobs), len(jobs), "preprocess", quiet):
            pass
    splits_file = out / "splits.json"
    if not splits_file.exists() or splits_file.read_text() != splits:
        atomic_write_text(splits_file, splits)
    return Cache(out, plan, ids, info.num_channels, info.labels)


def load_plan(plan_file: Path) -> tuple[Plan, dict[int, dict[str, float]]]:
    """The preprocessing plan and CT statistics saved in a cache (or copied into a run)."""
    plan_file = Path(plan_file)
    try:
        data = json.loads(plan_file.read_text())
        raw = data["plan"]
        plan = Plan(
            dataset=str(raw["dataset"]),
            spacing=tuple(float(v) for v in raw["spacing"]),
            normalization=tuple(str(v) for v in raw["normalization"]),
            labels=tuple(int(v) for v in raw["labels"]),
            crop_nonzero=bool(raw["crop_nonzero"]),
            version=int(raw["version"]),
        )
        stats = {
            int(k): {name: float(v[name]) for name in ("lo", "hi", "mean", "std")}
            for k, v in data["ct_statistics"].items()
        }
    except FileNotFoundError:
        raise DataError(f"{plan_file}: preprocessing plan not found") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise DataError(f"{plan_file}: not a readable preprocessing plan ({detail})") from None
    if len(plan.spacing) != 3 or not set(plan.normalization) <= set(SCHEMES):
        raise DataError(f"{plan_file}: not a readable preprocessing plan (bad spacing or normalization)")
    missing = [c for c, scheme in enumerate(plan.normalization) if scheme == "ct" and c not in stats]
    if missing:
        raise DataError(f"{plan_file}: no CT statistics for channel(s) {missing}")
    return plan, stats


def _cached_plan(plan_file: Path, plan: Plan) -> dict[int, dict[str, float]]:
    """CT statistics of a cache folder whose plan.json must be intact and be this plan."""
    try:
        saved, stats = load_plan(plan_file)
    except DataError as exc:
        raise DataError(f"{exc}; delete {plan_file.parent} to rebuild the cache") from None
    if saved != plan:
        raise DataError(
            f"{plan_file}: the plan in this cache folder is not the one its name stands for; "
            f"delete {plan_file.parent} to rebuild the cache"
        )
    return stats


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def npy_problem(path: Path, shape: tuple[int, ...] | None, dtype: np.dtype) -> str | None:
    """Why ``path`` is not a complete .npy array of ``dtype`` (and ``shape`` where given), or None.

    Reads only the header and the file size, so checking a whole cache costs no voxel reads.
    """
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = _NPY_HEADERS.get(version)
            if read_header is None:
                return f"unsupported .npy version {version}"
            header = read_header(fh)
            offset = fh.tell()
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        return f"unreadable header: {str(exc).splitlines()[0][:120] or type(exc).__name__}"
    got_shape, _, got_dtype = header
    if got_dtype != np.dtype(dtype):
        return f"dtype {got_dtype}, expected {np.dtype(dtype)}"
    if shape is not None and tuple(got_shape) != tuple(shape):
        return f"shape {list(got_shape)}, expected {list(shape)}"
    size = offset + int(np.prod(got_shape, dtype=np.int64)) * got_dtype.itemsize
    actual = path.stat().st_size
    if actual != size:
        return f"{actual} bytes, expected {size} (truncated or padded)"
    return None


def _case_done(out: Path, case: Case, channels: int) -> bool:
    if not (out / f"{case.id}.json").exists():
        return False
    check_cached_case(out, case, channels)
    return True


def check_cached_case(out: Path, case: Case, channels: int) -> None:
    """A finished case's files are whole: its JSON parses and each array has the header and size it
    should. Atomic writes make a half-written case impossible, so a damaged one means damage from
    outside (a disk error, a manual copy): it is reported rather than silently trained on."""
    meta_file = out / f"{case.id}.json"
    hint = f"delete {out} to rebuild the cache"
    try:
        meta = json.loads(meta_file.read_text())
        shape = tuple(int(v) for v in meta["shape"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{meta_file}: damaged cache file ({type(exc).__name__}); {hint}") from None
    arrays = [(f"{case.id}_image.npy", (channels, *shape), np.float32)]
    if case.label is not None:
        arrays += [(f"{case.id}_label.npy", shape, np.uint8), (f"{case.id}_fg.npy", None, np.int32)]
    for name, expected, dtype in arrays:
        problem = npy_problem(out / name, expected, dtype)
        if problem:
            raise DataError(f"{out / name}: damaged cache file ({problem}); {hint}")


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise DataError(
            f"{path}: damaged cache file ({detail}); delete {path.parent} to rebuild the cache"
        ) from None


def load_case(
    cache_root: Path, case_id: str, mmap: bool = True
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    image = _load_npy(cache_root / f"{case_id}_image.npy", mmap)
    label_file = cache_root / f"{case_id}_label.npy"
    label = _load_npy(label_file, mmap) if label_file.exists() else None
    meta_file = cache_root / f"{case_id}.json"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{meta_file}: damaged cache file ({type(exc).__name__})") from None
    return image, label, meta


def pad_value(meta: dict) -> list[float] | float:
    """What padding gets in each channel of a cached case (0 in caches older than the field)."""
    return [float(v) for v in meta.get("pad_value", [])] or 0.0


def load_foreground(cache_root: Path, case_id: str) -> np.ndarray:
    return _load_npy(Path(cache_root) / f"{case_id}_fg.npy", mmap=False)


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
