"""DiNTS architecture losses (Eq. 5-10), registered in ``nastk.losses``.

Each ``*_value`` function is pure maths on logits (tested against per-pattern brute force); each
registered factory wraps one for the engine: ``factory(**params)(supernet) -> scalar``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nastk.plugin import (
    DEFAULT_MARGIN,
    DEFAULT_RESERVE_GB,
    TrainingSetting,
    load_ops,
    required_gb,
    usable_bytes,
)
from nastk_dints import relaxation as rx
from nastk_dints.topology import Topology

LOG_CLAMP = -100.0  # as torch's BCE: keeps log(0) finite


def topology_value(edge_logits: torch.Tensor, topo: Topology) -> torch.Tensor:
    """L_tp of Eq. 6-7, summed over i = 1..L-1 and every non-empty node-activation pattern a.

    p_in^i(a) = P(targets of layer i's pattern = a); p_out^i(a) = P(sources of layer i+1's = a).
    The loss is BCE(target = p_in, prediction = p_out).
    """
    log_in = rx.node_set_log_probs(edge_logits[:-1], topo.edge_to_target, topo.node_sets)
    log_out = rx.node_set_log_probs(edge_logits[1:], topo.edge_to_source, topo.node_sets)
    p_in = log_in.exp()
    log_out_c = log_out.clamp(min=LOG_CLAMP)
    # log(1 - p_out(a)) = log sum_{b != a} p_out(b): exact even when p_out(a) is within 1e-16 of 1.
    others = torch.eye(log_out.shape[-1], dtype=torch.bool, device=log_out.device)
    log_not_out = torch.logsumexp(log_out[..., None, :].masked_fill(others, -torch.inf), dim=-1)
    log_not_out = log_not_out.clamp(min=LOG_CLAMP)
    return -(p_in * log_out_c + (1 - p_in) * log_not_out).sum()


def expected_memory(
    edge_logits: torch.Tensor, op_logits: torch.Tensor, resample_cost, op_cost
) -> torch.Tensor:
    """M_e of Eq. 8 via marginals: sum_i sum_e P_i(e) (r_e + sum_n alpha_n^{i,e} M_n(e)).

    ``resample_cost`` [E] is the up/down-sampling memory of each edge and ``op_cost`` [E, N] the
    memory of each op on that edge (target node's resolution and channels).
    """
    marg = rx.edge_marginals(edge_logits)
    alpha = rx.op_weights(op_logits.to(torch.float64))
    r = torch.as_tensor(resample_cost, dtype=torch.float64, device=marg.device)
    c = torch.as_tensor(op_cost, dtype=torch.float64, device=marg.device)
    return (marg * (r + (alpha * c).sum(-1))).sum()


def largest_memory(num_layers: int, resample_cost, op_cost) -> float:
    """M_a of Eq. 9, read as the memory of the costliest network the space can build: every edge on,
    the costliest op on each, L * sum_e (r_e + max_n M_n(e)). A constant, so M_e / M_a is in (0, 1]
    and reaches 1 exactly for that network.

    Summing every op instead of the costliest ("every alpha equal to one") would make M_a about 2.6x
    what any network reaches with the five paper ops, since a cell's expected memory sum_n alpha_n M_n
    never exceeds max_n M_n: every sigma above ~0.38 would then give the same gradient.
    """
    r = torch.as_tensor(resample_cost, dtype=torch.float64)
    c = torch.as_tensor(op_cost, dtype=torch.float64)
    return float(num_layers * (r.sum() + c.max(-1).values.sum()))


def monai_normaliser(op_logits: torch.Tensor, resample_cost, op_cost) -> torch.Tensor:
    """MONAI's (Auto3DSeg's) M_a: every edge on, each cell at its current expected memory,
    sum_i sum_e (r_e + sum_n alpha_n M_n(e)). It depends on alpha, which leaves the ratio blind to the
    op choice whenever the edges are equally likely; kept for comparisons with MONAI."""
    alpha = rx.op_weights(op_logits.to(torch.float64))
    r = torch.as_tensor(resample_cost, dtype=torch.float64, device=alpha.device)
    c = torch.as_tensor(op_cost, dtype=torch.float64, device=alpha.device)
    return (r + (alpha * c).sum(-1)).sum()


def memory_ratio(edge_logits, op_logits, resample_cost, op_cost, normalizer: str = "paper") -> torch.Tensor:
    """M_e / M_a with M_a from ``largest_memory`` ("paper") or ``monai_normaliser`` ("monai")."""
    m_e = expected_memory(edge_logits, op_logits, resample_cost, op_cost)
    if normalizer == "monai":
        return m_e / monai_normaliser(op_logits, resample_cost, op_cost)
    if normalizer != "paper":
        raise ValueError(f"normalizer must be 'paper' or 'monai', got {normalizer!r}")
    return m_e / largest_memory(edge_logits.shape[0], resample_cost, op_cost)


def memory_value(
    edge_logits, op_logits, resample_cost, op_cost, sigma: float, normalizer: str = "paper"
) -> torch.Tensor:
    """L_m of Eq. 10: |M_e / M_a - sigma|."""
    return (memory_ratio(edge_logits, op_logits, resample_cost, op_cost, normalizer) - sigma).abs()


class _ArchLoss:
    kind = "architecture"
    spaces = (
        "dints",
    )  # the supernets these read (edge and op logits, memory costs): nastk.protocols.ForSpaces

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class entropy_alpha(_ArchLoss):  # noqa: N801 - registered names are lower case
    """L_alpha (Eq. 5): pushes each cell's op weights towards one-hot."""

    def __call__(self, supernet) -> torch.Tensor:
        return rx.alpha_entropy(supernet.op_logits).to(supernet.op_logits.dtype)


class entropy_eta(_ArchLoss):  # noqa: N801
    """L_eta (Eq. 5): pushes each layer's pattern distribution towards one-hot."""

    def __call__(self, supernet) -> torch.Tensor:
        topo = supernet.topology
        return rx.eta_entropy(supernet.edge_logits, topo.num_patterns).to(supernet.edge_logits.dtype)


class topology(_ArchLoss):  # noqa: N801
    """L_tp (Eq. 7); give it weight lambda = 0.001 in the spec (paper)."""

    def __call__(self, supernet) -> torch.Tensor:
        return topology_value(supernet.edge_logits, supernet.topology).to(supernet.edge_logits.dtype)


class MemoryParams(BaseModel):
    """``params`` of the ``memory`` loss: a budget as sigma (Eq. 10) or in GB at the retraining setting."""

    model_config = ConfigDict(extra="forbid")
    sigma: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False, description="Fraction of the costliest network's memory."
    )
    budget_gb: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="GB (2^30 bytes) one GPU may use to retrain the network at the retraining setting.",
    )
    normalizer: Literal["paper", "monai"] = Field(
        "paper", description="M_a: the costliest network (paper) or MONAI's alpha-dependent one."
    )
    margin: float = Field(
        DEFAULT_MARGIN,
        ge=0,
        allow_inf_nan=False,
        description="budget_gb: allowance for allocator and backward.",
    )
    reserve_gb: float = Field(
        DEFAULT_RESERVE_GB, ge=0, allow_inf_nan=False, description="budget_gb: CUDA context, cuDNN workspace."
    )

    @field_validator("sigma", "budget_gb", "margin", "reserve_gb", mode="before")
    @classmethod
    def _not_bool(cls, value):
        if isinstance(value, bool):  # YAML's `yes`/`true` would otherwise pass as 1.0
            raise ValueError("Input should be a number, not a boolean")
        return value

    @model_validator(mode="after")
    def _one_budget(self) -> MemoryParams:
        if self.sigma is not None and self.budget_gb is not None:
            raise ValueError("give sigma or budget_gb, not both")
        if self.budget_gb is not None:
            if self.normalizer == "monai":
                raise ValueError("normalizer 'monai' goes with sigma; budget_gb uses the costliest network")
            if self.budget_gb <= self.reserve_gb:
                raise ValueError(
                    f"budget_gb {self.budget_gb:g} leaves nothing after reserve_gb {self.reserve_gb:g}"
                )
        elif self.sigma is None:
            self.sigma = 0.8  # the paper's budget
        return self


class memory(_ArchLoss):  # noqa: N801
    """L_m (Eq. 10): |M_e / M_a - sigma|, with sigma given (paper: 0.8) or derived from ``budget_gb``.

    With ``sigma`` the costs are the activations of one sample at the search patch, as in the paper.
    With ``budget_gb`` they are the training bytes of each part at the retraining setting
    (``nastk_dints.budget``), so the target is the part of the budget the cells may take: the budget
    less its margin and reserve, less the costliest stems and head, over M_a at that setting.
    """

    Params = MemoryParams

    def __init__(self, **params):
        self.params = MemoryParams(**params)
        self.sigma = self.params.sigma
        self._costs: tuple[np.ndarray, np.ndarray] | None = None
        self._fixed = 0.0  # the costliest stems and head (budget_gb only)

    def bind(self, supernet, setting: TrainingSetting) -> None:
        """Fix the costs (and, for budget_gb, sigma) for ``supernet`` retrained at ``setting``."""
        if self.params.budget_gb is None:
            self._costs = supernet.memory_costs()
            return
        model = supernet.memory_model(setting)
        total = model.total
        self._costs = (total.resample, total.op)
        self._fixed = float(total.stem.sum() + total.head.max())
        usable = usable_bytes(self.params.budget_gb, self.params.margin, self.params.reserve_gb)
        m_a = largest_memory(supernet.params.layers, total.resample, total.op)
        # A budget above the largest network never binds: sigma 1 (the largest network), not the huge (or
        # infinite) ratio that an absurd budget_gb such as 1e300 would give and no loss could reach.
        self.sigma = float(min(1.0, max(0.0, (usable - self._fixed) / m_a)))

    def _bound_costs(self, supernet) -> tuple[np.ndarray, np.ndarray]:
        if self._costs is None:
            if self.params.budget_gb is not None:
                raise RuntimeError("memory(budget_gb=...) needs bind(supernet, setting) before use")
            self._costs = supernet.memory_costs()
        return self._costs

    def __call__(self, supernet) -> torch.Tensor:
        resample_cost, op_cost = self._bound_costs(supernet)
        value = memory_value(
            supernet.edge_logits,
            supernet.op_logits,
            resample_cost,
            op_cost,
            self.sigma,
            self.params.normalizer,
        )
        return value.to(supernet.edge_logits.dtype)

    @torch.no_grad()
    def diagnostics(self, supernet) -> dict[str, float]:
        """For search/log.csv: the ratio this loss sees, its (effective) sigma, and with a GB budget that
        budget and the GB the expected network would need."""
        resample_cost, op_cost = self._bound_costs(supernet)
        ratio = memory_ratio(
            supernet.edge_logits, supernet.op_logits, resample_cost, op_cost, self.params.normalizer
        )
        row = {"memory_ratio": float(ratio), "sigma_eff": float(self.sigma)}
        if self.params.budget_gb is not None:  # the report reads the budget from the log, not the spec
            row["budget_gb"] = float(self.params.budget_gb)
            m_e = expected_memory(supernet.edge_logits, supernet.op_logits, resample_cost, op_cost)
            row["expected_gb"] = required_gb(
                float(m_e) + self._fixed, self.params.margin, self.params.reserve_gb
            )
        return row

    def check_spec(self, spec) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(errors, warnings) for ``nastk validate``: a GB budget must fit the smallest network the space
        can build at the retraining setting, and binds only below the largest."""
        if self.params.budget_gb is None:
            return [], []
        from nastk.plugin import format_gb, global_retrain_batch, retrain_setting
        from nastk_dints.budget import memory_model
        from nastk_dints.params import DiNTSParams

        gpus = spec.retrain.gpus
        if global_retrain_batch(spec) % gpus:
            return [
                (
                    "retrain.gpus",
                    f"the retraining batch {global_retrain_batch(spec)} (search.batch_size x "
                    f"retrain.batch_multiplier) does not split over {gpus} GPUs",
                )
            ], []
        space = DiNTSParams.model_validate(spec.space.params)
        ops = load_ops(spec.ops)
        setting = retrain_setting(spec)
        model = memory_model(space.depths, space.filters, ops, setting)
        p = self.params
        need_small = required_gb(model.smallest(space.layers), p.margin, p.reserve_gb)
        need_large = required_gb(model.largest(space.layers), p.margin, p.reserve_gb)
        where = f"at the retraining setting ({setting.describe()})"
        if p.budget_gb < need_small:
            return [
                (
                    "budget_gb",
                    f"{p.budget_gb:g} GB is below the {format_gb(need_small)} GB that the smallest network "
                    f"of this space needs {where}",
                )
            ], []
        if p.budget_gb >= need_large:
            return [], [
                (
                    "budget_gb",
                    f"{p.budget_gb:g} GB never binds: the largest network of this space needs "
                    f"{format_gb(need_large)} GB {where}; the search then targets the largest network "
                    "(sigma 1)",
                )
            ]
        return [], []

    def __repr__(self) -> str:
        if self.params.budget_gb is not None:
            return f"memory(budget_gb={self.params.budget_gb})"
        return f"memory(sigma={self.sigma})"
