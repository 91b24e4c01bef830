"""Bytes a search step saves for backward when some cells are recomputed, and which cells to recompute.

A cell recomputed in backward (``torch.utils.checkpoint``, non-reentrant) keeps only its inputs: the
node it reads and the alpha tensor it is weighted by. What a search step saves for backward is then

    outside + sum over cells not recomputed of own[cell]
            + sum over nodes of node[depth] * [a cell reading it is recomputed, or saves it itself]
            + alpha * [any cell is recomputed, or saves alpha itself]

* ``own[cell]``: the storages the cell saves other than its input node and alpha, measured on the
  cell alone (``memory.saved_bytes``) at the step's setting: weights trainable in the weight step,
  alpha in the architecture step; the first layer's input needs no gradient in the architecture step
  (the stems are frozen and the image needs none). Every later layer is the same, so two kinds of cell
  per edge are measured, not L.
* ``outside``: the stems, the head and the relaxation (eta, alpha), measured on whole supernets of one
  and two layers with every cell recomputed, less their nodes and alpha (it is linear in L and voxels).
* ``node[d]``: batch x channels x voxels x the node's element size.

On the CPU this equals the saved-tensor hook's count to the byte for any set of recomputed cells, in
float32 and under bf16 autocast (tests/test_recompute.py). The time a cell adds is one more forward of
it, measured. Choosing the cells that fit a target at the least time is a multiple-choice knapsack
with two capacities (the weight step's and the architecture step's bytes): the cells reading one node
form a group (at most three cells, so at most eight choices), because that node's bytes count once
whichever of them keeps it; :func:`choose` solves it exactly by dynamic programming over the groups,
keeping only the partial choices that no other beats in time and both steps' bytes.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nastk_dints import memory
from nastk_dints.blocks import depth_channels
from nastk_dints.supernet import MixedCell, Supernet, cell_name
from nastk_dints.topology import edge_list

STEPS = ("weight", "arch")


@dataclass(frozen=True)
class StepBytes:
    """The parts of one step's saved bytes (see the module docstring); ``kind`` 0 is layer 1."""

    layers: int
    depths: int
    outside: float
    alpha: float
    node: np.ndarray  # [D]
    own: np.ndarray  # [2, E]
    saves_input: np.ndarray  # [2, E] bool
    saves_alpha: np.ndarray  # [2, E] bool

    def saved(self, recompute: np.ndarray) -> float:
        """Bytes saved for backward with ``recompute`` [L, E] (bool) cells recomputed."""
        r = np.asarray(recompute, dtype=bool)
        kinds = np.r_[0, np.ones(self.layers - 1, dtype=int)]
        own, saves_in, saves_a = self.own[kinds], self.saves_input[kinds], self.saves_alpha[kinds]
        total = self.outside + float(own[~r].sum())
        sources = np.array([s for s, _ in edge_list(self.depths)])
        for i in range(self.layers):
            for d in range(self.depths):
                readers = sources == d
                if (r[i] & readers).any() or (saves_in[i] & readers & ~r[i]).any():
                    total += self.node[d]
        if r.any() or (saves_a & ~r).any():
            total += self.alpha
        return total


@dataclass(frozen=True)
class SearchStepMemory:
    """Both steps' saved bytes, and each cell's recompute time (seconds, per edge)."""

    steps: dict[str, StepBytes]
    seconds: np.ndarray  # [E]

    @property
    def layers(self) -> int:
        return self.steps["weight"].layers

    def saved(self, recompute: np.ndarray) -> dict[str, float]:
        return {k: m.saved(recompute) for k, m in self.steps.items()}

    def peak(self, recompute: np.ndarray) -> float:
        """The larger of the two steps' saved bytes."""
        return max(self.saved(recompute).values())

    def groups(self) -> list[list[tuple[float, np.ndarray, tuple]]]:
        """Per node (layer i, depth d), every choice of which of its reader cells to recompute, as
        (seconds, bytes per step [2], chosen cells)."""
        depths = self.steps["weight"].depths
        edges = edge_list(depths)
        out = []
        for i in range(self.layers):
            kind = 0 if i == 0 else 1
            for d in range(depths):
                readers = [e for e, (s, _) in enumerate(edges) if s == d]
                choices = []
                for mask in itertools.product((False, True), repeat=len(readers)):
                    chosen = tuple((i, e) for e, m in zip(readers, mask) if m)
                    secs = sum(float(self.seconds[e]) for _, e in chosen)
                    per_step = []
                    for m in self.steps.values():
                        b = sum(float(m.own[kind, e]) for e, r in zip(readers, mask) if not r)
                        keeps = any(mask) or any(
                            m.saves_input[kind, e] and not r for e, r in zip(readers, mask)
                        )
                        per_step.append(b + (float(m.node[d]) if keeps else 0.0))
                    choices.append((secs, np.array(per_step), chosen))
                out.append(choices)
        return out

    def fixed_bytes(self) -> np.ndarray:
        """What no choice changes, per step: outside + alpha (alpha counted always: at most a few kB,
        and only when every cell of layers 2..L is recomputed could it be absent)."""
        return np.array([m.outside + m.alpha for m in self.steps.values()])


def _unflatten(chosen, layers: int, edges: int) -> np.ndarray:
    mask = np.zeros((layers, edges), dtype=bool)
    while chosen:
        chosen, cells = chosen
        for i, e in cells:
            mask[i, e] = True
    return mask


def _pareto(ts: np.ndarray, bs: np.ndarray) -> list[int]:
    """Indices of the points (time, bytes [2]) that no other point beats or equals in all three (ties:
    the first in (time, bytes) order). A sweep by time over a staircase of (weight bytes, arch bytes):
    a point is beaten when some faster point has both bytes no larger."""
    order = np.lexsort((bs[:, 1], bs[:, 0], ts))
    stair_w: list[float] = []  # increasing
    stair_a: list[float] = []  # decreasing
    keep = []
    for k in order:
        w, a = bs[k, 0], bs[k, 1]
        j = bisect.bisect_right(stair_w, w)
        if j and stair_a[j - 1] <= a:
            continue
        keep.append(int(k))
        # drop the staircase points this one beats in both bytes (w' >= w, a' >= a): from j on
        end = j
        while end < len(stair_w) and stair_a[end] >= a:
            end += 1
        stair_w[j:end] = [w]
        stair_a[j:end] = [a]
    return keep


def choose(model: SearchStepMemory, target_bytes: float) -> tuple[np.ndarray, float, float] | None:
    """The cells to recompute [L, E] so that both steps save at most ``target_bytes`` at the least
    recompute time: (mask, seconds, bytes of the larger step), or None when even recomputing every
    cell does not fit. Exact: a dynamic programme over the node groups that keeps every partial choice
    no other beats in time and in both steps' bytes."""
    room = target_bytes - model.fixed_bytes() + 1e-6
    front_t, front_b, front_c = np.zeros(1), np.zeros((1, 2)), [()]
    for choices in model.groups():
        ts = (front_t[:, None] + np.array([c[0] for c in choices])[None]).ravel()
        bs = (front_b[:, None, :] + np.stack([c[1] for c in choices])[None]).reshape(-1, 2)
        ok = np.flatnonzero((bs <= room).all(1))
        if not len(ok):
            return None
        keep = _pareto(ts[ok], bs[ok])
        keep = ok[keep]
        n = len(choices)
        front_c = [(front_c[k // n], choices[k % n][2]) for k in keep]
        front_t, front_b = ts[keep], bs[keep]
    best = int(np.argmin(front_t))
    mask = _unflatten(front_c[best], model.layers, len(model.seconds))
    return mask, float(front_t[best]), float((front_b[best] + model.fixed_bytes()).max())


def enumerate_subsets(model: SearchStepMemory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every subset of cells (for the tests, small L and D): masks [K, L, E], their recompute seconds
    and the larger step's bytes."""
    n_layers, n_edges = model.layers, len(model.seconds)
    bits = np.array(list(itertools.product((False, True), repeat=n_layers * n_edges)))
    masks = bits.reshape(-1, n_layers, n_edges)
    secs = (masks * model.seconds[None, None]).sum((1, 2))
    return masks, secs, np.array([model.peak(m) for m in masks])


# ----------------------------------------------------------------------------------------- measuring


def _requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _storage_bytes(module: nn.Module, run, exclude: dict[str, int]) -> tuple[int, set[str]]:
    """Distinct non-parameter storages saved by ``run()``, less those named in ``exclude``
    (name -> data_ptr); and which excluded names were saved."""
    storages = memory.live_saved_storages(module, run)
    hit = {name for name, ptr in exclude.items() if ptr in storages}
    own = sum(n for ptr, n in storages.items() if ptr not in exclude.values())
    return own, hit


def _node_dtype(filters: float, ops: dict, in_channels: int, num_classes: int, amp: str) -> torch.dtype:
    if amp == "off":
        return torch.float32
    from nastk_dints.blocks import Stem

    x = torch.zeros(1, in_channels, 4, 4, 4)
    with torch.no_grad(), memory.autocast(amp):
        return Stem(in_channels, filters, 0)(x).dtype


def _cell_parts(cell: MixedCell, shape, step: str, first: bool, amp: str, dtype, n_ops: int):
    _requires_grad(cell, step == "weight")
    x = torch.randn(shape, dtype=dtype, requires_grad=step == "weight" or not first)
    holder = torch.randn(
        2, n_ops, dtype=dtype if amp != "off" else torch.float32, requires_grad=step == "arch"
    )
    alpha = holder * 1.0 if step == "arch" else holder.detach()

    def run():
        with memory.autocast(amp):
            return cell(x, alpha[0])

    own, hit = _storage_bytes(
        cell, run, {"input": x.untyped_storage().data_ptr(), "alpha": alpha.untyped_storage().data_ptr()}
    )
    return own, "input" in hit, "alpha" in hit


def measure(
    layers: int,
    depths: int,
    filters: float,
    ops: dict,
    in_channels: int,
    num_classes: int,
    patch,
    batch: int = 1,
    amp: str = "off",
    time_cells: bool = False,
    device: str | torch.device = "cpu",
    cells: bool = True,
) -> SearchStepMemory:
    """Measure every part of a search step's saved bytes at this setting (on the CPU; the cells at
    their real size, the outside parts on one- and two-layer supernets at the smallest patch the space
    takes and twice that). With ``time_cells`` each edge's cell forward is timed on ``device``. With
    ``cells=False`` the cells are not measured (cheap at any patch): the model then answers only for
    every cell recomputed."""
    from nastk_dints.params import DiNTSParams

    patch = tuple(int(p) for p in patch)
    edges = edge_list(depths)
    node_dtype = _node_dtype(filters, ops, in_channels, num_classes, amp)
    itemsize = torch.empty((), dtype=node_dtype).element_size()
    alpha_dtype = node_dtype if amp != "off" else torch.float32
    alpha_itemsize = torch.empty((), dtype=alpha_dtype).element_size()

    def side(d: int) -> tuple[int, ...]:
        return tuple(p // 2 ** (d + 1) for p in patch)

    node = np.array(
        [batch * depth_channels(filters, d) * math.prod(side(d)) * itemsize for d in range(depths)]
    )

    def params(n: int):
        return DiNTSParams(layers=n, depths=depths).model_copy(update={"filters": filters})

    smallest = 2 ** (depths + 1)

    def outside(step: str, n_layers: int, sides) -> float:
        net = Supernet(params(n_layers), ops, in_channels, num_classes, sides).train()
        net.checkpoint_cells = True
        _requires_grad(net, step == "weight")
        for p in net.arch_parameters():
            p.requires_grad_(step == "arch")
        saved = memory.live_saved_bytes(net, (batch, in_channels, *sides), amp, False)
        n_alpha = n_layers * len(edges) * len(ops) * alpha_itemsize
        nodes_held = (
            n_layers
            * np.array(
                [
                    batch
                    * depth_channels(filters, d)
                    * math.prod(s // 2 ** (d + 1) for s in sides)
                    * itemsize
                    for d in range(depths)
                ]
            ).sum()
        )
        return saved - n_alpha - nodes_held

    voxels = math.prod(patch)
    small, large = (smallest,) * 3, (2 * smallest, smallest, smallest)
    steps = {}
    for step in STEPS:
        o11, o21, o12 = outside(step, 1, small), outside(step, 2, small), outside(step, 1, large)
        per_voxel = (o12 - o11) / (math.prod(large) - math.prod(small))
        out = o11 + (layers - 1) * (o21 - o11) + per_voxel * (voxels - math.prod(small))
        own = np.zeros((2, len(edges)))
        saves_in = np.zeros((2, len(edges)), dtype=bool)
        saves_a = np.zeros((2, len(edges)), dtype=bool)
        for e, (s, t) in enumerate(edges if cells else []):
            cell = MixedCell(s, t, filters, ops).train()
            shape = (batch, depth_channels(filters, s), *side(s))
            for kind in (0, 1):
                own[kind, e], saves_in[kind, e], saves_a[kind, e] = _cell_parts(
                    cell, shape, step, kind == 0, amp, node_dtype, len(ops)
                )
        steps[step] = StepBytes(
            layers,
            depths,
            float(out),
            float(layers * len(edges) * len(ops) * alpha_itemsize),
            node,
            own,
            saves_in,
            saves_a,
        )
    seconds = (
        cell_seconds(depths, filters, ops, patch, batch, amp, device) if time_cells else np.ones(len(edges))
    )
    return SearchStepMemory(steps, seconds)


def cell_seconds(depths, filters, ops, patch, batch, amp, device, repeats: int = 3) -> np.ndarray:
    """Median seconds of one forward (with autograd recording, as a recompute runs it) per edge."""
    device = torch.device(device)
    out = np.zeros(len(edge_list(depths)))
    for e, (s, t) in enumerate(edge_list(depths)):
        cell = MixedCell(s, t, filters, ops).to(device).train()
        x = torch.randn(batch, depth_channels(filters, s), *(p // 2 ** (s + 1) for p in patch), device=device)
        alpha = torch.full((len(ops),), 1.0 / len(ops), device=device)
        autocast = (
            torch.autocast(device.type, dtype=memory.AMP_DTYPES[amp])
            if amp != "off"
            else memory.autocast("off")
        )
        ts = []
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with autocast:
                cell(x, alpha)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ts.append(time.perf_counter() - t0)
        out[e] = float(np.median(ts[1:]))
    return out


def mask_to_names(mask: np.ndarray, depths: int) -> list[str]:
    edges = edge_list(depths)
    return [cell_name(i + 1, *edges[e]) for i, e in zip(*np.nonzero(mask))]
