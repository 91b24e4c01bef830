"""The paper's fixed setting against `nastk plan`'s, at equal compute, on three synthetic datasets.

    python bench/plan_ablation.py [--out bench-plan] [--iters 300] [--seeds 0,1] [--cases 16] [--size 48]

Datasets (all made by nastk, MSD format, 6 held-out test cases with labels in labelsTs/):

* body: ``write_synthetic_task`` (organ and lesion in a body with a zero background; about
  0.8 x 0.8 x 1.5 mm, mildly anisotropic, arbitrary MR-like units);
* head: ``write_head_task`` (brain and lesion; thick slices, about 1 x 1 x 4 mm, so strongly
  anisotropic; MR-like T1 contrast; every second case skull-stripped, 0 outside the brain);
* head, shifted: the same, but no training case is stripped and every second test case is: the shift
  of issue 17, where the held-out head was the one whose image was 0 outside the brain.

Arms, each retraining the same architecture (decoded once from a short search on the body task at
the paper's setting, so that architecture noise does not mask the data settings) for the same number
of iterations at the same batch, on fold 0 of 4 (3/4 of the training cases):

* paper: 1.0 mm isotropic spacing, z-score over the nonzero region with 0 outside, a 32^3 patch
  (the paper's 96^3 shrunk for a CPU, cubic as the paper's), rot90_xy + flip, stride 1/6 of the patch
  (the paper's 16 for 96);
* planned: ``nastk plan``'s spacing, normalisation, stride and patch, the patch planned with the
  memory the paper arm's largest network needs and never more voxels than the paper arm's (so at most
  its compute per step);
* planned + extended augmentation: rotate_xy, scale and gamma added (the paper's set for nine tasks;
  rotated and zoomed patches padded with their border);
* planned, stride 1/2: the planned models predicting with nnU-Net's stride of half a patch;
* planned, nnU-Net normalisation: the planned setting with nnU-Net's rule (the whole image's
  statistics unless cropping to the nonzero region leaves less than 3/4 of the median image), where
  that differs from the plan's (the paper's z-score over the nonzero region, 0 outside);
* planned, outside kept: the nonzero region's statistics, the outside keeping its own value
  (``zscore_nonzero_keep``), where some case's nonzero region is half foreground or more;
* planned, nnU-Net spacing: the planned setting at nnU-Net's spacing (where the data are anisotropic).

Largest-component post-processing is off in every arm (in nastk, cross-validation decides it). The
table gives DSC per class on the held-out cases (mean over cases, then over seeds), the patch voxels
(compute per step) and the time each arm took to train and predict (models reused across arms that
differ only in prediction count no training time). Models are kept under ``--out`` by a hash of their
spec, so a second run retrains only the arms whose spec changed (the times shown are those of the
runs that trained them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from nastk.data.fingerprint import compute_fingerprint
from nastk.data.synthetic import write_head_task, write_synthetic_task
from nastk.engine.options import RunOptions
from nastk.engine.retrain import run_retrain
from nastk.engine.search import run_search
from nastk.inference.predict import PredictOptions, run_predict
from nastk.metrics import dice
from nastk.plan import make_plan
from nastk.setting import required_gb, retrain_setting
from nastk.spec import validate

SPACE = {"name": "dints", "params": {"layers": 3, "depths": 3, "filters": 4}}
PAPER_PATCH = [32, 32, 32]
# The paper's set for its nine other tasks. Rotated and zoomed patches are padded with their border (not
# zeros), since under the planned normalisations 0 is not the outside's value.
EXTENDED = [
    {"name": "rot90_xy"},
    {"name": "flip"},
    {"name": "rotate_xy", "padding_mode": "border"},
    {"name": "scale", "padding_mode": "border"},
    {"name": "gamma"},
]
FOLDS = 4  # fold 0 trains on 3/4 of the training cases


def paper_spec(root: Path, iters: int, seed: int) -> dict:
    patch = PAPER_PATCH
    return {
        "seed": seed,
        "dataset": {
            "root": str(root),
            "spacing": [1.0, 1.0, 1.0],
            "num_classes": 3,
            "num_folds": FOLDS,
            "num_workers": 0,
            "augment": [{"name": "rot90_xy"}, {"name": "flip"}],
        },
        "space": SPACE,
        "losses": [{"name": "dice_ce"}],
        "search": {"patch_size": patch, "batch_size": 2},
        "retrain": {
            "patch_size": patch,
            "filter_multiplier": 2.0,
            "batch_multiplier": 1,
            "gpus": 1,
            "warmup_iters": max(1, iters // 40),
            "iters": iters,
            "milestones": [round(f * iters) for f in (0.2, 0.4, 0.6, 0.8)],
            "val_every": iters + iters // 40,
            "checkpoint_every": 10_000,
        },
        "inference": {
            "patch_size": patch,
            "stride": [max(1, p // 6) for p in patch],
            "largest_component": False,
        },
    }


def search_spec(root: Path) -> dict:
    """The quickstart's short search, at the paper arm's setting on the body task."""
    spec = paper_spec(root, 100, 0)
    spec["losses"] = [
        {"name": "dice_ce"},
        {"name": "entropy_alpha"},
        {"name": "entropy_eta"},
        {"name": "topology", "weight": 0.001},
        {"name": "memory", "params": {"sigma": 0.8}},
    ]
    spec["search"] = {
        "patch_size": [32, 32, 32],
        "batch_size": 2,
        "warmup_iters": 10,
        "weight_iters": 30,
        "joint_iters": 40,
        "milestones": [40, 60],
        "log_every": 10,
        "checkpoint_every": 1000,
    }
    return spec


def nnunet_target_spacing(root: Path) -> tuple[list[float], str]:
    """nnU-Net's target spacing (median; the 10th percentile for a thick-sliced axis), for comparison."""
    fp = compute_fingerprint(root)
    target = np.median(fp.spacings, 0)
    sizes = np.median(fp.crop_shapes, 0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    if target[worst] > 3 * max(target[others]) and sizes[worst] * 3 < min(sizes[others]):
        target[worst] = max(float(np.percentile(fp.spacings[:, worst], 10)), float(max(target[others])))
    return [float(v) for v in np.round(target, 4)], "nnU-Net"


def nnunet_and_kept_normalisation(root: Path) -> dict[str, str | None]:
    """The two alternatives to the plan's z-score (single-channel, non-CT datasets): nnU-Net's (the
    nonzero region's statistics only when cropping to it leaves less than 3/4 of the median image,
    else the whole image's) and keeping the outside's own value, tried where some case's nonzero
    region is half foreground or more (issue 17's skull-stripped head)."""
    fp = compute_fingerprint(root)
    crop = float(np.median([c.relative_size_after_crop for c in fp.cases]))
    share = max(c.foreground_share_of_nonzero for c in fp.cases)
    return {
        "planned, nnU-Net normalisation": "zscore_nonzero" if crop < 0.75 else "zscore",
        "planned, outside kept": "zscore_nonzero_keep" if share >= 0.5 else None,
    }


def planned_spec(root: Path, paper: dict, spacing: list[float] | None = None) -> tuple[dict, dict]:
    """The plan's data settings, its patch planned within the paper arm's memory; schedule and batch
    as the paper arm's (equal compute). ``spacing`` replaces the planned spacing (the patch is planned
    for it)."""
    resolved = validate(paper)
    from nastk import registry

    space = registry.load("spaces", resolved.space.name)
    ops = registry.load_ops(resolved.ops)
    params = space.Params.model_validate(resolved.space.params)
    _, largest = space.network_memory(params, ops, retrain_setting(resolved))
    gpu = required_gb(largest, 0.1, 0.0)  # no CUDA context on a CPU: no reserve
    base = {
        "space": SPACE,
        "losses": [{"name": "dice_ce"}, {"name": "memory", "params": {"reserve_gb": 0.0}}],
    }
    plan = make_plan(root, gpu, gpus=1, base=base, spacing=spacing)
    # The plan's room rule may admit a patch a little larger than the paper arm's: ask for less memory
    # until it takes no more voxels per step (equal compute at most).
    while np.prod(plan.data["retrain"]["patch_size"]) > np.prod(paper["retrain"]["patch_size"]):
        gpu *= 0.9
        plan = make_plan(root, gpu, gpus=1, base=base, spacing=spacing)
    d, r, inf = plan.data["dataset"], plan.data["retrain"], plan.data["inference"]
    spec = json.loads(json.dumps(paper))
    spec["dataset"].update(
        spacing=d["spacing"], normalization=d["normalization"], nsd_tolerance=d["nsd_tolerance"]
    )
    spec["search"]["patch_size"] = r["patch_size"]
    spec["retrain"]["patch_size"] = r["patch_size"]
    spec["inference"].update(patch_size=inf["patch_size"], stride=inf["stride"])
    return spec, plan.data


def evaluate(predictions: Path, root: Path, classes: int) -> dict:
    """Mean DSC per class over the test cases, and per case."""
    rows = []
    for ref_path in sorted((root / "labelsTs").glob("*.nii.gz")):
        pred = np.asarray(nib.load(predictions / ref_path.name).dataobj)
        ref = np.asarray(nib.load(ref_path).dataobj)
        rows.append([dice(pred == c, ref == c) for c in range(1, classes)])
    table = np.array(rows)
    return {"per_class": np.nanmean(table, 0).tolist(), "per_case": table.tolist()}


def run_arm(name: str, spec_dict: dict, arch: Path, root: Path, out: Path, stride=None) -> dict:
    run = out / name
    spec = validate(json.loads(json.dumps(spec_dict)), f"{name}.yaml")
    timing = run / "train_seconds.json"  # a second call reuses the model and its training time
    if not (run / "retrain" / "fold_0" / "model_final.pt").exists():
        t0 = time.monotonic()
        run.mkdir(parents=True, exist_ok=True)
        (run / "arch.json").write_text(arch.read_text())
        resume = (run / "retrain" / "fold_0" / "checkpoint.pt").exists()
        run_retrain(spec, run / "arch.json", "0", RunOptions(out=run, resume=resume, quiet=True))
        timing.write_text(json.dumps(time.monotonic() - t0))
    trained = json.loads(timing.read_text()) if stride is None and timing.exists() else 0.0
    preds = run / "predictions"
    if stride is not None:
        spec.inference.stride = tuple(stride)
        preds = run / "predictions_stride"
    t1 = time.monotonic()
    run_predict(spec, run, root / "imagesTs", PredictOptions(preds, [0], resume=True, quiet=True))
    result = evaluate(preds, root, spec.dataset.num_classes)
    result.update(train_s=trained, predict_s=time.monotonic() - t1, patch=list(spec.retrain.patch_size))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-plan"))
    ap.add_argument("--iters", type=int, default=300, help="retraining iterations per arm")
    ap.add_argument("--seeds", type=str, default="0,1", help="comma-separated training seeds")
    ap.add_argument("--cases", type=int, default=16, help="training cases per dataset (6 held out)")
    ap.add_argument("--size", type=int, default=48, help="in-plane side of the volumes in voxels")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out
    t_all = time.monotonic()
    data = {
        "body": out / "data" / "body",
        "head": out / "data" / "head",
        "head, shifted": out / "data" / "head-shifted",
    }
    if not (data["body"] / "dataset.json").exists():
        write_synthetic_task(data["body"], cases=args.cases, size=args.size, test_cases=6)
    if not (data["head"] / "dataset.json").exists():
        write_head_task(data["head"], cases=args.cases, size=args.size, test_cases=6)
    if not (data["head, shifted"] / "dataset.json").exists():  # no stripped head in training
        write_head_task(
            data["head, shifted"],
            cases=args.cases,
            size=args.size,
            test_cases=6,
            stripped_every=0,
            stripped_test_every=2,
        )

    arch = out / "search" / "arch.json"
    if not arch.exists():
        run_search(
            validate(search_spec(data["body"]), "search.yaml"), RunOptions(out=out / "search", quiet=True)
        )

    results: dict[str, dict] = {}
    for dname, root in data.items():
        for seed in seeds:
            paper = paper_spec(root, args.iters, seed)
            planned, plan_data = planned_spec(root, paper)
            extended = json.loads(json.dumps(planned))
            extended["dataset"]["augment"] = EXTENDED
            nnunet_spacing, _ = nnunet_target_spacing(root)
            arms = {
                "paper": (paper, None),
                "planned": (planned, None),
                "planned + extended augmentation": (extended, None),
                "planned, stride 1/2": (planned, [max(1, p // 2) for p in planned["retrain"]["patch_size"]]),
            }
            # The normalisations the plan's rule passed over (rules.normalization), where they differ
            # from the plan's on this dataset.
            for arm, scheme in nnunet_and_kept_normalisation(root).items():
                if scheme is not None and [scheme] != planned["dataset"]["normalization"]:
                    other = json.loads(json.dumps(planned))
                    other["dataset"]["normalization"] = [scheme]
                    arms[arm] = (other, None)
            if nnunet_spacing != planned["dataset"]["spacing"]:  # anisotropic: the two rules differ
                arms["planned, nnU-Net spacing"] = (
                    planned_spec(root, paper, spacing=nnunet_spacing)[0],
                    None,
                )
            for arm, (spec, stride) in arms.items():
                # Named by what decides the model (stride only decides the prediction), so a changed
                # setting never reuses another's model.
                model = {k: v for k, v in spec.items() if k != "inference"}
                digest = hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()[:8]
                folder = f"{dname.replace(', ', '-')}-s{seed}-{digest}"
                key = f"{dname}|{arm}|{seed}"
                print(f"{key} ...", file=sys.stderr, flush=True)
                results[key] = run_arm(folder, spec, arch, root, out / "runs", stride)
                results[key]["plan"] = {k: plan_data["dataset"][k] for k in ("spacing", "normalization")}
                print(f"{key}: {results[key]['per_class']}", file=sys.stderr, flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    wall = time.monotonic() - t_all
    print_table(results, seeds, wall)


def print_table(results: dict, seeds: list[int], wall: float) -> None:
    arms = []
    for key in results:
        dname, arm, _ = key.split("|")
        if (dname, arm) not in arms:
            arms.append((dname, arm))
    print(
        "| dataset | setting | patch (voxels) | DSC class 1 | DSC class 2 | mean | mean per seed "
        "| train + predict (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for dname, arm in arms:
        rows = [results[f"{dname}|{arm}|{s}"] for s in seeds]
        per_class = np.mean([r["per_class"] for r in rows], 0)
        patch = rows[0]["patch"]
        secs = np.mean([r["train_s"] + r["predict_s"] for r in rows])
        shape = f"{'x'.join(map(str, patch))} ({int(np.prod(patch)):,})"
        per_seed = " ".join(f"{np.mean(r['per_class']):.2f}" for r in rows)
        print(
            f"| {dname} | {arm} | {shape} | {per_class[0]:.3f} | {per_class[1]:.3f} | {per_class.mean():.3f} "
            f"| {per_seed} | {secs:.0f} |"
        )
    machine = f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"\n{machine}; seeds {seeds}; wall time {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
