"""The DiNTS supernet for search (Sec. 3.3): mixed cells on every edge, weighted by the edges' marginals.

``nastk_dints.space`` builds it; ``nastk_dints.sizing`` measures it without importing the space.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from nastk.plugin import CellOp, TrainingSetting
from nastk_dints import relaxation as rx
from nastk_dints.blocks import Head, Stem, depth_channels, resample
from nastk_dints.budget import MemoryModel, memory_model
from nastk_dints.discretize import gap
from nastk_dints.fused import fusable, fused_ops
from nastk_dints.losses import memory_ratio
from nastk_dints.params import DiNTSParams
from nastk_dints.topology import edge_list, topology


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
        self.in_channels, self.num_classes = in_channels, num_classes
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
        # Names of the cells recomputed in backward (only their inputs are kept); see recompute.py.
        self.recompute: frozenset[str] = frozenset()

    @property
    def checkpoint_cells(self) -> bool:
        """True when every cell is recomputed in backward (``search.recompute: all``)."""
        return len(self.recompute) == len(self.cells)

    @checkpoint_cells.setter
    def checkpoint_cells(self, flag: bool) -> None:
        self.recompute = frozenset(self.cells) if flag else frozenset()

    def recompute_all(self, flag: bool) -> None:
        self.checkpoint_cells = flag

    def step_state_bytes(self, amp: str = "off") -> float:
        """Weights, gradients and SGD momentum (12 bytes each), alpha and p with Adam's moments (16)."""
        weights = sum(p.numel() for p in self.weight_parameters())
        arch = sum(p.numel() for p in self.arch_parameters())
        return 12.0 * weights + 16.0 * arch

    def choose_recompute(self, target_bytes: float, batch: int, amp: str, device) -> dict:
        """``search.recompute: auto``: measure what each cell saves and costs to recompute at this
        setting (``recompute.py``), recompute the cells that keep the step within ``target_bytes``
        (activations saved for backward plus ``step_state_bytes``) at the least time, and say what
        was chosen. Raises ValueError when even recomputing every cell does not fit."""
        from nastk_dints import recompute as rc

        p = self.params
        model = rc.measure(
            p.layers, p.depths, p.filters, self._ops, self.in_channels, self.num_classes,
            self.patch_size, batch, amp, time_cells=True, device=device,
        )  # fmt: skip
        state = self.step_state_bytes(amp)
        none = np.zeros((p.layers, len(self.edges)), dtype=bool)
        chosen = rc.choose(model, target_bytes - state)
        if chosen is None:
            every = model.peak(~none)
            raise ValueError(
                f"{target_bytes / 2**30:.3g} GB is below the {(every + state) / 2**30:.3g} GB a search step "
                "needs with every cell recomputed"
            )
        mask, seconds, _ = chosen
        self.recompute = frozenset(rc.mask_to_names(mask, p.depths))
        return {
            "parts": sorted(self.recompute),
            "expected_bytes": model.peak(mask) + state,
            "none_bytes": model.peak(none) + state,
            "seconds": seconds,
            "forward_seconds": float(model.seconds.sum()) * p.layers,
        }

    def use_recompute(self, parts: list[str]) -> None:
        unknown = sorted(set(parts) - set(self.cells))
        if unknown:
            raise ValueError(f"not cells of this supernet: {', '.join(unknown[:5])}")
        self.recompute = frozenset(parts)

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
                name = cell_name(i + 1, s, t)
                cell = self.cells[name]
                if self.training and name in self.recompute:
                    # Recompute the cell in backward instead of keeping its activations.
                    y = checkpoint(cell, nodes[s], alpha[i, e], use_reentrant=False)
                else:
                    y = cell(nodes[s], alpha[i, e])
                new[t] = y if new[t] is None else new[t] + y
            nodes = new  # type: ignore[assignment]
        return self.head(dict(enumerate(nodes)))

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """Logged during search: M_e/M_a (Eq. 8-9, at the search setting) and the gap G of Sec. 4.4.2."""
        resample_cost, op_cost = self.memory_costs()
        ratio = memory_ratio(self.edge_logits, self.op_logits, resample_cost, op_cost)
        return {"memory_ratio": float(ratio), "gap": float(gap(self.edge_logits))}

    def search_setting(self) -> TrainingSetting:
        """One sample at the search patch and filters, float32: the setting of the paper's M_n."""
        return TrainingSetting(self.patch_size, 1, 1.0, "off", self.in_channels, self.num_classes)

    def memory_model(self, setting: TrainingSetting) -> MemoryModel:
        return memory_model(self.params.depths, self.params.filters, self._ops, setting)

    def memory_costs(self) -> tuple[np.ndarray, np.ndarray]:
        """(resample cost [E], op cost [E, N]): activation bytes saved for backward by one sample at
        the search patch (the paper's M_n)."""
        acts = self.memory_model(self.search_setting()).activations
        return acts.resample, acts.op

    def arch_parameters_numpy(self) -> dict[str, np.ndarray]:
        return {
            "edge_logits": self.edge_logits.detach().cpu().numpy(),
            "op_logits": self.op_logits.detach().cpu().numpy(),
        }
