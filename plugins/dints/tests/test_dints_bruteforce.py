"""DiNTS formulas checked against plain per-pattern brute force (numpy float64, python loops).

The references below use nothing from the library except ``topology.edge_list`` (the edge order).
Connection patterns, their target/source node sets, feasibility, eta, the node-activation
probabilities, the losses and the shortest feasible path are all recomputed from the definitions of
the paper (Sec. 3.3-3.5, Eq. 2-10, G of Sec. 4.4.2) as read in GUIDE.md:

* pattern j (0 <= j < 2^E - 1) selects edge e iff bit e of j + 1 is set (the library's documented
  indexing; needed only to compare per-pattern quantities);
* node set index a (0 <= a < 2^D - 1) contains depth d iff bit d of a + 1 is set;
* pattern k may follow pattern j iff targets(j) == sources(k); layer 1 is any pattern, the last
  layer has no successor.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from nastk_dints import discretize, losses
from nastk_dints import relaxation as rx
from nastk_dints.topology import edge_list, topology

N_OPS = 5
SEEDS = (0, 1, 2)
SCALES = (1.0, 8.0)  # 8: extreme logits, eta close to one-hot
CASES = [
    (d, n_layers, seed, scale) for d in (2, 3) for n_layers in (2, 3, 4) for seed in SEEDS for scale in SCALES
]
CASE_IDS = [f"D{d}-L{n}-s{s}-x{int(k)}" for d, n, s, k in CASES]


# ---------------------------------------------------------------------------------------------------
# Brute-force reference, written from the definitions
# ---------------------------------------------------------------------------------------------------


class Ref:
    """Patterns and node sets of a D-depth space, enumerated one by one."""

    def __init__(self, depths: int):
        self.depths = depths
        self.edges = edge_list(depths)
        self.num_edges = len(self.edges)
        assert self.num_edges == 3 * depths - 2
        self.patterns = []  # list of tuples of selected edge indices, index j <-> bits of j + 1
        for j in range(2**self.num_edges - 1):
            code = j + 1
            self.patterns.append(tuple(e for e in range(self.num_edges) if (code >> e) & 1))
        self.num_patterns = len(self.patterns)
        self.targets = [frozenset(self.edges[e][1] for e in sel) for sel in self.patterns]
        self.sources = [frozenset(self.edges[e][0] for e in sel) for sel in self.patterns]
        self.node_sets = []  # index a <-> bits of a + 1
        for a in range(2**depths - 1):
            code = a + 1
            self.node_sets.append(frozenset(d for d in range(depths) if (code >> d) & 1))
        # Cross-check the enumeration: every non-empty subset exactly once.
        subsets = {
            frozenset(c) for r in range(1, depths + 1) for c in itertools.combinations(range(depths), r)
        }
        assert set(self.node_sets) == subsets and len(self.node_sets) == len(subsets)
        all_patterns = {
            tuple(e for e, bit in enumerate(bits) if bit)
            for bits in itertools.product((0, 1), repeat=self.num_edges)
            if any(bits)
        }
        assert set(self.patterns) == all_patterns and len(self.patterns) == len(all_patterns)

    def may_follow(self, j: int, k: int) -> bool:
        return self.targets[j] == self.sources[k]

    def follow_matrix(self) -> np.ndarray:
        m = self.num_patterns
        out = np.zeros((m, m), dtype=bool)
        for j in range(m):
            for k in range(m):
                out[j, k] = self.may_follow(j, k)
        return out


_REFS: dict[int, Ref] = {}


def ref(depths: int) -> Ref:
    if depths not in _REFS:
        _REFS[depths] = Ref(depths)
    return _REFS[depths]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bf_eta(edge_logits: np.ndarray, r: Ref) -> np.ndarray:
    """Eq. 2, one pattern at a time: prod_e p^cp (1-p)^(1-cp), normalised over non-empty patterns."""
    n_layers = edge_logits.shape[0]
    eta = np.zeros((n_layers, r.num_patterns))
    for i in range(n_layers):
        weights = []
        for sel in r.patterns:
            w = 1.0
            for e in range(r.num_edges):
                x = float(edge_logits[i, e])
                w *= sigmoid(x) if e in sel else sigmoid(-x)
            weights.append(w)
        total = sum(weights)
        for j, w in enumerate(weights):
            eta[i, j] = w / total
    return eta


def bf_alpha(op_logits: np.ndarray) -> np.ndarray:
    out = np.zeros_like(op_logits, dtype=np.float64)
    n_layers, n_edges, n_ops = op_logits.shape
    for i in range(n_layers):
        for e in range(n_edges):
            top = max(op_logits[i, e])
            w = [math.exp(op_logits[i, e, n] - top) for n in range(n_ops)]
            for n in range(n_ops):
                out[i, e, n] = w[n] / sum(w)
    return out


def clamped_log(x: float) -> float:
    return max(math.log(x), -100.0) if x > 0 else -100.0


def bf_node_set_probs(eta_layer: np.ndarray, node_sets_of_patterns, r: Ref) -> list[float]:
    """P(node set of the chosen pattern == a) for every a, summing eta over the patterns."""
    out = []
    for a in r.node_sets:
        out.append(sum(eta_layer[j] for j in range(r.num_patterns) if node_sets_of_patterns[j] == a))
    return out


def bf_topology_loss(eta: np.ndarray, r: Ref) -> tuple[float, float]:
    """Eq. 6-7: BCE(target p_in^i(a), prediction p_out^i(a)), summed over i = 1..L-1 and a.

    Returns (loss, error budget). 1 - p_out is summed over the complement here, so it is exact even
    when p_out is within rounding of 1; the library does the same (logsumexp over the other node
    sets), so the budget is only float64 rounding of the sums.
    """
    loss, budget = 0.0, 0.0
    for i in range(eta.shape[0] - 1):
        for a in r.node_sets:
            p_in = sum(eta[i, j] for j in range(r.num_patterns) if r.targets[j] == a)
            p_out = sum(eta[i + 1, k] for k in range(r.num_patterns) if r.sources[k] == a)
            not_out = sum(eta[i + 1, k] for k in range(r.num_patterns) if r.sources[k] != a)
            # Keep the reference out of the regime where 1 - p_out is below float64 resolution.
            assert not_out > 1e-14 and p_out > 1e-300
            loss -= p_in * clamped_log(p_out) + (1.0 - p_in) * clamped_log(not_out)
            budget += 1e-15 * (1.0 + abs(clamped_log(not_out)))
    return loss, budget


def bf_expected_memory(eta, alpha, resample, op_cost, r: Ref) -> float:
    """Eq. 8 literally: sum_i sum_j eta_j^i sum_e cp_j(e) (r_e + sum_n alpha_n^{i,e} c_{e,n})."""
    total = 0.0
    for i in range(eta.shape[0]):
        for j, sel in enumerate(r.patterns):
            cell = 0.0
            for e in sel:
                cell += resample[e] + sum(alpha[i, e, n] * op_cost[e, n] for n in range(op_cost.shape[1]))
            total += eta[i, j] * cell
    return total


def bf_largest_memory(n_layers, resample, op_cost, r: Ref) -> float:
    """M_a as GUIDE.md reads Eq. 9: the memory of the costliest network the space can build, found by
    trying every pattern with every op assignment in each layer (layers add up independently, and the
    pattern with every edge may follow itself, so the costliest sequence is feasible)."""
    n_ops = op_cost.shape[1]
    best_layer = 0.0
    for sel in range(r.num_patterns):
        edges = r.patterns[sel]
        for assignment in itertools.product(range(n_ops), repeat=len(edges)):
            ops = dict(zip(edges, assignment))
            best_layer = max(best_layer, sum(resample[e] + op_cost[e, ops[e]] for e in edges))
    return n_layers * best_layer


def bf_paths_loop(cost: np.ndarray, r: Ref):
    """Every pattern sequence, one by one: sorted list of (total cost, sequence) of feasible ones."""
    n_layers, m = cost.shape
    found = []
    for seq in itertools.product(range(m), repeat=n_layers):
        if all(r.may_follow(seq[i], seq[i + 1]) for i in range(n_layers - 1)):
            found.append((sum(cost[i, seq[i]] for i in range(n_layers)), seq))
    found.sort()
    return found


def bf_paths_broadcast(cost: np.ndarray, r: Ref):
    """Every pattern sequence at once (an M^L array, not a DP): (best, second best, best sequence)."""
    n_layers, m = cost.shape
    follow = r.follow_matrix()
    total = cost[0].copy()
    valid = np.ones(m, dtype=bool)
    for i in range(1, n_layers):
        total = total[..., None] + cost[i].reshape((1,) * i + (m,))
        valid = valid[..., None] & follow.reshape((1,) * (i - 1) + (m, m))
    flat = np.where(valid, total, np.inf).ravel()
    two = np.partition(flat, 1)[:2]
    seq = tuple(int(v) for v in np.unravel_index(int(flat.argmin()), total.shape))
    return float(two[0]), float(two[1]), seq


def make_logits(depths, n_layers, seed, scale, n_ops=N_OPS):
    rng = np.random.default_rng(1000 * seed + 10 * depths + n_layers)
    n_edges = 3 * depths - 2
    edge = scale * rng.standard_normal((n_layers, n_edges))
    ops = scale * rng.standard_normal((n_layers, n_edges, n_ops))
    return edge, ops


def t64(x, grad=False) -> torch.Tensor:
    return torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=grad)


# Hand-made corners: all edges nearly off (Z tiny), all nearly on, saturated mixtures.
CORNERS = {
    "all-off": lambda shape: np.full(shape, -12.0),
    "all-on": lambda shape: np.full(shape, 12.0),
    "zero": lambda shape: np.zeros(shape),
    "mixed-25": lambda shape: 25.0 * np.where(np.arange(np.prod(shape)).reshape(shape) % 3 == 0, 1.0, -1.0),
}
CORNER_CASES = [(d, n, name) for d in (2, 3) for n in (2, 3) for name in CORNERS]
CORNER_IDS = [f"D{d}-L{n}-{name}" for d, n, name in CORNER_CASES]


def all_edge_logits():
    for d, n, seed, scale in CASES:
        yield d, make_logits(d, n, seed, scale)[0]
    for d, n, name in CORNER_CASES:
        yield d, CORNERS[name]((n, 3 * d - 2))


ALL_IDS = CASE_IDS + CORNER_IDS


# ---------------------------------------------------------------------------------------------------
# 0. The topology tables agree with the enumeration from the definitions
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depths", [2, 3, 4])
def test_topology_tables_match_definitions(depths):
    r = ref(depths)
    topo = topology(depths)
    assert topo.num_edges == r.num_edges and topo.num_patterns == r.num_patterns == 2**r.num_edges - 1
    assert topo.num_node_sets == len(r.node_sets) == 2**depths - 1
    for j, sel in enumerate(r.patterns):
        assert tuple(np.flatnonzero(topo.patterns[j])) == sel
        assert r.node_sets[topo.pattern_targets[j]] == r.targets[j]
        assert r.node_sets[topo.pattern_sources[j]] == r.sources[j]
        assert topo.pattern_index([e in sel for e in range(r.num_edges)]) == j
    for a, members in enumerate(r.node_sets):
        assert set(np.flatnonzero(topo.node_sets[a])) == members
        assert topo.node_set_of(a) == sorted(members)
    f_in, f_out = topo.f_in, topo.f_out
    for j in range(r.num_patterns):
        for a, members in enumerate(r.node_sets):
            assert f_in[j, a] == (r.targets[j] == members)
            assert f_out[j, a] == (r.sources[j] == members)
    if depths <= 3:
        np.testing.assert_array_equal(
            np.array([[topo.may_follow(j, k) for k in range(r.num_patterns)] for j in range(r.num_patterns)]),
            r.follow_matrix(),
        )


# ---------------------------------------------------------------------------------------------------
# 1. eta (Eq. 2) and edge marginals
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("depths", "edge"), list(all_edge_logits()), ids=ALL_IDS)
def test_eta_and_marginals(depths, edge):
    r = ref(depths)
    topo = topology(depths)
    eta_ref = bf_eta(edge, r)
    log_eta = rx.log_eta(t64(edge), topo).numpy()
    eta = np.exp(log_eta)
    assert log_eta.shape == (edge.shape[0], r.num_patterns)
    np.testing.assert_allclose(eta.sum(1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(eta, eta_ref, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(log_eta, np.log(eta_ref), rtol=1e-12, atol=1e-10)

    marg_ref = np.zeros_like(edge)
    for i in range(edge.shape[0]):
        for e in range(r.num_edges):
            marg_ref[i, e] = sum(eta_ref[i, j] for j, sel in enumerate(r.patterns) if e in sel)
    marg = rx.edge_marginals(t64(edge)).numpy()
    np.testing.assert_allclose(marg, marg_ref, rtol=1e-10, atol=1e-300)


# ---------------------------------------------------------------------------------------------------
# 2. Entropies (Eq. 5)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("depths", "edge"), list(all_edge_logits()), ids=ALL_IDS)
def test_eta_entropy(depths, edge):
    r = ref(depths)
    eta_ref = bf_eta(edge, r)
    n_layers = edge.shape[0]
    total = 0.0
    for i in range(n_layers):
        for j in range(r.num_patterns):
            if eta_ref[i, j] > 0:
                total += eta_ref[i, j] * math.log(eta_ref[i, j])
    want = -total / (n_layers * r.num_patterns)
    got = float(rx.eta_entropy(t64(edge), r.num_patterns))
    assert got == pytest.approx(want, rel=1e-9, abs=1e-13)


@pytest.mark.parametrize(("depths", "n_layers", "seed", "scale"), CASES, ids=CASE_IDS)
def test_alpha_entropy(depths, n_layers, seed, scale):
    _, ops = make_logits(depths, n_layers, seed, scale)
    alpha = bf_alpha(ops)
    n_l, n_e, n_n = ops.shape
    total = 0.0
    for i in range(n_l):
        for e in range(n_e):
            for n in range(n_n):
                if alpha[i, e, n] > 0:
                    total += alpha[i, e, n] * math.log(alpha[i, e, n])
    want = -total / (n_l * n_e * n_n)
    assert float(rx.alpha_entropy(t64(ops))) == pytest.approx(want, rel=1e-10, abs=1e-14)
    np.testing.assert_allclose(rx.op_weights(t64(ops)).numpy(), alpha, rtol=1e-12, atol=1e-300)


# ---------------------------------------------------------------------------------------------------
# 3. Topology loss (Eq. 6-7)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("depths", "edge"), list(all_edge_logits()), ids=ALL_IDS)
def test_node_set_probabilities(depths, edge):
    """p_in / p_out of Eq. 6 per node set a, before they enter the BCE."""
    r = ref(depths)
    topo = topology(depths)
    eta_ref = bf_eta(edge, r)
    log_in = rx.node_set_log_probs(t64(edge), topo.edge_to_target, topo.node_sets).numpy()
    log_out = rx.node_set_log_probs(t64(edge), topo.edge_to_source, topo.node_sets).numpy()
    for i in range(edge.shape[0]):
        p_in = bf_node_set_probs(eta_ref[i], r.targets, r)
        p_out = bf_node_set_probs(eta_ref[i], r.sources, r)
        assert sum(p_in) == pytest.approx(1.0, abs=1e-12)
        assert sum(p_out) == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(np.exp(log_in[i]), p_in, rtol=1e-10, atol=1e-300)
        np.testing.assert_allclose(np.exp(log_out[i]), p_out, rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize(("depths", "edge"), list(all_edge_logits()), ids=ALL_IDS)
def test_topology_value(depths, edge):
    r = ref(depths)
    want, budget = bf_topology_loss(bf_eta(edge, r), r)
    assert budget < 1e-4  # the check below stays meaningful
    got = float(losses.topology_value(t64(edge), topology(depths)))
    assert got == pytest.approx(want, rel=1e-10, abs=1e-12 + budget)


def test_topology_value_single_layer_is_zero():
    for depths in (2, 3):
        edge = np.random.default_rng(depths).standard_normal((1, 3 * depths - 2))
        assert float(losses.topology_value(t64(edge), topology(depths))) == 0.0


# ---------------------------------------------------------------------------------------------------
# 4. Memory (Eq. 8-10)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("depths", "n_layers", "seed", "scale"), CASES, ids=CASE_IDS)
def test_memory(depths, n_layers, seed, scale):
    r = ref(depths)
    edge, ops = make_logits(depths, n_layers, seed, scale)
    rng = np.random.default_rng(seed + 77)
    resample = rng.uniform(0.1, 2.0, r.num_edges)
    op_cost = rng.uniform(0.1, 3.0, (r.num_edges, N_OPS))
    eta = bf_eta(edge, r)
    alpha = bf_alpha(ops)

    m_e = bf_expected_memory(eta, alpha, resample, op_cost, r)
    got_e = float(losses.expected_memory(t64(edge), t64(ops), resample, op_cost))
    assert got_e == pytest.approx(m_e, rel=1e-10)

    m_a = losses.largest_memory(n_layers, resample, op_cost)
    if depths == 2:  # every op assignment of every pattern: 15 * 5^4 per layer
        assert m_a == pytest.approx(bf_largest_memory(n_layers, resample, op_cost, r), rel=1e-12)
    # Eq. 9 as a constant: the costliest network, so the ratio is a fraction of what can be built.
    assert 0.0 < m_e < m_a

    for sigma in (0.0, 0.2, 0.5, 0.8, 1.0):
        got = float(losses.memory_value(t64(edge), t64(ops), resample, op_cost, sigma))
        assert got == pytest.approx(abs(m_e / m_a - sigma), rel=1e-10, abs=1e-14)


# ---------------------------------------------------------------------------------------------------
# 5. Discretization (Eq. 3-4) and the gap G (Sec. 4.4.2)
# ---------------------------------------------------------------------------------------------------

DECODE_CASES = [c for c in CASES if c[0] == 2 or c[1] <= 3]
DECODE_IDS = [i for c, i in zip(CASES, CASE_IDS) if c[0] == 2 or c[1] <= 3]


def test_broadcast_reference_matches_loop_reference():
    """The two exhaustive references agree (so the broadcast one can stand in for D=3, L=3)."""
    for depths, n_layers in ((2, 2), (2, 3), (3, 2)):
        r = ref(depths)
        for seed in SEEDS:
            edge, _ = make_logits(depths, n_layers, seed, 1.0)
            cost = -np.log(bf_eta(edge, r))
            found = bf_paths_loop(cost, r)
            best, second, seq = bf_paths_broadcast(cost, r)
            assert best == pytest.approx(found[0][0], abs=1e-12)
            assert second == pytest.approx(found[1][0], abs=1e-12)
            if second - best > 1e-9:
                assert seq == found[0][1]


@pytest.mark.parametrize(("depths", "n_layers", "seed", "scale"), DECODE_CASES, ids=DECODE_IDS)
def test_decode_is_exhaustive_minimum(depths, n_layers, seed, scale):
    r = ref(depths)
    edge, ops = make_logits(depths, n_layers, seed, scale)
    eta = bf_eta(edge, r)
    cost = -np.log(eta)
    if r.num_patterns**n_layers <= 60_000:
        found = bf_paths_loop(cost, r)
        best, best_seq = found[0]
        second = found[1][0] if len(found) > 1 else math.inf
    else:
        best, second, best_seq = bf_paths_broadcast(cost, r)

    arch = discretize.decode(edge, ops)
    path = [int(j) for j in arch.pattern_indices]
    assert arch.depths == depths and arch.layers == n_layers
    assert arch.is_feasible()
    assert all(r.may_follow(path[i], path[i + 1]) for i in range(n_layers - 1))
    # The decoded path's own cost, by brute force, is the minimum; so is the reported cost.
    assert sum(cost[i, path[i]] for i in range(n_layers)) == pytest.approx(best, abs=1e-9)
    assert arch.path_cost == pytest.approx(best, abs=1e-9)
    unique = second - best > 1e-7
    if unique:
        assert tuple(path) == best_seq
    # Edge masks spell out the patterns; ops are the per-cell argmax of alpha.
    for i, j in enumerate(path):
        assert tuple(np.flatnonzero(arch.edge_mask[i])) == r.patterns[j]
    np.testing.assert_array_equal(arch.op_index, ops.argmax(-1))

    # G: edges that differ between the per-layer argmax of eta (C_max) and the decoded path (C_top).
    top_seq = best_seq if unique else tuple(path)
    g = 0
    for i in range(n_layers):
        c_max = set(r.patterns[int(np.argmax(eta[i]))])
        c_top = set(r.patterns[top_seq[i]])
        g += len(c_max ^ c_top)
    assert arch.gap == g
    assert discretize.gap(edge) == g
    # If the per-layer argmax happens to be feasible it is the optimum and G = 0.
    argmax_seq = [int(np.argmax(eta[i])) for i in range(n_layers)]
    if all(r.may_follow(argmax_seq[i], argmax_seq[i + 1]) for i in range(n_layers - 1)):
        assert g == 0


def test_decode_gap_positive_when_argmax_infeasible():
    """Layer 1 wants only 0->0 (targets {0}), layer 2 wants only 1->1 (sources {1}): infeasible."""
    r = ref(2)
    edges = r.edges
    edge = np.full((2, 4), -6.0)
    edge[0, edges.index((0, 0))] = 6.0
    edge[1, edges.index((1, 1))] = 6.0
    ops = np.zeros((2, 4, N_OPS))
    eta = bf_eta(edge, r)
    cost = -np.log(eta)
    found = bf_paths_loop(cost, r)
    arch = discretize.decode(edge, ops)
    assert arch.is_feasible()
    assert tuple(int(j) for j in arch.pattern_indices) == found[0][1]
    assert arch.path_cost == pytest.approx(found[0][0], abs=1e-9)
    c_top = [set(r.patterns[j]) for j in found[0][1]]
    c_max = [set(r.patterns[int(np.argmax(eta[i]))]) for i in range(2)]
    g = sum(len(a ^ b) for a, b in zip(c_max, c_top))
    assert g > 0
    assert arch.gap == g == discretize.gap(edge)


def test_decode_input_types():
    edge, ops = make_logits(3, 3, 5, 2.0)
    reference = discretize.decode(edge, ops)
    variants = [
        (edge.astype(np.float32), ops.astype(np.float32)),
        (torch.tensor(edge), torch.tensor(ops)),
        (torch.tensor(edge, dtype=torch.float32), torch.tensor(ops, dtype=torch.float32)),
        (torch.tensor(edge, requires_grad=True), torch.tensor(ops, requires_grad=True)),
        (edge.tolist(), ops.tolist()),
    ]
    for e, o in variants:
        arch = discretize.decode(e, o)
        np.testing.assert_array_equal(arch.edge_mask, reference.edge_mask)
        np.testing.assert_array_equal(arch.op_index, reference.op_index)
        assert arch.gap == reference.gap
        assert arch.is_feasible()
    assert reference.op_names == ["skip", "conv3x3x3", "p3d_3x3x1", "p3d_3x1x3", "p3d_1x3x3"]
    arch = discretize.decode(edge, ops[..., :3])
    assert arch.op_names == ["op0", "op1", "op2"]


@pytest.mark.parametrize(
    ("edge_shape", "ops_shape"),
    [
        ((4,), (1, 4, 5)),  # edge logits not 2-D
        ((2, 3, 4), (2, 4, 5)),  # edge logits 3-D
        ((2, 5), (2, 5, 5)),  # E = 5 is not 3D - 2
        ((2, 1), (2, 1, 5)),  # D = 1
        ((2, 0), (2, 0, 5)),  # no edges
        ((2, 4), (3, 4, 5)),  # op logits: wrong L
        ((2, 4), (2, 7, 5)),  # op logits: wrong E
        ((2, 4), (2, 4)),  # op logits not 3-D
        ((2, 4), (2, 4, 5, 1)),  # op logits 4-D
    ],
)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_decode_rejects_bad_shapes(edge_shape, ops_shape, kind):
    edge, ops = np.zeros(edge_shape), np.zeros(ops_shape)
    if kind == "torch":
        edge, ops = torch.zeros(edge_shape), torch.zeros(ops_shape)
    with pytest.raises(ValueError):
        discretize.decode(edge, ops)


def test_decode_rejects_non_finite_and_bad_op_names():
    edge, ops = make_logits(2, 2, 0, 1.0)
    bad = edge.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        discretize.decode(bad, ops)
    bad_ops = ops.copy()
    bad_ops[1, 2, 3] = np.inf
    with pytest.raises(ValueError):
        discretize.decode(edge, bad_ops)
    with pytest.raises(ValueError):
        discretize.decode(edge, ops, op_names=["a", "b"])


# ---------------------------------------------------------------------------------------------------
# 6. Gradients
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("depths", "n_layers"), [(2, 2), (2, 3), (3, 2)])
def test_gradcheck_topology_and_entropy(depths, n_layers):
    topo = topology(depths)
    for seed in (0, 1):
        edge, _ = make_logits(depths, n_layers, seed, 1.5)
        x = t64(edge, grad=True)
        assert torch.autograd.gradcheck(lambda v: losses.topology_value(v, topo), (x,))
        assert torch.autograd.gradcheck(lambda v: rx.eta_entropy(v, topo.num_patterns), (x,))


@pytest.mark.parametrize(("depths", "n_layers"), [(2, 2), (3, 2)])
def test_gradcheck_memory(depths, n_layers):
    rng = np.random.default_rng(3)
    n_edges = 3 * depths - 2
    resample = rng.uniform(0.1, 2.0, n_edges)
    op_cost = rng.uniform(0.1, 3.0, (n_edges, 3))
    edge, ops = make_logits(depths, n_layers, 4, 1.0, n_ops=3)
    x, o = t64(edge, grad=True), t64(ops, grad=True)
    with torch.no_grad():
        m_e = float(losses.expected_memory(x, o, resample, op_cost))
    ratio = m_e / losses.largest_memory(n_layers, resample, op_cost)
    # Keep away from the kink of |.| at M_e / M_a = sigma.
    for sigma in (0.0, 1.0, ratio - 0.1 if ratio > 0.15 else ratio + 0.1):
        assert abs(ratio - sigma) > 0.05
        assert torch.autograd.gradcheck(
            lambda v, w, s=sigma: losses.memory_value(v, w, resample, op_cost, s), (x, o)
        )
