"""The ``nastk`` command line. One thin function per command; the work lives in the library.

Errors a user can fix (``NastkError``) print one line, or a table for a spec, on stderr and exit
with code 2, never with a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from nastk import registry
from nastk.errors import DataError, NastkError, SpecError
from nastk.protocols import RanksArchitectures

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Declarative neural architecture search for 3D medical image segmentation.",
)
# Wide when piped (CI logs, nohup) so tables and paths are never cut.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _load_spec(path: Path):
    """Load and validate a spec; print what it warns about on stderr (e.g. a budget that never binds)."""
    from nastk.spec import load_spec

    resolved = load_spec(path)
    for field, message in resolved.warnings:
        err.print(f"warning: {path}: {field}: {message}", markup=False, highlight=False, soft_wrap=True)
    return resolved


@app.command()
def validate(spec: Annotated[Path, typer.Argument(help="Spec YAML file.")]) -> None:
    """Validate a spec and print it resolved, with every default filled in."""
    from nastk.spec import dump_spec

    resolved = _load_spec(spec)
    out.print(f"[green]valid[/green]: {spec}", highlight=False)
    out.print(dump_spec(resolved), markup=False, highlight=False, end="")


@app.command("spec-schema")
def spec_schema(
    markdown: Annotated[
        bool, typer.Option(help="A Markdown field reference instead of JSON Schema.")
    ] = False,
) -> None:
    """Print the JSON Schema of spec files (or, with --markdown, the field reference)."""
    from nastk.spec import json_schema, markdown_reference

    print(markdown_reference() if markdown else json.dumps(json_schema(), indent=2))


@app.command()
def plugins() -> None:
    """List every registered plugin name with its group, distribution and version."""
    table = Table(title="nastk plugins")
    for col in ("group", "name", "distribution", "version", "object"):
        table.add_column(col)
    for e in registry.entries():
        table.add_row(registry.GROUPS[e.group], e.name, e.distribution, e.version, e.value)
    out.print(table)


def _read_params(path: Path) -> dict:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            params = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    for key in ("edge_logits", "op_logits"):
        if key not in params:
            raise DataError(f"{path}: missing array {key!r} (has: {', '.join(params) or 'none'})")
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
    picture: Annotated[bool, typer.Option(help="Also write a picture next to arch.json.")] = True,
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
        bool, typer.Option(help="Print the estimated training memory at the spec's retraining setting.")
    ] = False,
    batch: Annotated[
        int | None, typer.Option(help="Per-GPU batch for the estimate (default: the spec's).")
    ] = None,
) -> None:
    """Discretize searched parameters into a feasible architecture (arch.json + arch.png)."""
    from nastk.setting import spec_budget
    from nastk.spec import load_spec, validate

    if (run is None) == (params is None):
        raise DataError("give either a RUN directory or --params FILE.npz")
    if budget_gb is not None and not (budget_gb > 0 and budget_gb != float("inf")):
        raise DataError(f"--budget-gb: {budget_gb:g} is not a positive number of GB")
    if top_k < 1:
        raise DataError(f"--top-k: {top_k} must be at least 1")
    if batch is not None and batch < 1:
        raise DataError(f"--batch: {batch} must be at least 1")
    if run is not None:
        spec_path = run / "spec.yaml"
        spec = load_spec(spec_path) if spec_path.exists() else validate({}, "<defaults>")
        params = run / "search" / "arch_params.npz"
        out_path = out_path or run / "arch.json"
    else:
        spec = validate({}, "<defaults>")
        out_path = out_path or Path("arch.json")
    arrays = _read_params(params)
    op_names = [o.strip() for o in ops.split(",")] if ops else list(spec.ops)
    if len(op_names) != arrays["op_logits"].shape[-1]:
        raise DataError(
            f"{params}: op_logits has {arrays['op_logits'].shape[-1]} ops but {len(op_names)} op names "
            f"were given ({', '.join(op_names)}); pass --ops"
        )
    space_params = dict(spec.space.params)
    space_params.update(layers=int(arrays["edge_logits"].shape[0]))
    disc = registry.load("discretizers", discretizer or spec.discretizer.name)
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
    arch = archs[0]
    arch.save(out_path)
    out.print(arch.summary(), markup=False, highlight=False)
    estimate = getattr(arch, "extra", {}).get("memory", {}).get("estimated_gb")
    if budget is not None and estimate is not None:
        out.print(
            f"budget {budget.gb:g} GB at {budget.setting.describe()}: estimated {estimate:.2f} GB",
            highlight=False,
        )
    out.print(f"wrote {out_path}", highlight=False)
    if picture and hasattr(arch, "draw"):
        png = arch.draw(out_path.with_suffix(".png"))
        out.print(f"wrote {png}", highlight=False)
    if top_k > 1:
        _write_top_k(spec, archs, out_path.parent / "arch_top", budget, picture)
        if len(archs) < top_k:
            out.print(f"only {len(archs)} distinct feasible architectures exist (--top-k {top_k})")
    if memory:
        _print_memory(spec, arch, batch, budget)


def _write_top_k(spec, archs, folder: Path, budget, picture: bool) -> None:
    import pandas as pd

    from nastk.io import atomic_write_text
    from nastk.netstats import architecture_stats

    rows = []
    for rank, arch in enumerate(archs, 1):
        path = arch.save(folder / f"arch_{rank}.json")
        if picture and hasattr(arch, "draw"):
            arch.draw(path.with_suffix(".png"))
        rows.append({"rank": rank, "arch": path.name, **architecture_stats(spec, arch, budget)})
    table = pd.DataFrame(rows)
    atomic_write_text(folder / "architectures.csv", table.to_csv(index=False, float_format="%.6g"))
    out.print(table.to_string(index=False, float_format=lambda v: f"{v:,.3f}"), highlight=False)
    out.print(f"wrote {len(archs)} architectures and architectures.csv to {folder}", highlight=False)


def _print_memory(spec, arch, batch: int | None, budget=None) -> None:
    from nastk.netstats import training_memory
    from nastk.setting import MemoryBudget, retrain_setting, spec_budget

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
    out.print(f"needs {need:.2f} GB per GPU{verdict}", highlight=False)


@app.command("import-arch")
def import_arch(
    file: Annotated[Path, typer.Argument(help="Architecture file of another tool (e.g. MONAI DiNTS .pth).")],
    out_path: Annotated[Path, typer.Option("--out", help="arch.json to write.")] = Path("arch.json"),
    space: Annotated[str, typer.Option(help="Registered search space that reads the file.")] = "dints",
    filters: Annotated[int, typer.Option(help="Search filters at input scale to record (paper: 16).")] = 16,
) -> None:
    """Convert another tool's architecture file to arch.json (dints: MONAI's node_a/arch_code_a/arch_code_c
    or Auto3DSeg's code_a/code_c/node_a)."""
    plugin = registry.load("spaces", space)
    if not hasattr(plugin, "import_arch"):
        raise DataError(f"space {space!r} cannot import architecture files")
    arch = plugin.import_arch(file, filters=filters)
    arch.save(out_path)
    out.print(arch.summary(), markup=False, highlight=False)
    out.print(f"wrote {out_path}", highlight=False)


@app.command()
def preprocess(
    spec: Annotated[Path, typer.Argument(help="Spec YAML file whose dataset.root is the task folder.")],
    workers: Annotated[
        int | None, typer.Option(min=0, help="Processes (default: dataset.num_workers).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Preprocess a dataset into the cache (reorient, resample, crop, normalise); skips finished cases."""
    from nastk.data.preprocess import preprocess as run_preprocess
    from nastk.spec import load_spec

    resolved = load_spec(spec)
    cache = run_preprocess(resolved.dataset, seed=resolved.seed, workers=workers, quiet=quiet)
    out.print(f"{len(cache.case_ids)} cases preprocessed in {cache.root}", highlight=False)


@app.command()
def plan(
    dataset: Annotated[
        Path, typer.Argument(help="Dataset folder (MSD task or nnU-Net v2) with dataset.json.")
    ],
    gpu_memory: Annotated[
        float,
        typer.Option("--gpu-memory", help="Memory of each GPU in GB (2^30 bytes, as nvidia-smi counts)."),
    ],
    out_path: Annotated[Path, typer.Option("--out", help="Spec YAML to write.")],
    gpus: Annotated[int, typer.Option(min=1, help="GPUs to search and retrain on.")] = 1,
    time_budget: Annotated[
        str | None,
        typer.Option(help="Wall time for the search and the retraining of every fold, e.g. 2d, 36h, 90m."),
    ] = None,
    base: Annotated[
        Path | None,
        typer.Option(
            help="Spec whose space, ops, losses and optimisers the plan keeps (default: the paper's)."
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Preprocessing cache (default DATASET/.nastk-cache); the fingerprint goes there."),
    ] = None,
    workers: Annotated[int, typer.Option(min=0, help="Processes that read the dataset.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Plan a complete spec for a new dataset: spacing, patches, batch, memory budget, normalisation,
    augmentation, iterations and NSD tolerances, each with the rule that set it (README, Planning)."""
    from nastk.plan import make_plan, write_plan
    from nastk.plan.render import check_output
    from nastk.plan.rules import parse_duration
    from nastk.spec import parse_yaml, read_spec_text

    seconds = None
    if time_budget is not None:
        try:
            seconds = parse_duration(time_budget)
        except ValueError as exc:
            raise DataError(f"--time-budget: {exc}") from None
    check_output(out_path, force)  # before reading the dataset
    base_data = None
    if base is not None:
        base_data = parse_yaml(read_spec_text(base), str(base))
        if not isinstance(base_data, dict):
            raise DataError(f"{base}: a base spec is a YAML mapping")
    planned = make_plan(
        dataset,
        gpu_memory,
        gpus=gpus,
        time_budget=seconds,
        base=base_data,
        base_file=str(base) if base is not None else "<paper defaults>",
        cache_dir=cache_dir,
        workers=workers,
        quiet=quiet,
    )
    path = write_plan(planned, out_path, force=force)
    for note in planned.notes:
        err.print(f"warning: {note}", markup=False, highlight=False, soft_wrap=True)
    d, r, est = planned.data["dataset"], planned.data["retrain"], planned.estimates
    out.print(
        f"planned {planned.fingerprint.name} ({len(planned.fingerprint.cases)} cases; fingerprint "
        f"{planned.fingerprint.path})",
        highlight=False,
    )
    out.print(
        f"spacing {d['spacing']} mm, normalization {d['normalization']}, retrain patch {r['patch_size']} x "
        f"{r['batch_multiplier']} per GPU on {r['gpus']} GPU(s) (networks need {est['smallest_gb']:.2f}-"
        f"{est['largest_gb']:.2f} GB), search patch {planned.data['search']['patch_size']} (supernet "
        f"{est['supernet_gb']:.2f} GB), {r['iters']} retraining iterations per fold, about "
        f"{est['hours']:.1f} h in all",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"wrote {path}; next: nastk search {path}", highlight=False)


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the MSD-format task into.")],
    cases: Annotated[int, typer.Option(help="Training cases.")] = 12,
    size: Annotated[int, typer.Option(help="Volume side in voxels (in-plane).")] = 48,
    classes: Annotated[int, typer.Option(help="Classes including background.")] = 3,
    test_cases: Annotated[int, typer.Option(help="Held-out cases (imagesTs, labelsTs).")] = 2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write the embedded synthetic task in MSD format (dataset.json, imagesTr, labelsTr, imagesTs)."""
    from nastk.data.synthetic import write_synthetic_task

    try:
        path = write_synthetic_task(
            out_dir, cases=cases, size=size, classes=classes, seed=seed, test_cases=test_cases
        )
    except ValueError as exc:
        raise DataError(f"synth: {exc}") from None
    out.print(f"wrote synthetic task to {path}", highlight=False)


def _run_options(out_path: Path, **kw) -> object:
    from nastk.engine.options import RunOptions

    return RunOptions(out=out_path, **kw)


AmpOption = Annotated[str, typer.Option(help="Mixed precision: off, bf16 or fp16 (with a grad scaler).")]
DeviceOption = Annotated[str | None, typer.Option(help="cpu or cuda (default: whatever is available).")]
CompileOption = typer.Option(
    "--compile",
    help="torch.compile the training network (mainly for GPUs: the first steps spend minutes compiling).",
)


@app.command()
def search(
    spec: Annotated[Path, typer.Argument(help="Spec YAML file.")],
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default runs/<spec name>).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from RUN/search/checkpoint.pt.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or lines.")] = False,
    device: DeviceOption = None,
    amp: AmpOption = "off",
    channels_last: Annotated[bool, typer.Option(help="channels_last_3d memory format.")] = False,
    checkpoint_cells: Annotated[
        bool, typer.Option(help="Recompute cells in backward to save memory.")
    ] = False,
    compile_net: Annotated[bool, CompileOption] = False,
    deterministic: Annotated[
        bool, typer.Option(help="Deterministic algorithms (same spec, same result).")
    ] = False,
    workers: Annotated[
        int | None, typer.Option(min=0, help="Data-loader workers (default: dataset.num_workers).")
    ] = None,
) -> None:
    """Differentiable topology + cell search (Sec. 3.6), then decode to RUN/arch.json."""
    from nastk.engine.search import run_search

    if amp not in ("off", "bf16", "fp16"):
        raise DataError(f"--amp: {amp!r} is not one of off, bf16, fp16")
    resolved = _load_spec(spec)
    run = out_path or Path("runs") / resolved.name
    opts = _run_options(
        run,
        resume=resume,
        quiet=quiet,
        device=device,
        amp=amp,
        channels_last=channels_last,
        checkpoint_cells=checkpoint_cells,
        compile=compile_net,
        deterministic=deterministic,
        workers=workers,
    )
    run_search(resolved, opts)


@app.command()
def retrain(
    spec: Annotated[Path, typer.Argument(help="Spec YAML file.")],
    arch: Annotated[Path, typer.Option(help="arch.json to train (e.g. RUN/arch.json).")],
    fold: Annotated[str, typer.Option(help="Fold index K, or 'all'.")] = "0",
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default: arch.json's folder).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from RUN/retrain/fold_K/checkpoint.pt.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or lines.")] = False,
    device: DeviceOption = None,
    amp: Annotated[
        str | None,
        typer.Option(help="Mixed precision: off, bf16 or fp16 (with a grad scaler); default: retrain.amp."),
    ] = None,
    channels_last: Annotated[bool, typer.Option(help="channels_last_3d memory format.")] = False,
    compile_net: Annotated[bool, CompileOption] = False,
    deterministic: Annotated[
        bool, typer.Option(help="Deterministic algorithms (same spec, same result).")
    ] = False,
    workers: Annotated[
        int | None, typer.Option(min=0, help="Data-loader workers (default: dataset.num_workers).")
    ] = None,
) -> None:
    """Retrain the discrete network of an arch.json on one fold or all (Sec. 4.1)."""
    from nastk.engine.retrain import load_architecture, parse_folds, run_retrain

    resolved = _load_spec(spec)
    amp = amp or resolved.retrain.amp
    if amp not in ("off", "bf16", "fp16"):
        raise DataError(f"--amp: {amp!r} is not one of off, bf16, fp16")
    load_architecture(resolved, arch)  # fail before writing anything
    parse_folds(fold, resolved.dataset.num_folds)
    opts = _run_options(
        out_path or arch.parent,
        resume=resume,
        quiet=quiet,
        device=device,
        amp=amp,
        channels_last=channels_last,
        compile=compile_net,
        deterministic=deterministic,
        workers=workers,
    )
    for path in run_retrain(resolved, arch, fold, opts):
        out.print(f"fold done: {path}", highlight=False)


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
    model: Annotated[str, typer.Option(help="Which model of each fold: final or best.")] = "final",
    spec: Annotated[Path | None, typer.Option(help="Spec (default RUN/spec.yaml).")] = None,
    resume: Annotated[bool, typer.Option("--continue", help="Skip cases already predicted.")] = False,
    device: DeviceOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Sliding-window inference with the fold ensemble; NIfTI out in each case's original geometry."""
    from nastk.inference.predict import PredictOptions, run_predict
    from nastk.spec import load_spec

    if model not in ("final", "best"):
        raise DataError(f"--model: {model!r} is not final or best")
    try:
        fold_list = [int(k) for k in folds.split(",")] if folds else None
    except ValueError:
        raise DataError(f"--folds: {folds!r} is not a comma-separated list of fold indices") from None
    from nastk.inference.predict import postprocessing_classes

    resolved = load_spec(spec or run / "spec.yaml")
    options = PredictOptions(output or run / "predictions", fold_list, model, resume, device, quiet)
    written = run_predict(resolved, run, input_path, options)
    out.print(postprocessing_classes(resolved, run)[1], markup=False, highlight=False, soft_wrap=True)
    out.print(f"{len(written)} predictions in {output or run / 'predictions'}", highlight=False)


@app.command()
def report(
    runs: Annotated[list[Path] | None, typer.Argument(help="Run directories to evaluate and rank.")] = None,
    pred: Annotated[Path | None, typer.Option(help="Any folder of predictions (instead of runs).")] = None,
    ref: Annotated[Path | None, typer.Option(help="Reference labels: a folder or a dataset.json.")] = None,
    tolerance: Annotated[list[str] | None, typer.Option(help="NSD tolerance CLASS=MM (repeatable).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Report folder.")] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            help="'paper': the paper's Table 1 rows next to the cross-validation table, Table 2's "
            "next to the test table."
        ),
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="MSD task name for --reference (default: dataset name).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    missing: Annotated[
        str,
        typer.Option(
            help="Reference cases without a prediction: 'error', or 'empty' to score them as empty "
            "predictions (the leaderboard says which cases)."
        ),
    ] = "error",
) -> None:
    """What each run has, at every stage: architectures (Table 1), search curves, the cross-validation
    table, the test leaderboard (Table 2); or a --pred folder scored against --ref. Says what it skipped."""
    from nastk.report.command import ReportOptions, parse_tolerances, run_report

    if reference not in (None, "paper"):
        raise DataError(f"--reference: {reference!r} is not 'paper'")
    options = ReportOptions(
        parse_tolerances(tolerance or []), out_dir, reference == "paper", task, quiet, missing
    )
    result = run_report(list(runs or []), pred, ref, options)
    out.print(result.text, markup=False, highlight=False, soft_wrap=True)
    out.print(f"wrote {', '.join(str(p) for p in result.paths.values())}", highlight=False)


@app.command()
def quickstart(
    spec: Annotated[Path, typer.Option(help="Tiny CPU spec.")] = Path("specs/quickstart.yaml"),
    out_dir: Annotated[Path, typer.Option("--out", help="Where everything goes.")] = Path("nastk-quickstart"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Less progress output.")] = False,
) -> None:
    """Synthetic task -> search -> decode -> retrain 2 folds -> predict -> report, in minutes on a CPU."""
    from nastk.quickstart import run_quickstart

    run_quickstart(
        spec, out_dir, quiet=quiet, echo=lambda text: out.print(text, markup=False, highlight=False)
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


def main(argv: list[str] | None = None) -> None:
    # Typer handles usage errors itself (exit code 2); ours surface here as typed exceptions.
    try:
        app(args=argv, prog_name="nastk")
    except NastkError as exc:
        _print_error(exc)
        sys.exit(2)
