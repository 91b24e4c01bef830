"""Typed errors. Library code raises these; only the CLI turns them into exit code 2."""

from __future__ import annotations


class NastkError(Exception):
    """Base class for every error a user can cause and fix."""


class SpecError(NastkError):
    """A spec file is malformed or names something that does not exist.

    ``problems`` holds (dotted field path, message) pairs so the CLI can print a table.
    """

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file = str(file)
        self.problems = problems
        first = problems[0] if problems else ("", "invalid spec")
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{self.file}: {first[0] or '<root>'}: {first[1]}{more}")


class PluginError(NastkError):
    """A plugin name is unknown, ambiguous, or its entry point fails to import."""


class DataError(NastkError):
    """Input data (a file, an array, an architecture) is missing or malformed."""


class OutputError(NastkError):
    """An output cannot be written: no space left, or a folder that cannot be created."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (whitespace collapsed), cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


PREEMPTED_EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL: "try again later"


class Preempted(Exception):  # noqa: N818 - not an error: a run asked to stop
    """SIGTERM or SIGUSR1 stopped a training run after a checkpoint; the same command continues it.

    Not a :class:`NastkError`: the CLI exits with :data:`PREEMPTED_EXIT_CODE`, not 2.
    """
