"""What training a ``vnas`` network holds on one GPU, part by part, measured as nastk measures every op.

Each part (stem, each down and up block, the head, and each searched layer with each candidate op) is
measured once with ``nastk.plugin.cost``: the bytes its forward saves for backward, fitted over sizes and
batches and evaluated at the retraining setting, plus its parameter state (weights, gradients, momentum:
``setting.state_bytes_per_param`` bytes a parameter). The skeleton's blocks start from a fresh tensor, so
nothing is saved twice and the network's bytes are the sum of its parts' (tested against the whole
network on the CPU, to the byte). The skeleton is fixed, so a network's memory is

    fixed + sum over layers l of layer[l, op chosen at l]

which makes a GB budget a multiple-choice knapsack (``discretize.py``).

Under AMP each part is measured under CPU autocast on a float32 input; a part fed a half-precision
tensor in the network may save less than that, so with AMP the estimate errs high.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nastk.plugin import CellOp, TrainingSetting, cost, parameter_count
from nastk_vnas.blocks import Down, Head, Stem, Up
from nastk_vnas.layout import channels, layers


@dataclass(frozen=True)
class MemoryTable:
    """Bytes at one setting: ``fixed`` (the skeleton) and ``layer`` [L, N] (layer l with candidate n),
    each split into activations and parameter state."""

    fixed_activations: float
    fixed_parameters: float
    layer_activations: np.ndarray
    layer_parameters: np.ndarray

    @property
    def fixed(self) -> float:
        return self.fixed_activations + self.fixed_parameters

    @property
    def layer(self) -> np.ndarray:
        return self.layer_activations + self.layer_parameters


def _voxels(patch_size, level: int) -> int:
    return math.prod(int(p) // 2**level for p in patch_size)


def memory_table(
    depths: int, convs: int, filters: float, ops: dict[str, CellOp], setting: TrainingSetting
) -> MemoryTable:
    """The bytes of every part at ``setting``; ``filters``: the search's (times the setting's multiplier)."""
    f = filters * setting.filter_multiplier
    b, amp, state = setting.batch_size, setting.amp, setting.state_bytes_per_param
    patch = setting.patch_size

    def part(key, build, in_channels, level, in_scale=1.0, image=False):
        acts = cost(
            ("vnas",) + key,
            build,
            in_channels,
            _voxels(patch, level),
            in_scale=in_scale,
            amp=amp,
            input_requires_grad=not image,
            batch=b,
        )
        return acts, state * parameter_count(("vnas",) + key, build)

    c_in, k = setting.in_channels, setting.num_classes
    parts = [part(("stem", c_in, channels(f, 0)), lambda: Stem(c_in, f), c_in, 0, image=True)]
    for d in range(1, depths):
        parts.append(part(("down", channels(f, d)), lambda d=d: Down(f, d), channels(f, d - 1), d, 2.0))
        parts.append(part(("up", channels(f, d - 1)), lambda d=d: Up(f, d - 1), channels(f, d), d - 1, 0.5))
    parts.append(part(("head", channels(f, 0), k), lambda: Head(f, k), channels(f, 0), 0))
    layout = layers(depths, convs)
    acts = np.zeros((len(layout), len(ops)))
    params = np.zeros((len(layout), len(ops)))
    for i, layer in enumerate(layout):
        width = channels(f, layer.level)
        for j, (name, build) in enumerate(ops.items()):
            acts[i, j], params[i, j] = part(
                ("op", name, width), lambda b=build, w=width: b(w), width, layer.level
            )
    return MemoryTable(sum(a for a, _ in parts), sum(p for _, p in parts), acts, params)


def estimate(
    arch,
    ops: dict[str, CellOp],
    patch_size,
    batch_size: int = 1,
    filter_multiplier: float = 1.0,
    in_channels: int = 1,
    num_classes: int = 2,
    amp: str = "off",
    state_bytes_per_param: int = 12,
    filters: float | None = None,
) -> dict[str, float]:
    """Bytes by part to train ``arch`` at a setting: {"fixed", "layers", "activations", "parameters",
    "total"} (no margin or reserve: ``nastk.plugin.MemoryBudget`` adds those)."""
    setting = TrainingSetting(
        tuple(int(p) for p in patch_size),
        batch_size,
        filter_multiplier,
        amp,
        in_channels,
        num_classes,
        state_bytes_per_param,
    )
    used = {name: ops[name] for name in arch.op_names}
    table = memory_table(arch.depths, arch.convs, filters or arch.filters, used, setting)
    index = [list(used).index(op) for op in arch.choices]
    rows = np.arange(len(index))
    acts = table.fixed_activations + float(table.layer_activations[rows, index].sum())
    params = table.fixed_parameters + float(table.layer_parameters[rows, index].sum())
    return {
        "fixed": table.fixed,
        "layers": float(table.layer[rows, index].sum()),
        "activations": acts,
        "parameters": params,
        "total": acts + params,
    }
