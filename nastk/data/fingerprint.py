"""The dataset fingerprint that ``nastk plan`` plans from: read once, cached next to the preprocessing cache.

Per training case, in the canonical (LPS) axis order preprocessing uses: the voxel spacing and shape,
the shape of the nonzero region's bounding box (what cropping to nonzero leaves), how many voxels are
nonzero, how many are foreground and how many of those lie in the nonzero region, per channel the share
of voxels that are exactly 0 (a stripped or masked background), and per class its voxel count and
number of 26-connected components. Per channel, over all cases: statistics of the
intensities of foreground voxels (up to ``INTENSITY_SAMPLES`` per case, as for the CT statistics).

The cache is ``<cache folder>/fingerprint.json``, the folder as preprocessing's (``dataset.cache_dir``,
else ``$NASTK_CACHE/<dataset folder name>``, else ``root/.nastk-cache``); it records the hash of
``dataset.json`` and the files it lists (``digest.dataset_fingerprint``), so a changed dataset is read
again. A fingerprint that cannot be read is derived data and is simply computed again.

A dataset that cannot be planned stops with one line naming the reason, before anything is written:
a single training case, no foreground voxel in any label map, mixed dimensionality (volumes next to
2D images or single slices), or only 2D images.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nastk.data.dataset import DatasetInfo, read_dataset
from nastk.data.digest import dataset_fingerprint
from nastk.data.geometry import bounding_box, reorient
from nastk.data.imageio import READ_ERRORS, Geometry, read_image, read_label, to_array
from nastk.data.workers import _pool
from nastk.errors import DataError
from nastk.io import atomic_write_text, make_dir
from nastk.progress import track

VERSION = 2  # 2: zero_share per channel
INTENSITY_SAMPLES = 10_000  # foreground intensities kept per channel and case
FILE_NAME = "fingerprint.json"


@dataclass(frozen=True)
class CaseFingerprint:
    id: str
    spacing: tuple[float, float, float]  # mm, canonical axis order
    shape: tuple[int, int, int]
    crop_shape: tuple[int, int, int]  # bounding box of the nonzero voxels (the whole image if none)
    nonzero: int  # voxels where some channel is nonzero
    foreground: int  # voxels with a label > 0
    foreground_in_nonzero: int
    classes: dict[int, tuple[int, int]]  # class -> (voxels, 26-connected components)
    zero_share: tuple[float, ...] = ()  # per channel: the share of voxels exactly 0 (a stripped outside)

    @property
    def voxel_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def relative_size_after_crop(self) -> float:
        return float(np.prod(self.crop_shape, dtype=np.float64) / np.prod(self.shape, dtype=np.float64))

    @property
    def foreground_share_of_nonzero(self) -> float:
        """How much of the nonzero region is foreground (0 when nothing is nonzero)."""
        return self.foreground_in_nonzero / self.nonzero if self.nonzero else 0.0


@dataclass
class Fingerprint:
    dataset: str  # hash of dataset.json and its files (digest.dataset_fingerprint)
    name: str
    modalities: dict[int, str]
    labels: dict[int, str]
    cases: list[CaseFingerprint]
    intensity: dict[int, dict[str, float]]  # channel -> foreground intensity statistics
    num_test: int = 0
    version: int = VERSION
    path: Path | None = field(default=None, compare=False)  # where it is cached

    @property
    def spacings(self) -> np.ndarray:
        return np.array([c.spacing for c in self.cases], dtype=np.float64)

    @property
    def shapes(self) -> np.ndarray:
        return np.array([c.shape for c in self.cases], dtype=np.float64)

    @property
    def crop_shapes(self) -> np.ndarray:
        return np.array([c.crop_shape for c in self.cases], dtype=np.float64)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("path")
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        data = json.loads(text)
        cases = [
            CaseFingerprint(
                id=str(c["id"]),
                spacing=tuple(float(v) for v in c["spacing"]),
                shape=tuple(int(v) for v in c["shape"]),
                crop_shape=tuple(int(v) for v in c["crop_shape"]),
                nonzero=int(c["nonzero"]),
                foreground=int(c["foreground"]),
                foreground_in_nonzero=int(c["foreground_in_nonzero"]),
                classes={int(k): (int(v[0]), int(v[1])) for k, v in c["classes"].items()},
                zero_share=tuple(float(v) for v in c["zero_share"]),
            )
            for c in data["cases"]
        ]
        return cls(
            dataset=str(data["dataset"]),
            name=str(data["name"]),
            modalities={int(k): str(v) for k, v in data["modalities"].items()},
            labels={int(k): str(v) for k, v in data["labels"].items()},
            cases=cases,
            intensity={
                int(k): {name: float(x) for name, x in v.items()} for k, v in data["intensity"].items()
            },
            num_test=int(data["num_test"]),
            version=int(data["version"]),
        )


# ------------------------------------------------------------------------------------ what can be planned


def _kind(path: Path, what: str) -> str:
    """ "3D" for a volume (or a 4D multi-channel volume), "2D" for a 2D image or a single slice."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except READ_ERRORS as exc:
        text = str(exc).strip()
        raise DataError(
            f"{what}: cannot read {path}: {text.splitlines()[-1][:200] if text else exc}"
        ) from None
    size = list(reader.GetSize())
    if reader.GetDimension() < 3 or min(size[:3]) <= 1:
        return "2D"
    return "3D"


def check_plannable(info: DatasetInfo) -> None:
    """One line naming why a dataset cannot be planned, read from headers only; nothing if it can."""
    where = info.root / "dataset.json"
    if len(info.training) < 2:
        raise DataError(
            f"{where}: cannot plan from a single training case: cross-validation needs at least 2"
        )
    if sorted(info.labels) != list(range(len(info.labels))):
        raise DataError(f"{where}: labels must be 0..{len(info.labels) - 1}")
    kinds: dict[str, str] = {}
    for case in info.training:
        for path in case.images:
            kinds.setdefault(_kind(path, f"case {case.id}"), f"{case.id} ({path.name})")
    if set(kinds) == {"2D"}:
        raise DataError(f"{where}: cannot plan 2D images (e.g. case {kinds['2D']}); nastk plans 3D volumes")
    if len(kinds) > 1:
        raise DataError(
            f"{where}: cannot plan mixed dimensionality: case {kinds['3D']} is a 3D volume, case "
            f"{kinds['2D']} a 2D image or single slice"
        )


# -------------------------------------------------------------------------------------------- one case


def _components(mask: np.ndarray) -> int:
    cc = sitk.ConnectedComponentImageFilter()
    cc.SetFullyConnected(True)
    cc.Execute(sitk.GetImageFromArray(mask.astype(np.uint8)))
    return int(cc.GetObjectCount())


def case_fingerprint(args) -> tuple[CaseFingerprint, list[np.ndarray]]:
    """The fingerprint of one case and up to INTENSITY_SAMPLES foreground intensities per channel."""
    case, labels, n_channels = args
    what = f"case {case.id}"
    channels = read_image(case.images, what, n_channels)
    label_img = read_label(case.label, Geometry.of(channels[0]), set(labels), what)
    channels = [reorient(c) for c in channels]
    label = to_array(reorient(label_img))
    arrays = [to_array(c) for c in channels]
    nonzero = np.zeros(label.shape, dtype=bool)
    for a in arrays:
        nonzero |= a != 0
    box = bounding_box(nonzero)
    foreground = label > 0
    classes = {}
    for value in sorted(labels):
        if value == 0:
            continue
        mask = label == value
        voxels = int(mask.sum())
        classes[int(value)] = (voxels, _components(mask) if voxels else 0)
    # The same stream per case as the CT statistics of preprocessing: reproducible, order-independent.
    rng = np.random.default_rng([0, int(hashlib.sha256(case.id.encode()).hexdigest()[:8], 16)])
    samples = []
    for a in arrays:
        values = a[foreground]
        if len(values) > INTENSITY_SAMPLES:
            values = rng.choice(values, INTENSITY_SAMPLES, replace=False)
        samples.append(values.astype(np.float64))
    fp = CaseFingerprint(
        id=case.id,
        spacing=tuple(float(s) for s in channels[0].GetSpacing()),
        shape=tuple(int(s) for s in label.shape),
        crop_shape=tuple(int(b - a) for a, b in box),
        nonzero=int(nonzero.sum()),
        foreground=int(foreground.sum()),
        foreground_in_nonzero=int((foreground & nonzero).sum()),
        classes=classes,
        zero_share=tuple(float(np.mean(a == 0)) for a in arrays),
    )
    return fp, samples


def intensity_statistics(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    lo, median, hi = np.percentile(values, [0.5, 50, 99.5])
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(median),
        "p00_5": float(lo),
        "p99_5": float(hi),
        "min": float(values.min()),
        "max": float(values.max()),
    }


# ------------------------------------------------------------------------------------------ the dataset


def fingerprint_path(root: str | Path, cache_dir: str | Path | None = None) -> Path:
    from nastk.data.cache import default_cache_dir

    return Path(cache_dir) / FILE_NAME if cache_dir else default_cache_dir(root) / FILE_NAME


def _cached(path: Path, digest: str) -> Fingerprint | None:
    try:
        fp = Fingerprint.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None  # missing or damaged: derived data, computed again
    return fp if fp.version == VERSION and fp.dataset == digest else None


def _require_foreground(info: DatasetInfo, cases: list[CaseFingerprint]) -> None:
    if not any(c.foreground for c in cases):
        raise DataError(
            f"{info.root / 'dataset.json'}: cannot plan without foreground: the label maps of all "
            f"{len(cases)} training cases are 0 everywhere"
        )


def compute_fingerprint(
    root: str | Path,
    format: str = "auto",
    cache_dir: str | Path | None = None,
    workers: int = 0,
    quiet: bool = True,
    plannable: bool = True,
) -> Fingerprint:
    """The dataset's fingerprint, from the cache when it is current, else read from the images.

    With ``plannable``, raises DataError when the dataset cannot be planned (see the module docstring);
    preprocessing, which reads it to resolve ``auto`` normalisation, asks for no such check.
    """
    info = read_dataset(root, format)
    if plannable:
        check_plannable(info)
    digest = dataset_fingerprint(info)
    path = fingerprint_path(root, cache_dir)
    fp = _cached(path, digest)
    if fp is None:
        jobs = [(case, info.labels, info.num_channels) for case in info.training]
        cases: list[CaseFingerprint] = []
        samples: list[list[np.ndarray]] = []
        with _pool(workers) as pool:
            for case_fp, case_samples in track(
                pool.map(case_fingerprint, jobs), len(jobs), "fingerprint", quiet
            ):
                cases.append(case_fp)
                samples.append(case_samples)
        if plannable:  # before anything is written
            _require_foreground(info, cases)
        intensity = {
            c: intensity_statistics(np.concatenate([s[c] for s in samples])) for c in range(info.num_channels)
        }
        fp = Fingerprint(
            dataset=digest,
            name=info.name,
            modalities=dict(info.modalities),
            labels=dict(info.labels),
            cases=cases,
            intensity=intensity,
            num_test=len(info.test),
        )
        make_dir(path.parent)
        atomic_write_text(path, fp.to_json())
    elif plannable:  # cached by preprocessing, which plans nothing
        _require_foreground(info, fp.cases)
    fp.path = path
    return fp


def summary(fp: Fingerprint) -> dict[str, Any]:
    """A few numbers for people (the plan's header comment)."""
    return {
        "cases": len(fp.cases),
        "modalities": [fp.modalities[c] for c in sorted(fp.modalities)],
        "median_spacing": np.median(fp.spacings, 0).round(3).tolist(),
        "median_shape": np.median(fp.shapes, 0).round().astype(int).tolist(),
    }
