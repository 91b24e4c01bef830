"""The DiNTS search space (Sec. 3.1-3.3): the supernet for search and the discrete network.

``SPACE`` is the object registered as ``dints`` in ``nastk.spaces``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.checkpoint import checkpoint

from nastk.protocols import CellOp
from nastk_dints import memory
from nastk_dints import relaxation as rx
from nastk_dints.architecture import Architecture
from nastk_dints.blocks import Head, HeadOut, HeadUp, Stem, depth_channels, resample, scale_channels
from nastk_dints.discretize import gap
from nastk_dints.fused import fusable, fused_ops
from nastk_dints.losses import expected_memory, full_memory
from nastk_dints.topology import edge_list, topology


class DiNTSParams(BaseModel):
    """``space.params`` of a spec. Defaults are the paper's search setting (Sec. 4.1)."""

    model_config = ConfigDict(extra="forbid")
    layers: int = Field(12, ge=1, description="L, the number of layers (paper: 12).")
    depths: int = Field(4, ge=2, description="D, the number of resolutions (paper: 4).")
    filters: int = Field(
        16, ge=1, description="Filters at input scale; depth d has filters*2^(d+1) (paper: 16)."
    )


def cell_name(layer: int, source: int, target: int) -> str:
    """Stable flat module name of the cell on edge source->target of layer ``layer`` (1-based)."""
    return f"l{layer:02d}_{source}to{target}"


def module_key(op_name: str) -> str:
    """Submodule name for an op: "." is not allowed, and names of nn.Module members ("double",
    "half", "train", ...) would clash with the ModuleDict's own attributes."""
    key = op_name.replace(".", "__")
    return f"op_{key}" if hasattr(nn.ModuleDict, key) else key


class MixedCell(nn.Module):
    """Resampling then sum_n alpha_n op_n(x) (Sec. 3.3.1).

    Ops that are :class:`~nastk_dints.ops.ActConvNorm` (ReLU, convs, InstanceNorm: the four DiNTS
    conv ops, and any plugin op built the same way) run fused (:mod:`nastk_dints.fused`) in cells
    with at least 8 voxels per channel: one shared ReLU, one convolution for all their first
    kernels, one InstanceNorm, one contraction with alpha. The maths equals running the ops one by
    one (tested); ``fuse = False`` does that instead. Other ops (skip, plugin ops) always run one
    by one.
    """

    def __init__(self, source: int, target: int, filters: float, ops: dict[str, CellOp]):
        super().__init__()
        self.resample = resample(source, target, filters)
        channels = depth_channels(filters, target)
        # keyed by op name so checkpoints survive reordering; plugin names may contain "."
        self.ops = nn.ModuleDict({module_key(name): build(channels) for name, build in ops.items()})
        modules = list(self.ops.values())
        stackable = [n for n, op in enumerate(modules) if fusable(op, channels)]
        self._fused = stackable if len(stackable) > 1 else []
        self._single = [n for n in range(len(modules)) if n not in self._fused]
        # Their weights as a view of alpha where the fused ops are adjacent (the DiNTS ops are).
        adjacent = self._fused and self._fused == list(range(self._fused[0], self._fused[-1] + 1))
        self._fused_weights = slice(self._fused[0], self._fused[-1] + 1) if adjacent else self._fused
        self.fuse = True

    def forward(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        x = self.resample(x)
        modules = list(self.ops.values())
        # Fusing pays where the convs are bound by their voxels. Where they are bound by their weights
        # (few voxels, many channels: the coarse depths) the stacked 3x3x3 kernel triples the P3D
        # ops' first convs for nothing, so those cells run op by op.
        fused = self._fused if self.fuse and math.prod(x.shape[2:]) >= 8 * x.shape[1] else []
        out = fused_ops([modules[n] for n in fused], x, alpha[self._fused_weights]) if fused else None
        for n in self._single if fused else range(len(modules)):
            y = modules[n](x)
            out = y * alpha[n] if out is None else torch.addcmul(out, y, alpha[n])
        return out


class DiscreteCell(nn.Module):
    def __init__(self, source: int, target: int, filters: float, op: nn.Module):
        super().__init__()
        self.resample = resample(source, target, filters)
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(self.resample(x))


class Supernet(nn.Module):
    """Eq. 1 with the super feature node: each edge is weighted by its marginal probability.

    sum_j eta_j c_j(s) has, at node t, sum_{e -> t} (sum_{j: cp_j(e)=1} eta_j) cell_e(s) =
    sum_{e -> t} P(e) cell_e(s), so no pattern is ever enumerated in the forward pass.
    """

    def __init__(
        self,
        params: DiNTSParams,
        ops: dict[str, CellOp],
        in_channels: int,
        num_classes: int,
        patch_size: tuple[int, int, int] = (96, 96, 96),
    ):
        super().__init__()
        self.params = params
        self.op_names = list(ops)
        self.patch_size = tuple(patch_size)
        self.topology = topology(params.depths)
        self.edges = edge_list(params.depths)
        f, depth, n_layers = params.filters, params.depths, params.layers
        self.stems = nn.ModuleList(Stem(in_channels, f, d) for d in range(depth))
        self.cells = nn.ModuleDict(
            {cell_name(i + 1, s, t): MixedCell(s, t, f, ops) for i in range(n_layers) for s, t in self.edges}
        )
        self.head = Head(f, depth - 1, num_classes)
        # Sec. 4.1: N(1, 0.01) before the softmax, N(0, 0.01) before the sigmoid (mean, std).
        self.op_logits = nn.Parameter(torch.randn(n_layers, len(self.edges), len(ops)) * 0.01 + 1.0)
        self.edge_logits = nn.Parameter(torch.randn(n_layers, len(self.edges)) * 0.01)
        self._ops = ops
        self._memory: dict[torch.dtype, tuple[np.ndarray, np.ndarray]] = {}
        self.checkpoint_cells = False

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.edge_logits, self.op_logits]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dtype = (
            torch.get_autocast_dtype(image.device.type)
            if torch.is_autocast_enabled(image.device.type)
            else image.dtype
        )
        marginals = rx.edge_marginals(self.edge_logits)  # [L, E], once per step
        # P(e) sum_n alpha_n op_n(x) = sum_n (P(e) alpha_n) op_n(x): scaling the [L, E, N] weights
        # spares a multiplication of every cell's output, forward and backward.
        alpha = (rx.op_weights(self.op_logits) * marginals[..., None]).to(dtype)  # [L, E, N]
        nodes = [stem(image) for stem in self.stems]
        for i in range(self.params.layers):
            new: list[torch.Tensor | None] = [None] * self.params.depths
            for e, (s, t) in enumerate(self.edges):
                cell = self.cells[cell_name(i + 1, s, t)]
                if self.checkpoint_cells and self.training:
                    # Recompute the cell in backward instead of keeping its activations.
                    y = checkpoint(cell, nodes[s], alpha[i, e], use_reentrant=False)
                else:
                    y = cell(nodes[s], alpha[i, e])
                new[t] = y if new[t] is None else new[t] + y
            nodes = new  # type: ignore[assignment]
        return self.head(dict(enumerate(nodes)))

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """Logged during search: M_e/M_a (Eq. 8-9) and the gap G of Sec. 4.4.2."""
        resample_cost, op_cost = self.memory_costs()
        m_e = expected_memory(self.edge_logits, self.op_logits, resample_cost, op_cost)
        m_a = full_memory(self.params.layers, resample_cost, op_cost)
        return {"memory_ratio": float(m_e / m_a), "gap": float(gap(self.edge_logits))}

    def memory_costs(self, dtype: torch.dtype = torch.float32) -> tuple[np.ndarray, np.ndarray]:
        """(resample cost [E], op cost [E, N]) in bytes for one sample at ``patch_size``."""
        if dtype not in self._memory:
            self._memory[dtype] = edge_memory_costs(
                self.params.depths, self.params.filters, self._ops, self.patch_size, dtype
            )
        return self._memory[dtype]

    def arch_parameters_numpy(self) -> dict[str, np.ndarray]:
        return {
            "edge_logits": self.edge_logits.detach().cpu().numpy(),
            "op_logits": self.op_logits.detach().cpu().numpy(),
        }


def edge_memory_costs(
    depths: int, filters: float, ops: dict[str, CellOp], patch_size, dtype=torch.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Measured saved bytes per sample: resampling of each edge [E] and each op on each edge [E, N]."""
    edges = edge_list(depths)
    patch = np.asarray(patch_size)
    res = np.zeros(len(edges))
    op_cost = np.zeros((len(edges), len(ops)))
    for e, (s, t) in enumerate(edges):
        voxels = int(np.prod(patch // 2 ** (t + 1)))
        c_in, c_out = depth_channels(filters, s), depth_channels(filters, t)
        if s != t:
            key = ("resample", s - t, c_in, c_out)
            res[e] = memory.cost_per_sample(
                key, lambda s=s, t=t: resample(s, t, filters), c_in, voxels, 2.0 ** (t - s), dtype
            )
        for n, (name, build) in enumerate(ops.items()):
            op_cost[e, n] = memory.cost_per_sample(
                ("op", name, c_out), lambda b=build, c=c_out: b(c), c_out, voxels, 1.0, dtype
            )
    return res, op_cost


class DiNTSNetwork(nn.Module):
    """The discrete network of an architecture: only the selected edges and ops exist."""

    def __init__(
        self, arch: Architecture, ops: dict[str, CellOp], in_channels: int, num_classes: int, filters: float
    ):
        super().__init__()
        self.filters = filters
        self.stems = nn.ModuleDict({f"d{d}": Stem(in_channels, filters, d) for d in arch.input_depths})
        cells: dict[str, nn.Module] = {}
        plan: list[list[tuple[str, int, int]]] = []
        for i in range(arch.layers):
            layer = []
            for s, t, op in arch.layer_edges(i):
                name = cell_name(i + 1, s, t)
                cells[name] = DiscreteCell(s, t, filters, ops[op](depth_channels(filters, t)))
                layer.append((name, s, t))
            plan.append(layer)
        self.cells = nn.ModuleDict(cells)
        self.plan = plan
        self.input_depths = arch.input_depths
        top = int(np.flatnonzero(arch.node_active[-1]).max())
        self.head = Head(filters, top, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        nodes = {d: self.stems[f"d{d}"](image) for d in self.input_depths}
        for layer in self.plan:
            new: dict[int, torch.Tensor] = {}
            for name, s, t in layer:
                y = self.cells[name](nodes[s])
                new[t] = y if t not in new else new[t] + y
            nodes = new
        return self.head(nodes)


class DiNTSSpace:
    name = "dints"
    Params = DiNTSParams

    def patch_divisor(self, params: DiNTSParams) -> int:
        return 2 ** (params.depths + 1)

    def build_supernet(
        self,
        params: DiNTSParams | dict,
        ops: dict[str, CellOp],
        in_channels: int,
        num_classes: int,
        patch_size: tuple[int, int, int] = (96, 96, 96),
    ) -> Supernet:
        params = DiNTSParams.model_validate(params) if isinstance(params, dict) else params
        return Supernet(params, ops, in_channels, num_classes, patch_size)

    def build_network(
        self,
        arch: Architecture | dict[str, Any],
        ops: dict[str, CellOp],
        in_channels: int,
        num_classes: int,
        filter_multiplier: float = 1.0,
        filters: float | None = None,
    ) -> DiNTSNetwork:
        if isinstance(arch, dict):
            arch = Architecture.from_dict(arch)
        missing = [o for o in arch.op_names if o not in ops]
        if missing:
            raise KeyError(f"architecture uses ops not given: {missing}")
        base = filters if filters is not None else arch.space.get("params", {}).get("filters", 16)
        return DiNTSNetwork(arch, ops, in_channels, num_classes, base * filter_multiplier)

    def load_arch(self, path) -> Architecture:
        return Architecture.load(path)

    def load_arch_from_text(self, text: str) -> Architecture:
        """The architecture stored in a retrained model's checkpoint (arch.json text)."""
        import json

        return Architecture.from_dict(json.loads(text), "<checkpoint>")

    def import_arch(self, path, **kwargs: Any) -> Architecture:
        """Convert a MONAI DiNTS / Auto3DSeg architecture file."""
        from nastk_dints.monai_import import import_monai_arch

        return import_monai_arch(path, **kwargs)

    def estimate_memory(self, arch: Architecture, ops: dict[str, CellOp], **setting: Any) -> dict[str, float]:
        """Bytes saved for backward by the discrete network at a training setting (see below)."""
        return estimate_training_memory(arch, ops, **setting)


SPACE = DiNTSSpace()


def estimate_training_memory(
    arch: Architecture,
    ops: dict[str, CellOp],
    patch_size,
    batch_size: int = 1,
    filters: float | None = None,
    filter_multiplier: float = 1.0,
    in_channels: int = 1,
    num_classes: int = 2,
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Bytes the discrete network saves for backward at a training setting, by part.

    Sums measured per-module costs (``memory.cost_per_sample``) over the stems, the selected
    cells (resampling + op) and the head. Returns {"stem", "cells", "head", "total"} in bytes.
    """
    base = filters if filters is not None else arch.space.get("params", {}).get("filters", 16)
    f = base * filter_multiplier
    patch = np.asarray(patch_size)

    def voxels(scale: int) -> int:
        return int(np.prod(patch // 2**scale))

    stem = sum(
        memory.cost_per_sample(
            ("stem", in_channels, f, d),
            lambda d=d: Stem(in_channels, f, d),
            in_channels,
            voxels(d + 1),
            2.0 ** (d + 1),
            dtype,
        )
        for d in arch.input_depths
    )
    # Each stem saves the input image; in the network they share that one tensor.
    image = in_channels * voxels(0) * torch.empty((), dtype=dtype).element_size()
    stem -= (len(arch.input_depths) - 1) * image
    cells = 0.0
    for i in range(arch.layers):
        for s, t, op in arch.layer_edges(i):
            c_in, c_out = depth_channels(f, s), depth_channels(f, t)
            if s != t:
                cells += memory.cost_per_sample(
                    ("resample", s - t, c_in, c_out),
                    lambda s=s, t=t: resample(s, t, f),
                    c_in,
                    voxels(t + 1),
                    2.0 ** (t - s),
                    dtype,
                )
            cells += memory.cost_per_sample(
                ("op", op, c_out), lambda b=ops[op], c=c_out: b(c), c_out, voxels(t + 1), 1.0, dtype
            )
    top = int(np.flatnonzero(arch.node_active[-1]).max())
    head = sum(
        memory.cost_per_sample(
            ("head_up", depth_channels(f, d), f, d),
            lambda d=d: HeadUp(depth_channels(f, d), scale_channels(f, d)),
            depth_channels(f, d),
            voxels(d),
            0.5,
            dtype,
        )
        for d in range(top + 1)
    )
    c0 = scale_channels(f, 0)
    head += memory.cost_per_sample(
        ("head_out", c0, num_classes), lambda: HeadOut(c0, num_classes), c0, voxels(0), 1.0, dtype
    )
    parts = {"stem": stem * batch_size, "cells": cells * batch_size, "head": head * batch_size}
    parts["total"] = sum(parts.values())
    return parts
