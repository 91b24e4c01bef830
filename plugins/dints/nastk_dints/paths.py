"""The shortest feasible path through the layered pattern graph (Eq. 4): the core of decoding, also the
cheapest network of the memory model (``nastk_dints.budget``), so it sits below both.

The graph of Fig. 5 is layered: a node is (layer i, pattern j) and an edge joins (i-1, j) to
(i, k) when k may follow j, i.e. targets(j) == sources(k). The shortest source-to-sink path is
therefore a dynamic programme over layers. Predecessors that share a target set are
interchangeable, so for each layer we take the best predecessor per target set (A = 2^D - 1
groups) and each layer costs O(M). This finds exactly the path Dijkstra would, in microseconds
instead of building an (L*M)^2 graph.
"""

from __future__ import annotations

from functools import cache

import numpy as np

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
