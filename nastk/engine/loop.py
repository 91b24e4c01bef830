"""The training-loop skeleton that search and retrain share.

Both commands do the same around their steps: refuse to overwrite or to resume nothing, preprocess on
rank 0 while the others wait, resume from a checkpoint made with the same spec, checkpoint every
``checkpoint_every`` iterations, every ``checkpoint_minutes`` of wall-clock time (rank 0's clock) and at
the end, stop every rank together on a non-finite loss or on SIGTERM/SIGUSR1 (after a checkpoint, see
:mod:`nastk.engine.stop`), and log a row every ``log_every`` iterations. What differs (the step and its
schedule) is a :class:`Step`.

Every log row gets two wall-clock columns, ``time`` (seconds since the run started, continued across
``--resume`` from the last logged time) and ``s_per_it`` (seconds per iteration since the previous row,
validation included), and goes to the run's tracker as well as to the CSV.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from nastk import checkpoint as ckpt
from nastk.data.preprocess import preprocess
from nastk.engine import distributed as dd
from nastk.engine.common import CsvLog, TrainingError
from nastk.engine.stop import StopRequests
from nastk.errors import NastkError, Preempted
from nastk.io import remove_stale_temps
from nastk.logs import record
from nastk.progress import Reporter
from nastk.spec import Spec
from nastk.threads import thread_governor
from nastk.trackers import NullTracker, Tracker


def guard_run(folders: list[Path], refusals: list[tuple[bool, str]], dist: dd.Dist) -> None:
    """On rank 0: clear temporary files a killed run left, then refuse the first condition that holds."""
    if not dist.is_main:
        return
    for folder in folders:
        remove_stale_temps(folder)
    for refused, message in refusals:
        if refused:
            raise NastkError(message)


def resuming(opts, ckpt_path: Path, dist: dd.Dist) -> bool:
    """Whether a run continues from ``ckpt_path``: always with ``--resume`` (which refuses a missing one),
    with ``--auto-resume`` when it exists. Rank 0 looks, every rank gets its answer."""
    if not opts.auto_resume:
        return opts.resume
    return bool(dd.from_main(ckpt_path.is_file(), dist))


def prepared_cache(spec: Spec, dist: dd.Dist, quiet: bool):
    """Rank 0 preprocesses (cached), the others wait and then find it done."""
    if dist.is_main:
        cache = preprocess(spec.dataset, seed=spec.seed, quiet=quiet)
    dd.barrier(dist)
    if not dist.is_main:
        cache = preprocess(spec.dataset, seed=spec.seed, quiet=True)
    return cache


def batches(loader) -> Iterator:
    """``iter(loader)`` without a draw from the global RNG (a DataLoader's iterator draws its base seed
    there), so that a resumed run's RNG, restored before, goes on as the uninterrupted run's did."""
    with torch.random.fork_rng(devices=[]):
        return iter(loader)


def resume_state(path: Path, spec: Spec, parts: dict[str, Any], extra: tuple[str, ...], total: int):
    """Restore ``parts`` and every RNG from the checkpoint at ``path``; returns (state, start iteration).

    A checkpoint of another spec is refused: resuming must give the uninterrupted run's result.
    """
    state = ckpt.load(path, required=(*parts, *extra, "rng", "iteration", "spec_hash"))
    if state["spec_hash"] != ckpt.spec_hash(spec):
        raise NastkError(f"{path}: the spec changed since this checkpoint; resume with the same spec")
    start = ckpt.iteration(path, state, total)
    ckpt.restore(path, state, parts)
    ckpt.restore_rng(path, state)
    return state, start


def save_checkpoint(
    path: Path, spec: Spec, parts: dict[str, Any], extra: dict[str, Any], iteration: int
) -> None:
    """Every part's state, every RNG, the iteration and the spec's hash, written atomically."""
    state = {name: part.state_dict() for name, part in parts.items()}
    state.update(rng=ckpt.rng_state(), iteration=iteration, **extra, spec_hash=ckpt.spec_hash(spec))
    ckpt.save(path, state)


def stop_if_not_finite(loss: torch.Tensor, iteration: int, dist: dd.Dist, ckpt_path: Path) -> None:
    """Every rank stops together when the segmentation loss is not finite on any of them."""
    bad = not torch.isfinite(loss).item()
    if dd.any_flag(bad, dist):
        where = "" if bad else " on another rank"
        raise TrainingError(
            f"iteration {iteration}: loss term 'L_seg' is not finite{where}; stopped, the last good "
            f"checkpoint is kept ({ckpt_path})"
        )


def is_due(iteration: int, every: int, total: int) -> bool:
    """True after every ``every``-th iteration and after the last."""
    return (iteration + 1) % every == 0 or iteration + 1 == total


def memory_columns(row: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The log row with the peak GPU memory so far, where there is a GPU."""
    if device.type == "cuda":
        row["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def logged_time(log: CsvLog | None) -> float:
    """The ``time`` of the last row a resumed log kept (0 for a new log, or one from before the column)."""
    if log is None or not log.rows:
        return 0.0
    try:
        return float(log.rows[-1].get("time") or 0.0)
    except ValueError:
        return 0.0


class RunClock:
    """Wall-clock seconds of a run, continued from ``offset`` (the last logged time of a resumed run)."""

    def __init__(self, offset: float, first_iteration: int, now: Callable[[], float] = time.monotonic):
        self._now = now
        self._started = now()
        self._offset = offset
        self._last_time, self._last_iteration = offset, first_iteration - 1

    def columns(self, iteration: int) -> dict[str, float]:
        """``time`` and ``s_per_it`` for a row logged after ``iteration`` (counting from the previous row)."""
        elapsed = self._offset + self._now() - self._started
        per_it = (elapsed - self._last_time) / max(1, iteration - self._last_iteration)
        self._last_time, self._last_iteration = elapsed, iteration
        return {"time": elapsed, "s_per_it": per_it}


@dataclass
class StepResult:
    """What one iteration reports: its phase and progress text, and its log row when one is due."""

    phase: str
    info: str
    row: dict[str, Any] | None = None


class Step(Protocol):
    """One training iteration; ``log`` says whether its log row is due (rows can cost a forward)."""

    def __call__(self, iteration: int, log: bool) -> StepResult: ...


@dataclass
class Loop:
    """The iterations ``start .. total-1`` of one run, with its cadences and where it writes."""

    start: int
    total: int
    log_every: int
    checkpoint_every: int
    checkpoint: Callable[[int], None]  # saves at an iteration count (rank 0 writes, all ranks wait)
    log: CsvLog | None  # rank 0 only
    reporter: Reporter
    after_step: list[Callable[[int], None]] = field(default_factory=list)  # e.g. validation
    tracker: Tracker = field(default_factory=NullTracker)  # rank 0's rows also go here
    dist: dd.Dist | None = None  # None: one process
    stop: StopRequests | None = None  # SIGTERM/SIGUSR1 received: checkpoint and raise Preempted
    checkpoint_minutes: float | None = None  # also checkpoint when this much time passed since the last
    checkpoint_path: Path | None = None  # named in the message of a stop
    clock: Callable[[], float] = time.monotonic

    def run(self, step: Step) -> None:
        clock = RunClock(logged_time(self.log), self.start)
        governor = thread_governor()  # None when the user fixed the thread count, or --deterministic
        last_checkpoint = self.clock()
        try:
            for it in range(self.start, self.total):
                line = is_due(it, self.log_every, self.total)
                result = step(it, line)
                if self.log is not None and result.row is not None:
                    row = {**result.row, **clock.columns(it)}
                    self.log.append(row)
                    self.tracker.log_row(row, it)
                self.reporter.update(it, result.phase, result.info, line)
                for hook in self.after_step:
                    hook(it)
                if governor is not None:
                    governor.tick()
                stop, timed = self._agreed_stop_and_time(last_checkpoint)
                if is_due(it, self.checkpoint_every, self.total) or timed or stop:
                    self.checkpoint(it + 1)
                    last_checkpoint = self.clock()
                if stop and it + 1 < self.total:
                    self._stopped(it + 1)
            if self.start >= self.total:  # a finished run resumed: its last checkpoint is written again
                self.checkpoint(self.total)
        finally:
            self.reporter.close()

    def _agreed_stop_and_time(self, last_checkpoint: float) -> tuple[bool, bool]:
        """(stop now, a checkpoint is due by time), the same on every rank: a signal on any rank stops all,
        and rank 0's clock alone decides the time (one all-reduce of two flags per iteration)."""
        dist = self.dist
        main = dist is None or dist.is_main
        timed = (
            main
            and self.checkpoint_minutes is not None
            and self.clock() - last_checkpoint >= 60.0 * self.checkpoint_minutes
        )
        stop = self.stop is not None and self.stop.requested
        if dist is None:
            return stop, timed
        return tuple(dd.any_flags([stop, timed], dist))

    def _stopped(self, iteration: int) -> None:
        name = self.stop.name if self.stop is not None and self.stop.requested else "a signal on another rank"
        where = f" ({self.checkpoint_path})" if self.checkpoint_path is not None else ""
        message = (
            f"stopped by {name} after iteration {iteration} of {self.total}; checkpoint written{where}; "
            "run the same command with --auto-resume to continue"
        )
        record(message)
        raise Preempted(message)
