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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nastk import registry
from nastk.data import augment
from nastk.data.preprocess import search_halves
from nastk.data.sampler import PatchDataset, make_loader
from nastk.engine import distributed as dd
from nastk.engine.common import (
    CsvLog,
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
from nastk.engine.loop import (
    Loop,
    StepResult,
    batches,
    guard_run,
    memory_columns,
    prepared_cache,
    resume_state,
    resuming,
    save_checkpoint,
    stop_if_not_finite,
)
from nastk.engine.options import RunOptions
from nastk.engine.schedule import lr_lambda
from nastk.engine.stop import StopRequests, stop_requests
from nastk.errors import DataError, SpecError
from nastk.io import atomic_write_bytes, make_dir
from nastk.lock import run_lock
from nastk.logs import logger, record, run_log, start_log_file
from nastk.network import build_supernet
from nastk.objective import arch_objective, build_losses
from nastk.progress import Reporter
from nastk.protocols import ChoosesRecompute, Diagnoses, Drawable, NeedsSetting, ReportsDiagnostics
from nastk.runspec import record_search_spec
from nastk.setting import retrain_setting, spec_budget, uses_gb_budget
from nastk.spec import Spec
from nastk.trackers import Tracker, tracking


def phase_of(iteration: int, s) -> str:
    if iteration < s.warmup_iters:
        return "warm-up"
    if iteration < s.warmup_iters + s.weight_iters:
        return "weights"
    return "joint"


def total_iterations(s) -> int:
    return s.warmup_iters + s.weight_iters + s.joint_iters


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
    from nastk.provenance import stamp_architecture
    from nastk.runspec import search_spec_path

    stamp_architecture(arch, run / "search" / "arch_params.npz", search_spec_path(run), budget and budget.gb)
    arch.save(run / "arch.json")
    if isinstance(arch, Drawable):
        arch.draw(run / "arch.png")
    return arch


def run_search(spec: Spec, opts: RunOptions) -> Path:
    dist = dd.setup(opts.device)
    try:
        with (
            run_lock(opts.out) if dist.is_main else contextlib.nullcontext(),
            run_log(opts.quiet, dist.is_main),
            stop_requests() as stop,
        ):
            run = _search(spec, opts, dist, stop)
            dd.leave_together(dist)
            return run
    finally:
        dd.teardown(dist)


def _search(spec: Spec, opts: RunOptions, dist: dd.Dist, stop: StopRequests | None = None) -> Path:
    s = spec.search
    run = Path(opts.out)
    out = run / "search"
    ckpt_path = out / "checkpoint.pt"
    resume = resuming(opts, ckpt_path, dist)
    refusals = [
        (
            ckpt_path.exists() and not resume,
            f"{ckpt_path}: a search already ran here; pass --resume or --auto-resume to continue, or use "
            "another --out",
        ),
        (resume and not ckpt_path.exists(), f"{ckpt_path}: nothing to resume (no checkpoint)"),
    ]
    guard_run([run, out], refusals, dist)
    if opts.auto_resume and not resume:
        logger.info(f"--auto-resume: no checkpoint in {out}, starting a new search")
    seed_everything(spec.seed, opts.deterministic)
    batch = dd.per_rank_batch(s.batch_size, dist.world_size, "search.batch_size")
    ds1, ds2 = _search_datasets(spec, prepared_cache(spec, dist, opts.quiet))
    aug = augment.build(spec.dataset.augment)
    parts = _search_parts(spec, opts, dist)
    net = parts.net
    total = total_iterations(s)
    start = resume_state(ckpt_path, spec, parts.state(), (), total)[1] if resume else 0
    if opts.auto_resume and start >= total and dd.from_main((run / "arch.json").is_file(), dist):
        if dist.is_main:
            start_log_file(run)
        logger.info(
            f"--auto-resume: the search in {out} is finished (iteration {start} of {total}); nothing to do"
        )
        return run
    step = SearchStep(spec, opts, dist, parts, aug)
    log = None
    if dist.is_main:
        make_dir(out)
        record_search_spec(run, spec)
        start_log_file(run)
        record(f"search {'resumed' if start else 'started'} at iteration {start} of {total} in {out}")
        log = CsvLog(out / "log.csv", resume_from=start - 1 if resume else None)
    workers = opts.workers if opts.workers is not None else spec.dataset.num_workers

    def loader(ds, first_sample):
        remaining = (total - start) * batch
        return batches(make_loader(ds, batch, first_sample, remaining, workers, dist.rank, dist.world_size))

    step.it1 = loader(ds1, start * batch)
    step.it2 = loader(ds2, max(0, start - step.joint_start) * batch)

    def checkpoint(iteration: int) -> None:
        if dist.is_main:
            save_checkpoint(ckpt_path, spec, parts.state(), {}, iteration)
            save_arch_params(out / "arch_params.npz", net)
        dd.barrier(dist)

    reporter = Reporter(total, start, dist.is_main, opts.quiet, "search")
    if dist.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dist.device)
    with tracking(opts.logger, run, "search", out, spec.name, dist.is_main) as tracker:
        loop = Loop(start, total, s.log_every, s.checkpoint_every, checkpoint, log, reporter, tracker=tracker)
        loop.dist, loop.stop, loop.checkpoint_path = dist, stop, ckpt_path
        loop.checkpoint_minutes = s.checkpoint_minutes
        loop.run(step)
        if dist.is_main:
            _decode_and_track(spec, run, opts, tracker, total)
    return run


def _decode_and_track(spec: Spec, run: Path, opts: RunOptions, tracker: Tracker, iteration: int) -> None:
    """Decode the search, and send the architecture's picture (where the search space draws one)."""
    arch = decode_run(spec, run)
    record(f"search finished; decoded architecture in {run / 'arch.json'}:\n{arch.summary()}")
    if isinstance(arch, Drawable):  # decode_run drew it
        tracker.log_image("architecture", run / "arch.png", iteration)
    if not opts.quiet:
        print(arch.summary())


def _search_datasets(spec: Spec, cache) -> tuple[PatchDataset, PatchDataset]:
    """The fold's training cases split in two halves: train1 for the weights, train2 for the architecture."""
    splits = cache.splits()
    if spec.dataset.fold >= len(splits):
        raise DataError(f"dataset.fold: {spec.dataset.fold} is out of range for {len(splits)} folds")
    train1, train2 = search_halves(splits[spec.dataset.fold]["train"], spec.seed)
    if not train1 or not train2:
        raise DataError(f"dataset.fold: fold {spec.dataset.fold} has too few training cases to split in two")
    patch, fg = tuple(spec.search.patch_size), spec.dataset.fg_fraction
    ds1 = PatchDataset(cache.root, train1, patch, fg, seed=spec.seed * 2 + 1)
    ds2 = PatchDataset(cache.root, train2, patch, fg, seed=spec.seed * 2 + 2)
    return ds1, ds2


@dataclass
class SearchParts:
    """The supernet, its two optimisers (weights: SGD, architecture: Adam), the schedule and the losses."""

    net: torch.nn.Module
    opt_w: torch.optim.Optimizer
    opt_a: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler_w: torch.amp.GradScaler
    scaler_a: torch.amp.GradScaler
    seg: object
    arch_losses: list

    def state(self) -> dict[str, object]:
        """What a checkpoint saves and a resume restores, by key."""
        return {
            "model": self.net,
            "opt_w": self.opt_w,
            "opt_a": self.opt_a,
            "sched": self.sched,
            "scaler_w": self.scaler_w,
            "scaler_a": self.scaler_a,
        }


def _search_parts(spec: Spec, opts: RunOptions, dist: dd.Dist) -> SearchParts:
    s = spec.search
    net = build_supernet(spec).to(dist.device)
    _set_recompute(net, spec, opts, dist)
    if opts.channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    opt_w = sgd(net.weight_parameters(), s.weights)
    opt_a = torch.optim.Adam(
        net.arch_parameters(), lr=s.arch.lr, betas=tuple(s.arch.betas), weight_decay=s.arch.weight_decay
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
        logger.warning(
            f"the memory budget assumes retraining on retrain.gpus = {spec.retrain.gpus} GPUs "
            f"({setting.batch_size} patches each); this search runs on {dist.world_size}"
        )
    return SearchParts(net, opt_w, opt_a, sched, scaler_w, scaler_a, seg, arch_losses)


def _set_recompute(net, spec: Spec, opts: RunOptions, dist: dd.Dist) -> None:
    """``search.recompute`` (``--checkpoint-cells`` is ``all``): what the supernet recomputes in backward."""
    mode = "all" if opts.checkpoint_cells else spec.search.recompute
    if mode == "none":
        return
    if not isinstance(net, ChoosesRecompute):
        raise SpecError(
            f"search.recompute: {mode}: the space {spec.space.name!r} cannot recompute in backward"
        )
    if mode == "all":
        net.recompute_all(True)
        if dist.is_main:
            record("search.recompute: all: every cell is recomputed in backward")
        return
    target = spec.search.memory_target_gb * 2**30
    batch = dd.per_rank_batch(spec.search.batch_size, dist.world_size, "search.batch_size")
    # Rank 0 measures and chooses; every rank recomputes its choice (timings measured on each rank would
    # differ by noise, and so could the cells, the memory and the step time of each rank).
    choice: dict[str, Any] = {}
    if dist.is_main:
        try:
            choice = net.choose_recompute(target, batch, opts.amp, dist.device)
        except ValueError as err:
            choice = {"error": str(err)}
    choice = dd.from_main(choice, dist)
    if "error" in choice:
        raise SpecError(f"search.memory_target_gb: {choice['error']}")
    if not dist.is_main:
        net.use_recompute(choice["parts"])
    if dist.is_main:
        parts = choice["parts"]
        record(
            f"search.recompute: auto: {len(parts)} cells recomputed in backward to fit "
            f"{spec.search.memory_target_gb:g} GB: expected {choice['expected_bytes'] / 2**30:.3f} GB a step "
            f"(without recomputation {choice['none_bytes'] / 2**30:.3f} GB), "
            f"+{choice['seconds'] * 1e3:.1f} ms of recomputed forward a pass"
            + (f": {', '.join(parts)}" if parts else "")
        )


class SearchStep:
    """One search iteration: an SGD step on the weights (train1), and in the joint phase an Adam step
    on the architecture (train2) minimising Eq. 11."""

    def __init__(self, spec: Spec, opts: RunOptions, dist: dd.Dist, parts: SearchParts, aug):
        self.spec, self.opts, self.dist, self.p, self.aug = spec, opts, dist, parts, aug
        self.ckpt_path = Path(opts.out) / "search" / "checkpoint.pt"
        self.joint_start = spec.search.warmup_iters + spec.search.weight_iters
        self.arch_params = parts.net.arch_parameters()
        self.weights = parts.net.weight_parameters()
        # Weight steps run with the architecture frozen; only the architecture step flips this, and flips
        # it back. DDP registers only the parameters that require grad when it wraps the model: the weights.
        set_requires_grad(self.arch_params, False)
        self.model = dd.wrap(parts.net, dist)
        self.arch_forward = parts.net  # not through DDP: it manages the weights
        if opts.compile:  # one graph per step kind; checkpoints keep using the eager `net`
            self.model, self.arch_forward = torch.compile(self.model), torch.compile(parts.net)
        self.it1 = self.it2 = None  # the train1 and train2 batches, set once the start is known

    def _batch(self, loader, it: int, stream: int):
        x, y = to_device(next(loader), self.dist.device, self.opts.channels_last)
        return self.aug(x, y, batch_generator(self.spec.seed, self.dist.rank, it, stream, self.dist.device))

    def __call__(self, it: int, log: bool) -> StepResult:
        phase = phase_of(it, self.spec.search)
        x1, y1 = self._batch(self.it1, it, 1)
        logits, l_seg, lr = self._weight_step(it, x1, y1)
        terms = self._arch_step(it) if phase == "joint" else {}
        row = None
        if self.dist.is_main and log:
            row = self._row(it, phase, lr, l_seg, terms, logits, y1)
        return StepResult(phase, f"L_seg {float(l_seg.detach()):.3f}", row)

    def _weight_step(self, it: int, x1, y1):
        p = self.p
        self.model.train()
        p.opt_w.zero_grad(set_to_none=True)
        with autocast(self.dist.device, self.opts.amp):
            logits = self.model(x1)
            l_seg = p.seg.fn(logits.float(), y1)
        stop_if_not_finite(l_seg, it, self.dist, self.ckpt_path)
        p.scaler_w.scale(l_seg * p.seg.weight).backward()
        p.scaler_w.step(p.opt_w)
        p.scaler_w.update()
        p.opt_w.zero_grad(set_to_none=True)  # the architecture step runs without them
        lr = p.opt_w.param_groups[0]["lr"]
        p.sched.step()
        return logits, l_seg, lr

    def _arch_step(self, it: int) -> dict[str, torch.Tensor]:
        p, net = self.p, self.p.net
        x2, y2 = self._batch(self.it2, it, 2)
        p.opt_a.zero_grad(set_to_none=True)
        set_requires_grad(self.weights, False)
        set_requires_grad(self.arch_params, True)
        with autocast(self.dist.device, self.opts.amp):
            l_seg2 = p.seg.fn(self.arch_forward(x2).float(), y2)
        terms = {a.name: a.fn(net) for a in p.arch_losses}
        check_finite({"L_seg (arch)": l_seg2, **terms}, it)
        t = it - self.joint_start + 1
        total_arch = arch_objective(
            l_seg2 * p.seg.weight,
            [(a.weight, terms[a.name]) for a in p.arch_losses],
            t,
            self.spec.search.joint_iters,
        )
        p.scaler_a.scale(total_arch).backward()
        dd.average_gradients(self.arch_params, self.dist)
        p.scaler_a.step(p.opt_a)
        p.scaler_a.update()
        set_requires_grad(self.weights, True)  # back to the weight steps' state
        set_requires_grad(self.arch_params, False)
        return terms

    def _row(self, it: int, phase: str, lr: float, l_seg, terms, logits, y1) -> dict:
        net, arch_losses = self.p.net, self.p.arch_losses
        row = {"iteration": it, "phase": phase, "lr": lr, "L_seg": float(l_seg.detach())}
        if not terms:
            with torch.no_grad():
                terms = {a.name: a.fn(net) for a in arch_losses}
        row.update({f"L_{k}": float(v.detach()) for k, v in terms.items()})
        row.update(net.diagnostics() if isinstance(net, ReportsDiagnostics) else {})
        for a in arch_losses:
            if isinstance(a.fn, Diagnoses):
                row.update(a.fn.diagnostics(net))
        row["train_dice"] = hard_dice(logits.detach(), y1, self.spec.dataset.num_classes)
        return memory_columns(row, self.dist.device)
