"""Intensity normalisation per channel: the schemes, the CT statistics of a dataset, and applying them."""

from __future__ import annotations

import hashlib

import numpy as np

from nastk.data.dataset import DatasetInfo
from nastk.data.imageio import Geometry, read_image, read_label, to_array
from nastk.data.workers import _pool
from nastk.errors import DataError
from nastk.progress import track

STAT_SAMPLES = 10_000  # foreground intensities per case for CT statistics


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
