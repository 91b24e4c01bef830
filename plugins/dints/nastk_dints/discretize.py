"""Topology-guaranteed discretization (Eq. 3-4) and the gap indicator G (Sec. 4.4.2).

The shortest feasible path through the layered graph of Fig. 5 is :mod:`nastk_dints.paths`; this module
turns searched logits into its costs and the path into an architecture, also under a memory budget
and for the k best.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nastk.plugin import DataError, MemoryBudget
from nastk_dints import relaxation as rx
from nastk_dints.architecture import PAPER_OPS, Architecture
from nastk_dints.paths import shortest_feasible_path
from nastk_dints.topology import topology


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def pattern_costs(edge_logits, depths: int) -> np.ndarray:
    """[L, M]: -log eta_j^i (Eq. 4's per-layer cost)."""
    topo = topology(depths)
    with torch.no_grad():
        return -rx.log_eta(torch.from_numpy(_as_numpy(edge_logits)), topo).numpy()


def _checked(edge_logits, op_logits, op_names) -> tuple[np.ndarray, np.ndarray, int, list[str]]:
    edges = _as_numpy(edge_logits)
    ops = _as_numpy(op_logits)
    if edges.ndim != 2:
        raise ValueError(f"edge_logits must be [L, E], got shape {list(edges.shape)}")
    n_layers, n_edges = edges.shape
    if (n_edges + 2) % 3 or n_edges < 4:
        raise ValueError(f"edge_logits has E={n_edges} edges per layer; DiNTS needs E = 3D - 2 with D >= 2")
    if ops.ndim != 3 or ops.shape[:2] != (n_layers, n_edges):
        raise ValueError(f"op_logits must be [{n_layers}, {n_edges}, N], got shape {list(ops.shape)}")
    if not np.isfinite(edges).all() or not np.isfinite(ops).all():
        raise ValueError("logits contain NaN or Inf")
    if op_names is None:
        op_names = PAPER_OPS if ops.shape[2] == len(PAPER_OPS) else [f"op{n}" for n in range(ops.shape[2])]
    if len(op_names) != ops.shape[2]:
        raise ValueError(f"{len(op_names)} op names for N={ops.shape[2]} ops")
    return edges, ops, (n_edges + 2) // 3, list(op_names)


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
    return decode_best(edge_logits, op_logits, op_names=op_names, space_params=space_params)[0]


def decode_best(
    edge_logits,
    op_logits,
    *,
    k: int = 1,
    op_names: list[str] | None = None,
    space_params: dict[str, Any] | None = None,
    budget: MemoryBudget | None = None,
    ops: dict[str, Any] | None = None,
) -> list[Architecture]:
    """The k most likely distinct feasible architectures (Eq. 4), best first; with a ``budget``, only
    those whose estimated training memory at the budget's setting fits it.

    Each edge keeps its most likely op (argmax alpha, as in the paper), so architectures differ in
    topology. ``ops`` maps op names to their builders (for the memory estimate; default: the
    registry). Raises DataError when nothing fits the budget, naming the smallest that would.
    """
    edges, op_arr, depths, op_names = _checked(edge_logits, op_logits, op_names)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_layers = len(edges)
    topo = topology(depths)
    cost = pattern_costs(edges, depths)
    op_index = op_arr.argmax(-1)
    params = {**(space_params or {}), "layers": n_layers, "depths": depths}  # the arrays decide L and D
    model = None
    if budget is None:
        mem, limit = np.zeros_like(cost), np.inf
    else:
        from nastk.plugin import format_gb, load_ops
        from nastk_dints.budget import memory_model

        builders = ops if ops is not None else load_ops(op_names)
        model = memory_model(depths, params.get("filters", 16), builders, budget.setting)
        mem, limit = model.pattern_bytes(op_index), budget.usable_bytes
    found = best_paths(cost, mem, limit, depths, k)
    if not found:
        smallest, _ = shortest_feasible_path(mem, depths)
        need = budget.required_gb(float(mem[np.arange(n_layers), smallest].sum()))
        raise DataError(
            f"no feasible architecture fits {budget.gb:g} GB at {budget.setting.describe()}: with the "
            f"searched ops the smallest needs {format_gb(need)} GB"
        )
    c_max = topo.patterns[cost.argmin(1)]
    out = []
    for rank, (path, total, _) in enumerate(found, 1):
        c_top = topo.patterns[path]
        arch = Architecture(
            depths=depths,
            edge_mask=c_top,
            op_index=op_index,
            op_names=list(op_names),
            space={"name": "dints", "params": params},
            path_cost=total,
            gap=int(np.abs(c_max.astype(int) - c_top.astype(int)).sum()),
        )
        if k > 1:
            arch.extra["rank"] = rank
        if model is not None:
            nbytes = model.network(arch.edge_mask, arch.op_index)["total"]
            arch.extra["memory"] = {
                "budget_gb": budget.gb,
                "estimated_gb": round(budget.required_gb(nbytes), 4),
                "estimated_bytes": int(round(nbytes)),
                "margin": budget.margin,
                "reserve_gb": budget.reserve_gb,
                "setting": budget.setting.describe(),
            }
        out.append(arch)
    return out


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

    arrays = ("edge_logits", "op_logits")  # what Supernet.arch_parameters_numpy saves

    def check_arrays(self, arrays: dict[str, np.ndarray], op_names: list[str]) -> dict[str, Any]:
        """Raise DataError for a missing array or an op count that ``op_names`` does not match; the
        number of layers is the arrays' (a bare .npz need not match the spec's)."""
        for key in self.arrays:
            if key not in arrays:
                raise DataError(f"missing array {key!r} (has: {', '.join(arrays) or 'none'})")
        n_ops = arrays["op_logits"].shape[-1]
        if len(op_names) != n_ops:
            raise DataError(
                f"op_logits has {n_ops} ops but {len(op_names)} op names were given ({', '.join(op_names)}); "
                "pass --ops"
            )
        return {"layers": int(arrays["edge_logits"].shape[0])}

    def __call__(
        self,
        arch_params: dict[str, np.ndarray],
        space_params: dict[str, Any],
        op_names: list[str],
        budget: MemoryBudget | None = None,
    ) -> Architecture:
        return self.top_k(arch_params, space_params, op_names, 1, budget)[0]

    def top_k(
        self,
        arch_params: dict[str, np.ndarray],
        space_params: dict[str, Any],
        op_names: list[str],
        k: int,
        budget: MemoryBudget | None = None,
    ) -> list[Architecture]:
        return decode_best(
            arch_params["edge_logits"],
            arch_params["op_logits"],
            k=k,
            op_names=op_names,
            space_params=space_params,
            budget=budget,
        )


DISCRETIZER = TopologyDiscretizer()


# ------------------------------------------------------------------------------------------------
# Decoding under a memory budget, and the k best architectures
# ------------------------------------------------------------------------------------------------


def _cost_to_go(values: np.ndarray, depths: int) -> np.ndarray:
    """[L, M]: the least sum of ``values`` over layers i+1..L-1 of a feasible path through (i, j)."""
    topo = topology(depths)
    n_layers, m = values.shape
    out = np.zeros((n_layers, m))
    n_sets = topo.num_node_sets
    for i in range(n_layers - 2, -1, -1):
        best_by_sources = np.full(n_sets, np.inf)
        np.minimum.at(best_by_sources, topo.pattern_sources, values[i + 1] + out[i + 1])
        out[i] = best_by_sources[topo.pattern_targets]
    return out


def _lagrangian(cost: np.ndarray, mem: np.ndarray, budget: float, depths: int) -> tuple[float, float, float]:
    """(lower, upper, lam) bounding the cheapest path within ``budget``, from paths that minimise
    cost + lam * memory.

    ``upper`` is the cost of the cheapest such path within the budget (inf if no path fits): the
    optimum costs no more. ``lower`` is the best Lagrangian bound min_path(cost + lam * memory) -
    lam * budget among the multipliers tried, ``lam`` its multiplier: the optimum costs no less, and a
    partial path whose cost plus lam * (its memory - budget) plus the least cost + lam * memory to go
    exceeds a bound on the optimum has no completion worth keeping.
    """
    layers = np.arange(len(cost))
    path, _ = shortest_feasible_path(mem, depths)
    if mem[layers, path].sum() > budget:
        return np.inf, np.inf, 0.0
    upper = cost[layers, path].sum()
    best_bound, best_lam = -np.inf, 0.0
    scale = max(np.ptp(cost), 1e-12) / max(np.ptp(mem), 1e-300)

    def attempt(lam: float) -> bool:
        nonlocal upper, best_bound, best_lam
        path, total = shortest_feasible_path(cost + lam * mem, depths)
        if total - lam * budget > best_bound:
            best_bound, best_lam = total - lam * budget, lam
        fits = mem[layers, path].sum() <= budget
        if fits:
            upper = min(upper, cost[layers, path].sum())
        return fits

    lo, hi = 0.0, scale
    for _ in range(40):  # find a multiplier whose path is within budget, then bisect towards cheaper
        if attempt(hi):
            break
        lo, hi = hi, hi * 4
    for _ in range(16):
        mid = 0.5 * (lo + hi)
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    return float(best_bound), float(upper), float(best_lam)


def _keep_first_fronts(group: np.ndarray, mem: np.ndarray, cost: np.ndarray, k: int) -> np.ndarray:
    """Indices of the labels in the first k Pareto fronts of (memory, cost) within each group.

    A label in a later front is weakly dominated by k others of its group (one from each earlier
    front), so any completion of it is matched by k distinct paths at least as cheap and as small:
    it cannot be needed among the k best.
    """
    order = np.lexsort((cost, mem, group))
    g, c = group[order], cost[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    keep = np.zeros(len(order), dtype=bool)
    for lo, hi in zip(starts, ends):  # at most 2^D - 1 groups
        remaining = np.arange(lo, hi)
        for _ in range(k):
            if not len(remaining):
                break
            rc = c[remaining]
            running = np.minimum.accumulate(rc)
            front = rc < np.r_[np.inf, running[:-1]]
            keep[remaining[front]] = True
            remaining = remaining[~front]
    return order[keep]


def best_paths(
    cost: np.ndarray, mem: np.ndarray, budget: float, depths: int, k: int = 1
) -> list[tuple[np.ndarray, float, float]]:
    """The k cheapest feasible paths whose memory is within ``budget``: [(path, cost, memory)].

    ``cost`` and ``mem`` are [L, M]; a path's cost and memory are the sums of its entries. Exact (a
    resource-constrained shortest path, solved by ``_label_search``). Lagrangian relaxation brackets
    the best cost; the search is bounded just above the lower end and widened until it finds a path
    (for k > 1: just above the best, until it finds k). Fewer than k paths are returned when fewer
    exist.
    """
    # Sums taken in another order may differ in the last bits: a path exactly at the budget fits.
    budget = budget + 1e-10 * abs(budget) if np.isfinite(budget) else budget
    path, total = shortest_feasible_path(cost, depths)
    used = float(mem[np.arange(len(mem)), path].sum())
    lam = 0.0
    if used <= budget:  # the unconstrained optimum fits: it is the best
        first = [(path, total, used)]
    else:
        lower, upper, lam = _lagrangian(cost, mem, budget, depths)
        if not np.isfinite(upper):  # not even the smallest network fits
            return []
        first = _widening_search(cost, mem, budget, depths, 1, lower, upper, lam, (upper - lower) / 256)
    if k == 1 or not first:
        return first
    best = first[0][1]
    return _widening_search(cost, mem, budget, depths, k, best, float(cost.max(1).sum()), lam, 0.0)


def _widening_search(cost, mem, budget, depths, k, lower, upper, lam, width):
    """``_label_search`` bounded at lower + w for growing w, until it finds k paths or the bound
    reaches ``upper`` (a cost that k paths within the budget are known not to exceed, or no path
    exceeds). A tight bound prunes most partial paths; every path under the bound survives, so
    what is found under it is exactly the best."""
    width = max(width, 1e-3 * (1.0 + abs(lower)))
    while True:
        bound = lower + width
        found = _label_search(cost, mem, budget, depths, k, bound if bound < upper else upper, lam)
        if len(found) >= k or bound >= upper:
            return found
        width *= 4


def _label_search(
    cost: np.ndarray, mem: np.ndarray, budget: float, depths: int, k: int, upper: float, lam: float = 0.0
) -> list[tuple[np.ndarray, float, float]]:
    """The k cheapest feasible paths within ``budget`` among those costing at most ``upper``.

    A dynamic programme over layers whose labels are partial paths, pruned only where that provably
    loses none of the k best: the memory any completion still needs exceeds the budget; the cost
    any completion still needs exceeds ``upper``, by the plain bound or the Lagrangian one with
    multiplier ``lam`` (see ``_lagrangian``); or k other labels ending in the same target set are as
    cheap and as small. Ties go to lower pattern indices.
    """
    topo = topology(depths)
    n_layers, m = cost.shape
    mem_to_go = _cost_to_go(mem, depths)
    cost_to_go = _cost_to_go(cost, depths)
    priced_to_go = _cost_to_go(cost + lam * mem, depths) if lam > 0 and np.isfinite(budget) else None
    slack = 1e-9 * (1.0 + abs(upper)) if np.isfinite(upper) else 0.0
    # The priced bound subtracts terms of size lam * budget: its rounding scales with them.
    priced_slack = slack + 1e-9 * lam * abs(budget) if priced_to_go is not None else 0.0

    def within(i, lc, lm, patterns):
        ok = lm + mem_to_go[i, patterns] <= budget
        if np.isfinite(upper):
            ok &= lc + cost_to_go[i, patterns] <= upper + slack
            if priced_to_go is not None:
                ok &= lc + lam * (lm - budget) + priced_to_go[i, patterns] <= upper + priced_slack
        return ok

    patterns = np.arange(m)
    ok = within(0, cost[0], mem[0], patterns)
    lc, lm, lp, lb = cost[0][ok], mem[0][ok], patterns[ok], np.full(int(ok.sum()), -1)
    history = [(lp, lb)]
    for i in range(1, n_layers):
        if not len(lc):
            return []
        kept = _keep_first_fronts(topo.pattern_targets[lp], lm, lc, k)
        kept = kept[np.lexsort((kept, topo.pattern_targets[lp[kept]]))]  # by target set, then label
        target_of_kept = topo.pattern_targets[lp[kept]]
        sets = np.arange(topo.num_node_sets)
        starts = np.searchsorted(target_of_kept, sets, "left")
        counts = np.searchsorted(target_of_kept, sets, "right") - starts
        per_pattern = counts[topo.pattern_sources]  # how many predecessors each pattern takes
        new_pattern = np.repeat(patterns, per_pattern)
        offsets = np.arange(len(new_pattern)) - np.repeat(np.cumsum(per_pattern) - per_pattern, per_pattern)
        prev = kept[starts[topo.pattern_sources[new_pattern]] + offsets]
        nc = lc[prev] + cost[i, new_pattern]
        nm = lm[prev] + mem[i, new_pattern]
        ok = within(i, nc, nm, new_pattern)
        lc, lm, lp, lb = nc[ok], nm[ok], new_pattern[ok], prev[ok]
        history.append((lp, lb))
    out = []
    for label in np.lexsort((lp, lc))[:k]:
        path = np.empty(n_layers, dtype=np.int64)
        j = label
        for i in range(n_layers - 1, -1, -1):
            path[i] = history[i][0][j]
            j = history[i][1][j]
        out.append((path, float(lc[label]), float(lm[label])))
    return out
