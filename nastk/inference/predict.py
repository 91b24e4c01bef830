"""``nastk predict``: preprocess each case as in training, sliding-window every fold, ensemble,
post-process, and write the label map in the case's original geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nastk import registry
from nastk.data.dataset import IMAGE_SUFFIXES, Case, read_dataset, strip_suffix
from nastk.data.imageio import check_headers
from nastk.data.preprocess import load_plan, pad_value, preprocess, process_case, restore_geometry
from nastk.engine.checkpoint import load as load_checkpoint
from nastk.engine.checkpoint import restore
from nastk.engine.distributed import device_kind
from nastk.errors import DataError, one_line
from nastk.inference.ensemble import mean_probabilities, vote
from nastk.inference.postprocess import POSTPROCESSING_FILE, largest_component, read_postprocessing
from nastk.inference.sliding_window import sliding_window_predict
from nastk.inference.writer import write_label
from nastk.io import make_dir, remove_stale_temps
from nastk.progress import track
from nastk.protocols import SearchSpace
from nastk.spec import Spec


def input_cases(path: Path, num_channels: int) -> list[Case]:
    """Cases from a dataset.json (its test list) or a folder of images (CASE.nii.gz or CASE_0000.nii.gz)."""
    if path.name == "dataset.json" or (
        path.is_dir() and (path / "dataset.json").exists() and not _images_in(path)
    ):
        info = read_dataset(path.parent if path.name == "dataset.json" else path)
        if not info.test:
            raise DataError(f"{path}: lists no test cases")
        return info.test
    if not path.is_dir():
        raise DataError(f"{path}: not a folder of images or a dataset.json")
    files = _images_in(path)
    if not files:
        raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)})")
    cases: dict[str, list[Path]] = {}
    for f in files:
        stem = strip_suffix(f.name)
        if num_channels > 1 or stem.endswith("_0000"):
            base, _, channel = stem.rpartition("_")
            if channel.isdigit() and len(channel) == 4 and base:
                cases.setdefault(base, []).append(f)
                continue
        cases.setdefault(stem, []).append(f)
    out = []
    for case_id, paths in sorted(cases.items()):
        paths = sorted(paths)
        if len(paths) not in (1, num_channels):
            raise DataError(f"{path}: case {case_id} has {len(paths)} channel files, expected {num_channels}")
        out.append(Case(case_id, tuple(paths)))
    return out


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.endswith(IMAGE_SUFFIXES) and not p.name.startswith("._")
    )


class _CaseBars:
    """A bar over the cases and, on a terminal, one over each case's windows; plain lines otherwise."""

    def __init__(self, total: int, quiet: bool):
        import sys

        self.total, self.quiet = total, quiet
        self.rich = not quiet and sys.stderr.isatty()
        self.progress = None

    def cases(self, cases):
        if not self.rich:
            yield from track(cases, self.total, "predict", self.quiet)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
        ) as p:
            self.progress = p
            overall = p.add_task("cases", total=self.total)
            for case in cases:
                yield case
                p.advance(overall)

    def windows(self, case_id: str):
        if self.progress is None:
            return None
        task = self.progress.add_task(f"  {case_id}", total=None)

        def update(done: int, total: int) -> None:
            self.progress.update(task, completed=done, total=total, visible=done < total)

        return update


def window_probabilities(
    volume: torch.Tensor,
    net: torch.nn.Module,
    spec: Spec,
    device: torch.device,
    progress=None,
    accumulate_on: str | None = None,
    pad_value: list[float] | float = 0.0,
) -> torch.Tensor:
    """Class probabilities ``[K, X, Y, Z]`` of one preprocessed volume with the spec's inference settings:
    what `predict`, the out-of-fold predictions and the last validation of a fold all compute.
    ``pad_value``: what the image is padded with where a window leaves it (the cache's value per channel)."""
    inf = spec.inference
    return sliding_window_predict(
        volume,
        net,
        tuple(inf.patch_size),
        tuple(inf.stride),
        spec.dataset.num_classes,
        batch_size=inf.batch_size,
        blend=inf.blend,
        device=device,
        accumulate_on=accumulate_on,
        amp=inf.amp and device.type == "cuda",
        flip_tta=inf.flip_tta,
        progress=progress,
        pad_value=pad_value,
    )


def postprocessing_classes(spec: Spec, run: Path) -> tuple[list[int], str]:
    """The classes `predict` keeps the largest component of, and a line saying where that comes from."""
    chosen, n = spec.inference.largest_component, spec.dataset.num_classes
    if chosen == "auto":
        path = Path(run) / POSTPROCESSING_FILE
        if not path.is_file():
            return [], (
                f"post-processing: none ({path} not found; retraining writes it once every fold has its "
                "out-of-fold predictions)"
            )
        classes = read_postprocessing(path, n)
        what = f"largest component of class(es) {classes}" if classes else "none"
        return classes, f"post-processing: {what}, as cross-validation chose ({path})"
    if chosen is True:
        return list(
            range(1, n)
        ), "post-processing: largest component of every class (inference.largest_component)"
    if chosen is False:
        return [], "post-processing: none (inference.largest_component: false)"
    classes = sorted(set(chosen))
    return classes, f"post-processing: largest component of class(es) {classes} (inference.largest_component)"


MODEL_KEYS = ("model", "arch", "space", "in_channels", "num_classes", "filter_multiplier")


def _fold_model(path: Path, spec_io: tuple[int, int], device: torch.device) -> torch.nn.Module:
    """The network of a retrained model file, every failure one line naming the file."""
    state = load_checkpoint(path, required=MODEL_KEYS)
    space = registry.load("spaces", str(state["space"]))
    if not isinstance(space, SearchSpace):
        raise DataError(f"{path}: space {state['space']!r} cannot rebuild a network from a checkpoint")
    try:
        arch = space.load_arch_from_text(state["arch"])
    except (DataError, ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError
        detail = one_line(exc).removeprefix("<checkpoint>: ")
        raise DataError(f"{path}: 'arch' is not a valid architecture ({detail})") from None
    io = (state["in_channels"], state["num_classes"])
    if io != spec_io:
        raise DataError(
            f"{path}: the model takes {io[0]} channel(s) and predicts {io[1]} classes, the spec "
            f"{spec_io[0]} and {spec_io[1]}"
        )
    ops = registry.load_ops(arch.op_names)
    try:
        net = space.build_network(
            arch, ops, int(io[0]), int(io[1]), filter_multiplier=float(state["filter_multiplier"])
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{path}: cannot build its network ({one_line(exc)})") from None
    restore(path, state, {"model": net})
    return net.to(device).eval()


def load_fold_models(
    run: Path, folds: list[int] | None, which: str, device: torch.device, spec_io: tuple[int, int]
):
    root = run / "retrain"
    available = sorted(
        int(p.name.split("_")[1]) for p in root.glob("fold_*") if (p / f"model_{which}.pt").exists()
    )
    if not available:
        raise DataError(f"{root}: no retrained folds with model_{which}.pt (run `nastk retrain` first)")
    folds = folds if folds is not None else available
    missing = [k for k in folds if k not in available]
    if missing:
        raise DataError(
            f"--folds: fold(s) {missing} have no model_{which}.pt in {root} (available: {available})"
        )
    models = []
    for k in folds:
        path = root / f"fold_{k}" / f"model_{which}.pt"
        models.append(_fold_model(path, spec_io, device))
    return folds, models


def run_predict(
    spec: Spec,
    run: Path,
    input_path: Path,
    output: Path,
    folds: list[int] | None = None,
    which: str = "final",
    resume: bool = False,
    device: str | None = None,
    quiet: bool = False,
) -> list[Path]:
    dev = torch.device(device_kind(device))
    inf = spec.inference
    if (Path(run) / "plan.json").is_file():  # written by retrain: no training data needed here
        plan, stats = load_plan(Path(run) / "plan.json")
    else:
        cache = preprocess(spec.dataset, seed=spec.seed, quiet=True)
        plan, stats = load_plan(cache.root / "plan.json")
    cases = input_cases(Path(input_path), spec.dataset.in_channels)
    for case in cases:
        check_headers(case.images, None, f"case {case.id}", spec.dataset.in_channels)
    spec_io = (spec.dataset.in_channels, spec.dataset.num_classes)
    folds, models = load_fold_models(Path(run), folds, which, dev, spec_io)
    classes, _ = postprocessing_classes(spec, Path(run))
    make_dir(output)  # after every check: a bad model leaves no empty output folder behind
    remove_stale_temps(output)
    written = []
    bar = _CaseBars(len(cases), quiet)
    for case in bar.cases(cases):
        target = Path(output) / f"{case.id}.nii.gz"
        if resume and target.exists():
            written.append(target)
            continue
        image, _, meta = process_case(case, plan, stats, set(range(spec.dataset.num_classes)))
        volume = torch.from_numpy(image)
        per_fold = []
        for net in models:
            probs = window_probabilities(
                volume, net, spec, dev, progress=bar.windows(case.id), pad_value=pad_value(meta)
            )
            per_fold.append(probs.argmax(0) if inf.ensemble == "vote" else probs)
        labels = (
            vote(per_fold, spec.dataset.num_classes)
            if inf.ensemble == "vote"
            else mean_probabilities(per_fold)
        )
        labels = largest_component(labels.cpu().numpy().astype(np.uint8), classes)
        written.append(write_label(restore_geometry(labels, meta), case.images[0], target))
    return written
