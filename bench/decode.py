"""Time nastk_dints.decode at the paper's size (L=12, D=4) on random logits.

    python bench/decode.py [--repeats 200]

Prints a table: median and 95th-percentile wall time per decode, and the share spent building
-log eta versus the shortest-path dynamic programme.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from nastk_dints.discretize import decode, pattern_costs, shortest_feasible_path


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


if __name__ == "__main__":
    main()
