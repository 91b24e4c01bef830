"""What training costs at a setting before any search: the DiNTS space's answers to ``nastk plan``.

* ``network_memory``: the bytes one GPU holds to retrain the cheapest and the costliest network the
  space can build (``budget.memory_model``: activations saved for backward plus weights, gradients
  and momentum), the range a memory budget must fall in.
* ``supernet_memory``: the bytes one GPU holds for a search step, the larger of the weight step and the
  architecture step. The supernet's forward is measured whole (``memory.live_saved_bytes``, with only
  the step's own parameters requiring gradients) at two tiny patches and fitted as batch * (a + b *
  voxels), because its mixed cells keep more than their ops do alone (the alpha-weighted sums). Plus
  the parameter state: weights, gradients and SGD momentum, and Adam's two moments for alpha and p.
* ``supernet_memory_recomputed``: the same with every cell recomputed in backward (``recompute.py``, exact
  on the CPU; what ``search.recompute: auto`` can reach at least), and ``recompute_slowdown``, its step time
  over the time without, from FLOPs (an upper bound for auto, which recomputes fewer cells).
* ``step_flops``: floating-point operations of one forward of the per-GPU batch, for the supernet
  (every op on every edge) or the costliest network (the op with the most FLOPs on every edge),
  summed over the same parts as the memory model. Each part is counted once at a tiny size by
  ``torch.utils.flop_counter`` on the meta device and scaled by its output voxels (convolutions are
  linear in them); the sum equals the count of the whole (unfused) supernet (tested).
  The fused supernet cells compute somewhat more than this (their stacked 3x3x3 kernel).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from nastk.plugin import TrainingSetting
from nastk_dints import memory
from nastk_dints.blocks import HeadOut, HeadUp, Stem, depth_channels, resample, scale_channels
from nastk_dints.budget import memory_model
from nastk_dints.topology import edge_list

_ADAM_STATE = 16  # bytes per architecture parameter: value, gradient, two moments


def network_memory(params, ops: dict, setting: TrainingSetting) -> tuple[float, float]:
    """(smallest, largest) bytes per GPU of the networks the space can build, at ``setting``."""
    model = memory_model(params.depths, params.filters, ops, setting)
    return model.smallest(params.layers), model.largest(params.layers)


@lru_cache(maxsize=64)
def _supernet_fit(
    layers: int, depths: int, filters: float, ops: tuple, in_channels: int, num_classes: int, amp: str
) -> tuple[np.ndarray, int, int]:
    """Per step (weight, architecture), (once, per sample, per sample and voxel, per sample and voxel at
    the smallest patch) saved bytes; weight and arch parameter counts.

    A search step trains either the weights or alpha and p, never both: each step is measured with only
    its own parameters requiring gradients (with both, the supernet saves about 40% more than either
    step, which the plan once counted). The layers between the first and the last are alike, so what a
    step saves is a + (L - 2) * b: measured with 2 and 3 layers and extrapolated (much faster than
    measuring all L at the paper's L = 12).
    """
    from nastk_dints.params import DiNTSParams
    from nastk_dints.supernet import Supernet

    side = 2 ** (depths + 1)  # the smallest patch the space takes
    small, large = (side,) * 3, (2 * side, side, side)

    def build(n_layers: int) -> Supernet:
        # model_copy: a filter count times a multiplier need not be whole, as the Params model insists
        params = DiNTSParams(layers=n_layers, depths=depths).model_copy(update={"filters": filters})
        return Supernet(params, dict(ops), in_channels, num_classes, small)

    def fit(net, step: str) -> np.ndarray:
        for p in net.weight_parameters():
            p.requires_grad_(step == "weight")
        for p in net.arch_parameters():
            p.requires_grad_(step == "arch")

        def saved(batch: int, sides: tuple[int, int, int]) -> int:
            shape = (batch, in_channels, *sides)
            return memory.live_saved_bytes(net, shape, amp=amp, input_requires_grad=False)

        b0, b1 = saved(1, small), saved(1, large)
        slope = (b1 - b0) / side**3
        per_sample = (saved(2, small) if amp != "off" else 2 * b0) - b0
        return np.array([b0 - per_sample, per_sample - slope * side**3, slope, per_sample / side**3])

    # The first layer reads the image, which needs no gradient, and the last feeds the head: only the
    # layers between are alike, so extrapolate from 2 and 3 layers (measure 1-3 layers directly).
    nets = (build(2), build(3)) if layers > 3 else (build(layers),)
    steps = []
    for step in ("weight", "arch"):
        fits = [fit(net, step) for net in nets]
        steps.append(fits[0] if len(fits) == 1 else fits[0] + (layers - 2) * (fits[1] - fits[0]))
    with torch.device("meta"):  # parameter counts need shapes only
        full = build(layers)
    weights = sum(p.numel() for p in full.weight_parameters())
    arch = sum(p.numel() for p in full.arch_parameters())
    return np.array(steps), weights, arch


def supernet_memory(params, ops: dict, setting: TrainingSetting) -> float:
    """Bytes one GPU holds for a search step at ``setting`` (filters x ``setting.filter_multiplier``)."""
    steps, weights, arch = _supernet_fit(
        params.layers,
        params.depths,
        params.filters * setting.filter_multiplier,
        tuple(ops.items()),
        setting.in_channels,
        setting.num_classes,
        setting.amp,
    )
    voxels = float(np.prod(setting.patch_size))
    once, intercept, slope, per_voxel = steps.T
    line = once + setting.batch_size * (intercept + slope * voxels)
    # The architecture step's bytes per voxel fall as the patch grows (at L=3, D=4, 16 filters: 1731 at
    # 32^3, 1633 at 64x32x32, 1614 at 64^3), so the line through the two smallest patches undershoots
    # larger ones (by 4% at 64^3); the smallest patch's bytes per voxel bound them from above.
    bound = once + setting.batch_size * per_voxel * voxels  # once: e.g. autocast's weight copies
    activations = float(np.max(np.maximum(line, bound)))
    return activations + weights * setting.state_bytes_per_param + arch * _ADAM_STATE


@lru_cache(maxsize=256)
def _recomputed_saved(
    layers: int,
    depths: int,
    filters: float,
    ops: tuple,
    in_channels: int,
    num_classes: int,
    patch,
    batch,
    amp,
) -> float:
    from nastk_dints import recompute as rc

    model = rc.measure(
        layers, depths, filters, dict(ops), in_channels, num_classes, patch, batch, amp, cells=False
    )
    return model.peak(np.ones((layers, len(edge_list(depths))), dtype=bool))


def supernet_memory_recomputed(params, ops: dict, setting: TrainingSetting) -> float:
    """``supernet_memory`` with every cell recomputed in backward (``search.recompute: all``, the least
    ``auto`` can reach): only the stems, the head, the relaxation and the cells' inputs are saved
    (``recompute.py``; measured at tiny patches, exact in voxels), plus the same parameter state."""
    f = params.filters * setting.filter_multiplier
    saved = _recomputed_saved(
        params.layers,
        params.depths,
        f,
        tuple(ops.items()),
        setting.in_channels,
        setting.num_classes,
        tuple(setting.patch_size),
        setting.batch_size,
        setting.amp,
    )
    *_, weights, arch = _supernet_fit(
        params.layers,
        params.depths,
        f,
        tuple(ops.items()),
        setting.in_channels,
        setting.num_classes,
        setting.amp,
    )
    return saved + weights * setting.state_bytes_per_param + arch * _ADAM_STATE


def recompute_slowdown(params, ops: dict, setting: TrainingSetting) -> float:
    """The step time with every cell recomputed over the time without, from FLOPs: a search step runs
    a weight and an architecture step, each a forward and a backward (about three forwards); recomputing
    adds one forward of every cell to each. An estimate (the CPU bench measured more: bench/README.md)."""
    f = params.filters * setting.filter_multiplier
    total = step_flops(params, ops, setting, "supernet")
    c_img, patch = setting.in_channels, np.asarray(setting.patch_size)

    def stem(d: int) -> float:
        per_voxel = _counted(("stem", c_img, f, d), c_img, 2.0 ** (d + 1), lambda: Stem(c_img, f, d))
        return per_voxel * float(np.prod(patch / 2 ** (d + 1)))

    heads = setting.batch_size * sum(stem(d) for d in range(params.depths))
    cells = max(total - heads, 0.0)  # stems are not recomputed; the head is small next to the cells
    return 1.0 + cells / (3.0 * total)


_FLOPS: dict[tuple, float] = {}


def _counted(key: tuple, in_channels: int, in_scale: float, build) -> float:
    """FLOPs of one forward of ``build``'s module per output voxel, counted once at a tiny size."""
    if key not in _FLOPS:
        from torch.utils.flop_counter import FlopCounterMode

        side = 4
        # On the meta device: shapes only, so nothing is initialised or computed (the paper's space
        # has 256-channel cells), and PyTorch's own conv, not the oneDNN calls of kernels.py that the
        # counter would not see.
        with torch.device("meta"):
            module = build()
            x = torch.zeros(1, in_channels, *(int(side * in_scale),) * 3)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                module(x)
        _FLOPS[key] = counter.get_total_flops() / side**3
    return _FLOPS[key]


def step_flops(params, ops: dict, setting: TrainingSetting, network: str) -> float:
    """Forward FLOPs of the per-GPU batch at ``setting``: ``network`` "supernet" or "largest"."""
    if network not in ("supernet", "largest"):
        raise ValueError(f"network must be 'supernet' or 'largest', got {network!r}")
    f = params.filters * setting.filter_multiplier
    depths, c_img = params.depths, setting.in_channels
    patch = np.asarray(setting.patch_size)

    def voxels(scale: int) -> float:
        return float(np.prod(patch / 2**scale))

    edges = edge_list(depths)
    cells = 0.0
    for s, t in edges:
        c_in, c_out = depth_channels(f, s), depth_channels(f, t)
        res = 0.0
        if s != t:
            res = _counted(("resample", s, t, f), c_in, 2.0 ** (t - s), lambda s=s, t=t: resample(s, t, f))
        per_op = [
            _counted(("op", name, c_out), c_out, 1.0, lambda b=build, c=c_out: b(c))
            for name, build in ops.items()
        ]
        chosen = sum(per_op) if network == "supernet" else max(per_op)
        cells += (res + chosen) * voxels(t + 1)
    stems = sum(
        _counted(("stem", c_img, f, d), c_img, 2.0 ** (d + 1), lambda d=d: Stem(c_img, f, d)) * voxels(d + 1)
        for d in range(depths)
    )
    # Every edge on: the head starts at the coarsest depth and runs every HeadUp down to the input.
    head = sum(
        _counted(
            ("head_up", f, d),
            depth_channels(f, d),
            0.5,
            lambda d=d: HeadUp(depth_channels(f, d), scale_channels(f, d)),
        )
        * voxels(d)
        for d in range(depths)
    )
    c0 = scale_channels(f, 0)
    out = _counted(("head_out", c0, setting.num_classes), c0, 1.0, lambda: HeadOut(c0, setting.num_classes))
    head += out * voxels(0)
    return setting.batch_size * (params.layers * cells + stems + head)
