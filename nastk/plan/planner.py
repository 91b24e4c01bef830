"""``nastk plan``: a complete spec from a dataset's fingerprint and a GPU (docs/planning.md).

The planner reads the fingerprint (``nastk.data.fingerprint``), applies the rules of
``nastk.plan.rules`` and asks the registered search space (``nastk.protocols.SizesTraining``) what
training costs at each candidate setting: the memory of the smallest and the largest network it can
build, of its supernet, and the FLOPs of a step. What it does not plan (the space, its ops and
losses, the optimisers) comes from a base spec, by default the paper's.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nastk import registry
from nastk.data.fingerprint import Fingerprint, compute_fingerprint, summary
from nastk.errors import DataError
from nastk.plan import rules
from nastk.protocols import SizesRecompute, SizesTraining
from nastk.setting import DEFAULT_MARGIN, DEFAULT_RESERVE_GB, TrainingSetting, required_gb, usable_bytes


@dataclass
class Plan:
    """A planned spec: ``data`` (what the YAML holds), the rule behind each planned field
    (``comments``, by dotted path), and what the user should know (``notes``)."""

    data: dict[str, Any]
    comments: dict[str, str]
    fingerprint: Fingerprint
    header: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    estimates: dict[str, float] = field(default_factory=dict)


def _memory_loss(losses: list[dict]) -> int | None:
    return next((i for i, loss in enumerate(losses) if loss.get("name") == "memory"), None)


def _check_inputs(gpu_memory: float, gpus: int, time_budget: float | None) -> None:
    if isinstance(gpu_memory, bool) or not (
        isinstance(gpu_memory, (int, float)) and math.isfinite(gpu_memory)
    ):
        raise DataError(f"--gpu-memory: {gpu_memory!r} is not a number of GB")
    if gpu_memory <= 0:
        raise DataError(f"--gpu-memory: {gpu_memory:g} is not a positive number of GB")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise DataError(f"--gpus: {gpus!r} must be a whole number >= 1")
    if time_budget is not None and not (time_budget > 0 and math.isfinite(time_budget)):
        raise DataError(f"--time-budget: {time_budget!r} is not a positive duration")


class _Costs:
    """The space's cost answers at settings built from the base spec, per GPU."""

    def __init__(self, base, fp: Fingerprint, gpu_memory: float, margin: float, reserve: float):
        self.space = registry.load("spaces", base.space.name)
        if not isinstance(self.space, SizesTraining):
            raise DataError(
                f"space {base.space.name!r} cannot estimate training memory and FLOPs before a search "
                "(nastk.protocols.SizesTraining), which nastk plan needs"
            )
        self.params = self.space.Params.model_validate(base.space.params)
        self.divisor = int(self.space.patch_divisor(self.params))
        self.ops = registry.load_ops(base.ops)
        self.base, self.fp = base, fp
        self.margin, self.reserve, self.gpu_memory = margin, reserve, gpu_memory
        self.usable = usable_bytes(gpu_memory, margin, reserve)

    def setting(self, patch, batch: int, search: bool, amp: str = "off") -> TrainingSetting:
        r = self.base.retrain
        momentum = (self.base.search if search else r).weights.momentum
        return TrainingSetting(
            patch_size=tuple(int(p) for p in patch),
            batch_size=int(batch),
            filter_multiplier=1.0 if search else r.filter_multiplier,
            amp=amp if search else r.amp,
            in_channels=len(self.fp.modalities),
            num_classes=len(self.fp.labels),
            state_bytes_per_param=8 + (4 if momentum > 0 else 0),
        )

    def network_range(self, patch, batch: int) -> tuple[float, float]:
        return self.space.network_memory(self.params, self.ops, self.setting(patch, batch, False))

    def room(self, patch, batch: int) -> float:
        """How far from the smallest to the largest network the budget reaches (>= 1: all fit)."""
        small, large = self.network_range(patch, batch)
        return (self.usable - small) / max(large - small, 1.0)

    def search_modes(self) -> list[tuple[str, str]]:
        """(search.recompute, search.amp) in the order plan tries them before it shrinks the patch:
        without either, recomputation, then mixed precision where the spec allows it (retrain.amp)."""
        modes = [("none", "off")]
        recomputes = isinstance(self.space, SizesRecompute)
        if recomputes:
            modes.append(("auto", "off"))
        amp = self.base.retrain.amp
        if amp != "off":
            modes.append(("none", amp))
            if recomputes:
                modes.append(("auto", amp))
        return modes

    def supernet_gb(self, patch, batch: int, recompute: str = "none", amp: str = "off") -> float:
        """GB of a search step; with recompute "auto", the least it can reach (every cell recomputed)."""
        setting = self.setting(patch, batch, True, amp)
        if recompute == "none":
            nbytes = self.space.supernet_memory(self.params, self.ops, setting)
        else:
            nbytes = self.space.supernet_memory_recomputed(self.params, self.ops, setting)
        return required_gb(nbytes, self.margin, self.reserve)

    def slowdown(self, patch, amp: str) -> float:
        return self.space.recompute_slowdown(self.params, self.ops, self.setting(patch, 1, True, amp))

    def step_seconds(self, patch, batch: int, search: bool) -> float:
        network = "supernet" if search else "largest"
        flops = self.space.step_flops(self.params, self.ops, self.setting(patch, batch, search), network)
        return 3 * flops / rules.FLOPS_PER_SECOND  # forward + backward ~ 3 forwards


def _shrink_until(patch: list[int], median: np.ndarray, divisor: int, fits) -> tuple[list[int], bool]:
    patch = list(patch)
    while not fits(patch):
        axis = rules.axis_to_shrink(patch, median, divisor)
        if axis is None:
            return patch, False
        patch[axis] -= divisor
    return patch, True


def make_plan(
    dataset: str | Path,
    gpu_memory: float,
    gpus: int = 1,
    time_budget: float | None = None,
    base: dict | None = None,
    base_file: str = "<paper defaults>",
    format: str = "auto",
    cache_dir: str | Path | None = None,
    workers: int = 0,
    quiet: bool = True,
    spacing: list[float] | None = None,
) -> Plan:
    """Plan a spec for ``dataset`` on GPUs of ``gpu_memory`` GB; ``time_budget`` in seconds covers
    the search and the retraining of every fold. ``spacing`` (mm) overrides the spacing rule, and the
    rest is planned for it (as nnU-Net's ``overwrite_target_spacing``)."""
    from nastk.spec import validate

    _check_inputs(gpu_memory, gpus, time_budget)
    base_data = copy.deepcopy(base or {})
    base_spec = validate(base_data, base_file)
    fp = compute_fingerprint(dataset, format, cache_dir, workers, quiet)
    comments: dict[str, str] = {}
    notes: list[str] = []
    data = copy.deepcopy(base_data)
    ds = data.setdefault("dataset", {})
    n_cases = len(fp.cases)

    # ---- dataset: geometry, intensities, labels
    absent = [
        c for c in sorted(fp.labels) if c > 0 and not any(case.classes.get(c, (0, 0))[0] for case in fp.cases)
    ]
    if absent:
        notes.append(f"class(es) {absent} of dataset.json never appear in the training labels")
    ds["root"] = str(dataset)
    if cache_dir is not None:
        ds["cache_dir"] = str(cache_dir)
    ds["in_channels"], ds["num_classes"] = len(fp.modalities), len(fp.labels)
    comments["dataset.in_channels"] = (
        f"dataset.json: {', '.join(fp.modalities[c] for c in sorted(fp.modalities))}"
    )
    comments["dataset.num_classes"] = "dataset.json: " + ", ".join(
        f"{k} {v}" for k, v in sorted(fp.labels.items())
    )
    if spacing is None:
        spacing, why = rules.target_spacing(fp.spacings, fp.crop_shapes)
    else:
        spacing, why = np.asarray(spacing, dtype=np.float64), "given (overrides the rule)"
        if spacing.shape != (3,) or not (np.isfinite(spacing).all() and (spacing > 0).all()):
            raise DataError(f"spacing: {list(spacing)} is not three positive numbers of mm")
    ds["spacing"] = [float(s) for s in spacing]
    comments["dataset.spacing"] = why
    modalities = [fp.modalities[c] for c in sorted(fp.modalities)]
    rule = base_spec.dataset.auto_normalization
    schemes, why = rules.normalization(
        modalities,
        [[case.zero_share[c] for case in fp.cases] for c in range(len(modalities))],
        [case.foreground_share_of_nonzero for case in fp.cases],
        rule.stripped_share,
        rule.foreground_share,
    )
    ds["normalization"] = schemes
    # The relative crop is reported, not used: the share of exact zeros also sees the zeros that stay
    # inside the crop box (a stripped head's box is still about half zeros).
    relative_crop = float(np.median([c.relative_size_after_crop for c in fp.cases]))
    comments["dataset.normalization"] = (
        f"{why}; cropping to nonzero leaves {relative_crop:.0%} of the median image"
    )
    ds["crop_nonzero"] = True
    comments["dataset.crop_nonzero"] = "crop each case to its nonzero region (paper/C2FNAS, nnU-Net)"
    folds = min(5, n_cases)
    ds["num_folds"] = folds
    comments["dataset.num_folds"] = (
        f"the paper's 5-fold cross-validation{'' if folds == 5 else f', {n_cases} cases'}"
    )
    median_original = np.median(fp.spacings, 0)
    tolerance = rules.nsd_tolerance(median_original)
    ds["nsd_tolerance"] = {c: tolerance for c in sorted(fp.labels) if c > 0}
    voxel = ", ".join(f"{v:g}" for v in median_original.round(3))
    comments["dataset.nsd_tolerance"] = f"the largest side of the median voxel as acquired ({voxel} mm)"
    ds["augment"] = [{"name": "rot90_xy"}, {"name": "flip"}]
    comments["dataset.augment"] = (
        "the paper's set (Sec. 4.1: 90-degree rotations in x-y, flips on every axis); adding rotate_xy, "
        "scale and gamma did not help in the ablation (docs/planning.md)"
    )

    # ---- patch and batch from the GPU memory
    losses = [
        dict(loss) for loss in data.get("losses") or [x.model_dump(mode="json") for x in base_spec.losses]
    ]
    memory_index = _memory_loss(losses)
    loss_params = dict(losses[memory_index].get("params", {})) if memory_index is not None else {}
    margin = float(loss_params.get("margin", DEFAULT_MARGIN))
    reserve = float(loss_params.get("reserve_gb", DEFAULT_RESERVE_GB))
    if gpu_memory <= reserve:
        raise DataError(f"--gpu-memory: {gpu_memory:g} GB leaves nothing after the reserve of {reserve:g} GB")
    costs = _Costs(base_spec, fp, gpu_memory, margin, reserve)
    div = costs.divisor
    median = np.median(rules.resampled_shapes(fp.crop_shapes, fp.spacings, spacing), 0)
    median_text = "x".join(f"{s:.0f}" for s in median)
    cover = rules.covering_patch(median, div)
    patch, roomy = _shrink_until(cover, median, div, lambda p: costs.room(p, rules.MIN_BATCH) >= rules.ROOM)
    if not roomy:
        small, _ = costs.network_range(patch, rules.MIN_BATCH)
        if small > costs.usable:
            raise DataError(
                f"--gpu-memory: {gpu_memory:g} GB is below the {required_gb(small, margin, reserve):.2f} GB "
                f"that the smallest network of space {base_spec.space.name!r} needs to retrain at the "
                f"smallest patch {patch} with {rules.MIN_BATCH} patches per GPU"
            )
        notes.append(
            f"{gpu_memory:g} GB is tight for this space: even at the smallest patch {patch} the budget "
            f"admits only {costs.room(patch, rules.MIN_BATCH):.0%} of the way to its largest network"
        )
    dataset_voxels = float(np.prod(median)) * n_cases
    cap = rules.batch_cap(patch, dataset_voxels, gpus)
    batch = rules.MIN_BATCH
    while batch < cap and costs.room(patch, batch + 1) >= rules.ROOM:
        batch += 1
    covers = patch == cover
    patch_why = (
        f"covers the median shape at the target spacing ({median_text}), each side a multiple of {div} "
        f"(2^(depths+1))"
        if covers
        else f"the largest patch with room at {rules.MIN_BATCH} per GPU, shrunk from {cover} (covering the "
        f"median shape {median_text}) along the axis largest relative to the median (nnU-Net)"
    )
    room = costs.room(patch, batch)
    small, large = costs.network_range(patch, batch)
    need_small, need_large = required_gb(small, margin, reserve), required_gb(large, margin, reserve)
    r = data.setdefault("retrain", {})
    r["patch_size"] = patch
    comments["retrain.patch_size"] = patch_why + (
        f"; at it the networks of the space need {need_small:.2f}-{need_large:.2f} GB per GPU"
    )
    r["gpus"] = gpus
    comments["retrain.gpus"] = "--gpus: the retraining batch is split over them; budgets are per GPU"

    # ---- search: the paper's one patch per GPU, at the retraining patch if the supernet fits
    search_batch = gpus
    modes = costs.search_modes()

    def first_fit(p) -> tuple[str, str] | None:
        return next((m for m in modes if costs.supernet_gb(p, 1, *m) <= gpu_memory), None)

    # Recomputation and mixed precision before a smaller patch: they keep what is searched.
    search_patch, fits = _shrink_until(patch, median, div, lambda p: first_fit(p) is not None)
    if not fits:
        least = costs.supernet_gb(search_patch, 1, *modes[-1])
        raise DataError(
            f"--gpu-memory: {gpu_memory:g} GB is below the {least:.2f} GB that the supernet of space "
            f"{base_spec.space.name!r} needs for a search step at the smallest patch {search_patch}"
        )
    recompute, search_amp = first_fit(search_patch)
    s = data.setdefault("search", {})
    s["patch_size"] = search_patch
    supernet_need = costs.supernet_gb(search_patch, 1, recompute, search_amp)
    plain_need = costs.supernet_gb(search_patch, 1)
    how = ""
    if (recompute, search_amp) != ("none", "off"):
        parts = (["cells recomputed in backward"] if recompute == "auto" else []) + (
            [f"{search_amp} mixed precision"] if search_amp != "off" else []
        )
        how = f" with {' and '.join(parts)}"
    comments["search.patch_size"] = (
        (
            f"the retraining patch (the paper searches and retrains at one patch){how}"
            if search_patch == patch
            else f"the retraining patch shrunk until the supernet fits{how} (nnU-Net's axis rule)"
        )
        + f"; the supernet needs {supernet_need:.2f} GB per GPU"
        + (f" at least ({plain_need:.2f} GB without recomputation)" if recompute == "auto" else "")
        + " (margin and reserve included)"
    )
    s["recompute"] = recompute
    if recompute == "auto":
        target = costs.usable / 2**30
        s["memory_target_gb"] = round(target, 3)
        slow = costs.slowdown(search_patch, search_amp)
        comments["search.recompute"] = (
            f"auto: the supernet needs {plain_need:.2f} GB per GPU without recomputation, more than "
            f"--gpu-memory {gpu_memory:g} GB; the search recomputes the cells (the fewest, by measured "
            f"time) that keep a step within {target:.2f} GB (--gpu-memory less margin and reserve); expected "
            f"slowdown at most {slow:.2f}x (every cell's forward once more, from FLOPs)"
        )
    else:
        comments["search.recompute"] = "none: the supernet fits without recomputation"
    if search_amp != "off":
        s["amp"] = search_amp
        comments["search.amp"] = (
            f"{search_amp}: the spec allows mixed precision (retrain.amp), and the supernet does not fit "
            "in float32 even with every cell recomputed"
        )
    s["batch_size"] = search_batch
    comments["search.batch_size"] = "one patch per GPU (the paper: 8 GPUs x 1)"
    r["batch_multiplier"] = batch
    if batch == cap:
        stop = (
            f"the most that keep a step within 5% of the dataset's voxels (nnU-Net; at least "
            f"{rules.MIN_BATCH})"
        )
    else:
        stop = (
            f"the most whose budget reaches {rules.ROOM:.0%} of the way from the smallest to the largest "
            f"network (at least nnU-Net's {rules.MIN_BATCH})"
        )
    comments["retrain.batch_multiplier"] = f"{batch} patches per GPU: {stop}"

    # ---- the memory budget
    if memory_index is not None:
        params = {k: v for k, v in loss_params.items() if k not in ("sigma", "budget_gb")}
        if room < 1:
            params["budget_gb"] = float(gpu_memory)
            comments[f"losses[{memory_index}].params"] = (
                f"--gpu-memory: decoded networks must retrain in {gpu_memory:g} GB per GPU; at this setting "
                f"the space's networks need {need_small:.2f}-{need_large:.2f} GB, so the budget binds "
                f"(sigma_eff follows it)"
            )
        else:
            params["sigma"] = loss_params.get("sigma", 0.8)
            comments[f"losses[{memory_index}].params"] = (
                f"every network of the space fits {gpu_memory:g} GB at this setting (the largest needs "
                f"{need_large:.2f} GB), so a GB budget would never bind: the paper's sigma"
            )
        losses[memory_index] = {**losses[memory_index], "params": params}
        data["losses"] = losses
    else:
        notes.append("the base spec has no memory loss: no budget is planned")

    # ---- iterations from the dataset size and the time budget
    train_cases = n_cases * (folds - 1) / folds
    scale = rules.data_scale(train_cases)
    retrain_batch = batch * gpus
    t_search = costs.step_seconds(search_patch, 1, search=True)
    t_retrain = costs.step_seconds(patch, batch, search=False)
    sched = rules.schedule(scale, search_batch, retrain_batch)
    full = rules.seconds(sched, t_search, t_retrain, folds)
    why_iters = (
        f"the paper's schedule in samples (iterations x global batch: search {search_batch}, retraining "
        f"{retrain_batch}), x{scale:.2f} for {train_cases:.0f} training cases per fold (x1 up to the "
        f"paper's 226, more above)"
    )
    if time_budget is not None and full > time_budget:
        scale *= time_budget / full
        sched = rules.schedule(scale, search_batch, retrain_batch)
        why_iters += f", then cut to x{scale:.3g} so search and {folds} folds fit --time-budget"
        if scale < 0.1:
            notes.append(
                f"the time budget allows {scale:.1%} of the paper's training (estimated at the paper's "
                "search speed per GPU); consider more time or GPUs"
            )
    elif time_budget is not None:
        why_iters += ", within --time-budget"
    est = rules.seconds(sched, t_search, t_retrain, folds)
    why_iters += (
        f"; estimated {est / 3600:.1f} h on {gpus} GPU(s) at the paper's search speed per GPU "
        f"(the largest network for retraining)"
    )
    s.update(sched["search"])
    r.update(sched["retrain"])
    comments["search.warmup_iters"] = why_iters
    comments["search.weight_iters"] = "the paper's 10k weight-only iterations, scaled as the warm-up"
    comments["search.joint_iters"] = "the paper's 10k joint iterations, scaled as the warm-up"
    comments["search.milestones"] = (
        "LR x0.5 at 40% and 80% of weight + joint iterations (paper: 8k, 16k of 20k)"
    )
    comments["retrain.warmup_iters"] = why_iters
    comments["retrain.iters"] = "the paper's 40k iterations after the warm-up, scaled as the warm-up"
    comments["retrain.milestones"] = (
        "LR x0.5 at 20, 40, 60 and 80% of the iterations (paper: 8k ... 32k of 40k)"
    )
    total = sched["retrain"]["warmup_iters"] + sched["retrain"]["iters"]
    r["val_every"] = max(1, round(total / 10))
    comments["retrain.val_every"] = "ten validations per fold"

    # ---- inference
    inf = data.setdefault("inference", {})
    inf["patch_size"] = list(patch)
    comments["inference.patch_size"] = "the retraining patch (paper)"
    inf["stride"] = rules.sliding_stride(patch)
    comments["inference.stride"] = (
        "a sixth of the patch (the paper: 16 for 96); nnU-Net's half a patch runs fewer windows but lost "
        "Dice in the ablation (docs/planning.md)"
    )
    inf.pop("largest_component", None)

    spec = validate(copy.deepcopy(data), "<plan>")  # a planner bug, not a user error, if this fails
    summ = summary(fp)
    header = [
        f"Planned by `nastk plan` for {fp.name}: {summ['cases']} training cases, "
        f"{', '.join(summ['modalities'])}, median spacing {summ['median_spacing']} mm, median shape "
        f"{summ['median_shape']}; fingerprint {fp.path}",
        f"GPUs: {gpus} x {gpu_memory:g} GB"
        + (f"; time budget {time_budget / 3600:.1f} h" if time_budget is not None else "")
        + f". Space {spec.space.name} {spec.space.params}, from {base_file}.",
        "Largest-component post-processing (inference.largest_component) is left at `auto`: "
        "cross-validation decides it per class (RUN/postprocessing.json after `retrain --fold all`). "
        "Connected components per case (median, class: count): "
        + ", ".join(
            f"{c}: {np.median([case.classes.get(c, (0, 0))[1] for case in fp.cases]):g}"
            for c in sorted(fp.labels)
            if c > 0
        )
        + ".",
        "Every planned value carries the rule that set it (docs/planning.md).",
    ]
    return Plan(
        data=data,
        comments=comments,
        fingerprint=fp,
        header=header,
        notes=notes,
        estimates={
            "hours": est / 3600,
            "supernet_gb": supernet_need,
            "smallest_gb": need_small,
            "largest_gb": need_large,
            "room": room,
            "median_shape": median.tolist(),
        },
    )
