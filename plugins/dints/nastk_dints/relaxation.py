"""Continuous relaxation of DiNTS (Eq. 1-2, 5): from logits to eta, marginals and entropies.

Everything here is a small pure function of the logits, computed in float64 (the tensors are
[L, E] or [L, E, N], so this costs nothing) and vectorised over layers. No function loops over the
M = 2^E - 1 connection patterns except ``log_eta``, which materialises them for decoding and tests.

The key identity: eta (Eq. 2) is the product distribution of independent edges conditioned on at
least one edge, so with Z = 1 - prod_e (1 - p_e):

* eta_j = prod_e p_e^cp_j(e) (1 - p_e)^(1 - cp_j(e)) / Z
* P(edge e selected) = sum_{j: cp_j(e)=1} eta_j = p_e / Z
* Every edge has one source and one target depth, so the edges grouped by target (or by source)
  are disjoint and the node-activation probabilities factorise over depths.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nastk_dints.topology import Topology


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x).to(torch.float64)


def _const(array, device) -> torch.Tensor:
    """A float64 copy of a (read-only) numpy membership matrix on ``device``."""
    return torch.tensor(np.asarray(array, dtype=np.float64), device=device)


def edge_log_probs(edge_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_e, log(1 - p_e)) with p_e = sigmoid(logit), exact for extreme logits."""
    x = _f64(edge_logits)
    return F.logsigmoid(x), F.logsigmoid(-x)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0."""
    return torch.log(-torch.expm1(x))


def log_normaliser(edge_logits: torch.Tensor) -> torch.Tensor:
    """[L]: log Z with Z = 1 - prod_e (1 - p_e), the mass of the non-empty patterns."""
    _, log_q = edge_log_probs(edge_logits)
    return _log1mexp(log_q.sum(-1))


def edge_marginals(edge_logits: torch.Tensor) -> torch.Tensor:
    """[L, E]: P(edge e selected) = sum of eta over the patterns containing e = p_e / Z."""
    log_p, _ = edge_log_probs(edge_logits)
    return torch.exp(log_p - log_normaliser(edge_logits)[..., None])


def log_eta(edge_logits: torch.Tensor, topo: Topology) -> torch.Tensor:
    """[L, M]: log eta_j^i of Eq. 2, over every non-empty pattern (dense: for decoding and tests)."""
    log_p, log_q = edge_log_probs(edge_logits)
    cp = _const(topo.patterns, log_p.device)
    return (log_p - log_q) @ cp.T + log_q.sum(-1, keepdim=True) - log_normaliser(edge_logits)[..., None]


def eta_entropy(edge_logits: torch.Tensor, num_patterns: int) -> torch.Tensor:
    """L_eta of Eq. 5: -1/(L*M) sum_i sum_j eta log eta, in closed form.

    With s = log prod_e (1 - p_e) and H_b the binary entropy,
    sum_{j non-empty} q_j log q_j = -sum_e H_b(p_e) - e^s s, hence
    H(eta) = (sum_e H_b(p_e) + e^s s) / Z + log Z.
    """
    x = _f64(edge_logits)
    log_p, log_q = edge_log_probs(x)
    p = torch.sigmoid(x)
    binary_entropy = -(p * log_p + (1 - p) * log_q)
    s = log_q.sum(-1)
    log_z = _log1mexp(s)
    per_layer = (binary_entropy.sum(-1) + torch.exp(s) * s) * torch.exp(-log_z) + log_z
    return per_layer.sum() / (x.shape[0] * num_patterns)


def op_weights(op_logits: torch.Tensor) -> torch.Tensor:
    """[L, E, N]: alpha = softmax over the ops of each cell."""
    return torch.softmax(op_logits, dim=-1)


def alpha_entropy(op_logits: torch.Tensor) -> torch.Tensor:
    """L_alpha of Eq. 5: -1/(L*E*N) sum alpha log alpha."""
    log_alpha = torch.log_softmax(_f64(op_logits), dim=-1)
    return -(log_alpha.exp() * log_alpha).sum() / op_logits.numel()


def node_set_log_probs(edge_logits: torch.Tensor, membership, node_sets) -> torch.Tensor:
    """[L, A]: log P(the set of nodes touched by the selected pattern = a), under eta.

    ``membership`` [E, D] groups edges by the node they touch (edge_to_target gives the targets,
    i.e. F_in of Eq. 6; edge_to_source gives the sources, i.e. F_out). Because the groups are
    disjoint, node d is touched independently with probability 1 - prod_{e in d}(1 - p_e).
    """
    _, log_q = edge_log_probs(edge_logits)
    member = _const(membership, log_q.device)
    sets = _const(node_sets, log_q.device)
    log_untouched = log_q @ member  # [L, D]
    log_touched = _log1mexp(log_untouched)
    joint = log_touched @ sets.T + log_untouched @ (1 - sets).T  # [L, A]
    return joint - log_normaliser(edge_logits)[..., None]
