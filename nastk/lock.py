"""An exclusive lock on a run directory: two runs writing into one would overwrite each other's results.

The lock is a POSIX record lock (``fcntl``) on ``RUN/.nastk.lock``, which holds the holder's PID for the
error message. The kernel drops the lock when its process dies, however it dies, so a file left behind
by a killed run does not block ``--resume``; and the lock is not inherited by forked data-loader workers.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nastk.errors import OutputError
from nastk.io import make_dir, output_error

LOCK_NAME = ".nastk.lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _acquire(path: Path, option: str = "--out") -> int:
    """An open descriptor of ``path`` holding its lock, with our PID written into it."""
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise output_error(path, exc) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise output_error(path, exc) from None
            raise OutputError(
                f"{path.parent}: another nastk process (pid {_holder(path)}) is using this folder "
                f"(lock {path}); wait for it to finish, or use another {option}"
            ) from None
        # The previous holder unlinks the file when it finishes: if it did so between our open and
        # our lock, we hold a lock on a file nobody else will see. Retry on the new one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise OutputError(f"{path}: could not take the lock (it keeps being replaced)")


def _missing_dirs(path: Path) -> list[Path]:
    """The folders ``mkdir -p path`` would create, outermost first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing[::-1]


@contextmanager
def run_lock(run: str | Path, option: str = "--out") -> Iterator[Path]:
    """Hold the lock on ``run`` (created if needed) for the block; ``option``: what the refusal suggests
    changing (predict locks its ``--output``).

    On the way out the lock file is removed, and so are the folders this call created if the run
    left them empty: a run refused for bad input leaves nothing behind.
    """
    run = Path(run)
    created = _missing_dirs(run)
    path = run / LOCK_NAME
    try:
        make_dir(run)
        fd = _acquire(path, option)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield run
    finally:
        path.unlink(missing_ok=True)  # while still holding the lock; see _acquire
        os.close(fd)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:  # not empty: the run wrote something
            return
