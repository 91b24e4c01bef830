"""Commands about data: preprocess, plan, synth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nastk.cli.common import (
    SpecArgument,
    SynthTask,
    ThreadsOption,
    _set_threads,
    app,
    err,
    out,
)
from nastk.errors import DataError


@app.command()
def preprocess(
    spec: SpecArgument,
    workers: Annotated[
        int | None, typer.Option(min=0, metavar="N", help="Processes (default: dataset.num_workers).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    threads: ThreadsOption = None,
) -> None:
    """Preprocess a dataset into the cache (reorient, resample, crop, normalise); skips finished cases."""
    from nastk.data.preprocess import preprocess as run_preprocess
    from nastk.spec import load_spec

    _set_threads(threads)
    resolved = load_spec(spec)
    cache = run_preprocess(resolved.dataset, seed=resolved.seed, workers=workers, quiet=quiet)
    out.print(f"{len(cache.case_ids)} cases preprocessed in {cache.root}", highlight=False)


@app.command(short_help="Plan a complete spec for a new dataset, each value with the rule that set it.")
def plan(
    dataset: Annotated[
        Path, typer.Argument(help="Dataset folder (MSD task or nnU-Net v2) with dataset.json.")
    ],
    gpu_memory: Annotated[
        float,
        typer.Option("--gpu-memory", help="Memory of each GPU in GB (2^30 bytes, as nvidia-smi counts)."),
    ],
    out_path: Annotated[Path, typer.Option("--out", help="Spec YAML to write.")],
    gpus: Annotated[int, typer.Option(min=1, metavar="N", help="GPUs to search and retrain on.")] = 1,
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
        typer.Option(
            help="Preprocessing cache (default $NASTK_CACHE/NAME, else DATASET/.nastk-cache); the "
            "fingerprint goes there."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=0, metavar="N", help="Processes that read the dataset.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Plan a complete spec for a new dataset: spacing, patches, batch, memory budget, normalisation,
    augmentation, iterations and NSD tolerances, each with the rule that set it (docs/planning.md)."""
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
    task: Annotated[
        SynthTask,
        typer.Option(
            help="body: organ, lesion, tubes (the quickstart's); head: brain and lesion on thick MR slices; "
            "extraction: the whole brain, test heads stripped (0 outside the brain)."
        ),
    ] = SynthTask.body,
    cases: Annotated[int, typer.Option(help="Training cases.")] = 12,
    size: Annotated[int, typer.Option(help="Volume side in voxels (in-plane).")] = 48,
    classes: Annotated[int, typer.Option(help="Classes including background (body).")] = 3,
    test_cases: Annotated[int, typer.Option(help="Held-out cases (imagesTs, labelsTs).")] = 2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    stripped_every: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="head, extraction: every N-th training head stripped, 0 none (head 2, extraction 0).",
        ),
    ] = None,
    stripped_test_every: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="head, extraction: every N-th test head stripped (head: as training, extraction 2).",
        ),
    ] = None,
) -> None:
    """Write a synthetic task in MSD format (dataset.json, imagesTr, labelsTr, imagesTs, labelsTs)."""
    from nastk.data.synthetic import write_extraction_task, write_head_task, write_synthetic_task

    stripping = {
        k: v
        for k, v in (("stripped_every", stripped_every), ("stripped_test_every", stripped_test_every))
        if v is not None
    }
    try:
        if task == SynthTask.body:
            if stripping:
                raise ValueError(
                    "--stripped-every and --stripped-test-every are for --task head or extraction"
                )
            path = write_synthetic_task(
                out_dir, cases=cases, size=size, classes=classes, seed=seed, test_cases=test_cases
            )
        else:
            write = write_head_task if task == SynthTask.head else write_extraction_task
            path = write(out_dir, cases=cases, size=size, seed=seed, test_cases=test_cases, **stripping)
    except ValueError as exc:
        raise DataError(f"synth: {exc}") from None
    out.print(f"wrote synthetic {task.value} task to {path}", highlight=False)
