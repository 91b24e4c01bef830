"""The DiNTS search space (Sec. 3.1-3.3): the supernet for search and the discrete network.

``SPACE`` is the object registered as ``dints`` in ``nastk.spaces``. The supernet is
:mod:`nastk_dints.supernet`, its params :mod:`nastk_dints.params`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from nastk.plugin import CellOp, TrainingSetting
from nastk_dints.architecture import Architecture
from nastk_dints.blocks import Head, Stem, depth_channels, resample
from nastk_dints.budget import memory_model
from nastk_dints.params import DiNTSParams
from nastk_dints.supernet import MixedCell, Supernet, cell_name, module_key


class DiscreteCell(nn.Module):
    def __init__(self, source: int, target: int, filters: float, op: nn.Module):
        super().__init__()
        self.resample = resample(source, target, filters)
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(self.resample(x))


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
    default_ops = ("skip", "conv3x3x3", "p3d_3x3x1", "p3d_3x1x3", "p3d_1x3x3")  # Sec. 3.2
    # Eq. 11: L_arch = L_seg + t/t_all * (L_alpha + L_eta + lambda * L_tp + L_m), lambda = 0.001, and
    # sigma = 0.8, the budget of the architecture the paper retrained on every task (Sec. 4.2).
    default_losses = (
        {"name": "dice_ce"},
        {"name": "entropy_alpha"},
        {"name": "entropy_eta"},
        {"name": "topology", "weight": 0.001},
        {"name": "memory", "params": {"sigma": 0.8}},
    )

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

    # What training costs before any search (``nastk plan``; nastk.protocols.SizesTraining).

    def network_memory(
        self, params: DiNTSParams, ops: dict[str, CellOp], setting: TrainingSetting
    ) -> tuple[float, float]:
        from nastk_dints.sizing import network_memory

        return network_memory(params, ops, setting)

    def supernet_memory(self, params: DiNTSParams, ops: dict[str, CellOp], setting: TrainingSetting) -> float:
        from nastk_dints.sizing import supernet_memory

        return supernet_memory(params, ops, setting)

    def supernet_memory_recomputed(
        self, params: DiNTSParams, ops: dict[str, CellOp], setting: TrainingSetting
    ) -> float:
        from nastk_dints.sizing import supernet_memory_recomputed

        return supernet_memory_recomputed(params, ops, setting)

    def recompute_slowdown(
        self, params: DiNTSParams, ops: dict[str, CellOp], setting: TrainingSetting
    ) -> float:
        from nastk_dints.sizing import recompute_slowdown

        return recompute_slowdown(params, ops, setting)

    def step_flops(
        self, params: DiNTSParams, ops: dict[str, CellOp], setting: TrainingSetting, network: str
    ) -> float:
        from nastk_dints.sizing import step_flops

        return step_flops(params, ops, setting, network)


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
    amp: str = "off",
    state_bytes_per_param: int = 12,
) -> dict[str, float]:
    """Bytes one GPU holds to train the discrete network at a setting, by part.

    {"stem", "cells", "head"}: activations saved for backward (measured per module,
    ``memory.cost_per_sample``), summing to "activations"; "parameters": weights, gradients and
    optimiser state (``state_bytes_per_param`` per parameter: 12 for SGD with momentum);
    "total" = activations + parameters. No margin is added (``nastk.setting.MemoryBudget`` does).
    """
    base = filters if filters is not None else arch.space.get("params", {}).get("filters", 16)
    setting = TrainingSetting(
        tuple(int(p) for p in patch_size),
        batch_size,
        filter_multiplier,
        amp,
        in_channels,
        num_classes,
        state_bytes_per_param,
    )
    model = memory_model(arch.depths, base, {name: ops[name] for name in arch.op_names}, setting)
    return model.network(arch.edge_mask, arch.op_index)


__all__ = [
    "SPACE",
    "DiNTSNetwork",
    "DiNTSParams",
    "DiNTSSpace",
    "MixedCell",
    "Supernet",
    "cell_name",
    "module_key",
]
