"""The ``nastk`` command line. One thin function per command; the work lives in the library.

Errors a user can fix (``NastkError``) print one line, or a table for a spec, on stderr and exit
with code 2, never with a traceback.
"""

from __future__ import annotations

import sys

# Importing the command modules registers their commands on the app, in this order (the order of --help).
# isort: off
from nastk.cli import specs, architectures, data, training, results, export  # noqa: F401

# isort: on
from nastk.cli.common import _print_error, app
from nastk.errors import NastkError

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    # Typer handles usage errors itself (exit code 2); ours surface here as typed exceptions.
    try:
        app(args=argv, prog_name="nastk")
    except NastkError as exc:
        _print_error(exc)
        sys.exit(2)
