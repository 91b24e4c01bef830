"""``nastk retrain``: train the discrete network of an arch.json on each fold (Sec. 4.1).

Filters and batch are the search's times ``retrain.filter_multiplier`` and
``retrain.batch_multiplier`` (paper: x2, x2); 1k warm-up then 40k iterations, LR x0.5 at
[8k, 16k, 24k, 32k] after the warm-up. Each fold validates with sliding-window Dice on its
validation cases every ``val_every`` iterations and keeps the best and the final model; each validation
redraws ``progress.png`` and sends its Dice to the run's tracker (``--logger``).

The fold's last validation is its out-of-fold prediction: `predict`'s pipeline (the spec's inference
settings) on every validation case, written in the case's original geometry without post-processing to
``RUN/retrain/fold_K/validation/CASE.nii.gz`` (see :mod:`nastk.crossval`). Under DDP the validation cases
are split over the ranks. Once every fold has its out-of-fold predictions, ``RUN/postprocessing.json``
records the post-processing cross-validation chose.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nastk import checkpoint as ckpt
from nastk import provenance
from nastk.crossval import SPLITS_FILE, missing_predictions, prediction_file, update_postprocessing
from nastk.data import augment
from nastk.data.dataset import read_dataset
from nastk.data.preprocess import load_case, pad_value, restore_geometry
from nastk.data.sampler import PatchDataset, make_loader
from nastk.engine import distributed as dd
from nastk.engine.common import (
    CsvLog,
    autocast,
    batch_generator,
    hard_dice,
    make_scaler,
    seed_everything,
    sgd,
    to_device,
)
from nastk.engine.loop import (
    Loop,
    StepResult,
    batches,
    guard_run,
    is_due,
    memory_columns,
    prepared_cache,
    resume_state,
    save_checkpoint,
    stop_if_not_finite,
)
from nastk.engine.options import RunOptions
from nastk.engine.schedule import lr_lambda
from nastk.engine.stop import StopRequests, stop_requests
from nastk.errors import DataError, NastkError, Preempted
from nastk.inference.predict import window_probabilities
from nastk.inference.sliding_window import sliding_window_predict
from nastk.inference.writer import write_label
from nastk.io import atomic_write_text, make_dir
from nastk.lock import run_lock
from nastk.logs import logger, record, run_log, start_log_file
from nastk.metrics.dice import dice_per_class, nan_mean
from nastk.network import build_network, load_architecture, save_model
from nastk.objective import build_losses
from nastk.progress import Reporter
from nastk.runspec import record_retrain_spec
from nastk.spec import Spec
from nastk.threads import thread_governor
from nastk.trackers import tracking

PROGRESS_FIGURE = "progress.png"


def parse_folds(fold: str, num_folds: int) -> list[int]:
    if fold == "all":
        return list(range(num_folds))
    try:
        k = int(fold)
    except ValueError:
        raise DataError(f"--fold: {fold!r} is not a fold index or 'all'") from None
    if not 0 <= k < num_folds:
        raise DataError(f"--fold: {k} is out of range; dataset.num_folds is {num_folds} (0..{num_folds - 1})")
    return [k]


class OutOfFold:
    """Writes a fold's out-of-fold predictions: label maps in each case's original geometry."""

    def __init__(self, run: Path, fold: int, sources: dict[str, Path]):
        self.run, self.fold, self.sources = Path(run), fold, sources

    def write(self, case_id: str, labels: torch.Tensor, meta: dict) -> Path:
        target = prediction_file(self.run, self.fold, case_id)
        array = labels.to(torch.uint8).cpu().numpy()
        return write_label(restore_geometry(array, meta), self.sources[case_id], target)


@torch.no_grad()
def validate(
    net, cache_root: Path, case_ids: list[str], spec: Spec, device, amp: str, oof: OutOfFold | None = None
) -> list[dict]:
    """Dice of each foreground class on each case, on the cached (preprocessed) case.

    With ``oof`` this is the fold's out-of-fold prediction: `predict`'s sliding window (the spec's inference
    settings) instead of the plain one, and each case's labels are also written in its original geometry.
    """
    net.eval()
    classes = list(range(1, spec.dataset.num_classes))
    rows = []
    governor = thread_governor()
    for case_id in case_ids:
        if governor is not None:
            governor.tick()
        image, label, meta = load_case(cache_root, case_id, mmap=False)
        volume = torch.from_numpy(np.ascontiguousarray(image))
        if oof is None:
            probs = sliding_window_predict(
                volume,
                net,
                tuple(spec.inference.patch_size),
                tuple(spec.inference.stride),
                spec.dataset.num_classes,
                batch_size=spec.inference.batch_size,
                blend=spec.inference.blend,
                device=device,
                accumulate_on="cpu",
                amp=amp != "off" and device.type == "cuda",
                pad_value=pad_value(meta),
            )
        else:
            probs = window_probabilities(volume, net, spec, device, pad_value=pad_value(meta))
        pred = probs.argmax(0)
        if oof is not None:
            oof.write(case_id, pred, meta)
        if label is not None:
            target = torch.from_numpy(label.astype(np.int64)).to(pred.device)
            for c, d in zip(classes, dice_per_class(pred, target, classes)):
                rows.append({"case": case_id, "class": c, "dice": d})
    net.train()
    return rows


def validate_on_ranks(
    net, cache_root: Path, case_ids: list[str], spec: Spec, dist: dd.Dist, amp: str, oof: OutOfFold | None
) -> list[dict]:
    """:func:`validate` with the cases split over the ranks (none waits idle for another's cases); every
    rank gets every row, in case order."""
    rows = validate(net, cache_root, case_ids[dist.rank :: dist.world_size], spec, dist.device, amp, oof)
    order = {c: i for i, c in enumerate(case_ids)}
    return sorted(dd.gather(rows, dist), key=lambda r: (order[r["case"]], r["class"]))


def run_retrain(spec: Spec, arch_path: Path, fold: str, opts: RunOptions) -> list[Path]:
    space, arch = load_architecture(spec, arch_path)
    folds = parse_folds(fold, spec.dataset.num_folds)
    dist = dd.setup(opts.device)
    try:
        with (
            run_lock(opts.out) if dist.is_main else contextlib.nullcontext(),
            run_log(opts.quiet, dist.is_main),
            stop_requests() as stop,
        ):
            outs = []
            for i, k in enumerate(folds):
                outs.append(_retrain_fold(spec, space, arch, k, opts, dist, arch_path, stop))
                if i + 1 < len(folds):
                    _stop_between_folds(stop, k, dist)
            if dist.is_main:
                info = read_dataset(spec.dataset.root, spec.dataset.format)
                references = {c.id: c.label for c in info.training}
                update_postprocessing(Path(opts.out), spec.dataset.num_classes, references)
            dd.leave_together(dist)
            return outs
    finally:
        dd.teardown(dist)


def _stop_between_folds(stop: StopRequests, fold: int, dist: dd.Dist) -> None:
    """A stop signal received during a fold's last steps (its final model, its out-of-fold predictions)
    stops the run before the next fold, on every rank."""
    if dd.any_flag(stop.requested, dist):
        name = stop.name if stop.requested else "a signal on another rank"
        message = (
            f"stopped by {name} after fold {fold} (trained, with its out-of-fold predictions); run the same "
            "command with --auto-resume to continue with the next fold"
        )
        record(message)
        raise Preempted(message)


def _retrain_fold(
    spec: Spec,
    space,
    arch,
    fold: int,
    opts: RunOptions,
    dist: dd.Dist,
    arch_path=None,
    stop: StopRequests | None = None,
) -> Path:
    r = spec.retrain
    run = Path(opts.out)
    out = run / "retrain" / f"fold_{fold}"
    ckpt_path, final = out / "checkpoint.pt", out / "model_final.pt"
    resume = opts.resume or opts.auto_resume  # per fold: a fold with nothing yet starts
    refusals = [
        (
            ckpt_path.exists() and not resume and not final.exists(),
            f"{ckpt_path}: a retrain already ran here; pass --resume or --auto-resume to continue",
        ),
        (final.exists() and not resume, f"{final}: fold {fold} is already trained; use another --out"),
    ]
    guard_run([run, out], refusals, dist)
    if opts.auto_resume and dist.is_main and not ckpt_path.exists() and not final.exists():
        logger.info(f"--auto-resume: no checkpoint in {out}, starting fold {fold} anew")
    seed_everything(spec.seed + fold, opts.deterministic)
    batch = dd.per_rank_batch(spec.search.batch_size * r.batch_multiplier, dist.world_size, "retrain batch")
    cache = prepared_cache(spec, dist, opts.quiet)
    made_from = None
    if dist.is_main:  # before anything in the run is replaced: folds are made alike or not at all
        plan_text, splits_text = ((cache.root / n).read_text() for n in ("plan.json", SPLITS_FILE))
        made_from = provenance.fold_record(fold, spec, arch, arch_path, plan_text, splits_text, run)
        provenance.check_fold_joins(run, made_from)
    split = cache.splits()[fold]
    ds = PatchDataset(
        cache.root, split["train"], tuple(r.patch_size), spec.dataset.fg_fraction, seed=spec.seed * 7 + fold
    )
    aug = augment.build(spec.dataset.augment)
    parts = _retrain_parts(spec, space, arch, opts, dist)
    total = r.warmup_iters + r.iters
    info = read_dataset(spec.dataset.root, spec.dataset.format)
    oof = OutOfFold(run, fold, {c.id: c.images[0] for c in info.training})
    if resume and final.exists():  # trained: only out-of-fold predictions may be missing
        ckpt.restore(final, _final_state(final, spec), {"model": parts.net})
        if dist.is_main:
            _copy_into_run(cache.root, run)
            record_retrain_spec(run, fold, spec)
            provenance.write_record(run, made_from)
            start_log_file(run)
            record(f"retrain fold {fold} is already trained ({final}); only missing out-of-fold predictions")
        _finish_out_of_fold(parts.net, cache.root, split["val"], spec, dist, opts, oof)
        return out
    start, best = 0, -1.0
    if resume and ckpt_path.exists():
        state, start = resume_state(ckpt_path, spec, parts.state(), ("best",), total)
        best = ckpt.number(ckpt_path, state, "best")
    if dist.is_main:  # predict and cross-validation need these, even where the training data is not at hand
        _copy_into_run(cache.root, run)
        record_retrain_spec(run, fold, spec)  # after the resume's spec check: a refused spec is not recorded
        provenance.write_record(run, made_from)  # what the fold is made from; its models carry it too
        start_log_file(run)
        how = "resumed" if start else "started"
        record(f"retrain fold {fold} {how} at iteration {start} of {total} in {out}")
    if start >= total:  # killed between the last checkpoint and the final model
        if dist.is_main:
            save_model(final, parts.net, arch, spec, fold, total, None)
        _finish_out_of_fold(parts.net, cache.root, split["val"], spec, dist, opts, oof)
        return out
    step = RetrainStep(spec, opts, dist, parts, aug, fold, best)
    workers = opts.workers if opts.workers is not None else spec.dataset.num_workers
    step.loader = batches(
        make_loader(ds, batch, start * batch, (total - start) * batch, workers, dist.rank, dist.world_size)
    )
    _train_fold(spec, opts, dist, step, (start, total), arch, (cache.root, split["val"], oof), stop)
    return out


def retrain_log_every(spec: Spec) -> int:
    """``retrain.log_every``, or the search's where the spec leaves it unset (as before it existed)."""
    return spec.retrain.log_every if spec.retrain.log_every is not None else spec.search.log_every


def _train_fold(spec: Spec, opts: RunOptions, dist: dd.Dist, step, span, arch, validation, stop=None) -> None:
    """Iterations ``span`` of one fold with validation every ``retrain.val_every``, then the final model."""
    (start, total), (cache_root, val_cases, oof) = span, validation
    out = Path(opts.out) / "retrain" / f"fold_{step.fold}"
    log = val_log = None
    if dist.is_main:
        make_dir(out)
        resumed = start - 1 if opts.resume or opts.auto_resume else None
        log = CsvLog(out / "log.csv", resume_from=resumed)
        val_log = CsvLog(out / "val_metrics.csv", resume_from=resumed)

    def checkpoint(iteration: int) -> None:
        if dist.is_main:
            save_checkpoint(out / "checkpoint.pt", spec, step.parts.state(), {"best": step.best}, iteration)
        dd.barrier(dist)

    def validate_if_due(it: int) -> None:
        if not is_due(it, spec.retrain.val_every, total):
            return
        last = it + 1 == total  # the final model's validation is the out-of-fold prediction
        rows = validate_on_ranks(
            step.parts.net, cache_root, val_cases, spec, dist, opts.amp, oof if last else None
        )
        mean = nan_mean(row["dice"] for row in rows)[0]
        if dist.is_main:
            for row in rows:
                val_log.append({"iteration": it, **row})
            tracker.log_row(validation_row(rows), it)
            _draw_progress(out, log, val_log, step.fold)
        if mean > step.best:  # nan (no class anywhere) never is
            step.best = mean
            if dist.is_main:
                save_model(out / "model_best.pt", step.parts.net, arch, spec, step.fold, it + 1, mean)

    reporter = Reporter(total, start, dist.is_main, opts.quiet, f"retrain fold {step.fold}")
    stage, every = f"fold_{step.fold}", retrain_log_every(spec)
    with tracking(opts.logger, Path(opts.out), stage, out, spec.name, dist.is_main) as tracker:
        loop = Loop(
            start, total, every, spec.retrain.checkpoint_every, checkpoint, log, reporter, tracker=tracker
        )
        loop.after_step.append(validate_if_due)
        loop.dist, loop.stop, loop.checkpoint_path = dist, stop, out / "checkpoint.pt"
        loop.checkpoint_minutes = spec.retrain.checkpoint_minutes
        loop.run(step)
    if dist.is_main:
        final = out / "model_final.pt"
        save_model(final, step.parts.net, arch, spec, step.fold, total, None)
        record(f"retrain fold {step.fold} finished: {final}, best validation Dice {step.best:.4f}")


def validation_row(rows: list[dict]) -> dict[str, float]:
    """One validation for a tracker: the mean Dice (``val_dice``) and each class's mean over the cases."""
    row = {"val_dice": nan_mean(r["dice"] for r in rows)[0]}
    for c in sorted({r["class"] for r in rows}):
        row[f"val_dice_class_{c}"] = nan_mean(r["dice"] for r in rows if r["class"] == c)[0]
    return row


def _draw_progress(out: Path, log: CsvLog, val_log: CsvLog, fold: int) -> None:
    """``progress.png`` from the fold's logs so far, redrawn at each validation."""
    from nastk.report.figures import progress_curves

    progress_curves(
        log.rows, val_log.rows, out / PROGRESS_FIGURE, title=f"{out.parent.parent.name}: fold {fold}"
    )


@dataclass
class RetrainParts:
    """The discrete network, its SGD optimiser, schedule and scaler, and the segmentation loss."""

    net: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    seg: object

    def state(self) -> dict[str, object]:
        """What a checkpoint saves and a resume restores, by key."""
        return {"model": self.net, "opt": self.opt, "sched": self.sched, "scaler": self.scaler}


def _retrain_parts(spec: Spec, space, arch, opts: RunOptions, dist: dd.Dist) -> RetrainParts:
    r = spec.retrain
    net = build_network(spec, space, arch, r.filter_multiplier).to(dist.device)
    if opts.channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    opt = sgd(net.parameters(), r.weights)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(r.warmup_iters, r.weights.lr_start, r.weights.lr, r.milestones, r.weights.gamma)
    )
    seg, _ = build_losses(spec.losses)
    return RetrainParts(net, opt, sched, make_scaler(dist.device, opts.amp), seg)


class RetrainStep:
    """One retraining iteration: an SGD step on the fold's training patches. ``best`` is the best
    validation Dice so far (-1 before the first validation)."""

    def __init__(self, spec: Spec, opts: RunOptions, dist: dd.Dist, parts: RetrainParts, aug, fold, best):
        self.spec, self.opts, self.dist, self.parts, self.aug = spec, opts, dist, parts, aug
        self.fold, self.best = fold, best
        self.ckpt_path = Path(opts.out) / "retrain" / f"fold_{fold}" / "checkpoint.pt"
        self.model = dd.wrap(parts.net, dist)
        if opts.compile:  # checkpoints and validation keep using the eager `net`
            self.model = torch.compile(self.model)
        self.loader = None  # the training batches, set once the start is known

    def __call__(self, it: int, log: bool) -> StepResult:
        p, dist = self.parts, self.dist
        self.model.train()
        x, y = to_device(next(self.loader), dist.device, self.opts.channels_last)
        x, y = self.aug(x, y, batch_generator(self.spec.seed + self.fold, dist.rank, it, 3, dist.device))
        p.opt.zero_grad(set_to_none=True)
        with autocast(dist.device, self.opts.amp):
            logits = self.model(x)
            loss = p.seg.fn(logits.float(), y)
        stop_if_not_finite(loss, it, dist, self.ckpt_path)
        p.scaler.scale(loss).backward()
        p.scaler.step(p.opt)
        p.scaler.update()
        lr = p.opt.param_groups[0]["lr"]
        p.sched.step()
        row = None
        if dist.is_main and log:
            row = {
                "iteration": it,
                "lr": lr,
                "L_seg": float(loss.detach()),
                "train_dice": hard_dice(logits.detach(), y, self.spec.dataset.num_classes),
            }
            row = memory_columns(row, dist.device)
        # before the first validation there is no best score to show (not a score of 0)
        shown = f" best val {self.best:.3f}" if self.best >= 0 else ""
        return StepResult("train", f"L_seg {float(loss.detach()):.3f}{shown}", row)


def _copy_into_run(cache_root: Path, run: Path) -> None:
    """The cache's plan (predict preprocesses with it) and folds (cross-validation scores by them)."""
    for name in ("plan.json", SPLITS_FILE):
        text, copy = (cache_root / name).read_text(), run / name
        if not copy.is_file() or copy.read_text() != text:
            atomic_write_text(copy, text)


def _final_state(path: Path, spec: Spec) -> dict:
    state = ckpt.load(path, required=("model", "spec_hash"))
    if state["spec_hash"] != ckpt.spec_hash(spec):
        raise NastkError(f"{path}: the spec changed since this fold was trained; resume with the same spec")
    return state


def _finish_out_of_fold(net, cache_root: Path, cases: list[str], spec, dist, opts, oof: OutOfFold) -> None:
    """Predict the validation cases that have no out-of-fold prediction yet (split over the ranks)."""
    # rank 0 looks and tells the others, so all split the same list whoever writes first
    missing = dd.gather(missing_predictions(oof.run, oof.fold, cases) if dist.is_main else [], dist)
    if missing and dist.is_main:
        logger.info(f"fold {oof.fold}: predicting {len(missing)} missing out-of-fold case(s)")
    if missing:
        validate_on_ranks(net, cache_root, missing, spec, dist, opts.amp, oof)
