"""Atomic file writes: a crash leaves the old file or the new one, never half of one; and JSON files read
with one-line errors.

Temporary files are named ``.<name>.nastk-<pid>@<host>.<random>.tmp[<ext>]`` next to their target,
so a later run can tell its own stale temporaries (whose writer on this host is gone) from a live
writer's, and remove only those.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nastk.errors import DataError, OutputError

# A full disk, a full quota, or the file-size limit (ulimit -f) all mean: no space for this file.
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_TEMP = re.compile(r"^\..+\.nastk-(?P<pid>\d+)@(?P<host>.+)\.[^.]+\.tmp(\.[\w.]+)?$")


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


def _umask() -> int:
    # os.umask can only be read by setting it; /proc avoids the (brief, process-wide) change.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_error(path: str | Path, exc: OSError) -> OutputError:
    """The one-line error for an OSError met while writing ``path``."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in NO_SPACE:
        return OutputError(f"no space left writing {path} ({reason}); the file was left as it was")
    return OutputError(f"{path}: cannot write ({reason})")


def make_dir(path: str | Path) -> Path:
    """``mkdir -p`` with a one-line error (under a regular file, in /proc, no space, ...)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputError(f"{path}: cannot create this folder ({reason})") from None
    if not path.is_dir():
        raise OutputError(f"{path}: cannot create this folder (a file of that name exists)")
    return path


@contextmanager
def atomic_path(path: str | Path, ext: str = "") -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; renamed onto ``path`` when the block succeeds.

    The file gets the mode a plain ``open`` would give it (0666 less the umask), not mkstemp's 0600:
    colleagues on a shared server must be able to read predictions. ``ext`` ends the temporary name
    (e.g. ``.nii.gz`` for writers that pick the format from the name).
    """
    path = Path(path)
    make_dir(path.parent)
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{path.name}.nastk-{os.getpid()}@{_host()}.", suffix=f".tmp{ext}", dir=path.parent
        )
    except OSError as exc:
        raise output_error(path, exc) from None
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete this module's temporaries in ``folder`` whose writer (a process on this host) is gone.

    A killed writer leaves its temporary behind; a live one (another worker, another run) and any
    file written on another host of a shared file system are left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    host = _host()
    for entry in folder.iterdir():
        match = _TEMP.match(entry.name)
        if not match or match["host"] != host or _alive(int(match["pid"])) or not entry.is_file():
            continue
        try:
            entry.unlink()
        except FileNotFoundError:
            continue
        removed.append(entry)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary folder next to ``path`` to fill; it replaces ``path`` (the whole folder) when the block
    succeeds, in one step where the system can swap two folders (Linux), so a reader or a crash sees the
    old folder or the new one, never a mix of both. On failure the temporary folder is removed and
    ``path`` is left as it was. Temporary folders of killed writers on this host are removed first."""
    path = Path(path)
    make_dir(path.parent)
    host = _host()
    for entry in path.parent.iterdir():  # what a killed writer left
        match = _TEMP.match(entry.name)
        if match and entry.name.startswith(f".{path.name}.") and entry.is_dir():
            if match["host"] == host and not _alive(int(match["pid"])):
                _remove_tree(entry)
    try:
        tmp = Path(
            tempfile.mkdtemp(
                prefix=f".{path.name}.nastk-{os.getpid()}@{host}.", suffix=".tmp", dir=path.parent
            )
        )
    except OSError as exc:
        raise output_error(path, exc) from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if not path.exists():
            os.rename(tmp, path)
        elif _exchange(tmp, path):
            _remove_tree(tmp)  # now the old folder
        else:  # two renames: a crash between them leaves the old folder under its temporary name
            old = Path(
                tempfile.mkdtemp(
                    prefix=f".{path.name}.nastk-{os.getpid()}@{host}.", suffix=".tmp", dir=path.parent
                )
            )
            os.rename(path, old / path.name)
            os.rename(tmp, path)
            _remove_tree(old)
    except OSError as exc:
        _remove_tree(tmp)
        raise output_error(path, exc) from None
    except BaseException:
        _remove_tree(tmp)
        raise


def read_json(path: str | Path, top: type = dict, missing: str = "file not found") -> object:
    """A JSON file's content, or a one-line ``DataError`` naming the file: ``missing`` when it is absent,
    unreadable, not JSON (with the line), or a top level that is not ``top`` (dict or list)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: {missing}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, top):
        raise DataError(f"{path}: top level must be {'an object' if top is dict else 'a list'}")
    return data
