"""The search objective of Eq. 11, generic over whichever losses a spec names.

L_arch = L_seg + (t / t_all) * sum_k w_k * R_k, where the R_k are the architecture regularisers
(in the paper: L_alpha, L_eta, lambda * L_tp, L_m) and t counts architecture iterations only.
The ramp never touches L_seg.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nastk import registry


@dataclass(frozen=True)
class WeightedLoss:
    name: str
    weight: float
    fn: Any  # built loss: seg(logits, target) or arch(supernet)


def build_losses(losses) -> tuple[WeightedLoss, list[WeightedLoss]]:
    """Instantiate a spec's ``losses`` list: (the segmentation loss, the architecture losses).

    The spec has already been validated (``nastk.spec.validate`` checks names, params and that
    there is exactly one segmentation loss).
    """
    seg: WeightedLoss | None = None
    arch: list[WeightedLoss] = []
    for item in losses:
        fn = registry.load("losses", item.name)(**item.params)
        built = WeightedLoss(item.name, float(item.weight), fn)
        if fn.kind == "segmentation":
            seg = built
        else:
            arch.append(built)
    assert seg is not None
    return seg, arch


def ramp(t: int, t_all: int) -> float:
    """t / t_all of Eq. 11, clipped to [0, 1]."""
    if t_all <= 0:
        return 1.0
    return min(max(t / t_all, 0.0), 1.0)


def arch_objective(
    seg_value: torch.Tensor, terms: list[tuple[float, torch.Tensor]], t: int, t_all: int
) -> torch.Tensor:
    """Eq. 11: seg + (t/t_all) * sum(weight * term)."""
    if not terms:
        return seg_value
    reg = sum(w * v for w, v in terms)
    return seg_value + ramp(t, t_all) * reg
