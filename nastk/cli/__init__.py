"""The ``nastk`` command line. One thin function per command; the work lives in the library.

Errors a user can fix (``NastkError``) print one line, or a table for a spec, on stderr and exit
with code 2, never with a traceback. A training run stopped by SIGTERM or SIGUSR1 after writing its
checkpoint (``Preempted``) prints one line and exits with code 75.
"""

from __future__ import annotations

import sys

import typer

# Importing the command modules registers their commands on the app, in this order (the order of --help).
# isort: off
from nastk.cli import specs, architectures, data, training, results, export  # noqa: F401

# isort: on
from nastk.cli.common import _print_error, _print_usage_error, app
from nastk.errors import PREEMPTED_EXIT_CODE, NastkError, Preempted

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    # Not standalone, so that usage errors (an unknown choice, a value out of range) reach us and print one
    # line like every other bad input, not click's usage box; --help, --version and Ctrl-C (130) come back
    # as exit codes.
    try:
        code = app(args=argv, prog_name="nastk", standalone_mode=False)
    except NastkError as exc:
        _print_error(exc)
        sys.exit(2)
    except Preempted as exc:  # SIGTERM/SIGUSR1: checkpointed; the same command continues (docs: 75)
        print(exc, file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
    except typer.Abort:  # end of input at a prompt
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        # click's exceptions, by name: typer >= 0.22 ships its own copy of click, older typer uses click's
        if not _is_a(exc, "ClickException"):
            raise
        if _is_a(exc, "NoArgsIsHelpError"):  # `nastk` or `nastk CMD` alone: the help is already printed
            sys.exit(exc.exit_code)
        if _is_a(exc, "UsageError"):
            _print_usage_error(exc)
        else:
            exc.show()
        sys.exit(exc.exit_code)
    if isinstance(code, int) and code:
        sys.exit(code)


def _is_a(exc: BaseException, class_name: str) -> bool:
    return any(k.__name__ == class_name for k in type(exc).__mro__)
