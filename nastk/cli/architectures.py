"""Commands about architectures: decode (with budgets and top-k) and import-arch."""

from __future__ import annotations

import zipfile
import zlib
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from nastk import registry
from nastk.cli.common import (
    app,
    out,
)
from nastk.errors import DataError
from nastk.protocols import Discretizer, Drawable, ImportsArchitectures, RanksArchitectures


def _read_params(path: Path) -> dict:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            params = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # truncated, damaged
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise DataError(f"{path}: not a readable .npz file ({detail})") from None
    return params


@app.command()
def decode(
    run: Annotated[Path | None, typer.Argument(help="Run directory with search/arch_params.npz.")] = None,
    params: Annotated[Path | None, typer.Option(help="A bare .npz with edge_logits and op_logits.")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="arch.json to write.")] = None,
    ops: Annotated[str | None, typer.Option(help="Comma-separated op names (default: the spec's).")] = None,
    discretizer: Annotated[
        str | None, typer.Option(help="Registered discretizer (default: the spec's).")
    ] = None,
    picture: Annotated[
        bool, typer.Option("--picture/--no-picture", help="Also write a picture next to arch.json.")
    ] = True,
    budget_gb: Annotated[
        float | None,
        typer.Option(
            help="Per-GPU memory budget in GB at the spec's retraining setting: the best architecture whose "
            "estimated training memory fits it (default: the spec's memory budget_gb, if any)."
        ),
    ] = None,
    top_k: Annotated[
        int,
        typer.Option(help="Write the K best distinct architectures to arch_top/ with a table (K >= 2)."),
    ] = 1,
    memory: Annotated[
        bool,
        typer.Option(
            "--memory", help="Print the estimated training memory at the spec's retraining setting."
        ),
    ] = False,
    batch: Annotated[
        int | None, typer.Option(help="Per-GPU batch for the estimate (default: the spec's).")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace RUN/arch.json although folds were retrained with it (without: a retrained run's "
            "decoding goes to RUN/arch-N.json).",
        ),
    ] = False,
) -> None:
    """Discretize searched parameters into a feasible architecture (arch.json + arch.png)."""
    from nastk.lock import run_lock

    if (run is None) == (params is None):
        raise DataError("give either a RUN directory or --params FILE.npz")
    if budget_gb is not None and not (budget_gb > 0 and budget_gb != float("inf")):
        raise DataError(f"--budget-gb: {budget_gb:g} is not a positive number of GB")
    if top_k < 1:
        raise DataError(f"--top-k: {top_k} must be at least 1")
    if top_k > MAX_TOP_K:
        raise DataError(
            f"--top-k: {top_k} is more than {MAX_TOP_K} (each architecture's statistics take about a second)"
        )
    if batch is not None and batch < 1:
        raise DataError(f"--batch: {batch} must be at least 1")
    with run_lock(run) if run is not None and run.is_dir() else nullcontext():  # not under a running retrain
        _decode(run, params, out_path, ops, discretizer, picture, budget_gb, top_k, memory, batch, force)


MAX_TOP_K = 100


def _decode(run, params, out_path, ops, discretizer, picture, budget_gb, top_k, memory, batch, force) -> None:
    from nastk.runspec import search_spec_path
    from nastk.setting import format_gb, spec_budget
    from nastk.spec import load_spec, validate

    if run is not None:
        spec_path = search_spec_path(run)  # the search's, not a later retraining's --set
        spec = load_spec(spec_path) if spec_path.exists() else validate({}, "<defaults>")
        params = run / "search" / "arch_params.npz"
        out_path = _decoded_path(run, out_path, force)
    else:
        spec = validate({}, "<defaults>")
        out_path = out_path or Path("arch.json")
    arrays = _read_params(params)
    op_names = [o.strip() for o in ops.split(",")] if ops else list(spec.ops)
    disc = registry.load("discretizers", discretizer or spec.discretizer.name)
    if not isinstance(disc, Discretizer):
        raise DataError(
            f"discretizer {discretizer or spec.discretizer.name!r} is not a nastk.protocols.Discretizer "
            "(no check_arrays)"
        )
    try:  # the discretizer knows which arrays it reads
        decided = disc.check_arrays(arrays, op_names)
    except DataError as exc:
        raise DataError(f"{params}: {exc}") from None
    space_params = {**spec.space.params, **decided}
    budget = spec_budget(spec, budget_gb, batch)
    if (budget is not None or top_k > 1) and not isinstance(disc, RanksArchitectures):
        raise DataError(
            f"discretizer {discretizer or spec.discretizer.name!r} cannot decode under a budget or rank"
        )
    try:
        if top_k > 1 or budget is not None:
            archs = disc.top_k(arrays, space_params, op_names, top_k, budget=budget)
        else:
            archs = [disc(arrays, space_params, op_names)]
    except ValueError as exc:
        raise DataError(f"{params}: {exc}") from None
    from nastk.provenance import stamp_architecture

    for each in archs:  # what each was decoded from, saved with it
        stamp_architecture(
            each, params, spec_path if run is not None else None, budget.gb if budget else None
        )
    arch = archs[0]
    arch.save(out_path)
    out.print(arch.summary(), markup=False, highlight=False)
    estimate = getattr(arch, "extra", {}).get("memory", {}).get("estimated_gb")
    if budget is not None and estimate is not None:
        out.print(
            f"budget {budget.gb:g} GB at {budget.setting.describe()}: estimated {format_gb(estimate)} GB",
            highlight=False,
        )
    out.print(f"wrote {out_path}", highlight=False)
    if picture and isinstance(arch, Drawable):
        png = arch.draw(out_path.with_suffix(".png"))
        out.print(f"wrote {png}", highlight=False)
    if top_k > 1:
        _write_top_k(spec, archs, out_path.parent / "arch_top", budget, picture)
        if len(archs) < top_k:
            out.print(f"only {len(archs)} distinct feasible architectures exist (--top-k {top_k})")
    if memory:
        _print_memory(spec, arch, batch, budget)


def _decoded_path(run: Path, out_path: Path | None, force: bool) -> Path:
    """Where decoding RUN writes: ``--out``, else RUN/arch.json; but not over the arch.json that folds were
    retrained with (the report pairs it with their scores) without ``--force``: then RUN/arch-N.json."""
    from nastk.provenance import record_path, started_folds

    current = run / "arch.json"
    folds = started_folds(run)
    if force or not folds or not current.is_file():
        return out_path or current
    if out_path is not None and out_path.resolve() == current.resolve():
        raise DataError(
            f"{current}: fold(s) {folds} were retrained with this architecture "
            f"({record_path(run, folds[0])}); decode to another --out, or pass --force to replace it"
        )
    if out_path is not None:
        return out_path
    n = 2
    while (run / f"arch-{n}.json").exists():
        n += 1
    target = run / f"arch-{n}.json"
    out.print(
        f"{current} is what fold(s) {folds} were retrained with: this decoding goes to {target} "
        "(--force replaces arch.json)",
        highlight=False,
    )
    return target


def _write_top_k(spec, archs, folder: Path, budget, picture: bool) -> None:
    """The K architectures, their pictures and ``architectures.csv``, replacing ``folder`` as a whole: no
    arch_K.json of an earlier, longer list stays, and a kill leaves the old folder or the new one."""
    import pandas as pd

    from nastk.io import atomic_dir, atomic_write_text
    from nastk.netstats import architecture_stats
    from nastk.progress import track

    rows = []
    with atomic_dir(folder) as tmp:
        for rank, arch in track(enumerate(archs, 1), len(archs), "architecture statistics"):
            path = arch.save(tmp / f"arch_{rank}.json")
            if picture and isinstance(arch, Drawable):
                arch.draw(path.with_suffix(".png"))
            rows.append({"rank": rank, "arch": path.name, **architecture_stats(spec, arch, budget)})
        table = pd.DataFrame(rows)
        atomic_write_text(tmp / "architectures.csv", table.to_csv(index=False, float_format="%.6g"))
    out.print(table.to_string(index=False, float_format=lambda v: f"{v:,.3f}"), highlight=False)
    out.print(f"wrote {len(archs)} architectures and architectures.csv to {folder}", highlight=False)


def _print_memory(spec, arch, batch: int | None, budget=None) -> None:
    from nastk.netstats import training_memory
    from nastk.setting import MemoryBudget, format_gb, retrain_setting, spec_budget

    setting = retrain_setting(spec, batch)
    budget = budget or spec_budget(spec, batch_size=batch) or MemoryBudget(0.0, setting)
    parts = training_memory(spec, arch, batch)
    if parts is None:
        raise DataError(f"space {spec.space.name!r} cannot estimate memory")
    out.print(f"estimated training memory per GPU at retraining: {setting.describe()}", highlight=False)
    table = Table()
    table.add_column("part")
    table.add_column("MB", justify="right")
    for part, value in parts.items():
        table.add_row(part, f"{value / 2**20:,.0f}")
    need = budget.required_gb(parts["total"])
    table.add_row(
        f"with margin {budget.margin:.0%} + reserve {budget.reserve_gb:g} GB", f"{need * 1024:,.0f}"
    )
    out.print(table)
    verdict = ""
    if budget.gb:
        verdict = f": {'fits' if need <= budget.gb else 'does NOT fit'} the budget of {budget.gb:g} GB"
    out.print(f"needs {format_gb(need)} GB per GPU{verdict}", highlight=False)


@app.command("import-arch", short_help="Convert another tool's architecture file to arch.json.")
def import_arch(
    file: Annotated[Path, typer.Argument(help="Architecture file of another tool (e.g. a MONAI .pth).")],
    out_path: Annotated[Path, typer.Option("--out", help="arch.json to write.")] = Path("arch.json"),
    space: Annotated[
        str | None,
        typer.Option(help="Registered search space that reads the file (default: the one space that can)."),
    ] = None,
    filters: Annotated[int, typer.Option(help="Search filters at input scale to record (paper: 16).")] = 16,
) -> None:
    """Convert another tool's architecture file to arch.json (with the reference plugin: MONAI's
    node_a/arch_code_a/arch_code_c or Auto3DSeg's code_a/code_c/node_a)."""
    if space is None:  # whichever installed space imports architecture files, if only one does
        able = [
            n
            for n in registry.names("spaces")
            if isinstance(registry.load("spaces", n), ImportsArchitectures)
        ]
        if len(able) != 1:
            raise DataError(
                f"--space: {len(able)} installed spaces import architecture files "
                f"({', '.join(able) or 'none'}); name one"
            )
        space = able[0]
    plugin = registry.load("spaces", space)
    if not isinstance(plugin, ImportsArchitectures):
        raise DataError(f"space {space!r} cannot import architecture files")
    arch = plugin.import_arch(file, filters=filters)
    arch.save(out_path)
    out.print(arch.summary(), markup=False, highlight=False)
    out.print(f"wrote {out_path}", highlight=False)
