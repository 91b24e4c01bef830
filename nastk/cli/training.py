"""The two long jobs: search and retrain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nastk.cli.common import (
    Amp,
    AutoResumeOption,
    ChannelsLastOption,
    CompileOption,
    DeterministicOption,
    DeviceOption,
    Logger,
    QuietOption,
    SetOption,
    SpecArgument,
    ThreadsOption,
    WorkersOption,
    _load_spec,
    _plain,
    _run_options,
    _set_threads,
    app,
    out,
)

LoggerOption = Annotated[
    Logger,
    typer.Option(
        metavar="NAME",
        help="csv, tensorboard or mlflow: where log rows go besides the CSV (csv: nowhere else); "
        "tensorboard and mlflow need the extra of their name (README).",
    ),
]


def _job_spec(spec: Path, set_fields, logger: Logger, threads: int | None):
    """What search and retrain do first: refuse a --logger whose extra is not installed before any work
    (typer refuses an unknown one), size the thread pools, and load the spec with its --set overrides."""
    from nastk.trackers import check_logger

    check_logger(_plain(logger))
    _set_threads(threads)
    return _load_spec(spec, set_fields)


@app.command()
def search(
    spec: SpecArgument,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default runs/<spec name>).")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue from RUN/search/checkpoint.pt; refuse when there is none."),
    ] = False,
    auto_resume: AutoResumeOption = False,
    quiet: QuietOption = False,
    device: DeviceOption = None,
    amp: Annotated[
        Amp | None, typer.Option(help="Mixed precision (fp16 with a grad scaler); default: search.amp.")
    ] = None,
    channels_last: ChannelsLastOption = False,
    checkpoint_cells: Annotated[
        bool,
        typer.Option("--checkpoint-cells", help="Recompute every cell in backward: search.recompute all."),
    ] = False,
    compile_net: Annotated[bool, CompileOption] = False,
    deterministic: DeterministicOption = False,
    workers: WorkersOption = None,
    logger: LoggerOption = Logger.csv,
    set_fields: SetOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Differentiable topology + cell search (Sec. 3.6), then decode to RUN/arch.json."""
    from nastk.engine.search import run_search

    resolved = _job_spec(spec, set_fields, logger, threads)
    amp = _plain(amp) or resolved.search.amp
    run = out_path or Path("runs") / resolved.name
    opts = _run_options(run, locals())
    run_search(resolved, opts)


@app.command()
def retrain(
    spec: SpecArgument,
    arch: Annotated[Path, typer.Option(help="arch.json to train (e.g. RUN/arch.json).")],
    fold: Annotated[str, typer.Option(help="Fold index K, or 'all'.")] = "0",
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default: arch.json's folder).")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue each fold from its checkpoint.pt (a fold without one starts)."
        ),
    ] = False,
    auto_resume: AutoResumeOption = False,
    quiet: QuietOption = False,
    device: DeviceOption = None,
    amp: Annotated[
        Amp | None,
        typer.Option(help="Mixed precision (fp16 with a grad scaler); default: retrain.amp."),
    ] = None,
    channels_last: ChannelsLastOption = False,
    compile_net: Annotated[bool, CompileOption] = False,
    deterministic: DeterministicOption = False,
    workers: WorkersOption = None,
    logger: LoggerOption = Logger.csv,
    set_fields: SetOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Retrain the discrete network of an arch.json on one fold or all (Sec. 4.1)."""
    from nastk.device import check_device_text
    from nastk.engine.retrain import load_architecture, parse_folds, run_retrain

    resolved = _job_spec(spec, set_fields, logger, threads)
    check_device_text(device)
    amp = _plain(amp) or resolved.retrain.amp  # both are choices of off, bf16, fp16 (enum, spec Literal)
    load_architecture(resolved, arch)  # fail before writing anything
    parse_folds(fold, resolved.dataset.num_folds)
    opts = _run_options(out_path or arch.parent, locals())
    for path in run_retrain(resolved, arch, fold, opts):
        out.print(f"fold done: {path}", highlight=False)
