"""Selective recomputation against MONAI's DiNTS: bytes saved for backward, peak memory, step time.

    pip install -e .[bench]
    python bench/recompute.py                      # L=12, D=4, 16 filters, 64^3, CPU
    python bench/recompute.py --device cuda        # the same against torch.cuda.max_memory_allocated

Sides: nastk with search.recompute none, all and auto (the cells chosen by the knapsack for a target of
half of MONAI's saved bytes), nastk without recomputation under bf16 autocast (fp16 on CUDA), and MONAI's
DiNTS (its tutorial's search step; MONAI's DiNTS has no checkpointing of its own). Time: every side built
in one process, their steps interleaved in a rotating order (ABBA generalised), medians. Saved bytes: the
distinct storages still saved for backward when a forward returns (a saved-tensor hook), weight step and
architecture step, the larger reported. Peak memory: each side alone in a fresh process (VmHWM on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

L, D = 12, 4
SIDES = ("none", "all", "auto", "amp", "monai")


def _autocast(dev: torch.device, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.float16 if dev.type == "cuda" else torch.bfloat16)


def _freeze(params, flag):
    for p in params:
        p.requires_grad_(flag)


def live_saved(model, fn) -> int:
    """Bytes of distinct non-parameter storages still saved for backward when ``fn()`` returns."""
    from nastk.memory import live_saved_storages

    return sum(live_saved_storages(model, fn).values())


class Ours:
    def __init__(self, dev, patch, filters, recompute=frozenset(), amp=False):
        from nastk import registry
        from nastk.engine.common import sgd
        from nastk.objective import arch_objective, build_losses
        from nastk.spec import Spec

        spec = Spec()
        self.ops = registry.load_ops(spec.ops)
        params = {"layers": L, "depths": D, "filters": filters}
        space = registry.load("spaces", "dints")
        self.net = space.build_supernet(params, self.ops, 1, 3, (patch,) * 3).to(dev)
        self.net.recompute = frozenset(recompute)
        self.seg, self.arch_losses = build_losses(spec.losses)
        self.opt_w = sgd(self.net.weight_parameters(), spec.search.weights)
        self.opt_a = torch.optim.Adam(self.net.arch_parameters(), lr=0.008)
        self.net.memory_costs()
        self.arch_objective, self.dev, self.amp = arch_objective, dev, amp
        self.weights, self.arch = self.net.weight_parameters(), self.net.arch_parameters()

    def forward(self, x, kind):
        _freeze(self.weights, kind == "weight")
        _freeze(self.arch, kind == "arch")
        with _autocast(self.dev, self.amp):
            return self.net(x)

    def step(self, x, y):  # as nastk.engine.search does it
        self.opt_w.zero_grad()
        self.seg.fn(self.forward(x, "weight").float(), y).backward()
        self.opt_w.step()
        self.opt_w.zero_grad()
        self.opt_a.zero_grad()
        out = self.forward(x, "arch")
        terms = [(a.weight, a.fn(self.net)) for a in self.arch_losses]
        self.arch_objective(self.seg.fn(out.float(), y), terms, 1, 2).backward()
        self.opt_a.step()


class Monai:
    def __init__(self, dev, patch, filters):
        from monai.losses import DiceCELoss
        from monai.networks.nets.dints import DiNTS, TopologySearch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.space = TopologySearch(
                channel_mul=filters / 32, num_blocks=L, num_depths=D, use_downsample=True, device=str(dev)
            )
            self.net = DiNTS(self.space, in_channels=1, num_classes=3, use_downsample=True).to(dev)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        names = {"dints_space.log_alpha_a", "dints_space.log_alpha_c"}
        self.weights = [p for n, p in self.net.named_parameters() if n not in names]
        self.arch = [self.space.log_alpha_a, self.space.log_alpha_c]
        self.opt_w = torch.optim.SGD(self.weights, lr=0.1, momentum=0.9, weight_decay=4e-5)
        self.opt_a = torch.optim.Adam(self.arch, lr=0.008)

    def forward(self, x, kind):
        _freeze(self.weights, kind == "weight")
        _freeze(self.arch, kind == "arch")
        return self.net(x)

    def step(self, x, y):  # as MONAI's tutorial search_dints.py does it
        yy = y[:, None]
        self.opt_w.zero_grad()
        self.loss(self.forward(x, "weight"), yy).backward()
        self.opt_w.step()
        self.opt_a.zero_grad()
        probs_a, _ = self.space.get_prob_a(child=True)
        ent_a = -(probs_a * torch.log(probs_a + 1e-5)).mean()
        c = self.space.log_alpha_c
        ent_c = -(F.softmax(c, -1) * F.log_softmax(c, -1)).mean()
        tp = self.space.get_topology_entropy(probs_a)
        full = self.space.get_ram_cost_usage(x.shape, full=True)
        usage = self.space.get_ram_cost_usage(x.shape)
        out = self.forward(x, "arch")
        loss = self.loss(out, yy) + 0.5 * (ent_a + ent_c + torch.abs(0.8 - usage / full) + 0.001 * tp)
        loss.backward()
        self.opt_a.step()


def saved_bytes(side_obj, x) -> dict[str, int]:
    return {k: live_saved(side_obj.net, lambda k=k: side_obj.forward(x, k)) for k in ("weight", "arch")}


def auto_cells(dev, patch, filters, target_bytes: float) -> tuple[frozenset, dict]:
    """What search.recompute: auto chooses for a target of ``target_bytes`` saved for backward."""
    from nastk import registry
    from nastk.spec import Spec
    from nastk_dints import recompute as rc

    ops = registry.load_ops(Spec().ops)
    t0 = time.perf_counter()
    model = rc.measure(L, D, filters, ops, 1, 3, (patch,) * 3, 1, "off", time_cells=True, device=dev)
    chosen = rc.choose(model, target_bytes)
    seconds = time.perf_counter() - t0
    if chosen is None:
        raise SystemExit(f"no recompute set fits {target_bytes / 2**20:.0f} MB")
    mask, secs, _ = chosen
    none = np.zeros_like(mask)
    info = {
        "cells": int(mask.sum()),
        "expected_mb": model.peak(mask) / 2**20,
        "model_none_mb": model.peak(none) / 2**20,
        "model_all_mb": model.peak(~none) / 2**20,
        "recompute_s": secs,
        "choose_s": seconds,
    }
    return frozenset(rc.mask_to_names(mask, D)), info


def build(side, dev, patch, filters, cells=frozenset()):
    if side == "monai":
        return Monai(dev, patch, filters)
    recompute = {"none": frozenset(), "amp": frozenset(), "auto": cells}.get(side)
    if side == "all":
        obj = Ours(dev, patch, filters)
        obj.net.checkpoint_cells = True
        return obj
    return Ours(dev, patch, filters, recompute, amp=side == "amp")


def _data(dev, patch):
    torch.manual_seed(0)
    x = torch.randn(1, 1, patch, patch, patch, device=dev)
    y = torch.randint(0, 3, (1, patch, patch, patch), device=dev)
    return x, y


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def peak_process(side: str, device: str, patch: int, filters: int, steps: int, cells: list[str]) -> dict:
    """One side alone in this process: its peak memory after 1 + ``steps`` steps."""
    dev = torch.device(device)
    x, y = _data(dev, patch)
    obj = build(side, dev, patch, filters, frozenset(cells))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(1 + steps):
        obj.step(x, y)
    _sync(dev)
    rss = float("nan")
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
    return {"rss_mb": rss, "gpu_mb": gpu}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="timed steps per side, interleaved")
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--peak", nargs=2, metavar=("SIDE", "CELLS_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:
        side, cells = args.peak
        print(
            json.dumps(
                peak_process(
                    side, args.device, args.patch, args.filters, args.memory_steps, json.loads(cells)
                )
            )
        )
        return
    dev = torch.device(args.device)
    x, y = _data(dev, args.patch)
    monai = build("monai", dev, args.patch, args.filters)
    monai_saved = saved_bytes(monai, x)
    target = 0.5 * max(monai_saved.values())
    cells, info = auto_cells(dev, args.patch, args.filters, target)
    objs = {"monai": monai}
    for side in SIDES[:-1]:
        objs[side] = build(side, dev, args.patch, args.filters, cells)
    saved = {side: saved_bytes(o, x) for side, o in objs.items()}
    for o in objs.values():  # warm-up
        o.step(x, y)
    _sync(dev)
    times = {side: [] for side in objs}
    order = list(objs)
    for r in range(args.rounds):
        rot = order[r % len(order) :] + order[: r % len(order)]
        for side in rot if r % 2 == 0 else rot[::-1]:
            t0 = time.perf_counter()
            objs[side].step(x, y)
            _sync(dev)
            times[side].append(time.perf_counter() - t0)
    del objs, monai
    peaks = {}
    for side in SIDES:
        argv = [sys.executable, __file__, "--device", args.device, "--patch", str(args.patch)]
        argv += ["--filters", str(args.filters), "--memory-steps", str(args.memory_steps)]
        argv += ["--peak", side, json.dumps(sorted(cells))]
        out = subprocess.run(argv, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        peaks[side] = json.loads(out.stdout.strip().splitlines()[-1])
    base = float(np.median(times["none"]))
    m_saved = max(saved["monai"].values())
    print(
        f"L={L}, D={D}, {args.filters} filters, {args.patch}^3, batch 1, {args.device}; "
        f"torch {torch.__version__}; {args.rounds} interleaved steps per side; "
        f"auto: {info['cells']} of {L * (3 * D - 2)} cells for a target of "
        f"{target / 2**20:.0f} MB (half of MONAI's), expected {info['expected_mb']:.0f} MB, chosen in "
        f"{info['choose_s']:.1f} s (measuring included)"
    )
    mem_col = "peak GPU MB" if dev.type == "cuda" else "peak RSS MB"
    print(f"| side | saved MB (weight / arch step) | x MONAI | {mem_col} | step s | x nastk none |")
    print("|---|---|---|---|---|---|")
    for side in SIDES:
        w, a = saved[side]["weight"] / 2**20, saved[side]["arch"] / 2**20
        peak = peaks[side]["gpu_mb"] if dev.type == "cuda" else peaks[side]["rss_mb"]
        t = float(np.median(times[side]))
        print(
            f"| {side} | {w:.0f} / {a:.0f} | {max(w, a) * 2**20 / m_saved:.2f} | {peak:.0f} | {t:.2f} | "
            f"{t / base:.2f} |"
        )
    auto_ratio = max(saved["auto"].values()) / m_saved
    slow = float(np.median(times["auto"])) / base
    met = auto_ratio <= 0.5 and slow <= 1.3
    print(
        f"goal (auto <= 0.5x MONAI's saved bytes, step <= 1.3x nastk none): saved {auto_ratio:.2f}x, "
        f"step {slow:.2f}x: {'met' if met else 'NOT met'}"
    )
    measured = max(saved["auto"].values()) / 2**20
    print(f"model vs measured (auto): {info['expected_mb']:.1f} MB expected, {measured:.1f} MB measured")


if __name__ == "__main__":
    main()
