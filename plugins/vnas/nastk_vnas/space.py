"""The ``vnas`` search space: the supernet a search trains and the discrete network of an architecture.

``SPACE`` is the object registered as ``vnas`` in ``nastk.spaces``. It satisfies
``nastk.protocols.SearchSpace`` and the optional ``EstimatesMemory`` and ``SizesTraining``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from torch import nn

from nastk.plugin import CellOp, TrainingSetting
from nastk_vnas.architecture import Architecture
from nastk_vnas.blocks import Skeleton
from nastk_vnas.layout import channels, layers
from nastk_vnas.params import VNASParams


class MixedLayer(nn.Module):
    """Every candidate op on the same input, weighted by softmax(logits): V-NAS's relaxation."""

    def __init__(self, ops: dict[str, CellOp], width: int):
        super().__init__()
        self.candidates = nn.ModuleList(build(width) for build in ops.values())

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.candidates))


class _Weighted(nn.Module):
    """A mixed layer bound to its row of the supernet's logits (so the skeleton calls it as f(x))."""

    def __init__(self, mixed: MixedLayer, owner: VNASSupernet, row: int):
        super().__init__()
        self.mixed = mixed
        self._owner = [owner]  # a list: not a submodule (no cycle in the module tree)
        self.row = row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixed(x, torch.softmax(self._owner[0].op_logits[self.row], dim=0))


class VNASSupernet(nn.Module):
    """The skeleton with a mixed layer at every searched position; ``op_logits`` [L, N] are the
    architecture parameters (saved to ``search/arch_params.npz``)."""

    def __init__(self, params: VNASParams, ops: dict[str, CellOp], in_channels: int, num_classes: int):
        super().__init__()
        self.params = params
        self.op_names = list(ops)
        layout = layers(params.depths, params.convs)
        init = 1.0 + params.init_std * torch.randn(len(layout), len(ops))
        self.op_logits = nn.Parameter(init)
        mixed = [MixedLayer(ops, channels(params.filters, layer.level)) for layer in layout]
        self.net = Skeleton(
            layout,
            [_Weighted(m, self, i) for i, m in enumerate(mixed)],
            in_channels,
            num_classes,
            params.filters,
            params.depths,
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.op_logits]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n != "op_logits"]

    def arch_parameters_numpy(self) -> dict[str, np.ndarray]:
        return {"op_logits": self.op_logits.detach().cpu().numpy().astype(np.float64)}

    def diagnostics(self) -> dict[str, float]:
        """Mean entropy of the layers' op distributions (nats; log N at uniform, 0 when decided)."""
        with torch.no_grad():
            p = torch.softmax(self.op_logits, dim=1)
            return {"op_entropy": float(-(p * torch.log(p.clamp_min(1e-12))).sum(1).mean())}


class VNASNetwork(nn.Module):
    """The discrete network: one op per searched layer."""

    def __init__(self, arch: Architecture, ops, in_channels: int, num_classes: int, filters: float):
        super().__init__()
        layout = layers(arch.depths, arch.convs)
        modules = [ops[op](channels(filters, layer.level)) for layer, op in zip(layout, arch.choices)]
        self.net = Skeleton(layout, modules, in_channels, num_classes, filters, arch.depths)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


class VNASSpace:
    name = "vnas"
    Params = VNASParams
    # What V-NAS chooses among in every layer: 3D, 2D (3x3x1) and P3D (3x3x1 then 1x1x3). No default
    # losses: the segmentation loss alone trains the logits.
    default_ops = ("conv3x3x3", "vnas.conv3x3x1", "p3d_3x3x1")

    def patch_divisor(self, params: VNASParams) -> int:
        return 2 ** (params.depths - 1)

    def build_supernet(
        self,
        params: VNASParams | dict,
        ops: dict[str, CellOp],
        in_channels: int,
        num_classes: int,
        patch_size: tuple[int, ...] = (96, 96, 96),
    ) -> VNASSupernet:
        params = VNASParams.model_validate(params) if isinstance(params, dict) else params
        return VNASSupernet(params, ops, in_channels, num_classes)

    def build_network(
        self,
        arch: Architecture | dict[str, Any],
        ops: dict[str, CellOp],
        in_channels: int,
        num_classes: int,
        filter_multiplier: float = 1.0,
    ) -> VNASNetwork:
        if isinstance(arch, dict):
            arch = Architecture.from_dict(arch)
        missing = sorted(set(arch.choices) - set(ops))
        if missing:
            raise KeyError(f"architecture uses ops not given: {missing}")
        return VNASNetwork(arch, ops, in_channels, num_classes, arch.filters * filter_multiplier)

    def load_arch(self, path) -> Architecture:
        return Architecture.load(path)

    def load_arch_from_text(self, text: str) -> Architecture:
        return Architecture.from_dict(json.loads(text), "<checkpoint>")

    def estimate_memory(self, arch: Architecture, ops: dict[str, CellOp], **setting: Any) -> dict[str, float]:
        """{"fixed", "layers", "activations", "parameters", "total"} bytes one GPU holds to train ``arch``."""
        from nastk_vnas.memory import estimate

        return estimate(arch, ops, **setting)

    # nastk plan (nastk.protocols.SizesTraining)

    def network_memory(
        self, params: VNASParams, ops: dict[str, CellOp], setting: TrainingSetting
    ) -> tuple[float, float]:
        from nastk_vnas.memory import memory_table

        table = memory_table(params.depths, params.convs, params.filters, ops, setting)
        return table.fixed + table.layer.min(1).sum(), table.fixed + table.layer.max(1).sum()

    def supernet_memory(self, params: VNASParams, ops: dict[str, CellOp], setting: TrainingSetting) -> float:
        """Every op of every layer runs: the sum over ops (an upper bound of the mixing's extra terms)."""
        from nastk_vnas.memory import memory_table

        table = memory_table(params.depths, params.convs, params.filters, ops, setting)
        return float(table.fixed + table.layer.sum())

    def step_flops(
        self, params: VNASParams, ops: dict[str, CellOp], setting: TrainingSetting, network: str
    ) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        wide = VNASParams.model_validate(
            {**params.model_dump(), "filters": max(1, round(params.filters * setting.filter_multiplier))}
        )
        with torch.device("meta"):
            if network == "supernet":
                net = self.build_supernet(wide, ops, setting.in_channels, setting.num_classes)
            else:
                from nastk_vnas.memory import memory_table

                table = memory_table(params.depths, params.convs, params.filters, ops, setting)
                names = list(ops)
                choice = [names[i] for i in table.layer.argmax(1)]
                arch = Architecture(wide.depths, wide.convs, wide.filters, names, choice)
                net = self.build_network(arch, ops, setting.in_channels, setting.num_classes)
            x = torch.zeros(setting.batch_size, setting.in_channels, *setting.patch_size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
        return float(counter.get_total_flops())


SPACE = VNASSpace()
