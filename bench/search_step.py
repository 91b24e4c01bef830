"""Time per search iteration and peak memory at the CPU bench configuration.

    python bench/search_step.py [--layers 12 --depths 4 --filters 8 --patch 32 --batch 1 --steps 5]

One iteration is what a joint-phase iteration of ``nastk search`` does: a weight step (forward,
L_seg, backward, SGD) on one batch with the architecture frozen and an architecture step (forward,
L_seg + every arch loss of Eq. 11, backward, Adam) on another with the weights frozen. Peak memory
is the process's peak RSS on CPU and ``torch.cuda.max_memory_allocated`` on GPU.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from nastk import registry
from nastk.engine.common import set_requires_grad, sgd
from nastk.objective import arch_objective, build_losses
from nastk.spec import Spec


def rss_mb() -> float:
    try:  # this program's high-water mark (ru_maxrss would include a parent's through fork + exec)
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--depths", type=int, default=4)
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    spec = Spec()
    space = registry.load("spaces", "dints")
    ops = registry.load_ops(spec.ops)
    patch = (args.patch,) * 3
    params = {"layers": args.layers, "depths": args.depths, "filters": args.filters}
    net = space.build_supernet(params, ops, 1, 3, patch).to(device)
    seg, arch_losses = build_losses(spec.losses)
    opt_w = sgd(net.weight_parameters(), spec.search.weights)
    opt_a = torch.optim.Adam(net.arch_parameters(), lr=0.008)
    net.memory_costs()  # measured once per run, not per step
    x = torch.randn(args.batch, 1, *patch, device=device)
    y = torch.randint(0, 3, (args.batch, *patch), device=device)

    weights, arch = net.weight_parameters(), net.arch_parameters()

    def step() -> None:
        set_requires_grad(weights, True)
        set_requires_grad(arch, False)
        opt_w.zero_grad(set_to_none=True)
        seg.fn(net(x), y).backward()
        opt_w.step()
        opt_w.zero_grad(set_to_none=True)
        set_requires_grad(weights, False)
        set_requires_grad(arch, True)
        opt_a.zero_grad(set_to_none=True)
        terms = [(a.weight, a.fn(net)) for a in arch_losses]
        arch_objective(seg.fn(net(x), y), terms, 1, 2).backward()
        opt_a.step()

    before = rss_mb()
    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss_mb()
    table = Table(
        title=f"search iteration, L={args.layers} D={args.depths} {args.filters} filters, "
        f"{args.patch}^3, batch {args.batch}, {device.type}"
    )
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("time per iteration, median (s)", f"{np.median(times):.3f}")
    table.add_row("time per iteration, min (s)", f"{np.min(times):.3f}")
    table.add_row("peak memory (MB)" + (" allocated" if device.type == "cuda" else " RSS"), f"{peak:,.0f}")
    if device.type == "cpu":
        table.add_row("RSS before the first step (MB)", f"{before:,.0f}")
    Console().print(table)
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
