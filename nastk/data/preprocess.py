"""Preprocessing (Sec. 4 of the paper, as C2FNAS) into a cache of memory-mappable arrays.

Per case: reorient to a canonical orientation (LPS, so the direction is the identity for
axis-aligned scans), resample to the target spacing (cubic B-spline for images, nearest for
labels), crop to the nonzero region of the image, and normalise intensities per channel:

* CT: clip to the 0.5-99.5 percentiles of the dataset's foreground voxels, then z-score with the
  dataset's foreground mean and standard deviation;
* anything else (MRI): z-score each case, over its nonzero voxels with zero outside them (the paper's), over
  every voxel, or over its nonzero voxels with the outside keeping its value; ``auto`` (the default)
  chooses from the dataset's fingerprint (:func:`nastk.data.normalize.auto_scheme`).

The cache lives in ``<cache_dir>/<hash of the settings>/``, so a changed setting never reuses a
stale cache. Each case is ``<id>_image.npy`` [C, X, Y, Z] float32, ``<id>_label.npy`` [X, Y, Z]
uint8, ``<id>_fg.npy`` (sampled foreground voxel coordinates per class) and ``<id>.json`` (the
original geometry and crop box), written atomically with the JSON last: a case whose JSON exists
is complete, so a second run does nothing and an interrupted one leaves no corrupt case. A second
run still checks each finished case's array headers and sizes (cheap), so outside damage to the
cache is reported, naming the file, rather than trained on.

The steps live next door: :mod:`nastk.data.geometry` (reorient, resample, crop and back),
:mod:`nastk.data.normalize` (the schemes and CT statistics), :mod:`nastk.data.cache` (the plan and
reading cases back), :mod:`nastk.data.splits` (folds) and :mod:`nastk.data.workers` (the process pool).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nastk.data.cache import VERSION, Cache, Plan, _cached_plan, _case_done, cache_dir_for
from nastk.data.cache import load_case as load_case
from nastk.data.cache import load_foreground as load_foreground
from nastk.data.cache import load_plan as load_plan
from nastk.data.cache import pad_value as pad_value
from nastk.data.dataset import Case, DatasetInfo, read_dataset
from nastk.data.digest import (
    DIGESTS_FILE,
    case_sources,
    combine,
    dataset_identity,
    listed_files,
    read_digests,
    save_digests,
)
from nastk.data.fingerprint import compute_fingerprint
from nastk.data.geometry import _crop, resample
from nastk.data.geometry import bounding_box as bounding_box
from nastk.data.geometry import reorient as reorient
from nastk.data.geometry import restore_geometry as restore_geometry
from nastk.data.imageio import Geometry, check_headers, read_image, read_label, to_array
from nastk.data.normalize import (
    Background,
    auto_scheme,
    background,
    ct_statistics,
    normalize_with_pad,
    requested_schemes,
)
from nastk.data.splits import make_splits as make_splits
from nastk.data.splits import read_splits_file
from nastk.data.splits import search_halves as search_halves
from nastk.data.workers import _pool as _pool
from nastk.errors import DataError
from nastk.io import atomic_write_bytes, atomic_write_text, make_dir, remove_stale_temps
from nastk.progress import track

FG_SAMPLES = 10_000  # foreground locations kept per class and case, for oversampling


# --------------------------------------------------------------------------- one case


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
    zero_share = [float(np.mean(sitk.GetArrayViewFromImage(c) == 0)) for c in channels]
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
        "zero_share": zero_share,  # per channel, as acquired: predict compares it with training's
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
    case, plan, stats, labels, out_dir, sources = args
    image, label, meta = process_case(case, plan, stats, labels)
    meta["sources"] = sources  # the content hashes of the files it was made from
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / f"{case.id}_image.npy", _npy_bytes(image))
    if label is not None:
        atomic_write_bytes(out_dir / f"{case.id}_label.npy", _npy_bytes(label))
        atomic_write_bytes(out_dir / f"{case.id}_fg.npy", _npy_bytes(foreground_locations(label, 0)))
    atomic_write_text(out_dir / f"{case.id}.json", json.dumps(meta, indent=1))
    return case.id


# --------------------------------------------------------------------------- the whole dataset


@dataclass(frozen=True)
class Resolved:
    """``dataset.normalization`` resolved for a dataset: per channel the scheme, why, and the training
    cases' background (what ``predict`` compares a new case with)."""

    schemes: tuple[str, ...]
    why: tuple[str, ...]
    backgrounds: tuple[Background, ...]


def resolve_normalization(dataset_spec, info: DatasetInfo, workers: int = 0, quiet: bool = True) -> Resolved:
    """Per channel: the spec's scheme, or for ``auto`` the rule's (:func:`auto_scheme`) from the
    dataset's fingerprint (read once and cached next to the preprocessing cache)."""

    requested = requested_schemes(dataset_spec, info.num_channels, info.root / "dataset.json")
    rule = dataset_spec.auto_normalization
    fp = compute_fingerprint(
        info.root,
        info.format,
        dataset_spec.cache_dir,
        workers=workers,
        quiet=quiet,
        plannable=False,
    )
    fg_shares = [c.foreground_share_of_nonzero for c in fp.cases]
    schemes, why, backgrounds = [], [], []
    for c, asked in enumerate(requested):
        bg = background(c, [case.zero_share[c] for case in fp.cases], fg_shares, rule.stripped_share)
        backgrounds.append(bg)
        if asked == "auto":
            scheme, reason = auto_scheme(info.modalities[c], bg, rule.foreground_share)
            schemes.append(scheme)
            why.append(f"auto: {reason}")
        else:
            schemes.append(asked)
            why.append("set in the spec")
    return Resolved(tuple(schemes), tuple(why), tuple(backgrounds))


def _stale_statistics(plan_file: Path, content: str) -> bool:
    """Whether the cache's CT statistics were computed from other file contents than the dataset's now."""
    try:
        return json.loads(plan_file.read_text()).get("content") != content
    except (OSError, ValueError, AttributeError):
        return True


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
    ids = [case.id for case in info.training]
    folds = (
        read_splits_file(dataset_spec.splits_file, ids, dataset_spec.num_folds)
        if getattr(dataset_spec, "splits_file", None)
        else make_splits(ids, dataset_spec.num_folds, seed)
    )
    # The content of every file, hashed once and then known by (size, mtime, inode): an edited file is
    # noticed, an unchanged dataset is not read again (nor by the fingerprint below, which asks for them).
    index = cache_dir_for(dataset_spec) / DIGESTS_FILE
    digests, updated = read_digests(listed_files(info), index)
    # auto normalisation reads the dataset's fingerprint (cached next to the cache; nothing is written
    # unless every case reads)
    normalization = resolve_normalization(dataset_spec, info, workers, quiet)
    plan = Plan(
        dataset=dataset_identity(info),
        spacing=tuple(float(s) for s in dataset_spec.spacing),
        normalization=normalization.schemes,
        labels=tuple(sorted(info.labels)),
        crop_nonzero=dataset_spec.crop_nonzero,
    )
    splits = json.dumps(folds, indent=1)
    # Everything that can be checked without reading voxels is checked before anything is written.
    out = cache_dir_for(dataset_spec) / plan.key()
    remove_stale_temps(out)
    plan_file = out / "plan.json"
    stats = _cached_plan(plan_file, plan) if plan_file.exists() else None
    sources = {case.id: case_sources(info, case, digests) for case in info.training}
    content = combine(plan.dataset, digests, info.root)
    if "ct" in plan.normalization:  # CT statistics are the whole dataset's: an edited file changes every case
        for case_sources_ in sources.values():
            case_sources_["(ct statistics of)"] = content
        if stats is not None and _stale_statistics(plan_file, content):
            stats = None
    todo = [case for case in info.training if not _case_done(out, case, info.num_channels, sources[case.id])]
    for case in todo:
        check_headers(case.images, case.label, f"case {case.id}", info.num_channels)
    make_dir(out)
    save_digests(index, updated)
    if stats is None:
        ct_channels = [c for c, s in enumerate(plan.normalization) if s == "ct"]
        stats = ct_statistics(info, ct_channels, workers, quiet) if ct_channels else {}
    plan_text = json.dumps(
        {
            "plan": plan.__dict__,
            "ct_statistics": stats,
            "modalities": info.modalities,
            "normalization_why": normalization.why,
            "background": [bg.to_dict() for bg in normalization.backgrounds],
            "content": content,  # the dataset's content key (digest.combine)
        },
        indent=1,
        default=list,
    )
    if not plan_file.exists() or plan_file.read_text() != plan_text:  # each case checks its own sources
        atomic_write_text(plan_file, plan_text)
    jobs = [(case, plan, stats, set(info.labels), str(out), sources[case.id]) for case in todo]
    with _pool(workers) as pool:
        for _ in track(pool.map(_write_case, jobs), len(jobs), "preprocess", quiet):
            pass
    splits_file = out / "splits.json"
    if not splits_file.exists() or splits_file.read_text() != splits:
        atomic_write_text(splits_file, splits)
    return Cache(out, plan, ids, info.num_channels, info.labels)
