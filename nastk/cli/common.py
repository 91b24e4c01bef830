"""What every command shares: the typer app, the consoles, spec loading and the run options."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from nastk.errors import DataError, NastkError, SpecError

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Declarative neural architecture search for 3D medical image segmentation.",
)


def _print_version(value: bool) -> None:
    if value:
        from nastk import __version__

        print(f"nastk {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print nastk's version and exit."
        ),
    ] = False,
) -> None:
    """Declarative neural architecture search for 3D medical image segmentation."""


class Amp(str, Enum):
    """Mixed precision; an Enum so that --help and shell completion list the choices."""

    off = "off"
    bf16 = "bf16"
    fp16 = "fp16"


class ModelFile(str, Enum):
    """Which model file of each fold predict and export use."""

    final = "final"
    best = "best"


class Missing(str, Enum):
    """What report does with a reference case that has no prediction."""

    error = "error"
    empty = "empty"


class SynthTask(str, Enum):
    """Which synthetic task ``nastk synth`` writes (``nastk.data.synthetic``)."""

    body = "body"
    head = "head"
    extraction = "extraction"


class Logger(str, Enum):
    """Where search and retrain also send their log rows (``nastk.trackers.LOGGERS``; a test keeps the two
    equal: the CLI must not import the library to build its options)."""

    csv = "csv"
    tensorboard = "tensorboard"
    mlflow = "mlflow"


class ExportFormat(str, Enum):
    """nastk export's formats (``nastk.export.FORMATS``, kept equal by a test)."""

    torchscript = "torchscript"
    pt2 = "pt2"
    onnx = "onnx"


def _plain(value):
    """An option's value as the library takes it: an Enum choice as its string."""
    return value.value if isinstance(value, Enum) else value


# Wide when piped (CI logs, nohup) so tables and paths are never cut.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _load_spec(path: Path, overrides: list[str] | None = None):
    """Load and validate a spec with its --set overrides; print what it warns about on stderr (e.g. a
    budget that never binds)."""
    from nastk.spec import load_spec

    resolved = load_spec(path, overrides or ())
    for field, message in resolved.warnings:
        err.print(f"warning: {path}: {field}: {message}", markup=False, highlight=False, soft_wrap=True)
    return resolved


def _run_options(out_path: Path, flags: dict) -> object:
    """RunOptions for search and retrain from a command's parameters (``locals()``): those named as its
    fields, ``compile_net`` as ``compile``; ``amp`` checked here, where both commands pass it."""
    from dataclasses import fields

    from nastk.device import check_device_text
    from nastk.engine.options import RunOptions

    flags = {**{k: _plain(v) for k, v in flags.items()}, "compile": flags.get("compile_net", False)}
    kw = {f.name: flags[f.name] for f in fields(RunOptions) if f.name in flags and f.name != "out"}
    check_device_text(kw.get("device"))
    if kw.get("resume") and kw.get("auto_resume"):
        raise DataError(
            "--resume and --auto-resume: pass one (--resume refuses a run without a checkpoint, "
            "--auto-resume starts one)"
        )
    if kw.get("amp") not in ("off", "bf16", "fp16"):
        raise DataError(f"--amp: {kw.get('amp')!r} is not one of off, bf16, fp16")
    return RunOptions(out=out_path, **kw)


AmpOption = Annotated[Amp, typer.Option(help="Mixed precision (fp16 with a grad scaler).")]
DeviceOption = Annotated[
    str | None,
    typer.Option(help="cpu, cuda or cuda:N (default: cuda where available, else cpu)."),
]
SpecArgument = Annotated[
    Path,
    typer.Argument(
        help="Spec YAML file. A relative dataset.root is read from the working directory if it exists "
        "there, else from the spec's folder; the cache goes to $NASTK_CACHE when set."
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Set a spec field for this run, e.g. search.batch_size=2 (repeatable; YAML values, "
        "validated; see docs/specs.md).",
    ),
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        metavar="N",
        help="CPU threads, fixed for the run (default: $OMP_NUM_THREADS, else the cores this process may "
        "use; training and prediction use fewer while other processes keep some busy: "
        "docs/troubleshooting.md).",
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or lines.")]
ChannelsLastOption = Annotated[bool, typer.Option("--channels-last", help="channels_last_3d memory format.")]
DeterministicOption = Annotated[
    bool, typer.Option("--deterministic", help="Deterministic algorithms (same spec, same result).")
]
WorkersOption = Annotated[
    int | None, typer.Option(min=0, metavar="N", help="Data-loader workers (default: dataset.num_workers).")
]
AutoResumeOption = Annotated[
    bool,
    typer.Option(
        "--auto-resume",
        help="Continue from the checkpoint when there is one (same spec), else start and say so; a "
        "finished run is left as it is (exit 0). The one command line for the first launch and every "
        "restart (docs/running-at-scale.md).",
    ),
]
CompileOption = typer.Option(
    "--compile",
    help="torch.compile the training network (mainly for GPUs: the first steps spend minutes compiling).",
)


def _print_error(exc: NastkError) -> None:
    if isinstance(exc, SpecError):
        table = Table(title=f"invalid spec: {exc.file}", title_justify="left")
        table.add_column("field")
        table.add_column("problem")
        table.add_column("file")
        for field, message in exc.problems:
            table.add_row(field or "<root>", message, exc.file)
        err.print(table)
    else:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)


def _print_usage_error(exc) -> None:
    """A click usage error (unknown option or choice, a value out of range) as one line naming the command."""
    where = exc.ctx.command_path if exc.ctx is not None else "nastk"
    message = " ".join(exc.format_message().replace("Value error, ", "").split())  # pydantic's prefix
    err.print(
        f"error: {where}: {message} (see {where} --help)", markup=False, highlight=False, soft_wrap=True
    )


def _set_threads(threads: int | None) -> None:
    from nastk.threads import set_threads

    set_threads(threads)
