"""Progress for long work: a rich bar on a terminal, plain lines otherwise (CI, nohup), nothing if quiet.

Three shapes: :func:`track` over a list of items, :class:`CaseBars` over cases with a bar per case's
windows, and :class:`Reporter` over training iterations with a phase and a loss.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")


def _columns() -> tuple:
    """Description, bar, done/total and time left: the columns every bar shows."""
    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())


def track(items: Iterable[T], total: int, description: str, quiet: bool = False) -> Iterator[T]:
    if quiet or total == 0:
        yield from items
        return
    if sys.stderr.isatty():
        with Progress(*_columns(), transient=False) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task)
        return
    start, step = time.monotonic(), max(1, total // 10)
    for done, item in enumerate(items, 1):
        yield item
        if done % step == 0 or done == total:
            print(
                f"{description}: {done}/{total} ({time.monotonic() - start:.1f} s)",
                file=sys.stderr,
                flush=True,
            )


class CaseBars:
    """A bar over the cases and, on a terminal, one over each case's windows; plain lines otherwise."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet = total, quiet
        self.rich = not quiet and sys.stderr.isatty()
        self.progress = None

    def cases(self, cases):
        if not self.rich:
            yield from track(cases, self.total, "predict", self.quiet)
            return
        with Progress(*_columns()) as p:
            self.progress = p
            overall = p.add_task("cases", total=self.total)
            for case in cases:
                yield case
                p.advance(overall)

    def windows(self, case_id: str):
        if self.progress is None:
            return None
        task = self.progress.add_task(f"  {case_id}", total=None)

        def update(done: int, total: int) -> None:
            self.progress.update(task, completed=done, total=total, visible=done < total)

        return update


class Reporter:
    """Rich progress on a terminal (rank 0), plain lines otherwise, nothing with --quiet."""

    def __init__(self, total: int, start: int, enabled: bool, quiet: bool, title: str):
        self.enabled = enabled and not quiet
        self.total, self.title = total, title
        self.bar = None
        self.started = time.monotonic()
        self.start = start
        if self.enabled and sys.stderr.isatty():
            self.bar = Progress(*_columns(), TextColumn("{task.fields[info]}"))
            self.bar.start()
            self.task = self.bar.add_task(title, total=total, completed=start, info="")

    def update(self, iteration: int, phase: str, info: str, line: bool) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(
                self.task, completed=iteration + 1, description=f"{self.title} [{phase}]", info=info
            )
        elif line:
            done = iteration + 1 - self.start
            rate = done / max(time.monotonic() - self.started, 1e-9)
            eta = (self.total - iteration - 1) / max(rate, 1e-9)
            print(
                f"{self.title} {iteration + 1}/{self.total} [{phase}] {info} eta {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
