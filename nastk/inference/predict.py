"""``nastk predict``: preprocess each case as in training, sliding-window every fold, ensemble,
post-process, and write the label map in the case's original geometry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nastk.data.cache import load_backgrounds
from nastk.data.dataset import IMAGE_SUFFIXES, Case, image_files, read_dataset, strip_suffix
from nastk.data.imageio import check_headers
from nastk.data.normalize import background_mismatch
from nastk.data.preprocess import load_plan, pad_value, preprocess, process_case, restore_geometry
from nastk.device import resolve_device
from nastk.errors import DataError
from nastk.inference.ensemble import mean_probabilities, vote
from nastk.inference.postprocess import POSTPROCESSING_FILE, largest_component, read_postprocessing
from nastk.inference.probabilities import restore_probabilities, write_probabilities
from nastk.inference.sliding_window import sliding_window_predict
from nastk.inference.writer import write_label
from nastk.io import remove_stale_temps
from nastk.lock import run_lock
from nastk.logs import logger, record, run_log, start_log_file
from nastk.network import network_from_model
from nastk.progress import CaseBars
from nastk.provenance import check_folds_agree, run_folds
from nastk.spec import Spec
from nastk.threads import thread_governor


def input_cases(path: Path, num_channels: int) -> list[Case]:
    """Cases from a dataset.json (its test list) or a folder of images (CASE.nii.gz or CASE_0000.nii.gz)."""
    if path.name == "dataset.json" or (
        path.is_dir() and (path / "dataset.json").exists() and not image_files(path)
    ):
        info = read_dataset(path.parent if path.name == "dataset.json" else path)
        if not info.test:
            raise DataError(f"{path}: lists no test cases")
        return info.test
    if not path.is_dir():
        raise DataError(f"{path}: not a folder of images or a dataset.json")
    files = image_files(path)
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


def load_fold_models(
    run: Path, folds: list[int] | None, which: str, device: torch.device, spec_io: tuple[int, int]
):
    root = run / "retrain"
    available = run_folds(run, which)  # the folds the run recorded, not every folder named fold_*
    if not available:
        raise DataError(f"{root}: no retrained folds with model_{which}.pt (run `nastk retrain` first)")
    folds = folds if folds is not None else available
    missing = [k for k in folds if k not in available]
    if missing:
        raise DataError(
            f"--folds: fold(s) {missing} have no model_{which}.pt in {root} (available: {available})"
        )
    check_folds_agree(run, folds)  # an ensemble of folds made alike only
    models = []
    for k in folds:
        path = root / f"fold_{k}" / f"model_{which}.pt"
        models.append(network_from_model(path, spec_io, device))
    return folds, models


@dataclass(frozen=True)
class PredictOptions:
    """How `predict` runs: where it writes, which models it ensembles, and on what."""

    output: Path
    folds: list[int] | None = None  # None: every retrained fold
    model: str = "final"  # "final" | "best": which model file of each fold
    resume: bool = False  # keep the predictions already in `output`
    device: str | None = None  # "cpu" | "cuda" | "cuda:N" | None (whatever is available)
    quiet: bool = False
    save_probabilities: bool = False  # also CASE.npz: the folds' mean probabilities on the original grid
    disable_tta: bool = False  # no flip test-time augmentation, whatever inference.flip_tta says


def run_predict(spec: Spec, run: Path, input_path: Path, opts: PredictOptions) -> list[Path]:
    output, quiet = opts.output, opts.quiet
    if opts.disable_tta:
        spec = spec.model_copy(update={"inference": spec.inference.model_copy(update={"flip_tta": False})})
    dev = resolve_device(opts.device)
    plan_file = Path(run) / "plan.json"  # written by retrain: no training data needed here
    if not plan_file.is_file():
        plan_file = preprocess(spec.dataset, seed=spec.seed, quiet=True).root / "plan.json"
    plan, stats = load_plan(plan_file)
    backgrounds = load_backgrounds(plan_file)
    cases = input_cases(Path(input_path), spec.dataset.in_channels)
    for case in cases:
        check_headers(case.images, None, f"case {case.id}", spec.dataset.in_channels)
    spec_io = (spec.dataset.in_channels, spec.dataset.num_classes)
    folds, models = load_fold_models(Path(run), opts.folds, opts.model, dev, spec_io)
    classes, post = postprocessing_classes(spec, Path(run))
    # after every check: a bad model leaves no empty output folder behind; locked, as a run is: two predicts
    # into one folder would each overwrite the other's cases
    with run_lock(output, "--output"), run_log(quiet):
        remove_stale_temps(output)
        start_log_file(run)
        record(
            f"predict {len(cases)} case(s) from {input_path}, fold(s) {folds}, model_{opts.model}: {output}"
        )
        record(post)
        return _predict_cases(spec, cases, models, (plan, stats, backgrounds), classes, opts, dev)


def warn_unseen_background(case_id: str, meta: dict, plan, backgrounds) -> None:
    """One warning line per channel whose background (stripped or not) no training case had: such a
    case is normalised unlike anything the network saw (docs/planning.md, "Normalisation")."""
    for bg, share in zip(backgrounds, meta.get("zero_share", [])):
        why = background_mismatch(share, bg)
        if why is not None:
            logger.warning(
                f"case {case_id}: {why}; normalised with {plan.normalization[bg.channel]}, its intensities "
                f"may not match training (docs/planning.md#normalisation)"
            )


def _predict_cases(spec: Spec, cases, models, plan_stats, classes, opts: PredictOptions, dev) -> list[Path]:
    """Each case: preprocessed as in training, every fold's window probabilities, ensembled,
    post-processed and written in the case's original geometry."""
    inf, (plan, stats, backgrounds), output, resume = spec.inference, plan_stats, opts.output, opts.resume
    written = []
    bar = CaseBars(len(cases), opts.quiet)
    governor = thread_governor()  # shares the CPUs with other jobs, as training does
    for case in bar.cases(cases):
        if governor is not None:
            governor.tick()
        target = Path(output) / f"{case.id}.nii.gz"
        probs_file = Path(output) / f"{case.id}.npz"
        if resume and target.exists() and (probs_file.exists() or not opts.save_probabilities):
            written.append(target)
            continue
        image, _, meta = process_case(case, plan, stats, set(range(spec.dataset.num_classes)))
        warn_unseen_background(case.id, meta, plan, backgrounds)
        volume = torch.from_numpy(image)
        per_fold, prob_sum = [], None
        for net in models:
            probs = window_probabilities(
                volume, net, spec, dev, progress=bar.windows(case.id), pad_value=pad_value(meta)
            )
            if opts.save_probabilities:
                prob_sum = probs.float().cpu() if prob_sum is None else prob_sum + probs.float().cpu()
            per_fold.append(probs.argmax(0) if inf.ensemble == "vote" else probs)
        if prob_sum is not None:  # before the label: a label on disk means its case is complete
            mean = (prob_sum / len(models)).numpy()
            write_probabilities(restore_probabilities(mean, meta), probs_file)
        labels = (
            vote(per_fold, spec.dataset.num_classes)
            if inf.ensemble == "vote"
            else mean_probabilities(per_fold)
        )
        labels = largest_component(labels.cpu().numpy().astype(np.uint8), classes)
        written.append(write_label(restore_geometry(labels, meta), case.images[0], target))
    return written
