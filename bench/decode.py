"""Time nastk_dints.decode at the paper's size (L=12, D=4) on random logits, with and without a
memory budget.

    python bench/decode.py [--repeats 200]

Prints a table: median and 95th-percentile wall time per decode, the share spent building
-log eta versus the shortest-path dynamic programme, and decoding under GB budgets at the paper's
retraining setting (96^3, 2 patches per GPU, 32 filters), where the budget is placed between the
smallest network the searched ops allow (0%) and the unconstrained decode (100%). The per-part
memory costs are measured once per process before timing (their time is shown on its own row).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from nastk import registry
from nastk.setting import MemoryBudget, TrainingSetting
from nastk_dints.budget import memory_model
from nastk_dints.discretize import decode, decode_best, pattern_costs, shortest_feasible_path

PAPER_RETRAIN = TrainingSetting((96, 96, 96), 2, 2.0, "off", 1, 3)


def _times(fn, repeats: int) -> np.ndarray:
    fn()  # warm caches (topology tables)
    out = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--depths", type=int, default=4)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n_edges = 3 * args.depths - 2
    edges = rng.normal(size=(args.layers, n_edges))
    ops = rng.normal(size=(args.layers, n_edges, 5))
    cost = pattern_costs(edges, args.depths)
    rows = [
        ("decode (numpy logits)", _times(lambda: decode(edges, ops), args.repeats)),
        (
            "decode (torch logits)",
            _times(lambda: decode(torch.from_numpy(edges), torch.from_numpy(ops)), args.repeats),
        ),
        ("  -log eta [L, M]", _times(lambda: pattern_costs(edges, args.depths), args.repeats)),
        ("  shortest feasible path", _times(lambda: shortest_feasible_path(cost, args.depths), args.repeats)),
    ]
    rows += budget_rows(args, rng)
    table = Table(title=f"decode, L={args.layers}, D={args.depths}, M={2**n_edges - 1} patterns/layer")
    for col in ("what", "median ms", "p95 ms"):
        table.add_column(col, justify="right" if col != "what" else "left")
    for name, t in rows:
        table.add_row(name, f"{np.median(t):.3f}", f"{np.percentile(t, 95):.3f}")
    console = Console()
    console.print(table)
    console.print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"numpy {np.__version__}, torch {torch.__version__}"
    )


def budget_rows(args, rng) -> list[tuple[str, np.ndarray]]:
    ops = registry.load_ops(["skip", "conv3x3x3", "p3d_3x3x1", "p3d_3x1x3", "p3d_1x3x3"])
    t0 = time.perf_counter()
    model = memory_model(args.depths, 16, ops, PAPER_RETRAIN)
    rows = [("  per-part memory costs (once)", np.array([(time.perf_counter() - t0) * 1e3]))]
    n_edges = 3 * args.depths - 2
    unbound = MemoryBudget(0.0, PAPER_RETRAIN)

    def timed(edges, op_logits, k, budget, repeats):
        return _times(lambda: decode_best(edges, op_logits, k=k, ops=ops, budget=budget), repeats)

    for label, scale in (("N(0,1)", 1.0), ("peaked x4", 4.0)):
        edges = rng.normal(size=(args.layers, n_edges)) * scale
        op_logits = rng.normal(size=(args.layers, n_edges, 5)) * scale
        mem = model.pattern_bytes(op_logits.argmax(-1))
        free = decode(edges, op_logits)
        top = model.network(free.edge_mask, free.op_index)["total"]
        low_path, _ = shortest_feasible_path(mem, args.depths)
        low = mem[np.arange(args.layers), low_path].sum()
        for share in (0.1, 0.5, 0.9):
            budget = MemoryBudget(unbound.required_gb(low + share * (top - low)), PAPER_RETRAIN)
            name = f"budget {share:.0%} ({budget.gb:.2f} GB), {label}"
            rows.append((name, timed(edges, op_logits, 1, budget, args.repeats // 4)))
        budget = MemoryBudget(unbound.required_gb(low + 0.5 * (top - low)), PAPER_RETRAIN)
        rows.append(
            (f"top-5 under budget 50%, {label}", timed(edges, op_logits, 5, budget, args.repeats // 10))
        )
    return rows


if __name__ == "__main__":
    main()
