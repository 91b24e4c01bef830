"""DiNTS architecture losses (Eq. 5-10), registered in ``nastk.losses``.

Each ``*_value`` function is pure maths on logits (tested against per-pattern brute force); each
registered factory wraps one for the engine: ``factory(**params)(supernet) -> scalar``.
"""

from __future__ import annotations

import torch

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


def full_memory(num_layers: int, resample_cost, op_cost) -> float:
    """M_a of Eq. 9: the supernet with every edge and every op active. A constant."""
    r = torch.as_tensor(resample_cost, dtype=torch.float64)
    c = torch.as_tensor(op_cost, dtype=torch.float64)
    return float(num_layers * (r.sum() + c.sum()))


def memory_value(edge_logits, op_logits, resample_cost, op_cost, sigma: float) -> torch.Tensor:
    """L_m of Eq. 10: |M_e / M_a - sigma|."""
    m_a = full_memory(edge_logits.shape[0], resample_cost, op_cost)
    return (expected_memory(edge_logits, op_logits, resample_cost, op_cost) / m_a - sigma).abs()


class _ArchLoss:
    kind = "architecture"

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


class memory(_ArchLoss):  # noqa: N801
    """L_m (Eq. 10) with budget sigma (paper: 0.8)."""

    def __init__(self, sigma: float = 0.8):
        if not 0.0 <= sigma <= 1.0:
            raise ValueError(f"sigma must be in [0, 1], got {sigma}")
        self.sigma = float(sigma)

    def __call__(self, supernet) -> torch.Tensor:
        resample_cost, op_cost = supernet.memory_costs()
        value = memory_value(supernet.edge_logits, supernet.op_logits, resample_cost, op_cost, self.sigma)
        return value.to(supernet.edge_logits.dtype)

    def __repr__(self) -> str:
        return f"memory(sigma={self.sigma})"
