"""The DiNTS topology in pure numpy: edges, connection patterns, node sets and membership matrices.

Conventions (one place, used everywhere):

* depth 0 is the finest resolution of the search space, depth D-1 the coarsest;
* edges inside a layer are ordered by (target depth, source depth); for D=4 the (source -> target)
  pairs are 0->0, 1->0, 0->1, 1->1, 2->1, 1->2, 2->2, 3->2, 2->3, 3->3 (E = 3D - 2);
* connection pattern j (0 <= j < M = 2^E - 1) selects edge e iff bit e of (j + 1) is set,
  so the empty pattern is excluded;
* node set a (0 <= a < A = 2^D - 1) contains depth d iff bit d of (a + 1) is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np


def edge_list(depths: int) -> list[tuple[int, int]]:
    """(source, target) pairs ordered by (target, source)."""
    return [(s, t) for t in range(depths) for s in (t - 1, t, t + 1) if 0 <= s < depths]


@dataclass(frozen=True, eq=False)
class Topology:
    depths: int
    source: np.ndarray  # [E] source depth of each edge
    target: np.ndarray  # [E] target depth of each edge
    patterns: np.ndarray  # [M, E] bool, cp_j(e)
    pattern_targets: np.ndarray  # [M] node-set index of the targets of pattern j
    pattern_sources: np.ndarray  # [M] node-set index of the sources of pattern j
    node_sets: np.ndarray  # [A, D] bool, a(d)
    edge_to_target: np.ndarray  # [E, D] bool, edge e ends at depth d
    edge_to_source: np.ndarray  # [E, D] bool, edge e starts at depth d

    @property
    def num_edges(self) -> int:
        return len(self.source)

    @property
    def num_patterns(self) -> int:
        return len(self.patterns)

    @property
    def num_node_sets(self) -> int:
        return len(self.node_sets)

    @property
    def f_in(self) -> np.ndarray:
        """[M, A]: pattern j is in F_in(a), i.e. its set of target nodes is a."""
        return self.pattern_targets[:, None] == np.arange(self.num_node_sets)[None, :]

    @property
    def f_out(self) -> np.ndarray:
        """[M, A]: pattern k is in F_out(a), i.e. its set of source nodes is a."""
        return self.pattern_sources[:, None] == np.arange(self.num_node_sets)[None, :]

    def may_follow(self, j: int, k: int) -> bool:
        """Sec. 3.3.3: pattern k may follow pattern j when the nodes j activates are exactly k's sources."""
        return bool(self.pattern_targets[j] == self.pattern_sources[k])

    def pattern_index(self, edge_mask) -> int:
        bits = np.asarray(edge_mask, dtype=bool)
        code = int((bits.astype(np.int64) << np.arange(len(bits))).sum())
        if code == 0:
            raise ValueError("a connection pattern needs at least one edge")
        return code - 1

    def node_set_of(self, index: int) -> list[int]:
        return [int(d) for d in np.flatnonzero(self.node_sets[index])]


def _node_set_index(member: np.ndarray) -> np.ndarray:
    """[..., D] bool -> node-set index (bitmask - 1); -1 for the empty set."""
    return (member.astype(np.int64) << np.arange(member.shape[-1])).sum(-1) - 1


@cache
def topology(depths: int) -> Topology:
    if depths < 2:
        raise ValueError(f"DiNTS needs at least 2 depths, got {depths}")
    edges = edge_list(depths)
    source = np.array([s for s, _ in edges])
    target = np.array([t for _, t in edges])
    n_edges = len(edges)
    codes = np.arange(1, 2**n_edges, dtype=np.int64)
    patterns = ((codes[:, None] >> np.arange(n_edges)) & 1).astype(bool)
    edge_to_target = target[:, None] == np.arange(depths)[None, :]
    edge_to_source = source[:, None] == np.arange(depths)[None, :]
    # A pattern touches node d as a target iff one of its edges ends at d (boolean matmul).
    touched_targets = (patterns.astype(np.int64) @ edge_to_target.astype(np.int64)) > 0
    touched_sources = (patterns.astype(np.int64) @ edge_to_source.astype(np.int64)) > 0
    set_codes = np.arange(1, 2**depths, dtype=np.int64)
    node_sets = ((set_codes[:, None] >> np.arange(depths)) & 1).astype(bool)
    for arr in (source, target, patterns, node_sets, edge_to_target, edge_to_source):
        arr.setflags(write=False)
    return Topology(
        depths=depths,
        source=source,
        target=target,
        patterns=patterns,
        pattern_targets=_node_set_index(touched_targets),
        pattern_sources=_node_set_index(touched_sources),
        node_sets=node_sets,
        edge_to_target=edge_to_target,
        edge_to_source=edge_to_source,
    )


def is_feasible(topo: Topology, pattern_indices) -> bool:
    """A sequence of patterns (layers 1..L) is feasible when every consecutive pair may follow."""
    idx = np.asarray(pattern_indices)
    return bool(np.all(topo.pattern_targets[idx[:-1]] == topo.pattern_sources[idx[1:]]))
