"""Decoding ``op_logits`` [L, N]: argmax per layer, the k best, and the best under a GB budget.

A network's path cost is sum_l -log softmax(op_logits[l])[choice_l], so the most likely network is the
argmax of every layer. Its memory is ``fixed + sum_l layer[l, choice_l]`` (``memory.py``), so the most
likely network within a budget is a multiple-choice knapsack. ``best_k`` solves it exactly: a dynamic
programme over layers whose labels are partial choices (memory, cost), dropping a label once k others
are at least as cheap in both (none of its completions can then be among the k best) or once even the
cheapest completion would exceed the budget. Tested against enumeration of every network.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from nastk.plugin import DataError, MemoryBudget, format_gb, load_ops, required_gb
from nastk_vnas.architecture import Architecture
from nastk_vnas.layout import layers
from nastk_vnas.params import VNASParams


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def best_k(
    cost: np.ndarray, memory: np.ndarray | None = None, capacity: float = np.inf, k: int = 1
) -> list[tuple[float, float, tuple[int, ...]]]:
    """The ``k`` choices (one column per row of ``cost`` [L, N]) of least total cost whose total
    ``memory`` [L, N] is at most ``capacity``, as (cost, memory, choice), best first (among choices of
    exactly equal cost, which are kept is deterministic but unspecified). Fewer when fewer fit; [] when
    none does. L = 14, N = 5 (4 levels, 2 convs), k = 100 within a budget: about 0.3 s."""
    cost = np.asarray(cost, dtype=np.float64)
    memory = np.zeros_like(cost) if memory is None else np.asarray(memory, dtype=np.float64)
    # The least memory the layers after l can add: a label above capacity minus it can never fit.
    rest = np.concatenate([np.cumsum(memory.min(1)[::-1])[::-1][1:], [0.0]])
    labels: list[tuple[float, float, tuple[int, ...]]] = [(0.0, 0.0, ())]
    for layer in range(len(cost)):
        grown = [
            (c + cost[layer, n], m + memory[layer, n], choice + (n,))
            for c, m, choice in labels
            for n in range(cost.shape[1])
            if m + memory[layer, n] + rest[layer] <= capacity
        ]
        # Keep a label unless k kept labels are at least as good in memory and cost.
        grown.sort(key=lambda t: (t[1], t[0], t[2]))
        kept, costs = [], []
        for label in grown:
            if bisect.bisect_right(costs, label[0]) < k:
                kept.append(label)
                bisect.insort(costs, label[0])
        labels = kept
    labels.sort(key=lambda t: (t[0], t[2]))
    return labels[:k]


class VNASDiscretizer:
    """Registered as ``vnas`` in ``nastk.discretizers``."""

    def check_arrays(self, arrays: dict[str, np.ndarray], op_names: list[str]) -> dict[str, Any]:
        if "op_logits" not in arrays:
            raise DataError(f"no 'op_logits' array (found: {', '.join(sorted(arrays)) or 'none'})")
        logits = np.asarray(arrays["op_logits"])
        if logits.ndim != 2 or logits.shape[1] != len(op_names):
            raise DataError(
                f"'op_logits' has shape {list(logits.shape)}; expected [layers, {len(op_names)}] for "
                f"the ops {op_names}"
            )
        if not np.isfinite(logits).all():
            raise DataError("'op_logits' holds NaN or infinite values")
        return {}

    def _layout(self, arch_params, space_params, op_names) -> tuple[VNASParams, np.ndarray]:
        params = VNASParams.model_validate(
            {k: v for k, v in space_params.items() if k in VNASParams.model_fields}
        )
        logits = np.asarray(arch_params["op_logits"], dtype=np.float64)
        n = len(layers(params.depths, params.convs))
        if logits.shape != (n, len(op_names)):
            raise ValueError(
                f"'op_logits' has shape {list(logits.shape)}, but depths {params.depths} and convs "
                f"{params.convs} with {len(op_names)} ops need [{n}, {len(op_names)}]"
            )
        return params, -log_softmax(logits)

    def __call__(
        self,
        arch_params: dict[str, np.ndarray],
        space_params: dict[str, Any],
        op_names: list[str],
        budget: MemoryBudget | None = None,
    ) -> Architecture:
        return self.top_k(arch_params, space_params, op_names, 1, budget=budget)[0]

    def top_k(
        self,
        arch_params: dict[str, np.ndarray],
        space_params: dict[str, Any],
        op_names: list[str],
        k: int,
        budget: MemoryBudget | None = None,
    ) -> list[Architecture]:
        params, cost = self._layout(arch_params, space_params, op_names)
        memory, capacity, fixed = None, np.inf, 0.0
        if budget is not None:
            from nastk_vnas.memory import memory_table

            table = memory_table(
                params.depths, params.convs, params.filters, load_ops(op_names), budget.setting
            )
            memory, fixed = table.layer, table.fixed
            capacity = budget.usable_bytes - fixed
            smallest = fixed + table.layer.min(1).sum()
            if smallest > budget.usable_bytes:
                raise DataError(
                    f"no vnas architecture fits {budget.gb:g} GB at {budget.setting.describe()}: the "
                    f"smallest needs {format_gb(budget.required_gb(smallest))} GB"
                )
        found = best_k(cost, memory, capacity, k)
        archs = []
        for path_cost, mem, choice in found:
            arch = Architecture(
                params.depths,
                params.convs,
                params.filters,
                list(op_names),
                [op_names[n] for n in choice],
                path_cost=float(path_cost),
            )
            if budget is not None:
                total = fixed + mem
                arch.extra["memory"] = {
                    "budget_gb": budget.gb,
                    "setting": budget.setting.describe(),
                    "estimated_bytes": float(total),
                    "estimated_gb": required_gb(total, budget.margin, budget.reserve_gb),
                }
            archs.append(arch)
        return archs


DISCRETIZER = VNASDiscretizer()
