"""Topology-guaranteed discretization (Eq. 3-4) and the gap indicator G (Sec. 4.4.2).

The graph of Fig. 5 is layered: a node is (layer i, pattern j) and an edge joins (i-1, j) to
(i, k) when k may follow j, i.e. targets(j) == sources(k). The shortest source-to-sink path is
therefore a dynamic programme over layers. Predecessors that share a target set are
interchangeable, so for each layer we take the best predecessor per target set (A = 2^D - 1
groups) and each layer costs O(M). This finds exactly the path Dijkstra would, in microseconds
instead of building an (L*M)^2 graph.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import torch

from nastk_dints import relaxation as rx
from nastk_dints.architecture import PAPER_OPS, Architecture
from nastk_dints.topology import topology


@cache
def _groups_by_target(depths: int) -> np.ndarray:
    """[A, K] pattern indices grouped by target set, padded with M (points at a +inf slot)."""
    topo = topology(depths)
    m = topo.num_patterns
    members = [np.flatnonzero(topo.pattern_targets == a) for a in range(topo.num_node_sets)]
    width = max(len(g) for g in members)
    out = np.full((len(members), width), m, dtype=np.int64)
    for a, g in enumerate(members):
        out[a, : len(g)] = g
    out.setflags(write=False)
    return out


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def pattern_costs(edge_logits, depths: int) -> np.ndarray:
    """[L, M]: -log eta_j^i (Eq. 4's per-layer cost)."""
    topo = topology(depths)
    with torch.no_grad():
        return -rx.log_eta(torch.from_numpy(_as_numpy(edge_logits)), topo).numpy()


def shortest_feasible_path(cost: np.ndarray, depths: int) -> tuple[np.ndarray, float]:
    """Exact minimiser of sum_i cost[i, I(i)] over feasible pattern sequences I.

    Layer 1 may take any pattern (its sources pick the input scales) and the last layer is free.
    Ties go to the lowest pattern index, deterministically.
    """
    topo = topology(depths)
    groups = _groups_by_target(depths)
    n_layers, m = cost.shape
    best = cost[0].copy()
    back = np.empty((n_layers, m), dtype=np.int64)
    rows = np.arange(groups.shape[0])
    padded = np.empty(m + 1)
    padded[m] = np.inf
    for i in range(1, n_layers):
        padded[:m] = best
        vals = padded[groups]  # [A, K]
        arg = vals.argmin(1)
        group_best = vals[rows, arg]
        group_arg = groups[rows, arg]
        best = cost[i] + group_best[topo.pattern_sources]
        back[i] = group_arg[topo.pattern_sources]
    path = np.empty(n_layers, dtype=np.int64)
    path[-1] = int(best.argmin())
    total = float(best[path[-1]])
    for i in range(n_layers - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    return path, total


def decode(
    edge_logits,
    op_logits,
    *,
    op_names: list[str] | None = None,
    space_params: dict[str, Any] | None = None,
) -> Architecture:
    """Decode searched logits into a feasible architecture.

    ``edge_logits`` [L, E] are before the sigmoid, ``op_logits`` [L, E, N] before the softmax;
    numpy arrays or tensors. D is read off E = 3D - 2.
    """
    edges = _as_numpy(edge_logits)
    ops = _as_numpy(op_logits)
    if edges.ndim != 2:
        raise ValueError(f"edge_logits must be [L, E], got shape {list(edges.shape)}")
    n_layers, n_edges = edges.shape
    if (n_edges + 2) % 3 or n_edges < 4:
        raise ValueError(f"edge_logits has E={n_edges} edges per layer; DiNTS needs E = 3D - 2 with D >= 2")
    depths = (n_edges + 2) // 3
    if ops.ndim != 3 or ops.shape[:2] != (n_layers, n_edges):
        raise ValueError(f"op_logits must be [{n_layers}, {n_edges}, N], got shape {list(ops.shape)}")
    if not np.isfinite(edges).all() or not np.isfinite(ops).all():
        raise ValueError("logits contain NaN or Inf")
    if op_names is None:
        op_names = PAPER_OPS if ops.shape[2] == len(PAPER_OPS) else [f"op{n}" for n in range(ops.shape[2])]
    if len(op_names) != ops.shape[2]:
        raise ValueError(f"{len(op_names)} op names for N={ops.shape[2]} ops")
    topo = topology(depths)
    cost = pattern_costs(edges, depths)
    path, total = shortest_feasible_path(cost, depths)
    c_top = topo.patterns[path]
    c_max = topo.patterns[cost.argmin(1)]
    params = {**(space_params or {}), "layers": n_layers, "depths": depths}  # the arrays decide L and D
    return Architecture(
        depths=depths,
        edge_mask=c_top,
        op_index=ops.argmax(-1),
        op_names=list(op_names),
        space={"name": "dints", "params": params},
        path_cost=total,
        gap=int(np.abs(c_max.astype(int) - c_top.astype(int)).sum()),
    )


def gap(edge_logits) -> int:
    """G of Sec. 4.4.2: edges that differ between the per-layer argmax C_max and the decoded C_top."""
    edges = _as_numpy(edge_logits)
    depths = (edges.shape[1] + 2) // 3
    topo = topology(depths)
    cost = pattern_costs(edges, depths)
    path, _ = shortest_feasible_path(cost, depths)
    return int(np.abs(topo.patterns[cost.argmin(1)].astype(int) - topo.patterns[path].astype(int)).sum())


class TopologyDiscretizer:
    """``nastk.discretizers`` entry ``dints``."""

    def __call__(self, arch_params: dict[str, np.ndarray], space_params: dict[str, Any], op_names: list[str]):
        return decode(
            arch_params["edge_logits"], arch_params["op_logits"], op_names=op_names, space_params=space_params
        )


DISCRETIZER = TopologyDiscretizer()
