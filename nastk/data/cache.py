"""The preprocessed cache on disk: its plan, and reading its cases back (checked, memory-mapped)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nastk.data.dataset import Case
from nastk.data.normalize import SCHEMES, Background
from nastk.errors import DataError

VERSION = 1


@dataclass(frozen=True)
class Plan:
    """Everything that determines the cache content; its hash names the cache folder."""

    dataset: str  # the dataset's resolved folder and dataset.json (digest.dataset_identity)
    spacing: tuple[float, float, float]
    normalization: tuple[str, ...]  # per channel: one of SCHEMES
    labels: tuple[int, ...]
    crop_nonzero: bool = True
    version: int = VERSION

    def key(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cache:
    root: Path  # the hashed folder
    plan: Plan
    case_ids: list[str]
    num_channels: int
    labels: dict[int, str]

    def splits(self) -> list[dict[str, list[str]]]:
        return json.loads((self.root / "splits.json").read_text())


CACHE_ENV = "NASTK_CACHE"


def default_cache_dir(root: str | Path) -> Path:
    """Where a dataset's cache goes when the spec sets no ``dataset.cache_dir``: ``$NASTK_CACHE/<dataset
    folder name>`` when that variable is set (like nnU-Net's ``nnUNet_preprocessed``: datasets on read-only
    shared storage), else ``<root>/.nastk-cache`` as before."""
    shared = os.environ.get(CACHE_ENV)
    if shared:
        return Path(shared).expanduser() / Path(root).resolve().name
    return Path(root) / ".nastk-cache"


def cache_dir_for(dataset_spec) -> Path:
    if dataset_spec.cache_dir:
        return Path(dataset_spec.cache_dir)
    return default_cache_dir(dataset_spec.root)


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


def load_backgrounds(plan_file: Path) -> list[Background]:
    """Per channel, the training cases' background as preprocessing recorded it (none in a plan.json
    written before nastk recorded it: then nothing is compared)."""
    try:
        return [
            Background.from_dict(b) for b in json.loads(Path(plan_file).read_text()).get("background", [])
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def plan_notes(plan_file: Path) -> list[str]:
    """Per channel, why preprocessing normalised it as it did (auto's reason, or "set in the spec")."""
    try:
        return [str(w) for w in json.loads(Path(plan_file).read_text()).get("normalization_why", [])]
    except (OSError, ValueError, TypeError, AttributeError):
        return []


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


def _case_done(out: Path, case: Case, channels: int, sources: dict[str, str] | None = None) -> bool:
    """Whether ``case`` is in the cache, whole, and made from files with the content hashes ``sources``
    (where given): an edited image or label makes its case stale."""
    if not (out / f"{case.id}.json").exists():
        return False
    meta = check_cached_case(out, case, channels)
    return sources is None or meta.get("sources") == sources


def check_cached_case(out: Path, case: Case, channels: int) -> dict:
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
    return meta


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
