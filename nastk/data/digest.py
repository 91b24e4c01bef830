"""What identifies a dataset's content: the key of the preprocessing cache and of the fingerprint.

Every listed file is known by a hash of its contents (BLAKE2b, about 1 GB/s on one core). The hashes are
kept in an index (``sources.json`` in the dataset's cache folder, ``dataset.cache_dir`` or its default)
with each file's resolved path, size, mtime and inode, so that checking an unchanged dataset reads no image:
a file whose size, mtime or inode changed is hashed again. An edit in place that keeps the size changes
the mtime, so it is noticed.

* :func:`dataset_identity`: the dataset's resolved folder and its ``dataset.json``; it names the cache
  folder, so two datasets (``site_a/Task`` and ``site_b/Task`` with one ``$NASTK_CACHE``) never share one.
* :func:`file_digests`: each file's content hash; each cached case records those of its own files, so an
  edited label re-preprocesses that case and only that case.
* :func:`dataset_fingerprint`: all of it together (the dataset's content key), which ``nastk plan``'s
  fingerprint and the run's provenance record.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from nastk.data.dataset import DatasetInfo

DIGESTS_FILE = "sources.json"  # the index of content hashes, in the dataset's cache folder
_SEEN: dict[str, tuple[list[int], str]] = {}  # resolved path -> (stamp, hash), this process's
_CHUNK = 1 << 20


def content_hash(path: Path) -> str:
    """BLAKE2b (128 bits) of a file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_index(index: Path | None) -> dict[str, list]:
    if index is None:
        return {}
    try:
        data = json.loads(Path(index).read_text())
    except (OSError, ValueError):
        return {}  # missing or damaged: derived data, hashed again
    return data if isinstance(data, dict) else {}


def read_digests(
    paths: Iterable[Path], index: Path | None = None, also: Iterable[Path] = ()
) -> tuple[dict[Path, str], dict | None]:
    """The content hash of each file, from ``index`` (or the indexes ``also``) where the file's size, mtime
    and inode are those recorded, else read; and the updated ``index`` to save (:func:`save_digests`), None
    when nothing changed."""
    known = {}
    for other in also:
        known.update(_read_index(other))
    known.update(_read_index(index))
    out: dict[Path, str] = {}
    changed = False
    for path in paths:
        real = str(Path(path).resolve())
        stamp = _stamp(os.stat(real))
        entry = known.get(real)
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == stamp:
            out[Path(path)] = str(entry[1])
            continue
        seen = _SEEN.get(real)  # hashed earlier in this process (preprocess, then its fingerprint)
        digest = seen[1] if seen is not None and seen[0] == stamp else content_hash(Path(real))
        _SEEN[real] = (stamp, digest)
        known[real] = [stamp, digest]
        out[Path(path)] = digest
        changed = True
    for real, entry in known.items():
        if isinstance(entry, list) and len(entry) == 2:
            _SEEN.setdefault(real, (entry[0], str(entry[1])))
    return out, (known if changed else None)


def save_digests(index: Path | None, known: dict | None) -> None:
    """Keep the index :func:`read_digests` updated; a read-only cache folder only costs re-reading later."""
    if index is None or known is None:
        return
    from nastk.errors import NastkError
    from nastk.io import atomic_write_text

    try:
        atomic_write_text(index, json.dumps(known, separators=(",", ":")))
    except (OSError, NastkError):
        pass


def file_digests(paths: Iterable[Path], index: Path | None = None) -> dict[Path, str]:
    """:func:`read_digests`, saving the index at once."""
    digests, known = read_digests(paths, index)
    save_digests(index, known)
    return digests


def listed_files(info: DatasetInfo) -> list[Path]:
    """Every image and label file the dataset lists, training then test."""
    return [p for case in info.training + info.test for p in (*case.images, case.label) if p is not None]


def dataset_identity(info: DatasetInfo) -> str:
    """The dataset's resolved folder and ``dataset.json``: the part of the cache key that is not content."""
    h = hashlib.sha256(str(info.root.resolve()).encode() + b"\0")
    h.update((info.root / "dataset.json").read_bytes())
    return h.hexdigest()[:16]


def case_sources(info: DatasetInfo, case, digests: dict[Path, str]) -> dict[str, str]:
    """A case's files (relative to the dataset) and their content hashes: what its cache entry is made of."""
    root = info.root.resolve()
    files = [*case.images, case.label] if case.label is not None else list(case.images)
    return {str(Path(p).relative_to(root)): digests[Path(p)] for p in files}


def combine(identity: str, digests: dict[Path, str], root: Path) -> str:
    """One key for a dataset's identity and the content of its files."""
    h = hashlib.sha256(identity.encode())
    base = Path(root).resolve()
    for p, digest in digests.items():
        h.update(f"{Path(p).relative_to(base)}:{digest}\n".encode())
    return h.hexdigest()[:16]


def dataset_fingerprint(info: DatasetInfo, index: Path | None = None) -> str:
    """The dataset's content key: its folder, dataset.json, and the content of every file it lists.
    The content hashes come from ``index``, else from the index in the dataset's default cache folder or
    those this process read or computed already (each checked against its file's size, mtime and inode);
    they are never written here (a refused `nastk plan` writes nothing)."""
    also: list[Path] = []
    if index is None:
        from nastk.data.cache import default_cache_dir

        also = [default_cache_dir(info.root) / DIGESTS_FILE]
    digests, _ = read_digests(listed_files(info), index, also)
    return combine(dataset_identity(info), digests, info.root)
