"""Memory budgets end to end: searches on the synthetic task at sigma 0.2, 0.5 and 0.8 and at two GB
budgets, each decoded network laid out like the paper's Table 1.

    python bench/sigma_sweep.py [--out bench-sigma] [--joint-iters 120] [--device cpu|cuda]

For every run: the decoded network's estimated training memory at the retraining setting of the
spec (activations saved for backward + weights, gradients and SGD momentum), the GB it needs with
the margin and reserve, GMACs and parameters. The estimate must rise with sigma.

For the budget runs the decoded network is built at its retraining setting and one real training
step is measured on the CPU: the bytes its forward saved for backward (counted by a saved-tensor
hook) plus the bytes of its weights, gradients and momentum buffers after an SGD step. The table
shows estimate against measurement and the budget the network had to meet. With ``--device cuda``
the same step also runs on the GPU and ``torch.cuda.max_memory_allocated`` is shown next to the
estimate (what the margin has to cover).

Searches are skipped when their arch.json exists in ``--out``, so a second call only re-measures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from nastk import registry
from nastk.data.synthetic import write_synthetic_task
from nastk.engine.options import RunOptions
from nastk.engine.search import run_search
from nastk.netstats import architecture_stats
from nastk.setting import MemoryBudget, retrain_setting, spec_budget
from nastk.spec import validate
from nastk_dints.architecture import Architecture
from nastk_dints.budget import memory_model
from nastk_dints.space import DiNTSParams

SPACE_PARAMS = {"layers": 4, "depths": 3, "filters": 4}


def base_spec(root: Path, joint_iters: int) -> dict:
    """The quickstart's search, a little longer in its joint phase; retrained at 64^3, 2 per GPU."""
    return {
        "seed": 0,
        "dataset": {
            "root": str(root),
            "spacing": [0.8, 0.8, 1.5],
            "num_classes": 3,
            "num_folds": 2,
            "num_workers": 0,
            "fg_fraction": 0.5,
        },
        "space": {"name": "dints", "params": SPACE_PARAMS},
        "search": {
            "patch_size": [32, 32, 32],
            "batch_size": 2,
            "warmup_iters": 10,
            "weight_iters": 30,
            "joint_iters": joint_iters,
            "milestones": [40, 40 + joint_iters],
            "log_every": 10,
            "checkpoint_every": 1000,
        },
        "retrain": {"patch_size": [64, 64, 64], "filter_multiplier": 2.0, "batch_multiplier": 1, "gpus": 1},
        "inference": {"patch_size": [64, 64, 64], "stride": [32, 32, 32]},
    }


def with_memory(spec: dict, params: dict) -> dict:
    losses = [
        {"name": "dice_ce"},
        {"name": "entropy_alpha"},
        {"name": "entropy_eta"},
        {"name": "topology", "weight": 0.001},
        {"name": "memory", "params": params},
    ]
    return {**spec, "losses": losses}


# A CPU has no CUDA context or cuDNN workspace to reserve for: the budget runs set the reserve to 0
# and keep the default 10% margin.
RESERVE_GB = 0.0


def budget_points(spec: dict) -> list[float]:
    """Two budgets (GB) between the smallest and the largest network of the space, one third and two
    thirds of the way, at the spec's retraining setting with the default margin and no reserve."""
    s = validate(spec)
    ops = registry.load_ops(s.ops)
    model = memory_model(SPACE_PARAMS["depths"], SPACE_PARAMS["filters"], ops, retrain_setting(s))
    low, high = model.smallest(SPACE_PARAMS["layers"]), model.largest(SPACE_PARAMS["layers"])
    budget = MemoryBudget(0.0, retrain_setting(s), reserve_gb=RESERVE_GB)
    return [round(budget.required_gb(low + f * (high - low)), 4) for f in (1 / 3, 2 / 3)]


def measure_step(spec, arch, device: torch.device) -> dict[str, float]:
    """One SGD training step of the discrete network at the retraining setting: the bytes saved for
    backward, and weights + gradients + momentum buffers after the step; on CUDA also the peak."""
    space = registry.load("spaces", spec.space.name)
    ops = registry.load_ops(arch.op_names)
    setting = retrain_setting(spec)
    torch.manual_seed(0)
    net = space.build_network(
        arch, ops, setting.in_channels, setting.num_classes, filter_multiplier=setting.filter_multiplier
    ).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(setting.batch_size, setting.in_channels, *setting.patch_size, device=device)
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr:
            saved[ptr] = t.untyped_storage().nbytes()
        return t.detach()

    if device.type == "cuda":  # from here the peak counts the network, its input and the step
        torch.cuda.reset_peak_memory_stats(device)
    amp = contextlib.nullcontext()
    if setting.amp != "off":
        amp = torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[setting.amp])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp:
        out = net(x)
    out.float().square().mean().backward()
    opt.step()
    state = sum(
        t.untyped_storage().nbytes()
        for p in net.parameters()
        for t in (p, p.grad, opt.state[p].get("momentum_buffer"))
        if t is not None
    )
    row = {"saved": float(sum(saved.values())), "state": float(state)}
    if device.type == "cuda":
        row["cuda_peak"] = float(torch.cuda.max_memory_allocated(device))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-sigma"))
    parser.add_argument("--joint-iters", type=int, default=120)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 200)
    data = args.out / "data"
    if not (data / "dataset.json").exists():
        write_synthetic_task(data, cases=16, size=64, test_cases=1)
    base = base_spec(data, args.joint_iters)
    runs = [(f"sigma {s}", {"sigma": s}) for s in (0.2, 0.5, 0.8)]
    runs += [(f"budget {gb} GB", {"budget_gb": gb, "reserve_gb": RESERVE_GB}) for gb in budget_points(base)]
    rows = []
    for name, params in runs:
        spec = validate(with_memory(base, params), name)
        run = args.out / name.replace(" ", "_")
        t0 = time.monotonic()
        if not (run / "arch.json").exists():
            run_search(spec, RunOptions(out=run, quiet=args.quiet, deterministic=True))
        minutes = (time.monotonic() - t0) / 60
        arch = Architecture.load(run / "arch.json")
        budget = spec_budget(spec) or MemoryBudget(0.0, retrain_setting(spec), reserve_gb=RESERVE_GB)
        stats = architecture_stats(spec, arch, budget)
        log = (run / "search" / "log.csv").read_text().splitlines()
        header, last = log[0].split(","), log[-1].split(",")
        final = dict(zip(header, last))
        row = {
            "run": name,
            "sigma_eff": float(final.get("sigma_eff") or params.get("sigma")),
            "edges": int(arch.edge_mask.sum()),
            **stats,
            "search_min": minutes,
        }
        if "budget_gb" in params:
            measured = measure_step(spec, arch, torch.device("cpu"))
            row["measured_MB"] = (measured["saved"] + measured["state"]) / 2**20
            row["est/measured"] = stats["est_train_MB"] / row["measured_MB"]
            row["budget_GB"] = params["budget_gb"]
            if args.device == "cuda":
                row["cuda_peak_MB"] = measure_step(spec, arch, torch.device("cuda"))["cuda_peak"] / 2**20
        rows.append(row)

    if args.device == "cuda":  # where it matters: the published architecture at the paper's setting
        arch = Architecture.load("specs/archs/dints-cvpr2021.json")
        for amp in ("off", "bf16"):
            spec = validate({"retrain": {"amp": amp}}, "paper")
            stats = architecture_stats(spec, arch, MemoryBudget(0.0, retrain_setting(spec)))
            peak = measure_step(spec, arch, torch.device("cuda"))["cuda_peak"] / 2**20
            rows.append({"run": f"paper arch, 96^3 x2, amp {amp}", **stats, "cuda_peak_MB": peak})
            rows[-1].pop("path_cost", None)

    setting = retrain_setting(validate(with_memory(base, {"sigma": 0.5})))
    table = Table(title=f"Table 1 on the synthetic task (retraining setting: {setting.describe()})")
    columns = [
        ("run", "run", str),
        ("sigma_eff", "sigma (eff.)", "{:.3f}"),
        ("edges", "edges", "{:d}"),
        ("GMACs", "GMACs", "{:.2f}"),
        ("params_M", "params (M)", "{:.3f}"),
        ("est_train_MB", "est. memory (MB)", "{:,.1f}"),
        ("needs_GB", "needs (GB)", "{:.4f}"),
        ("measured_MB", "measured (MB)", "{:,.1f}"),
        ("est/measured", "est./measured", "{:.4f}"),
        ("budget_GB", "budget (GB)", "{:.4f}"),
        ("cuda_peak_MB", "CUDA peak (MB)", "{:,.1f}"),
        ("search_min", "search (min)", "{:.1f}"),
    ]
    columns = [c for c in columns if any(c[0] in r for r in rows)]
    for _, title, _ in columns:
        table.add_column(title, justify="left" if title == "run" else "right")
    for r in rows:
        cells = [
            "-" if key not in r else fmt(r[key]) if fmt is str else fmt.format(r[key])
            for key, _, fmt in columns
        ]
        table.add_row(*cells)
    console.print(table)
    sigma_mem = [r["est_train_MB"] for r in rows[:3]]
    console.print(
        f"estimated memory rises with sigma: {all(a < b for a, b in zip(sigma_mem, sigma_mem[1:]))}; "
        f"budget runs within 5% of the measurement: "
        f"{all(abs(r['est/measured'] - 1) <= 0.05 for r in rows if 'est/measured' in r)}; "
        f"within their budgets: {all(r['needs_GB'] <= r['budget_GB'] for r in rows if 'budget_GB' in r)}"
    )
    console.print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; space {json.dumps(SPACE_PARAMS)}, "
        f"search {DiNTSParams.model_validate(SPACE_PARAMS).layers} layers at 32^3, "
        f"{args.joint_iters} joint iterations"
    )
    (args.out / "table.json").write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
