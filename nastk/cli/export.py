"""``nastk export``: a run's retrained networks as files that run without nastk."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nastk.cli.common import ExportFormat, ModelFile, _load_spec, _plain, app, out
from nastk.errors import DataError


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory with retrain/fold_K/ models and spec.yaml.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="File format (onnx: nastk\\[export]).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for fold_K/model.* and inference.json.")],
    fold: Annotated[str, typer.Option(help="Fold index K, or 'all'.")] = "all",
    model: Annotated[ModelFile, typer.Option(help="Which model of each fold.")] = ModelFile.final,
    spec: Annotated[Path | None, typer.Option(help="Spec (default RUN/spec.yaml).")] = None,
) -> None:
    """Each fold's network as a file that runs without nastk, and inference.json.

    Formats: TorchScript, torch.export (pt2) or ONNX.
    inference.json: spacing, orientation, normalisation, windows, classes and
    post-processing, all needed to use the network as `nastk predict` does."""
    from nastk.export import export_run

    spec_path = spec or run / "spec.yaml"
    if not spec_path.is_file():
        raise DataError(f"{spec_path}: not found (is {run} a run directory?)")
    written = export_run(_load_spec(spec_path), run, out_dir, _plain(fmt), fold, _plain(model))
    out.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)
