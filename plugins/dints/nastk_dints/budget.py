"""Training memory of a discrete DiNTS network at a retraining setting, and budgets in GB.

What is counted is what one GPU keeps allocated for a training step of the network:

* the activations its forward saves for backward, measured per module (``memory.py``) and
  multiplied by the per-GPU batch;
* its parameter state: weights, gradients and the optimiser's momentum
  (``TrainingSetting.state_bytes_per_param`` bytes per parameter).

Both are sums of parts that each depend on one choice of the architecture:

* each selected cell (edge e with op n): ``resample[e] + op[e, n]``;
* each input depth d used by layer 1: ``stem[d]``;
* the coarsest active depth d of the last layer, where the head starts: ``head[d]``.

So once each edge's op is fixed, a network's memory adds up over its layers, which makes decoding
under a budget an exact resource-constrained shortest path (``discretize.py``).

How a budget in GB turns into a limit on these bytes is in ``nastk.setting``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from nastk.plugin import TrainingSetting
from nastk_dints import memory
from nastk_dints.blocks import HeadOut, HeadUp, Stem, depth_channels, resample, scale_channels
from nastk_dints.paths import shortest_feasible_path
from nastk_dints.topology import edge_list, topology


@dataclass(frozen=True)
class Parts:
    """Bytes per choice: ``resample`` [E], ``op`` [E, N], ``stem`` [D], ``head`` [D]."""

    resample: np.ndarray
    op: np.ndarray
    stem: np.ndarray
    head: np.ndarray

    def __add__(self, other: Parts) -> Parts:
        return Parts(
            self.resample + other.resample,
            self.op + other.op,
            self.stem + other.stem,
            self.head + other.head,
        )

    def cells(self, op_index: np.ndarray) -> np.ndarray:
        """[L, E]: bytes of the cell on each edge with the op ``op_index`` [L, E] picks."""
        op_index = np.asarray(op_index)
        return self.resample[None, :] + np.take_along_axis(self.op[None], op_index[..., None], -1)[..., 0]

    def network(self, edge_mask: np.ndarray, op_index: np.ndarray) -> dict[str, float]:
        """{stem, cells, head} bytes of one network."""
        topo = topology(len(self.stem))
        mask = np.asarray(edge_mask, dtype=bool)
        inputs = np.zeros(len(self.stem), dtype=bool)
        inputs[topo.source[mask[0]]] = True
        top = int(topo.target[mask[-1]].max())
        return {
            "stem": float(self.stem[inputs].sum()),
            "cells": float(self.cells(op_index)[mask].sum()),
            "head": float(self.head[top]),
        }


@dataclass(frozen=True)
class MemoryModel:
    """Activation and parameter-state bytes of every part, at one training setting."""

    depths: int
    op_names: tuple[str, ...]
    activations: Parts
    parameters: Parts
    setting: TrainingSetting

    @cached_property
    def total(self) -> Parts:
        return self.activations + self.parameters

    def pattern_bytes(self, op_index: np.ndarray) -> np.ndarray:
        """[L, M]: bytes of layer i with pattern j and the given ops; layer 1 carries the stems, the
        last layer the head, so a network's bytes are the sum along its path."""
        topo = topology(self.depths)
        total = self.total
        per_pattern = total.cells(op_index) @ topo.patterns.T.astype(np.float64)  # [L, M]
        sources = topo.node_sets[topo.pattern_sources].astype(np.float64)  # [M, D]
        per_pattern[0] += sources @ total.stem
        targets = topo.node_sets[topo.pattern_targets]
        top = targets.shape[1] - 1 - np.argmax(targets[:, ::-1], axis=1)  # coarsest target depth
        per_pattern[-1] += total.head[top]
        return per_pattern

    def network(self, edge_mask: np.ndarray, op_index: np.ndarray) -> dict[str, float]:
        """Bytes of one network by part: stem, cells, head (activations), activations, parameters
        (weights, gradients, optimiser state) and total."""
        act = self.activations.network(edge_mask, op_index)
        par = self.parameters.network(edge_mask, op_index)
        out = dict(act)
        out["activations"] = sum(act.values())
        out["parameters"] = sum(par.values())
        out["total"] = out["activations"] + out["parameters"]
        return out

    def smallest(self, layers: int) -> float:
        """Bytes of the cheapest network the space can build: any topology, the cheapest op per edge."""
        cheapest = np.broadcast_to(self.total.op.argmin(1), (layers, len(self.total.resample)))
        _, total = shortest_feasible_path(self.pattern_bytes(cheapest), self.depths)
        return total

    def largest(self, layers: int) -> float:
        """Bytes of the costliest network: every edge on, the costliest op on each (M_a at this setting)."""
        costliest = np.broadcast_to(self.total.op.argmax(1), (layers, len(self.total.resample)))
        return float(self.pattern_bytes(costliest)[:, -1].sum())  # the last pattern has every edge


def memory_model(depths: int, filters: float, ops: dict, setting: TrainingSetting) -> MemoryModel:
    """Measure every part at ``setting``. ``filters`` are the search's; the setting's multiplier
    scales them. Each module is measured once per process (``memory.py`` caches the fits).

    Under mixed precision each module is measured on the dtype it receives in the network: the
    stems on the float32 image, the cells on what the stems and cells output, the head's first
    block on a node, its later ones on a node plus the block above (the wider of the two dtypes,
    which is right or an overestimate).
    """
    f = filters * setting.filter_multiplier
    amp, batch = setting.amp, setting.batch_size
    patch = np.asarray(setting.patch_size)
    state = setting.state_bytes_per_param
    image_dtype = torch.float32

    def voxels(scale: int) -> int:
        return int(np.prod(patch // 2**scale))

    def measured(key, build, in_channels, scale, in_scale, input_dtype, input_requires_grad=True):
        act = memory.cost(
            key,
            build,
            in_channels,
            voxels(scale),
            in_scale,
            amp=amp,
            input_requires_grad=input_requires_grad,
            input_dtype=input_dtype,
            batch=batch,
        )
        return act, memory.parameter_count(key, build) * state

    c_img = setting.in_channels
    stem_build = [lambda d=d: Stem(c_img, f, d) for d in range(depths)]
    node_dtype = memory.output_dtype(("stem", c_img, f, 0), stem_build[0], c_img, amp, image_dtype)

    edges = edge_list(depths)
    n_ops = len(ops)
    act_res, par_res = np.zeros(len(edges)), np.zeros(len(edges))
    act_op, par_op = np.zeros((len(edges), n_ops)), np.zeros((len(edges), n_ops))
    for e, (s, t) in enumerate(edges):
        c_in, c_out = depth_channels(f, s), depth_channels(f, t)
        if s != t:
            act_res[e], par_res[e] = measured(
                ("resample", s - t, c_in, c_out),
                lambda s=s, t=t: resample(s, t, f),
                c_in,
                t + 1,
                2.0 ** (t - s),
                node_dtype,
            )
        for n, (name, build) in enumerate(ops.items()):
            act_op[e, n], par_op[e, n] = measured(
                ("op", name, c_out), lambda b=build, c=c_out: b(c), c_out, t + 1, 1.0, node_dtype
            )

    act_stem, par_stem = np.zeros(depths), np.zeros(depths)
    for d in range(depths):
        # The image needs no gradient: only the stem that convolves it at full resolution keeps it.
        act_stem[d], par_stem[d] = measured(
            ("stem", c_img, f, d),
            stem_build[d],
            c_img,
            d + 1,
            2.0 ** (d + 1),
            image_dtype,
            input_requires_grad=False,
        )

    def head_up(d: int, input_dtype):
        c_in = depth_channels(f, d)
        key = ("head_up", c_in, f, d)
        build = lambda d=d: HeadUp(depth_channels(f, d), scale_channels(f, d))  # noqa: E731
        return measured(key, build, c_in, d, 0.5, input_dtype), memory.output_dtype(
            key, build, c_in, amp, input_dtype
        )

    top_cost, up_dtype = zip(*(head_up(d, node_dtype) for d in range(depths)))
    below_dtype = torch.promote_types(node_dtype, up_dtype[-1])
    below_cost = [head_up(d, below_dtype)[0] for d in range(depths)]
    c0 = scale_channels(f, 0)
    out_act, out_par = measured(
        ("head_out", c0, setting.num_classes),
        lambda: HeadOut(c0, setting.num_classes),
        c0,
        0,
        1.0,
        below_dtype,
    )
    # The head starting at depth d runs HeadUp at d (on a node), then at d-1, ..., 0, then HeadOut.
    below_act = np.r_[0.0, np.cumsum([a for a, _ in below_cost])]
    below_par = np.r_[0.0, np.cumsum([p for _, p in below_cost])]
    act_head = np.array([top_cost[d][0] + below_act[d] for d in range(depths)]) + out_act
    par_head = np.array([top_cost[d][1] + below_par[d] for d in range(depths)]) + out_par
    return MemoryModel(
        depths=depths,
        op_names=tuple(ops),
        activations=Parts(act_res, act_op, act_stem, act_head),
        parameters=Parts(par_res, par_op, par_stem, par_head),
        setting=setting,
    )
