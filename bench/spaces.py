"""DiNTS, the V-NAS-style space and a plain 3D U-Net, retrained at equal compute, on synthetic tasks.

    python bench/spaces.py [--out bench-spaces] [--seeds 0,1,2] [--tasks "body;head"] [--cases 12]
                           [--size 48] [--search-iters 60] [--iters 400] [--patch 32]

Needs ``pip install -e plugins/vnas``. Per task and seed, four arms through the same CLI a user runs:

* dints: ``nastk search`` (DiNTS, 3 layers, 3 depths, 4 filters, the paper's losses, sigma 0.8), then
  ``nastk retrain --fold all``;
* vnas: ``nastk search`` of the V-NAS-style space (4 levels, 2 searched convs per level and side, 4
  filters, the segmentation loss only) with the same schedule, then ``nastk retrain --fold all``;
* dints-path: no search; the dints arm's spec retrained with a hand-written U-Net-like path in the same
  DiNTS grid (:data:`DINTS_PATH`: down, a bottleneck, up, and a same-depth chain at full resolution,
  3x3x3 everywhere), the baseline of the real-scan measurement behind this bench: it separates what the
  search chose from what the DiNTS network family gives;
* unet: no search; ``nastk retrain --arch specs/archs/unet3d.json`` (the vnas skeleton with 3x3x3
  everywhere) with filters x 0.25, so 4 filters at input scale as the vnas arm's.

Equal compute means the same retraining in every arm: iterations, warm-up, global batch, patch, folds (2),
preprocessed data and splits (one cache per task). Each arm's search time is extra and reported. ``nastk
report dints dints-path vnas unet`` writes each task and seed's comparison (compare.csv, compare.png) and
refuses nothing: this script asserts that every row is flagged "trained alike". The table printed at the end
(and written to ``--out``/spaces.md) gives, per task and arm, cross-validation DSC per class as the mean
over seeds ± the std over seeds, GMACs, parameters, estimated training memory, search and retraining
minutes. It says where searching did not beat the baseline: a searched arm is "better" only where its mean
over seeds exceeds the U-Net's by more than the larger of the two seed spreads.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from nastk.report.leaderboard import markdown_table

REPO = Path(__file__).resolve().parents[1]
UNET = REPO / "specs" / "archs" / "unet3d.json"
# L=3, D=3: layer 1 goes down (0->1), layer 2 stays at the bottom (1->1), layer 3 comes up (1->0), and the
# full-resolution node carries on alongside (0->0) as a U-Net's skip would; every cell 3x3x3.
DINTS_PATH = {
    "format": "nastk.arch",
    "version": 1,
    "space": {"name": "dints", "params": {"layers": 3, "depths": 3, "filters": 4}},
    "layers": 3,
    "depths": 3,
    "ops": ["skip", "conv3x3x3", "p3d_3x3x1", "p3d_3x1x3", "p3d_1x3x3"],
    "cells": [
        [{"edge": [0, 0], "op": "conv3x3x3"}, {"edge": [0, 1], "op": "conv3x3x3"}],
        [{"edge": [0, 0], "op": "conv3x3x3"}, {"edge": [1, 1], "op": "conv3x3x3"}],
        [{"edge": [0, 0], "op": "conv3x3x3"}, {"edge": [1, 0], "op": "conv3x3x3"}],
    ],
}


def base_spec(root: Path, cache: Path, args, seed: int) -> dict:
    p = [args.patch] * 3
    return {
        "seed": seed,
        "dataset": {"root": str(root), "cache_dir": str(cache), "num_folds": 2, "num_workers": 0},
        "search": {
            "patch_size": p,
            "batch_size": 2,
            "warmup_iters": max(1, args.search_iters // 6),
            "weight_iters": args.search_iters // 3,
            "joint_iters": args.search_iters // 2,
            "milestones": [10**6],
            "log_every": 10,
            "checkpoint_every": 10**6,
        },
        "retrain": {
            "patch_size": p,
            "batch_multiplier": 1,
            "gpus": 1,
            "filter_multiplier": 2.0,
            "warmup_iters": max(1, args.iters // 20),
            "iters": args.iters,
            "milestones": [int(args.iters * 0.7)],
            "val_every": args.iters + 1,
            "checkpoint_every": 10**6,
        },
        "inference": {"patch_size": p, "stride": [args.patch // 2] * 3, "ensemble": "mean"},
    }


def arms(base: dict) -> dict[str, dict]:
    dints = json.loads(json.dumps(base))
    dints["space"] = {"name": "dints", "params": {"layers": 3, "depths": 3, "filters": 4}}
    vnas = json.loads(json.dumps(base))
    vnas["space"] = {"name": "vnas", "params": {"depths": 4, "convs": 2, "filters": 4}}
    vnas["ops"] = ["skip", "conv3x3x3", "vnas.conv3x3x1", "p3d_3x3x1", "p3d_1x3x3"]
    vnas["losses"] = [{"name": "dice_ce"}]
    unet = json.loads(json.dumps(vnas))
    unet["retrain"]["filter_multiplier"] = vnas["retrain"]["filter_multiplier"] * 4 / 16  # 16 -> 4 filters x2
    return {"dints": dints, "dints-path": json.loads(json.dumps(dints)), "vnas": vnas, "unet": unet}


def nastk(*args) -> None:
    res = subprocess.run([sys.executable, "-m", "nastk", *map(str, args)], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"nastk {' '.join(map(str, args))} failed:\n{res.stderr[-3000:]}")


def run_seed(task: str, root: Path, out: Path, args, seed: int) -> pd.DataFrame:
    folder = out / task / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    specs = arms(base_spec(root, out / task / "cache", args, seed))
    for name, spec in specs.items():
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        run = folder / name
        searched = name in ("dints", "vnas")
        if searched and not (run / "arch.json").exists():
            nastk("search", path, "--out", run, "-q", *(["--resume"] if (run / "search").exists() else []))
        arch = run / "arch.json" if searched else UNET
        if name == "dints-path":
            arch = folder / "dints-path.json"
            arch.write_text(json.dumps(DINTS_PATH, indent=1))
        if not (run / "retrain" / "fold_1" / "model_final.pt").exists():
            nastk("retrain", path, "--arch", arch, "--out", run, "--fold", "all", "-q")
    nastk("report", *(folder / n for n in specs), "--out", folder / "report")
    table = pd.read_csv(folder / "report" / "compare.csv")
    if not table["trained alike"].str.startswith("yes").all():
        raise SystemExit(f"{folder}: arms not trained alike: {table['trained alike'].tolist()}")
    return table.assign(task=task, seed=seed)


def summarise(rows: pd.DataFrame) -> str:
    classes = [c for c in rows.columns if c.startswith("DSC ") and c.split()[1].isdigit() and " std" not in c]
    dsc = sorted(classes, key=lambda c: int(c.split()[1])) + ["DSC mean"]  # class 1, 2, ..., then the mean
    lines = []
    for task, frame in rows.groupby("task", sort=False):
        out = []
        for run, arm in frame.groupby("run", sort=False):
            row = {"task": task, "arm": run, "seeds": len(arm)}
            for col in (c for c in dsc if frame[c].notna().any()):  # this task's classes
                row[col] = f"{arm[col].mean():.2f} ± {arm[col].std(ddof=1):.2f}"
            for col in ("GMACs", "params_M", "est_train_MB"):
                row[col] = f"{arm[col].mean():.3g}"
            row["search min"] = f"{arm['search_s'].mean() / 60:.1f}" if arm["search_s"].notna().any() else "-"
            row["retrain min"] = f"{arm['retrain_s'].mean() / 60:.1f}"
            out.append(row)
        table = pd.DataFrame(out)
        lines.append(markdown_table(table))
        pairs = [("dints", "unet", "the U-Net baseline"), ("vnas", "unet", "the U-Net baseline")]
        pairs.append(("dints", "dints-path", "the unsearched U-Net-like path of its own grid"))
        for run, base, what in pairs:
            mine, other = (frame[frame["run"] == r]["DSC mean"] for r in (run, base))
            if mine.empty or other.empty:
                continue
            spread = max(mine.std(ddof=1), other.std(ddof=1))
            delta = mine.mean() - other.mean()
            verdict = "beat" if delta > spread else "did NOT beat"
            lines.append(
                f"- {task}: {run} {verdict} {what} (mean DSC {mine.mean():.2f} vs "
                f"{other.mean():.2f}, difference {delta:+.2f}, seed spread {spread:.2f})"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-spaces"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tasks", default="body;head")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--search-iters", type=int, default=60)
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--patch", type=int, default=32)
    args = parser.parse_args()
    from nastk.data.synthetic import write_head_task, write_synthetic_task

    t0 = time.monotonic()
    seeds = [int(s) for s in args.seeds.split(",")]
    writers = {"body": write_synthetic_task, "head": write_head_task}
    rows = []
    for task in args.tasks.split(";"):
        root = args.out / "data" / task
        if not (root / "dataset.json").exists():
            writers[task](root, cases=args.cases, size=args.size, test_cases=2)
        for seed in seeds:
            rows.append(run_seed(task, root, args.out, args, seed))
    text = (
        f"bench/spaces.py {' '.join(sys.argv[1:])} on {platform.node()} ({platform.processor() or 'cpu'}), "
        f"{(time.monotonic() - t0) / 60:.0f} min\n\n" + summarise(pd.concat(rows, ignore_index=True))
    )
    (args.out / "spaces.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
