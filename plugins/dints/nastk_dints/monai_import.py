"""Import a MONAI DiNTS architecture file (``.pth``) as an ``Architecture``.

MONAI saves the decoded search result with ``torch.save`` as a dict of numpy arrays: the tutorial
writes ``node_a``, ``arch_code_a``, ``arch_code_c`` (plus ``arch_code_a_max`` and bookkeeping
scalars), Auto3DSeg reads ``node_a``, ``code_a``, ``code_c``. ``arch_code_a`` [L, E] marks the
selected edges, ``arch_code_c`` holds the op per edge ([L, E] indices or [L, E, N] one-hot) and
``node_a`` [L+1, D] the active feature nodes. MONAI orders edges exactly as ``topology.edge_list``
and its five 3D ops in the order of ``PAPER_OPS``, so no re-indexing is needed.

The file is unpickled with ``weights_only=True`` and only numpy's array and scalar
reconstruction allow-listed, so a hostile file cannot construct arbitrary objects.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from nastk.plugin import DataError
from nastk_dints.architecture import PAPER_OPS, Architecture

_KEY_SETS = (("arch_code_a", "arch_code_c"), ("code_a", "code_c"))


def _numpy_safe_globals() -> list:
    """The globals a pickled dict of numeric numpy arrays/scalars needs, and nothing more.

    numpy 2 pickles name ``numpy._core.multiarray``; files written under numpy 1 name
    ``numpy.core.multiarray``, so both spellings are allowed for the two reconstructors.
    """
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    out: list = [np.ndarray, np.dtype]
    for fn in (core._reconstruct, core.scalar):
        out += [
            fn,
            (fn, f"numpy.core.multiarray.{fn.__name__}"),
            (fn, f"numpy._core.multiarray.{fn.__name__}"),
        ]
    codes = np.typecodes["AllInteger"] + np.typecodes["Float"] + "?"
    dtype_classes = {type(np.dtype(c)) for c in codes}
    return out + sorted(dtype_classes - {np.dtype}, key=lambda c: c.__name__)


def _load(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc)) or re.search(r"got <class '([\w.]+)'>", str(exc))
        detail = f"refused to unpickle {refused.group(1)}" if refused else f"{type(exc).__name__}: {exc}"
        detail = " ".join(detail.split())[:200]
        raise DataError(f"{path}: not a loadable MONAI architecture file ({detail})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict of arrays, got {type(data).__name__}")
    return data


def _array(data: dict, key: str, path: Path, ndims: tuple[int, ...]) -> np.ndarray:
    value = data[key]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value) if isinstance(value, (np.ndarray, list, tuple)) else None
    if arr is None or arr.dtype.kind not in "biuf" or arr.ndim not in ndims:
        shape = list(arr.shape) if arr is not None else type(value).__name__
        raise DataError(
            f"{path}: {key!r} must be a numeric array with {' or '.join(map(str, ndims))} dims, got {shape}"
        )
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise DataError(f"{path}: {key!r} must hold whole numbers")
    return arr.astype(np.int64)


def import_monai_arch(path: str | Path, *, filters: int = 16, layers: int | None = None) -> Architecture:
    """Read a MONAI DiNTS ``.pth`` architecture file; raises ``DataError`` naming the file and key."""
    path = Path(path)
    data = _load(path)
    keys = next((ks for ks in _KEY_SETS if ks[0] in data), _KEY_SETS[0])
    key_a, key_c = keys
    for key in (key_a, key_c, "node_a"):
        if key not in data:
            raise DataError(f"{path}: missing key {key!r} (have {sorted(map(str, data))})")

    edge_a = _array(data, key_a, path, (2,))
    n_layers, n_edges = edge_a.shape
    if (n_edges + 2) % 3 or n_edges < 4 or n_layers < 1:
        raise DataError(
            f"{path}: {key_a!r} shape {list(edge_a.shape)} is not [layers, 3*depths-2] with depths >= 2"
        )
    if not np.isin(edge_a, (0, 1)).all():
        raise DataError(f"{path}: {key_a!r} must be 0/1")
    if layers is not None and n_layers != layers:
        raise DataError(f"{path}: {key_a!r} has {n_layers} layers, expected {layers}")
    depths = (n_edges + 2) // 3
    mask = edge_a.astype(bool)

    ops = _array(data, key_c, path, (2, 3))
    if ops.shape[:2] != (n_layers, n_edges):
        raise DataError(
            f"{path}: {key_c!r} shape {list(ops.shape)} does not start with {[n_layers, n_edges]}"
        )
    if ops.ndim == 3:
        if ops.shape[2] != len(PAPER_OPS):
            raise DataError(f"{path}: {key_c!r} one-hot has {ops.shape[2]} ops, expected {len(PAPER_OPS)}")
        used = ops[mask]
        if not (np.isin(used, (0, 1)).all() and (used.sum(-1) == 1).all()):
            raise DataError(f"{path}: {key_c!r} is not one-hot on every selected edge")
        ops = ops.argmax(-1)
    used = ops[mask]
    if used.size and (used.min() < 0 or used.max() >= len(PAPER_OPS)):
        raise DataError(f"{path}: {key_c!r} has op indices outside 0..{len(PAPER_OPS) - 1}")
    ops = np.where(mask, ops, 0)

    empty = np.flatnonzero(~mask.any(1))
    if empty.size:
        raise DataError(f"{path}: {key_a!r} layer {int(empty[0]) + 1} selects no edge")
    arch = Architecture(
        depths=depths,
        edge_mask=mask,
        op_index=ops,
        op_names=list(PAPER_OPS),
        space={"name": "dints", "params": {"layers": n_layers, "depths": depths, "filters": filters}},
        extra={"provenance": f"imported from MONAI file {path.name}"},
    )
    if not arch.is_feasible():
        raise DataError(
            f"{path}: {key_a!r} is infeasible: a layer's sources are not the previous layer's targets"
        )

    node_a = _array(data, "node_a", path, (2,))
    if node_a.shape != (n_layers + 1, depths):
        raise DataError(f"{path}: 'node_a' shape {list(node_a.shape)}, expected {[n_layers + 1, depths]}")
    if not np.isin(node_a, (0, 1)).all():
        raise DataError(f"{path}: 'node_a' must be 0/1")
    wrong = np.flatnonzero((node_a.astype(bool) != arch.node_active).any(1))
    if wrong.size:
        row = int(wrong[0])
        raise DataError(
            f"{path}: 'node_a' row {row} is {node_a[row].tolist()} but {key_a!r} activates "
            f"{arch.node_active[row].astype(int).tolist()}"
        )
    return arch
