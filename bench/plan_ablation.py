"""The paper's fixed setting against `nastk plan`'s, at equal compute, on three synthetic datasets.

    python bench/plan_ablation.py [--out bench-plan] [--iters 300] [--seeds 0,1] [--cases 16] [--size 48]
                                  [--datasets "body;head"] [--arms "paper;planned"] [--all-results]

Datasets (all made by nastk, MSD format, 6 held-out test cases with labels in labelsTs/):

* body: ``write_synthetic_task`` (organ and lesion in a body with a zero background; about
  0.8 x 0.8 x 1.5 mm, mildly anisotropic, arbitrary MR-like units);
* head: ``write_head_task`` (brain and lesion; thick slices, about 1 x 1 x 4 mm, so strongly
  anisotropic; MR-like T1 contrast; every second case skull-stripped, 0 outside the brain);
* head, shifted: the same, but no training case is stripped and every second test case is: the shift
  of issue 17, where the held-out head was the one whose image was 0 outside the brain;
* brain extraction: ``write_extraction_task`` (the same heads, but the label is the whole brain, and
  a stripped head is exactly 0 outside it, so its nonzero region is the label); no training head is
  stripped, every second test head is: issue 22's real-head failure of "0 outside".

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
  that differs from the plan's;
* planned, zscore_nonzero / zscore_nonzero_keep / zscore: the planned setting with each scheme in turn
  (non-CT datasets): the nonzero region's statistics with 0 outside (the paper's), the same statistics
  with the outside keeping its own value, the whole image's statistics. The arm whose scheme is the
  plan's is the planned arm's model (models are keyed by their spec);
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

from nastk.data.dataset import read_dataset
from nastk.data.fingerprint import compute_fingerprint
from nastk.data.synthetic import write_extraction_task, write_head_task, write_synthetic_task
from nastk.engine.options import RunOptions
from nastk.engine.retrain import run_retrain
from nastk.engine.search import run_search
from nastk.inference.predict import PredictOptions, run_predict
from nastk.metrics import dice
from nastk.plan import make_plan
from nastk.setting import global_retrain_batch, required_gb, retrain_setting
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
NON_CT_SCHEMES = ("zscore_nonzero", "zscore_nonzero_keep", "zscore")
STRIPPED = 0.5  # a test image exactly 0 over at least this share arrived stripped (for the table)


def paper_spec(root: Path, iters: int, seed: int) -> dict:
    patch = PAPER_PATCH
    return {
        "seed": seed,
        "dataset": {
            "root": str(root),
            "spacing": [1.0, 1.0, 1.0],
            "normalization": ["zscore_nonzero"],  # the paper's (MR); set, since the default is the plan's
            "num_classes": len(read_dataset(root).labels),
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


def nnunet_normalisation(root: Path) -> str:
    """nnU-Net's rule (single-channel, non-CT datasets): the nonzero region's statistics only when
    cropping to it leaves less than 3/4 of the median image, else the whole image's."""
    fp = compute_fingerprint(root)
    crop = float(np.median([c.relative_size_after_crop for c in fp.cases]))
    return "zscore_nonzero" if crop < 0.75 else "zscore"


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
    """Mean DSC per class over the test cases, per case, and which test images arrived stripped."""
    rows, stripped = [], []
    for ref_path in sorted((root / "labelsTs").glob("*.nii.gz")):
        pred = np.asarray(nib.load(predictions / ref_path.name).dataobj)
        ref = np.asarray(nib.load(ref_path).dataobj)
        image = np.asarray(nib.load(root / "imagesTs" / ref_path.name).dataobj)
        rows.append([dice(pred == c, ref == c) for c in range(1, classes)])
        stripped.append(bool(np.mean(image == 0) >= STRIPPED))
    table = np.array(rows)
    return {"per_class": np.nanmean(table, 0).tolist(), "per_case": table.tolist(), "stripped": stripped}


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
    result.update(
        train_s=trained,
        predict_s=time.monotonic() - t1,
        patch=list(spec.retrain.patch_size),
        iters=spec.retrain.iters,
        batch=global_retrain_batch(spec),
    )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-plan"))
    ap.add_argument("--iters", type=int, default=300, help="retraining iterations per arm")
    ap.add_argument("--seeds", type=str, default="0,1", help="comma-separated training seeds")
    ap.add_argument("--cases", type=int, default=16, help="training cases per dataset (6 held out)")
    ap.add_argument("--size", type=int, default=48, help="in-plane side of the volumes in voxels")
    ap.add_argument("--datasets", type=str, default=None, help="dataset names separated by ; (default all)")
    ap.add_argument("--arms", type=str, default=None, help="arm names separated by ; (default all)")
    ap.add_argument("--all-results", action="store_true", help="table of every result in --out so far")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out
    t_all = time.monotonic()
    data = {
        "body": out / "data" / "body",
        "head": out / "data" / "head",
        "head, shifted": out / "data" / "head-shifted",
        "brain extraction": out / "data" / "brain-extraction",
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
    if not (data["brain extraction"] / "dataset.json").exists():  # stripped at test time only
        write_extraction_task(data["brain extraction"], cases=args.cases, size=args.size, test_cases=6)
    body = data["body"]  # the architecture is searched on the body task, whichever datasets run
    if args.datasets:
        wanted = [d.strip() for d in args.datasets.split(";")]
        data = {name: root for name, root in data.items() if name in wanted}
    wanted_arms = [a.strip() for a in args.arms.split(";")] if args.arms else None

    arch = out / "search" / "arch.json"
    if not arch.exists():
        run_search(validate(search_spec(body), "search.yaml"), RunOptions(out=out / "search", quiet=True))

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
            # Every scheme at the planned setting (the plan's own is the planned model again), and
            # nnU-Net's rule where it picks a scheme of its own.
            nnunet = nnunet_normalisation(root)
            for arm, scheme in [*((f"planned, {s}", s) for s in NON_CT_SCHEMES), ("nnU-Net", nnunet)]:
                other = json.loads(json.dumps(planned))
                other["dataset"]["normalization"] = [scheme]
                name = arm if arm != "nnU-Net" else "planned, nnU-Net normalisation"
                if arm != "nnU-Net" or [scheme] != planned["dataset"]["normalization"]:
                    arms[name] = (other, None)
            if nnunet_spacing != planned["dataset"]["spacing"]:  # anisotropic: the two rules differ
                arms["planned, nnU-Net spacing"] = (
                    planned_spec(root, paper, spacing=nnunet_spacing)[0],
                    None,
                )
            if wanted_arms is not None:
                arms = {name: arm for name, arm in arms.items() if name in wanted_arms}
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
                results[key]["normalization"] = spec["dataset"]["normalization"] or ["by modality"]
                print(f"{key}: {results[key]['per_class']}", file=sys.stderr, flush=True)
    # Merged with earlier runs' results, so that runs of a few datasets or arms add up to one table.
    stored = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    stored.update(results)
    (out / "results.json").write_text(json.dumps(stored, indent=1))
    wall = time.monotonic() - t_all
    print_table(stored if args.all_results else results, seeds, wall)


def print_table(results: dict, seeds: list[int], wall: float) -> None:
    arms = []
    for key in results:
        dname, arm, _ = key.split("|")
        if (dname, arm) not in arms:
            arms.append((dname, arm))
    print(
        "| dataset | setting | normalisation | compute: iterations x batch, patch | DSC per class | mean "
        "| mean, stripped test cases | mean per seed | train + predict (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for dname, arm in arms:
        rows = [results[f"{dname}|{arm}|{s}"] for s in seeds if f"{dname}|{arm}|{s}" in results]
        per_class = np.mean([r["per_class"] for r in rows], 0)
        patch = rows[0]["patch"]
        secs = np.mean([r["train_s"] + r["predict_s"] for r in rows])
        compute = f"{rows[0].get('iters', '?')} x {rows[0].get('batch', '?')}, {'x'.join(map(str, patch))}"
        per_seed = " ".join(f"{np.mean(r['per_class']):.2f}" for r in rows)
        stripped = [
            np.mean([np.nanmean(c) for c, s in zip(r["per_case"], r.get("stripped", [])) if s]) for r in rows
        ]
        on_stripped = f"{np.mean(stripped):.3f}" if all(np.isfinite(stripped)) and stripped else "-"
        scheme = ", ".join(rows[0].get("normalization", ["?"]))
        print(
            f"| {dname} | {arm} | {scheme} | {compute} | {' / '.join(f'{v:.3f}' for v in per_class)} "
            f"| {per_class.mean():.3f} | {on_stripped} | {per_seed} | {secs:.0f} |"
        )
    machine = f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"\n{machine}; seeds {seeds}; wall time {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
