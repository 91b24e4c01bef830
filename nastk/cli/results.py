"""Commands that use a trained run: predict, report; and the quickstart that runs everything."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nastk.cli.common import (
    DeviceOption,
    Missing,
    ModelFile,
    SetOption,
    ThreadsOption,
    _plain,
    _set_threads,
    app,
    out,
)
from nastk.errors import DataError


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run directory with retrain/fold_K/ models and spec.yaml.")],
    input_path: Annotated[
        Path, typer.Option("--input", help="Folder of images, or a dataset.json (its test list).")
    ],
    output: Annotated[
        Path | None, typer.Option(help="Where to write CASE.nii.gz (default RUN/predictions).")
    ] = None,
    folds: Annotated[str | None, typer.Option(help="Comma-separated folds (default: all retrained).")] = None,
    model: Annotated[ModelFile, typer.Option(help="Which model file of each fold.")] = ModelFile.final,
    spec: Annotated[Path | None, typer.Option(help="Spec (default RUN/spec.yaml).")] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--continue",
            "--auto-resume",
            help="Skip cases already predicted (--auto-resume: the same, named as in search and retrain).",
        ),
    ] = False,
    device: DeviceOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    set_fields: SetOption = None,
    save_probabilities: Annotated[
        bool,
        typer.Option(
            "--save-probabilities",
            help="Also write CASE.npz: the folds' mean class probabilities on the original grid "
            "('probabilities', [K, X, Y, Z] float16).",
        ),
    ] = False,
    disable_tta: Annotated[
        bool, typer.Option("--disable-tta", help="No flip test-time augmentation (inference.flip_tta).")
    ] = False,
    threads: ThreadsOption = None,
) -> None:
    """Sliding-window inference with the fold ensemble; NIfTI out in each case's original geometry."""
    from nastk.device import check_device_text
    from nastk.inference.predict import PredictOptions, run_predict
    from nastk.spec import load_spec

    check_device_text(device)
    _set_threads(threads)
    try:
        fold_list = [int(k) for k in folds.split(",")] if folds else None
    except ValueError:
        raise DataError(f"--folds: {folds!r} is not a comma-separated list of fold indices") from None
    from nastk.inference.predict import postprocessing_classes

    resolved = load_spec(spec or run / "spec.yaml", set_fields or ())
    options = PredictOptions(
        output or run / "predictions",
        fold_list,
        model.value,
        resume,
        device,
        quiet,
        save_probabilities=save_probabilities,
        disable_tta=disable_tta,
    )
    written = run_predict(resolved, run, input_path, options)
    out.print(postprocessing_classes(resolved, run)[1], markup=False, highlight=False, soft_wrap=True)
    out.print(f"{len(written)} predictions in {output or run / 'predictions'}", highlight=False)


@app.command(short_help="Tables and figures of runs at every stage, or of a --pred folder against --ref.")
def report(
    runs: Annotated[
        list[Path] | None, typer.Argument(metavar="RUN...", help="Run directories to evaluate and rank.")
    ] = None,
    pred: Annotated[Path | None, typer.Option(help="Any folder of predictions (instead of runs).")] = None,
    ref: Annotated[Path | None, typer.Option(help="Reference labels: a folder or a dataset.json.")] = None,
    tolerance: Annotated[
        list[str] | None,
        typer.Option(metavar="CLASS=MM", help="NSD tolerance in mm of a class (repeatable)."),
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Report folder.")] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="'paper': the paper's Table 1 rows next to the cross-validation table, Table 2's "
            "next to the test table.",
        ),
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="MSD task name for --reference (default: dataset name).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    missing: Annotated[
        Missing,
        typer.Option(
            help="Reference cases without a prediction: an error, or scored as empty predictions "
            "(the leaderboard says which cases)."
        ),
    ] = Missing.error,
) -> None:
    """What each run has, at every stage: architectures (Table 1), search curves, the cross-validation
    table, the test leaderboard (Table 2); or a --pred folder scored against --ref. Says what it skipped."""
    from nastk.report.command import ReportOptions, parse_tolerances, run_report

    if reference not in (None, "paper"):
        raise DataError(f"--reference: {reference!r} is not 'paper'")
    options = ReportOptions(
        parse_tolerances(tolerance or []), out_dir, reference == "paper", task, quiet, _plain(missing)
    )
    result = run_report(list(runs or []), pred, ref, options)
    out.print(result.text, markup=False, highlight=False, soft_wrap=True)
    out.print(f"wrote {', '.join(str(p) for p in result.paths.values())}", highlight=False)


@app.command()
def quickstart(
    spec: Annotated[Path, typer.Option(help="Tiny CPU spec.")] = Path("specs/quickstart.yaml"),
    out_dir: Annotated[Path, typer.Option("--out", help="Where everything goes.")] = Path("nastk-quickstart"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Less progress output.")] = False,
    threads: ThreadsOption = None,
) -> None:
    """Synthetic task -> search -> decode -> retrain 2 folds -> predict -> report, in minutes on a CPU."""
    from nastk.quickstart import run_quickstart

    _set_threads(threads)
    run_quickstart(
        spec, out_dir, quiet=quiet, echo=lambda text: out.print(text, markup=False, highlight=False)
    )
