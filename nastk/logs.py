"""Messages of a command: rich's handler on a terminal, plain timestamped lines otherwise (CI, nohup),
and every message of a run also appended to ``RUN/log.txt`` once the run writes its outputs.

Progress bars are not messages: they stay in :mod:`nastk.progress`.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nastk.errors import NastkError
from nastk.io import make_dir

LOG_FILE = "log.txt"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
logger = logging.getLogger("nastk")


def console_handler(quiet: bool) -> logging.Handler:
    """Rich's handler where stderr is a terminal, plain lines otherwise; warnings only with ``quiet``."""
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    handler.addFilter(lambda record: getattr(record, "console", True))
    return handler


def record(message: str) -> None:
    """A message for ``RUN/log.txt`` only (what ran, from where, to where): the console stays as it was."""
    logger.info(message, extra={"console": False})


class _QuietFile(logging.FileHandler):
    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        """A log line that cannot be written (a full disk) is dropped: it must not fail or garble a run."""


class _RunFile(logging.handlers.MemoryHandler):
    """Holds a run's messages until the run writes its first output, then appends them (and every later
    one) to ``RUN/log.txt``; a run refused before writing anything leaves no log behind."""

    def __init__(self) -> None:
        super().__init__(capacity=10_000, flushLevel=logging.CRITICAL + 1, flushOnClose=False)
        self.setLevel(logging.INFO)

    def shouldFlush(self, record: logging.LogRecord) -> bool:  # noqa: N802 - logging's name
        return self.target is not None

    def open(self, run: Path) -> None:
        if self.target is not None:
            return
        try:
            target = _QuietFile(make_dir(run) / LOG_FILE, encoding="utf-8")
        except (OSError, NastkError):  # e.g. predicting from a read-only run: the messages still print
            return
        target.setFormatter(logging.Formatter(PLAIN_FORMAT))
        self.setTarget(target)
        self.flush()

    def close(self) -> None:
        if self.target is not None:
            self.target.close()
        super().close()


def start_log_file(run: Path) -> None:
    """From now on (and for what was logged since the run began) append this run's messages to
    ``RUN/log.txt``; nothing outside :func:`run_log` or on a rank other than 0."""
    for handler in logger.handlers:
        if isinstance(handler, _RunFile):
            handler.open(Path(run))


@contextmanager
def run_log(quiet: bool, enabled: bool = True) -> Iterator[None]:
    """Within the block, nastk's messages go to the console, and to ``RUN/log.txt`` once
    :func:`start_log_file` names the run.

    ``enabled`` false (a rank other than 0) logs nothing, so a DDP run writes each message once.
    """
    if not enabled:
        yield
        return
    handlers = [console_handler(quiet), _RunFile()]
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False  # our handlers print it; the root's would print it twice
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)
        logger.propagate = propagate
