"""Progress for long work: a rich bar on a terminal, plain lines otherwise (CI, nohup), nothing if quiet."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")


def track(items: Iterable[T], total: int, description: str, quiet: bool = False) -> Iterator[T]:
    if quiet or total == 0:
        yield from items
        return
    if sys.stderr.isatty():
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=False) as bar:
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
