"""Worker processes for per-case work over a dataset (preprocessing, statistics, fingerprints)."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import SimpleITK as sitk


def _init_worker() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


class _Serial:
    """A stand-in for a process pool when workers <= 1 (debuggable, no fork)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items):
        return map(fn, items)


def _pool(workers: int):
    if workers <= 1:
        return _Serial()
    return ProcessPoolExecutor(max_workers=workers, initializer=_init_worker)


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))
