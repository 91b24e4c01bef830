"""CPU threads a process may use, so that nastk is a good neighbour on a shared machine.

torch sizes its intra-op pool from the machine's cores; a process pinned to fewer cores (``taskset``, a
scheduler's affinity) or held to a CPU quota (a container's cgroup ``cpu.max``) then runs more threads than
it gets cores, and they wait on each other. nastk sizes the pool from what the process may really use,
split over the processes torchrun starts on the node, unless the user chose (``--threads N``, or
``OMP_NUM_THREADS``, which torch already honours).

Other processes on the same cores are the second half (docs/troubleshooting.md, bench/README.md). torch's
OpenMP threads (libgomp) spin for a while at the end of every parallel region instead of sleeping, which
makes two threads on two idle cores fast, but a process whose threads outnumber the cores it really gets
waits at every region for a thread the scheduler has parked, while the spinning burns the cores the other
processes need: four processes of two threads each on two cores took 24x as long as one, not 4x. So while
a training loop or a prediction's case loop runs, :class:`ThreadGovernor` measures every few seconds how
many cores other processes keep busy and runs only as many threads as are left (at least one): two nastk
runs settle on one thread each. It is off when the user chose the number of threads, and under
``--deterministic``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nastk.errors import DataError

CGROUP = Path("/sys/fs/cgroup")
PROC_STAT = Path("/proc/stat")
GOVERNOR_INTERVAL_S = 5.0  # long enough to average over many steps, short against a run's minutes
GOVERNOR_FIRST_S = 1.0  # the first look comes sooner: runs that start together should not spin for 5 s

# The thread count nastk chose itself (set_threads without --threads or OMP_NUM_THREADS); None when the
# user chose one, or nothing was set: only then may a training loop govern the pool.
_chosen_by_nastk: int | None = None


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
    global _chosen_by_nastk
    if threads is not None and threads < 1:
        raise DataError(f"--threads: {threads} must be at least 1")
    _chosen_by_nastk = None
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return None
    import SimpleITK as sitk
    import torch

    n = threads if threads is not None else default_threads()
    torch.set_num_threads(n)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    _chosen_by_nastk = None if threads is not None else n
    return n


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds at one moment: ``busy`` of the cores this process may use (every process on them),
    ``own`` of this process (all its threads), both against the same ``wall`` clock."""

    wall: float
    busy: float
    own: float


def others_busy(before: CpuSample, after: CpuSample) -> float:
    """Cores kept busy by other processes between two samples (their CPU seconds per wall second)."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    return max(0.0, ((after.busy - before.busy) - (after.own - before.own)) / wall)


def fair_threads(usable: int, ceiling: int, others: float) -> int:
    """Threads for the cores the other processes leave free (rounded), at most ``ceiling``, at least one."""
    return max(1, min(ceiling, math.floor(usable - others + 0.5)))


def busy_seconds(stat: Path = PROC_STAT, root: Path = CGROUP) -> float | None:
    """CPU seconds spent busy so far where this process may run: its cgroup's usage when a quota holds
    (other tenants of the host are not our neighbours then), else the busy time of its affinity's cores
    in ``/proc/stat`` (idle and iowait excluded). None where neither can be read."""
    if cgroup_cpu_limit(root) is not None:
        try:
            for line in (root / "cpu.stat").read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "usage_usec":
                    return int(value) / 1e6
        except (OSError, ValueError):
            pass
    try:
        cores = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        ticks = 0
        for line in stat.read_text().splitlines():
            fields = line.split()
            if fields and fields[0] in cores:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
                ticks += user + nice + system + irq + softirq + steal
        return ticks / os.sysconf("SC_CLK_TCK") if ticks else None
    except (AttributeError, OSError, ValueError):
        return None


def cpu_sample() -> CpuSample | None:
    busy = busy_seconds()
    return None if busy is None else CpuSample(time.monotonic(), busy, time.process_time())


class ThreadGovernor:
    """Called after every training step; ``first`` seconds after it starts, then every ``interval`` seconds,
    it sizes torch's pool to the cores other processes leave free (:func:`fair_threads`) and logs a change
    to RUN/log.txt."""

    def __init__(
        self,
        ceiling: int,
        usable: int | None = None,
        interval: float = GOVERNOR_INTERVAL_S,
        first: float = GOVERNOR_FIRST_S,
        sample: Callable[[], CpuSample | None] = cpu_sample,
        apply: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        current: int | None = None,
    ) -> None:
        import torch

        self.ceiling, self.usable = ceiling, usable or usable_cpus()
        self.interval, self.sample, self.clock = interval, sample, clock
        self.wait = min(first, interval)
        self.apply = apply or torch.set_num_threads
        # the pool as it is now: an earlier loop of the same process (the quickstart's search before its
        # retraining) may have left it smaller than the ceiling
        self.threads = current if current is not None else ceiling
        self.last = sample()

    def tick(self, *_: object) -> None:
        if self.last is None or self.clock() - self.last.wall < self.wait:
            return
        now = self.sample()
        if now is None:
            return
        self.wait = self.interval
        others = others_busy(self.last, now)
        self.last = now
        threads = fair_threads(self.usable, self.ceiling, others)
        if threads != self.threads:
            from nastk.logs import record

            record(
                f"threads: {self.threads} -> {threads} ({others:.1f} of {self.usable} cores busy elsewhere)"
            )
            self.apply(threads)
            self.threads = threads


def thread_governor() -> ThreadGovernor | None:
    """A governor for a training loop, when nastk chose the thread count and results need not be
    bit-reproducible (``--deterministic`` fixes the count: a different split can change float sums)."""
    import torch

    if _chosen_by_nastk is None or torch.are_deterministic_algorithms_enabled():
        return None
    return ThreadGovernor(_chosen_by_nastk, current=torch.get_num_threads())
