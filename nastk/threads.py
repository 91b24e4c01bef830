"""CPU threads a process may use, so that nastk is a good neighbour on a shared machine.

torch sizes its intra-op pool from the machine's cores; a process pinned to fewer cores (``taskset``, a
scheduler's affinity) or held to a CPU quota (a container's cgroup ``cpu.max``) then runs more threads than
it gets cores, and they wait on each other. nastk sizes the pool from what the process may really use,
split over the processes torchrun starts on the node, unless the user chose (``--threads N``, or
``OMP_NUM_THREADS``, which torch already honours).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from nastk.errors import DataError

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """The CPU quota in cores (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus(root: Path = CGROUP) -> int:
    """Cores this process may run on: its affinity, capped by the cgroup quota (rounded up), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def default_threads(root: Path = CGROUP) -> int:
    """Usable cores shared by torchrun's processes on this node (``LOCAL_WORLD_SIZE``)."""
    try:
        local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_world = 1
    return max(1, usable_cpus(root) // local_world)


def set_threads(threads: int | None) -> int | None:
    """Size torch's (and SimpleITK's) thread pools: ``threads`` when given; else leave a user's
    ``OMP_NUM_THREADS`` alone; else :func:`default_threads`. Returns the number set, None when left alone."""
    if threads is not None and threads < 1:
        raise DataError(f"--threads: {threads} must be at least 1")
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return None
    import SimpleITK as sitk
    import torch

    n = threads if threads is not None else default_threads()
    torch.set_num_threads(n)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    return n
