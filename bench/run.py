"""nastk vs MONAI's DiNTS, measured side by side on this machine: one table of ours, MONAI, ratio.

    pip install -e .[bench]
    python -m bench            # or: python bench/run.py [--quick]

Both sides are configured for the same work (L, D, filters, patch, batch, op set; MONAI's
``channel_mul`` matches our filter counts). Peak memory is measured in a fresh subprocess per side.
Where the two differ in a detail, the table's notes say so.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

L, D, N_OPS = 12, 4, 5


def _median(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _monai_space(channel_mul: float = 0.5, blocks: int = L):
    from monai.networks.nets.dints import TopologySearch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TopologySearch(channel_mul=channel_mul, num_blocks=blocks, num_depths=D, use_downsample=True)


# --------------------------------------------------------------------------------------------- decode


def bench_decode(repeats: int) -> dict:
    from nastk_dints import decode
    from nastk_dints.discretize import pattern_costs

    rng = np.random.default_rng(0)
    edge = rng.normal(size=(L, 3 * D - 2)).astype(np.float32)
    ops = rng.normal(1, 0.5, size=(L, 3 * D - 2, N_OPS)).astype(np.float32)
    space = _monai_space(channel_mul=0.125, blocks=L)
    with torch.no_grad():
        space.log_alpha_a.copy_(torch.from_numpy(edge))
        space.log_alpha_c.copy_(torch.from_numpy(ops))
    ours_t = _median(lambda: decode(edge, ops), repeats)
    t0 = time.perf_counter()
    _, code_a, code_c, _ = space.decode()
    monai_t = time.perf_counter() - t0
    arch = decode(edge, ops)
    cost = pattern_costs(edge, D)
    monai_idx = ((code_a.astype(np.int64) << np.arange(code_a.shape[1])).sum(1)) - 1
    monai_cost = float(cost[np.arange(L), monai_idx].sum())
    same_path = bool((arch.edge_mask == code_a.astype(bool)).all())
    same_ops = bool((arch.op_index[arch.edge_mask] == code_c[arch.edge_mask]).all())
    return {
        "what": "decode (L=12, D=4, random logits)",
        "ours_s": ours_t,
        "monai_s": monai_t,
        "check": f"path cost ours {arch.path_cost:.6f} vs MONAI's path {monai_cost:.6f}; "
        f"same path {same_path}; same ops {same_ops}",
    }


# --------------------------------------------------------------------------------------------- topology loss


def bench_topology(repeats: int) -> dict:
    from nastk_dints.losses import topology_value
    from nastk_dints.topology import topology

    space = _monai_space(channel_mul=0.125)
    topo = topology(D)
    logits = space.log_alpha_a

    def ours():
        v = topology_value(logits, topo)
        v.backward()
        return v

    def theirs():
        probs, _ = space.get_prob_a(child=True)
        v = space.get_topology_entropy(probs)
        v.backward()
        return v

    ours_t, monai_t = _median(ours, repeats), _median(theirs, max(3, repeats // 10))
    ours_v, monai_v = float(ours().detach()), float(theirs().detach())
    return {
        "what": "topology loss, forward + backward (L=12, D=4)",
        "ours_s": ours_t,
        "monai_s": monai_t,
        "check": f"value ours {ours_v:.6f}, MONAI {monai_v:.6f} (MONAI adds 1e-5 inside both logs; "
        f"relative difference {abs(ours_v - monai_v) / abs(monai_v):.1e})",
    }


# --------------------------------------------------------------------------------------------- search step


STEP_SCRIPT = r"""
import contextlib, json, resource, sys, time, warnings
import torch, torch.nn.functional as F
sides, steps, device, amp = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
patch, filters = int(sys.argv[5]), int(sys.argv[6])
dev = torch.device(device)
torch.manual_seed(0)
x = torch.randn(1, 1, patch, patch, patch, device=dev)
y = torch.randint(0, 3, (1, patch, patch, patch), device=dev)
# AMP: fp16 autocast on CUDA, bf16 on CPU; no loss scaler on either side (timing only).
half = torch.float16 if dev.type == "cuda" else torch.bfloat16
autocast = (lambda: torch.autocast(dev.type, dtype=half)) if amp else contextlib.nullcontext
def freeze(params, flag):  # what nastk.engine.common.set_requires_grad does (MONAI's side imports no nastk)
    for p in params: p.requires_grad_(flag)
def build_ours():
    from nastk import registry
    from nastk.engine.common import sgd
    from nastk.objective import arch_objective, build_losses
    from nastk.spec import Spec
    spec = Spec()
    ops = registry.load_ops(spec.ops)
    params = {"layers": 12, "depths": 4, "filters": filters}
    net = registry.load("spaces", "dints").build_supernet(params, ops, 1, 3, (patch,) * 3).to(dev)
    seg, arch_losses = build_losses(spec.losses)
    opt_w = sgd(net.weight_parameters(), spec.search.weights)
    opt_a = torch.optim.Adam(net.arch_parameters(), lr=0.008)
    net.memory_costs()
    weights, arch = net.weight_parameters(), net.arch_parameters()
    def step():  # as nastk.engine.search does it: each step differentiates only what it updates
        freeze(weights, True); freeze(arch, False)
        opt_w.zero_grad()
        with autocast():
            out = net(x)
        seg.fn(out.float(), y).backward(); opt_w.step()
        opt_w.zero_grad()  # nastk frees the weight gradients before the architecture step
        freeze(weights, False); freeze(arch, True)
        opt_a.zero_grad()
        terms = [(a.weight, a.fn(net)) for a in arch_losses]
        with autocast():
            out = net(x)
        arch_objective(seg.fn(out.float(), y), terms, 1, 2).backward(); opt_a.step()
    return step
def build_monai():
    from monai.losses import DiceCELoss
    from monai.networks.nets.dints import DiNTS, TopologySearch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        space = TopologySearch(
            channel_mul=filters / 32, num_blocks=12, num_depths=4, use_downsample=True, device=device
        )
        net = DiNTS(space, in_channels=1, num_classes=3, use_downsample=True).to(dev)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    arch_names = {"dints_space.log_alpha_a", "dints_space.log_alpha_c"}
    weights = [p for n, p in net.named_parameters() if n not in arch_names]
    opt_w = torch.optim.SGD(weights, lr=0.1, momentum=0.9, weight_decay=4e-5)
    opt_a = torch.optim.Adam([space.log_alpha_a, space.log_alpha_c], lr=0.008)
    yy = y[:, None]
    alphas = [space.log_alpha_a, space.log_alpha_c]
    def step():  # as MONAI's DiNTS tutorial (search_dints.py) does it, without its anomaly detection
        freeze(weights, True); freeze(alphas, False)
        opt_w.zero_grad()
        with autocast():
            out = net(x)
        loss_fn(out.float(), yy).backward(); opt_w.step()
        freeze(weights, False); freeze(alphas, True)
        opt_a.zero_grad()
        probs_a, _ = space.get_prob_a(child=True)
        ent_a = -(probs_a * torch.log(probs_a + 1e-5)).mean()
        ent_c = -(F.softmax(space.log_alpha_c, -1) * F.log_softmax(space.log_alpha_c, -1)).mean()
        tp = space.get_topology_entropy(probs_a)
        full = space.get_ram_cost_usage(x.shape, full=True)
        usage = space.get_ram_cost_usage(x.shape)
        with autocast():
            out = net(x)
        loss = loss_fn(out.float(), yy) + 0.5 * (ent_a + ent_c + torch.abs(0.8 - usage / full) + 0.001 * tp)
        loss.backward(); opt_a.step()
    return step
def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()
step = {side: {"ours": build_ours, "monai": build_monai}[side]() for side in sides}
for side in sides:
    step[side](); sync()
if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
times = {side: [] for side in sides}
for i in range(steps):
    # With both sides in one process, alternate which goes first (ABBA): each pair of steps sees
    # the same machine speed, however it drifts.
    for side in sides if i % 2 == 0 else sides[::-1]:
        t0 = time.perf_counter(); step[side](); sync(); times[side].append(time.perf_counter() - t0)
def peak_rss_mb():
    # VmHWM is this program's own high-water mark; ru_maxrss would carry over the parent's peak
    # through fork + exec.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
gpu = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
print(json.dumps({"times": times, "rss_mb": peak_rss_mb(), "gpu_mb": gpu}))
"""


def _step_process(
    sides: tuple[str, ...], steps: int, device: str, amp: bool, patch: int, filters: int
) -> dict:
    argv = [",".join(sides), str(steps), device, "1" if amp else "0", str(patch), str(filters)]
    out = subprocess.run([sys.executable, "-c", STEP_SCRIPT, *argv], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_search_step(
    steps: int,
    rounds: int = 3,
    device: str = "cpu",
    amp: bool = False,
    patch: int = 32,
    filters: int = 8,
    sides: tuple[str, ...] = ("ours", "monai"),
    memory_steps: int = 12,
) -> list[dict]:
    """Time: both sides built in one process, their steps interleaved ABBA, ratio = median of the
    adjacent pairs' ratios. Memory: each side alone in fresh processes (``rounds`` each) running
    ``memory_steps`` steps after a warm-up: a process's RSS keeps growing over its first steps as
    the heap fragments (MONAI's side from about 1.32 GB after 3 steps to 1.40 GB after 13 on the
    bench machine), and a search runs thousands of steps."""
    result = _step_process(sides, steps, device, amp, patch, filters)
    timed = result["times"]
    if len(sides) == 1:  # the timed process ran that side alone: its memory is the answer
        alone, rounds, memory_steps = {sides[0]: [result]}, 1, steps
    else:
        alone = {side: [] for side in sides}
        for _ in range(rounds):
            for side in sides:
                alone[side].append(_step_process((side,), memory_steps, device, amp, patch, filters))

    def memory(side: str, key: str) -> float:
        values = [r[key] for r in alone.get(side, [])]
        return float(np.median(values)) if values and None not in values else float("nan")

    def step_time(side: str) -> float:
        return float(np.median(timed[side])) if side in timed else float("nan")

    config = f"L=12, D=4, {filters} stem filters, {patch}^3, batch 1, {device}{', AMP' if amp else ''}"
    note = (
        f"{config}; weight step + arch step, both optimisers; both sides freeze what a step does not "
        "update, as MONAI's tutorial search script does; "
        + (
            f"both sides in one process, {steps} steps each, interleaved ABBA"
            if len(sides) > 1
            else f"{steps} steps"
        )
        + "; medians"
    )
    row = {"what": "search step time", "ours_s": step_time("ours"), "monai_s": step_time("monai")}
    if len(timed) == 2:  # adjacent steps see the same machine speed: ratio per pair, then the median
        pairs = np.array(timed["ours"]) / np.array(timed["monai"])
        row["ratio"] = float(np.median(pairs))
        q1, q3 = np.percentile(pairs, [25, 75])
        note += f"; ratio = median of the {len(pairs)} pairs' ours/MONAI (quartiles {q1:.2f}-{q3:.2f})"
    rows = [
        {**row, "check": note},
        {
            "what": "search step peak RSS (MB)",
            "ours_s": memory("ours", "rss_mb"),
            "monai_s": memory("monai", "rss_mb"),
            "check": f"VmHWM of a fresh process running one side for 1 + {memory_steps} steps (median of "
            f"{rounds}); includes the Python/torch baseline",
            "unit": "MB",
        },
    ]
    if device == "cuda":
        rows.append(
            {
                "what": "search step peak GPU memory (MB)",
                "ours_s": memory("ours", "gpu_mb"),
                "monai_s": memory("monai", "gpu_mb"),
                "check": "torch.cuda.max_memory_allocated, each side in its own process",
                "unit": "MB",
            }
        )
    return rows


# ------------------------------------------------------------------------------------ memory estimate


def bench_memory(count: int, patch: int, filters: int) -> dict:
    from scipy.stats import spearmanr

    from nastk import registry
    from nastk_dints import decode
    from nastk_dints.memory import saved_bytes
    from nastk_dints.space import SPACE, estimate_training_memory

    ops = registry.load_ops(["skip", "conv3x3x3", "p3d_3x3x1", "p3d_3x1x3", "p3d_1x3x3"])
    rng = np.random.default_rng(0)
    space = _monai_space(channel_mul=filters / 32, blocks=L)
    est, true, monai = [], [], []
    for _ in range(count):
        arch = decode(rng.normal(size=(L, 3 * D - 2)) * 2, rng.normal(size=(L, 3 * D - 2, N_OPS)))
        net = SPACE.build_network(arch, ops, 1, 3, filters=filters)
        est.append(
            estimate_training_memory(arch, ops, (patch,) * 3, 1, filters=filters, num_classes=3)[
                "activations"
            ]
        )
        true.append(saved_bytes(net, (1, 1, patch, patch, patch), input_requires_grad=False))
        monai.append(_monai_ram_estimate(space, arch, patch) * 2**20)
    est, true, monai = np.array(est), np.array(true), np.array(monai)
    ratio, monai_ratio = est / true, monai / true
    rho, monai_rho = spearmanr(est, true).statistic, spearmanr(monai, true).statistic
    return {
        "what": f"memory estimate vs saved bytes ({count} random archs, {patch}^3, {filters} filters)",
        "ours_s": float(np.abs(ratio - 1).max()),
        "monai_s": float(np.abs(monai_ratio - 1).max()),
        "check": f"max |estimate/measured - 1|; ours: Spearman rho {rho:.4f}; MONAI get_ram_cost_usage "
        f"(cells only, fed one-hot logits): rho {monai_rho:.4f}, estimate/measured median "
        f"{np.median(monai_ratio):.2f} (range {monai_ratio.min():.2f}-{monai_ratio.max():.2f})",
        "unit": "rel. error",
    }


def _monai_ram_estimate(space, arch, patch: int) -> float:
    """MONAI's get_ram_cost_usage (MB) for a discrete architecture: logits of +-30 make its
    probabilities 0 or 1 (edge order and op order are the same as ours)."""
    with torch.no_grad():
        space.log_alpha_a.copy_(torch.from_numpy(np.where(arch.edge_mask, 30.0, -30.0)))
        onehot = np.full(space.log_alpha_c.shape, -30.0)
        for i, e in zip(*np.nonzero(arch.edge_mask)):
            onehot[i, e, arch.op_index[i, e]] = 30.0
        space.log_alpha_c.copy_(torch.from_numpy(onehot))
        return float(space.get_ram_cost_usage((1, 1, patch, patch, patch)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and archs")
    parser.add_argument("--device", default="cpu", help="where the search step runs (cpu or cuda)")
    parser.add_argument("--amp", action="store_true", help="search step under autocast")
    parser.add_argument(
        "--paper-step",
        action="store_true",
        help="only time one search step at the paper's configuration (96^3, 16 filters), ours only",
    )
    args = parser.parse_args()
    try:
        import monai  # noqa: F401
    except ImportError:
        raise SystemExit("MONAI is needed for the comparison: pip install -e .[bench]") from None
    from rich.console import Console
    from rich.table import Table

    torch.manual_seed(0)
    if args.paper_step:
        rows = bench_search_step(3, 1, args.device, args.amp, patch=96, filters=16, sides=("ours",))
    else:
        rows = [bench_decode(50), bench_topology(100 if not args.quick else 20)]
        steps = 4 if args.quick else 12
        rows += bench_search_step(steps, 3, args.device, args.amp, memory_steps=steps)
        rows.append(bench_memory(6 if args.quick else 30, 64, 8))
    table = Table(title="nastk vs MONAI 1.6 DiNTS, same machine, same run")
    for col in ("what", "ours", "MONAI", "ours / MONAI", "notes"):
        table.add_column(col, overflow="fold")
    for r in rows:
        unit = r.get("unit", "s")
        ratio = r.get("ratio", r["ours_s"] / r["monai_s"] if r["monai_s"] == r["monai_s"] else float("nan"))
        fmt = (lambda v, unit=unit: f"{v:.3g} {unit}") if unit != "s" else (lambda v: f"{v * 1e3:.3g} ms")
        table.add_row(
            r["what"],
            fmt(r["ours_s"]),
            fmt(r["monai_s"]) if r["monai_s"] == r["monai_s"] else "-",
            f"{ratio:.3g}" if ratio == ratio else "-",
            r["check"],
        )
    Console(width=200).print(table)
    print(
        f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


if __name__ == "__main__":
    main()
