"""Intensity normalisation per channel: the schemes, the rule that picks one from the data (``auto``),
the CT statistics of a dataset, and applying them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from nastk.data.dataset import DatasetInfo
from nastk.data.imageio import Geometry, read_image, read_label, to_array
from nastk.data.workers import _pool
from nastk.errors import DataError
from nastk.progress import track

STAT_SAMPLES = 10_000  # foreground intensities per case for CT statistics


SCHEMES = ("ct", "zscore_nonzero", "zscore_nonzero_keep", "zscore")
# What ``auto`` gives a non-CT channel whose outside must stay distinguishable from tissue (the ablation in
# docs/planning.md, "Normalisation"): where some training case has a zero outside, the nonzero region's
# statistics with the outside keeping the z-score of intensity 0; where none has, the whole image's
# statistics, which training cannot tell from the others (its nonzero region is the whole image) and which
# keep a case stripped at test time on a scale closer to training's.
OUTSIDE_KEPT = "zscore_nonzero_keep"
WHOLE_IMAGE = "zscore"
# The rule's thresholds, also spec fields (dataset.auto_normalization) and nastk plan's defaults.
STRIPPED_SHARE = 0.1  # a case exactly 0 over at least this share of its image has a stripped outside
FOREGROUND_SHARE = 0.5  # "0 outside" only while the foreground is at most this share of the nonzero region


def is_ct(modality: str) -> bool:
    return modality.strip().upper() == "CT"


@dataclass(frozen=True)
class Background:
    """One channel's background over the training cases, as the rule and ``predict``'s check read it."""

    channel: int
    cases: int
    stripped_cases: int  # exactly 0 over at least ``stripped_share`` of the image
    stripped_share: float
    zero_share_min: float
    zero_share_max: float
    foreground_share_max: float  # the largest share of a case's nonzero region that is foreground

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> Background:
        return cls(
            channel=int(raw["channel"]),
            cases=int(raw["cases"]),
            stripped_cases=int(raw["stripped_cases"]),
            stripped_share=float(raw["stripped_share"]),
            zero_share_min=float(raw["zero_share_min"]),
            zero_share_max=float(raw["zero_share_max"]),
            foreground_share_max=float(raw["foreground_share_max"]),
        )


def background(
    channel: int, zero_shares: Sequence[float], foreground_shares: Sequence[float], stripped_share: float
) -> Background:
    """Summarise one channel's training cases: their share of exact zeros and of foreground."""
    zeros = np.asarray(zero_shares, dtype=np.float64)
    return Background(
        channel=channel,
        cases=len(zeros),
        stripped_cases=int((zeros >= stripped_share).sum()),
        stripped_share=float(stripped_share),
        zero_share_min=float(zeros.min()) if zeros.size else 0.0,
        zero_share_max=float(zeros.max()) if zeros.size else 0.0,
        foreground_share_max=float(max(foreground_shares, default=0.0)),
    )


def auto_scheme(modality: str, bg: Background, foreground_share: float) -> tuple[str, str]:
    """The scheme ``auto`` gives one channel, and why.

    CT: ``ct``. Otherwise "0 outside" (the paper's ``zscore_nonzero``) only where it is safe: every
    training case is exactly 0 outside its nonzero region (so the network learns what 0 means) and the
    foreground is at most ``foreground_share`` of that region (so the edge of the nonzero region is not
    the foreground's edge), as in BraTS. Everywhere else zeroing the outside can give it a tissue's
    intensity: the z-score of a region that is mostly one tissue is that tissue's mean, which is 0. A
    brain template (exactly 0 outside the brain) normalised so has no edge between brain and outside.
    There the outside keeps its own value:

    * no training case has a stripped outside: the whole image's statistics (``zscore``). Training is the
      same under every scheme (the nonzero region is the whole image); a case stripped at test time keeps
      a dark outside and tissue on a scale near training's (on the two synthetic tasks with such heads it
      beat ``zscore_nonzero_keep`` in every seed and "0 outside" on the brain);
    * the cases disagree: the nonzero region's statistics, the outside at the z-score of intensity 0
      (``zscore_nonzero_keep``), as the stripped ones would otherwise see an outside the others never show;
    * every case is stripped, but the foreground fills the nonzero region: its edge is the outside's
      (``zscore_nonzero_keep``).
    """
    if is_ct(modality):
        return "ct", "CT: clipped to the foreground's 0.5-99.5 percentiles, z-scored with its mean and std"
    seen = (
        f"{bg.stripped_cases} of {bg.cases} training cases exactly 0 over >= {bg.stripped_share:.0%} of "
        f"the image (zeros {bg.zero_share_min:.0%}-{bg.zero_share_max:.0%}), foreground up to "
        f"{bg.foreground_share_max:.0%} of a case's nonzero region"
    )
    if bg.stripped_cases == bg.cases and bg.cases and bg.foreground_share_max <= foreground_share:
        return "zscore_nonzero", (
            f"z-score over the nonzero region, 0 outside (the paper's): every case has a zero outside and "
            f"the foreground is a small part of the nonzero region ({seen})"
        )
    if bg.stripped_cases == 0:
        return WHOLE_IMAGE, (
            f"z-score over the whole image: no training case has a zero outside, so training is the same as "
            f"under the paper's scheme, and a case stripped at test time keeps a dark outside ({seen})"
        )
    if bg.stripped_cases < bg.cases:
        reason = "the cases disagree about a zero outside"
    else:
        reason = (
            f"the foreground fills more than {foreground_share:.0%} of the nonzero region, so 0 outside "
            f"would give the outside the foreground's intensity"
        )
    return OUTSIDE_KEPT, f"z-score over the nonzero region, the outside keeps its value: {reason} ({seen})"


def requested_schemes(dataset_spec, num_channels: int, where) -> list[str]:
    """``dataset.normalization`` per channel ("auto" where the rule decides)."""
    requested = dataset_spec.normalization
    if requested is None or requested == "auto":
        return ["auto"] * num_channels
    if len(requested) != num_channels:
        raise DataError(f"{where}: {num_channels} channels, but dataset.normalization names {len(requested)}")
    return list(requested)


def background_mismatch(zero_share: float, bg: Background) -> str | None:
    """Why a new case's background differs from every training case's (for a warning), or None."""
    stripped = zero_share >= bg.stripped_share
    if stripped and bg.stripped_cases == 0:
        return (
            f"channel {bg.channel} is exactly 0 over {zero_share:.0%} of the image (stripped or masked), "
            f"but none of the {bg.cases} training cases was (zeros at most {bg.zero_share_max:.0%})"
        )
    if not stripped and bg.cases and bg.stripped_cases == bg.cases:
        return (
            f"channel {bg.channel} has no zero outside ({zero_share:.0%} zeros), but every one of the "
            f"{bg.cases} training cases had one (zeros at least {bg.zero_share_min:.0%})"
        )
    return None


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
