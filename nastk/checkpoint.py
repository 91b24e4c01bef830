"""Atomic checkpoints with every RNG state, loaded with ``weights_only=True``."""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nastk.errors import DataError, NastkError, one_line
from nastk.io import atomic_write_bytes

# Fields that change when a run checkpoints, never what it computes: a restart may change them, and
# leaving them out keeps the hashes of checkpoints written before they existed.
CADENCE_FIELDS = {"search": {"checkpoint_minutes"}, "retrain": {"checkpoint_minutes"}}


def spec_hash(spec) -> str:
    """Hash of the resolved spec (less :data:`CADENCE_FIELDS`); a resumed run must have the same one."""
    return hashlib.sha256(spec.model_dump_json(exclude=CADENCE_FIELDS).encode()).hexdigest()[:16]


def _numpy_state() -> tuple:
    # Plain types and a tensor only, so the checkpoint loads with weights_only=True.
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))


def rng_state() -> dict[str, Any]:
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | Path, state: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _refused_global(exc: BaseException) -> str | None:
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return found.group(1) if found else None


def load(path: str | Path, map_location="cpu", required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A checkpoint's dict, loaded with ``weights_only=True``; one-line DataError naming the file when it
    is not a nastk checkpoint (another format, pickled objects, a different structure)."""
    path = Path(path)
    if not path.is_file():
        raise NastkError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch explains a refusal over several lines; one names the refused class, or the bad opcode
        name = _refused_global(exc)
        if name:
            raise DataError(
                f"{path}: not a nastk checkpoint (it holds a pickled {name}, never loaded)"
            ) from None
        found = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(Check the documentation|$)", str(exc), re.S)
        detail = " ".join(found.group(1).split()) if found and found.group(1).strip() else one_line(exc)
        raise DataError(f"{path}: not a loadable nastk checkpoint ({detail[:200]})") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file
        detail = f"{type(exc).__name__}: {one_line(exc)}"
        raise DataError(f"{path}: not a loadable nastk checkpoint ({detail})") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: not a nastk checkpoint (a {type(state).__name__}, not a dict)")
    missing = [key for key in required if key not in state]
    if missing:
        raise DataError(f"{path}: not a nastk checkpoint (no {', '.join(map(repr, missing))})")
    return state


def restore(path: str | Path, state: dict[str, Any], targets: dict[str, Any]) -> None:
    """``targets[key].load_state_dict(state[key])`` for each key; one line naming the file and the key
    when the saved state does not fit (another network, a wrong-shaped tensor)."""
    for key, target in targets.items():
        try:
            target.load_state_dict(state[key])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise DataError(f"{path}: {key!r} does not fit this run ({one_line(exc)})") from None


def restore_rng(path: str | Path, state: dict[str, Any]) -> None:
    try:
        set_rng_state(state["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise DataError(f"{path}: 'rng' is not a saved random state ({one_line(exc)})") from None


def number(path: str | Path, state: dict[str, Any], key: str) -> float:
    value = state[key]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{path}: {key!r} is not a number ({type(value).__name__})")
    return float(value)


def iteration(path: str | Path, state: dict[str, Any], total: int) -> int:
    """The saved iteration, a whole number in 0..total."""
    value = number(path, state, "iteration")
    if value != int(value) or not 0 <= value <= total:
        raise DataError(f"{path}: 'iteration' {value:g} is not in 0..{total}")
    return int(value)
