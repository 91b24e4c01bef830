"""Stopping a training run cleanly on SIGTERM or SIGUSR1 (a cluster's preemption or time-limit warning).

A handler only records the signal; the training loop looks at the record after each iteration, all ranks
agree through one small all-reduce (so every rank stops after the same iteration and none waits in a
collective another has left), rank 0 writes a checkpoint, and the run raises
:class:`~nastk.errors.Preempted`, which the CLI turns into exit code 75. Running the same command again
(``--auto-resume``) continues from that checkpoint.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequests:
    """The first stop signal this process received while :func:`stop_requests` was active, if any."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return self.signal.name if self.signal is not None else "no signal"

    def _handle(self, signum: int, frame) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)


@contextmanager
def stop_requests() -> Iterator[StopRequests]:
    """Within the block, SIGTERM and SIGUSR1 are recorded instead of ending the process (main thread only:
    elsewhere, e.g. a test's worker thread, nothing changes and nothing is ever requested)."""
    requests = StopRequests()
    if threading.current_thread() is not threading.main_thread():
        yield requests
        return
    previous = {sig: signal.signal(sig, requests._handle) for sig in STOP_SIGNALS}
    try:
        yield requests
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
