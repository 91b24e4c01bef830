"""``nastk retrain``: train the discrete network of an arch.json on each fold (Sec. 4.1).

Filters and batch are the search's times ``retrain.filter_multiplier`` and
``retrain.batch_multiplier`` (paper: x2, x2); 1k warm-up then 40k iterations, LR x0.5 at
[8k, 16k, 24k, 32k] after the warm-up. Each fold validates with sliding-window Dice on its
validation cases every ``val_every`` iterations and keeps the best and the final model.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from nastk import registry
from nastk.data import augment
from nastk.data.preprocess import load_case, pad_value, preprocess
from nastk.data.sampler import PatchDataset, make_loader
from nastk.engine import checkpoint as ckpt
from nastk.engine import distributed as dd
from nastk.engine.common import (
    CsvLog,
    Reporter,
    TrainingError,
    autocast,
    batch_generator,
    hard_dice,
    make_scaler,
    seed_everything,
    sgd,
    to_device,
)
from nastk.engine.options import RunOptions
from nastk.engine.schedule import lr_lambda
from nastk.engine.search import per_rank_batch
from nastk.errors import DataError, NastkError
from nastk.inference.sliding_window import sliding_window_predict
from nastk.io import atomic_write_text, make_dir, remove_stale_temps
from nastk.lock import run_lock
from nastk.objective import build_losses
from nastk.spec import Spec, dump_spec


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


def load_architecture(spec: Spec, arch_path: Path):
    space = registry.load("spaces", spec.space.name)
    if not Path(arch_path).is_file():
        raise DataError(
            f"{arch_path}: architecture file not found (run `nastk search` or `nastk decode` first)"
        )
    arch = space.load_arch(arch_path)
    mismatch = getattr(arch, "spec_mismatch", None)
    problem = mismatch(spec.space.params) if mismatch else None
    if problem:
        raise DataError(f"{arch_path}: {problem}")
    missing = [o for o in arch.op_names if o not in registry.names("ops")]
    if missing:
        raise DataError(f"{arch_path}: uses ops that are not installed: {', '.join(missing)}")
    return space, arch


def build_network(spec: Spec, space, arch, filter_multiplier: float):
    ops = {name: registry.load("ops", name) for name in arch.op_names}
    return space.build_network(
        arch, ops, spec.dataset.in_channels, spec.dataset.num_classes, filter_multiplier=filter_multiplier
    )


def dice_per_class(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> list[float]:
    """Dice of each foreground class; 1.0 when a class is absent from both (the MSD convention)."""
    out = []
    for c in range(1, num_classes):
        p, t = pred == c, target == c
        denom = int(p.sum() + t.sum())
        out.append(1.0 if denom == 0 else float(2 * (p & t).sum() / denom))
    return out


@torch.no_grad()
def validate(net, cache_root: Path, case_ids: list[str], spec: Spec, device, amp: str) -> list[dict]:
    net.eval()
    rows = []
    for case_id in case_ids:
        image, label, meta = load_case(cache_root, case_id, mmap=False)
        probs = sliding_window_predict(
            torch.from_numpy(np.ascontiguousarray(image)),
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
        pred = probs.argmax(0)
        for c, d in enumerate(
            dice_per_class(pred, torch.from_numpy(label.astype(np.int64)), spec.dataset.num_classes), 1
        ):
            rows.append({"case": case_id, "class": c, "dice": d})
    net.train()
    return rows


def run_retrain(spec: Spec, arch_path: Path, fold: str, opts: RunOptions) -> list[Path]:
    space, arch = load_architecture(spec, arch_path)
    folds = parse_folds(fold, spec.dataset.num_folds)
    dist = dd.setup(opts.device)
    try:
        with run_lock(opts.out) if dist.is_main else contextlib.nullcontext():
            return [_retrain_fold(spec, space, arch, k, opts, dist) for k in folds]
    finally:
        dd.teardown(dist)


def _save_model(path: Path, net, arch, spec: Spec, fold: int, iteration: int, metric: float | None) -> None:
    ckpt.save(
        path,
        {
            "model": net.state_dict(),
            "arch": arch.to_json(),
            "space": spec.space.name,
            "filter_multiplier": spec.retrain.filter_multiplier,
            "in_channels": spec.dataset.in_channels,
            "num_classes": spec.dataset.num_classes,
            "fold": fold,
            "iteration": iteration,
            "val_dice": -1.0 if metric is None else metric,
            "spec_hash": ckpt.spec_hash(spec),
        },
    )


def _retrain_fold(spec: Spec, space, arch, fold: int, opts: RunOptions, dist: dd.Dist) -> Path:
    r = spec.retrain
    out = Path(opts.out) / "retrain" / f"fold_{fold}"
    ckpt_path = out / "checkpoint.pt"
    if dist.is_main:
        for folder in (Path(opts.out), out):
            remove_stale_temps(folder)
        if ckpt_path.exists() and not opts.resume and not (out / "model_final.pt").exists():
            raise NastkError(f"{ckpt_path}: a retrain already ran here; pass --resume to continue")
        if (out / "model_final.pt").exists() and not opts.resume:
            raise NastkError(f"{out / 'model_final.pt'}: fold {fold} is already trained; use another --out")
    seed_everything(spec.seed + fold, opts.deterministic)
    batch = per_rank_batch(spec.search.batch_size * r.batch_multiplier, dist.world_size, "retrain batch")
    if dist.is_main:
        cache = preprocess(spec.dataset, seed=spec.seed, quiet=opts.quiet)
    dd.barrier(dist)
    if not dist.is_main:
        cache = preprocess(spec.dataset, seed=spec.seed, quiet=True)
    split = cache.splits()[fold]
    workers = opts.workers if opts.workers is not None else spec.dataset.num_workers
    ds = PatchDataset(
        cache.root, split["train"], tuple(r.patch_size), spec.dataset.fg_fraction, seed=spec.seed * 7 + fold
    )
    aug = augment.build(spec.dataset.augment)

    net = build_network(spec, space, arch, r.filter_multiplier).to(dist.device)
    if opts.channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    opt = sgd(net.parameters(), r.weights)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(r.warmup_iters, r.weights.lr_start, r.weights.lr, r.milestones, r.weights.gamma)
    )
    scaler = make_scaler(dist.device, opts.amp)
    seg, _ = build_losses(spec.losses)
    total = r.warmup_iters + r.iters
    start, best = 0, -1.0
    if opts.resume and ckpt_path.exists():
        parts = {"model": net, "opt": opt, "sched": sched, "scaler": scaler}
        state = ckpt.load(ckpt_path, required=(*parts, "rng", "iteration", "best", "spec_hash"))
        if state["spec_hash"] != ckpt.spec_hash(spec):
            raise NastkError(
                f"{ckpt_path}: the spec changed since this checkpoint; resume with the same spec"
            )
        start, best = ckpt.iteration(ckpt_path, state, total), ckpt.number(ckpt_path, state, "best")
        ckpt.restore(ckpt_path, state, parts)
        ckpt.restore_rng(ckpt_path, state)
    if dist.is_main:  # predict needs the same preprocessing, even where the training data is not at hand
        plan_text, plan_copy = (cache.root / "plan.json").read_text(), Path(opts.out) / "plan.json"
        if not plan_copy.is_file() or plan_copy.read_text() != plan_text:
            atomic_write_text(plan_copy, plan_text)
    if start >= total:
        return out
    model = dd.wrap(net, dist)
    if opts.compile:  # checkpoints and validation keep using the eager `net`
        model = torch.compile(model)
    log = val_log = None
    if dist.is_main:
        make_dir(out)
        atomic_write_text(Path(opts.out) / "spec.yaml", dump_spec(spec)) if not (
            Path(opts.out) / "spec.yaml"
        ).exists() else None
        resumed = start - 1 if opts.resume else None
        log = CsvLog(out / "log.csv", resume_from=resumed)
        val_log = CsvLog(out / "val_metrics.csv", resume_from=resumed)
    loader = iter(
        make_loader(ds, batch, start * batch, (total - start) * batch, workers, dist.rank, dist.world_size)
    )

    def save_checkpoint(iteration: int) -> None:
        if dist.is_main:
            ckpt.save(
                ckpt_path,
                {
                    "model": net.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": ckpt.rng_state(),
                    "iteration": iteration,
                    "best": best,
                    "spec_hash": ckpt.spec_hash(spec),
                },
            )
        dd.barrier(dist)

    reporter = Reporter(total, start, dist.is_main, opts.quiet, f"retrain fold {fold}")
    try:
        for it in range(start, total):
            model.train()
            x, y = to_device(next(loader), dist.device, opts.channels_last)
            x, y = aug(x, y, batch_generator(spec.seed + fold, dist.rank, it, 3, dist.device))
            opt.zero_grad(set_to_none=True)
            with autocast(dist.device, opts.amp):
                logits = model(x)
                loss = seg.fn(logits.float(), y)
            bad = not torch.isfinite(loss).item()
            if dd.any_flag(bad, dist):
                where = "" if bad else " on another rank"
                raise TrainingError(
                    f"iteration {it}: loss term 'L_seg' is not finite{where}; stopped, the last good "
                    f"checkpoint is kept ({ckpt_path})"
                )
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            lr = opt.param_groups[0]["lr"]
            sched.step()
            line = (it + 1) % spec.search.log_every == 0 or it + 1 == total
            if dist.is_main and line:
                row = {
                    "iteration": it,
                    "lr": lr,
                    "L_seg": float(loss.detach()),
                    "train_dice": hard_dice(logits.detach(), y, spec.dataset.num_classes),
                }
                if dist.device.type == "cuda":
                    row["peak_mem_mb"] = torch.cuda.max_memory_allocated(dist.device) / 2**20
                log.append(row)
            reporter.update(
                it, "train", f"L_seg {float(loss.detach()):.3f} best val {max(best, 0):.3f}", line
            )
            if (it + 1) % r.val_every == 0 or it + 1 == total:
                if dist.is_main:
                    rows = validate(net, cache.root, split["val"], spec, dist.device, opts.amp)
                    mean = float(np.mean([row["dice"] for row in rows])) if rows else 0.0
                    for row in rows:
                        val_log.append({"iteration": it, **row})
                    if mean > best:
                        best = mean
                        _save_model(out / "model_best.pt", net, arch, spec, fold, it + 1, mean)
                dd.barrier(dist)
            if (it + 1) % r.checkpoint_every == 0 or it + 1 == total:
                save_checkpoint(it + 1)
        if dist.is_main:
            _save_model(out / "model_final.pt", net, arch, spec, fold, total, None)
    finally:
        reporter.close()
    return out
