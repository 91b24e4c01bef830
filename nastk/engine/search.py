"""``nastk search``: the paper's schedule (Sec. 3.6, 4.1), resumable, DDP through torchrun.

Iterations 0 .. warmup-1 and the next ``weight_iters`` train the weights only on train1; each of
the last ``joint_iters`` iterations takes one SGD step on the weights with a train1 batch and one
Adam step on the architecture parameters with a train2 batch, minimising Eq. 11 with t counting
architecture iterations only.

Each step differentiates only what its optimiser updates: the weight step with the architecture
parameters frozen, the architecture step with the weights frozen. So the architecture step computes
no weight gradients (the grad-weight convolutions, about a third of its backward), and the weight
step keeps no activations that only architecture gradients need. DDP manages the weights; the
architecture gradients are averaged over ranks explicitly.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import numpy as np
import torch

from nastk import registry
from nastk.data import augment
from nastk.data.preprocess import preprocess, search_halves
from nastk.data.sampler import PatchDataset, make_loader
from nastk.engine import checkpoint as ckpt
from nastk.engine import distributed as dd
from nastk.engine.common import (
    CsvLog,
    Reporter,
    TrainingError,
    autocast,
    batch_generator,
    check_finite,
    hard_dice,
    make_scaler,
    seed_everything,
    set_requires_grad,
    sgd,
    to_device,
)
from nastk.engine.options import RunOptions
from nastk.engine.schedule import lr_lambda
from nastk.errors import DataError, NastkError
from nastk.io import atomic_write_bytes, atomic_write_text, make_dir, remove_stale_temps
from nastk.lock import run_lock
from nastk.objective import arch_objective, build_losses
from nastk.protocols import Diagnoses, Drawable, NeedsSetting, ReportsDiagnostics
from nastk.setting import retrain_setting, spec_budget, uses_gb_budget
from nastk.spec import Spec, dump_spec


def phase_of(iteration: int, s) -> str:
    if iteration < s.warmup_iters:
        return "warm-up"
    if iteration < s.warmup_iters + s.weight_iters:
        return "weights"
    return "joint"


def total_iterations(s) -> int:
    return s.warmup_iters + s.weight_iters + s.joint_iters


def per_rank_batch(global_batch: int, world: int, field: str) -> int:
    if global_batch % world:
        raise DataError(f"{field}: global batch {global_batch} is not divisible by {world} processes")
    return global_batch // world


def build_supernet(spec: Spec):
    space = registry.load("spaces", spec.space.name)
    ops = registry.load_ops(spec.ops)
    params = space.Params.model_validate(spec.space.params)
    net = space.build_supernet(
        params, ops, spec.dataset.in_channels, spec.dataset.num_classes, tuple(spec.search.patch_size)
    )
    return net


def save_arch_params(path: Path, net) -> None:
    buf = io.BytesIO()
    np.savez(buf, **net.arch_parameters_numpy())
    atomic_write_bytes(path, buf.getvalue())


def decode_run(spec: Spec, run: Path, quiet: bool = False):
    disc = registry.load("discretizers", spec.discretizer.name)
    with np.load(run / "search" / "arch_params.npz") as data:
        arrays = {k: data[k] for k in data.files}
    budget = spec_budget(spec)
    if budget is None:  # discretizers need not know budgets
        arch = disc(arrays, dict(spec.space.params), list(spec.ops))
    else:
        try:
            arch = disc(arrays, dict(spec.space.params), list(spec.ops), budget=budget)
        except DataError as exc:  # the search itself is saved: only the decoding needs redoing
            raise DataError(
                f"{exc}; the search is saved in {run / 'search'}: decode it with another budget, "
                f"`nastk decode {run} --budget-gb X`"
            ) from None
    arch.save(run / "arch.json")
    if isinstance(arch, Drawable):
        arch.draw(run / "arch.png")
    return arch


def run_search(spec: Spec, opts: RunOptions) -> Path:
    dist = dd.setup(opts.device)
    try:
        with run_lock(opts.out) if dist.is_main else contextlib.nullcontext():
            return _search(spec, opts, dist)
    finally:
        dd.teardown(dist)


def _search(spec: Spec, opts: RunOptions, dist: dd.Dist) -> Path:
    s = spec.search
    run = Path(opts.out)
    out = run / "search"
    ckpt_path = out / "checkpoint.pt"
    if dist.is_main:
        for folder in (run, out):
            remove_stale_temps(folder)
        if ckpt_path.exists() and not opts.resume:
            raise NastkError(
                f"{ckpt_path}: a search already ran here; pass --resume to continue or use another --out"
            )
        if opts.resume and not ckpt_path.exists():
            raise NastkError(f"{ckpt_path}: nothing to resume (no checkpoint)")
    seed_everything(spec.seed, opts.deterministic)
    batch = per_rank_batch(s.batch_size, dist.world_size, "search.batch_size")

    # Data: rank 0 preprocesses (cached), the others wait and then find it done.
    if dist.is_main:
        cache = preprocess(spec.dataset, seed=spec.seed, quiet=opts.quiet)
    dd.barrier(dist)
    if not dist.is_main:
        cache = preprocess(spec.dataset, seed=spec.seed, quiet=True)
    splits = cache.splits()
    if spec.dataset.fold >= len(splits):
        raise DataError(f"dataset.fold: {spec.dataset.fold} is out of range for {len(splits)} folds")
    train1, train2 = search_halves(splits[spec.dataset.fold]["train"], spec.seed)
    if not train1 or not train2:
        raise DataError(f"dataset.fold: fold {spec.dataset.fold} has too few training cases to split in two")
    workers = opts.workers if opts.workers is not None else spec.dataset.num_workers
    patch = tuple(s.patch_size)
    ds1 = PatchDataset(cache.root, train1, patch, spec.dataset.fg_fraction, seed=spec.seed * 2 + 1)
    ds2 = PatchDataset(cache.root, train2, patch, spec.dataset.fg_fraction, seed=spec.seed * 2 + 2)
    aug = augment.build(spec.dataset.augment)

    net = build_supernet(spec).to(dist.device)
    net.checkpoint_cells = opts.checkpoint_cells
    if opts.channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    arch_params = net.arch_parameters()
    opt_w = sgd(net.weight_parameters(), s.weights)
    opt_a = torch.optim.Adam(
        arch_params, lr=s.arch.lr, betas=tuple(s.arch.betas), weight_decay=s.arch.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt_w, lr_lambda(s.warmup_iters, s.weights.lr_start, s.weights.lr, s.milestones, s.weights.gamma)
    )
    scaler_w, scaler_a = make_scaler(dist.device, opts.amp), make_scaler(dist.device, opts.amp)
    seg, arch_losses = build_losses(spec.losses)
    setting = retrain_setting(spec)
    for a in arch_losses:
        if isinstance(a.fn, NeedsSetting):  # e.g. a memory budget in GB at the retraining setting
            a.fn.bind(net, setting)
    if dist.is_main and dist.world_size != spec.retrain.gpus and uses_gb_budget(spec):
        print(
            f"note: the memory budget assumes retraining on retrain.gpus = {spec.retrain.gpus} GPUs "
            f"({setting.batch_size} patches each); this search runs on {dist.world_size}",
            file=sys.stderr,
        )

    start = 0
    if opts.resume:
        parts = {"model": net, "opt_w": opt_w, "opt_a": opt_a, "sched": sched}
        parts.update(scaler_w=scaler_w, scaler_a=scaler_a)
        state = ckpt.load(ckpt_path, required=(*parts, "rng", "iteration", "spec_hash"))
        if state["spec_hash"] != ckpt.spec_hash(spec):
            raise NastkError(
                f"{ckpt_path}: the spec changed since this checkpoint; resume with the same spec"
            )
        start = ckpt.iteration(ckpt_path, state, total_iterations(s))
        ckpt.restore(ckpt_path, state, parts)
        ckpt.restore_rng(ckpt_path, state)
    weights = net.weight_parameters()
    # Weight steps run with the architecture frozen; only the architecture step flips this, and flips
    # it back. DDP registers only the parameters that require grad when it wraps the model: the weights.
    set_requires_grad(arch_params, False)
    model = dd.wrap(net, dist)
    arch_forward = net  # not through DDP: it manages the weights
    if opts.compile:  # one graph per step kind; checkpoints keep using the eager `net`
        model, arch_forward = torch.compile(model), torch.compile(net)
    total = total_iterations(s)
    joint_start = s.warmup_iters + s.weight_iters
    log = None
    if dist.is_main:
        make_dir(out)
        atomic_write_text(run / "spec.yaml", dump_spec(spec))
        log = CsvLog(out / "log.csv", resume_from=start - 1 if opts.resume else None)

    def loader(ds, first_sample):
        remaining = (total - start) * batch
        return make_loader(ds, batch, first_sample, remaining, workers, dist.rank, dist.world_size)

    it1 = iter(loader(ds1, start * batch))
    it2 = iter(loader(ds2, max(0, start - joint_start) * batch))

    def save_checkpoint(iteration: int) -> None:
        if dist.is_main:
            ckpt.save(
                ckpt_path,
                {
                    "model": net.state_dict(),
                    "opt_w": opt_w.state_dict(),
                    "opt_a": opt_a.state_dict(),
                    "sched": sched.state_dict(),
                    "scaler_w": scaler_w.state_dict(),
                    "scaler_a": scaler_a.state_dict(),
                    "rng": ckpt.rng_state(),
                    "iteration": iteration,
                    "spec_hash": ckpt.spec_hash(spec),
                },
            )
            save_arch_params(out / "arch_params.npz", net)
        dd.barrier(dist)

    reporter = Reporter(total, start, dist.is_main, opts.quiet, "search")
    if dist.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dist.device)
    try:
        for it in range(start, total):
            phase = phase_of(it, s)
            model.train()
            x1, y1 = to_device(next(it1), dist.device, opts.channels_last)
            x1, y1 = aug(x1, y1, batch_generator(spec.seed, dist.rank, it, 1, dist.device))
            opt_w.zero_grad(set_to_none=True)
            with autocast(dist.device, opts.amp):
                logits = model(x1)
                l_seg = seg.fn(logits.float(), y1)
            bad = not torch.isfinite(l_seg).item()
            if dd.any_flag(bad, dist):  # every rank stops together
                where = "" if bad else " on another rank"
                raise TrainingError(
                    f"iteration {it}: loss term 'L_seg' is not finite{where}; stopped, the last good "
                    f"checkpoint is kept ({ckpt_path})"
                )
            scaler_w.scale(l_seg * seg.weight).backward()
            scaler_w.step(opt_w)
            scaler_w.update()
            opt_w.zero_grad(set_to_none=True)  # the architecture step runs without them
            lr = opt_w.param_groups[0]["lr"]
            sched.step()

            terms: dict[str, torch.Tensor] = {}
            if phase == "joint":
                x2, y2 = to_device(next(it2), dist.device, opts.channels_last)
                x2, y2 = aug(x2, y2, batch_generator(spec.seed, dist.rank, it, 2, dist.device))
                opt_a.zero_grad(set_to_none=True)
                set_requires_grad(weights, False)
                set_requires_grad(arch_params, True)
                with autocast(dist.device, opts.amp):
                    l_seg2 = seg.fn(arch_forward(x2).float(), y2)
                terms = {a.name: a.fn(net) for a in arch_losses}
                check_finite({"L_seg (arch)": l_seg2, **terms}, it)
                t = it - joint_start + 1
                total_arch = arch_objective(
                    l_seg2 * seg.weight, [(a.weight, terms[a.name]) for a in arch_losses], t, s.joint_iters
                )
                scaler_a.scale(total_arch).backward()
                dd.average_gradients(arch_params, dist)
                scaler_a.step(opt_a)
                scaler_a.update()
                set_requires_grad(weights, True)  # back to the weight steps' state
                set_requires_grad(arch_params, False)

            line = (it + 1) % s.log_every == 0 or it + 1 == total
            if dist.is_main and line:
                row = {"iteration": it, "phase": phase, "lr": lr, "L_seg": float(l_seg.detach())}
                if not terms:
                    with torch.no_grad():
                        terms = {a.name: a.fn(net) for a in arch_losses}
                row.update({f"L_{k}": float(v.detach()) for k, v in terms.items()})
                row.update(net.diagnostics() if isinstance(net, ReportsDiagnostics) else {})
                for a in arch_losses:
                    if isinstance(a.fn, Diagnoses):
                        row.update(a.fn.diagnostics(net))
                row["train_dice"] = hard_dice(logits.detach(), y1, spec.dataset.num_classes)
                if dist.device.type == "cuda":
                    row["peak_mem_mb"] = torch.cuda.max_memory_allocated(dist.device) / 2**20
                log.append(row)
            reporter.update(it, phase, f"L_seg {float(l_seg.detach()):.3f}", line)
            if (it + 1) % s.checkpoint_every == 0 and it + 1 < total:
                save_checkpoint(it + 1)
        save_checkpoint(total)
    finally:
        reporter.close()
    if dist.is_main:
        arch = decode_run(spec, run)
        if not opts.quiet:
            print(arch.summary())
    return run
