"""Each non-CT scheme on the same trained models, where training cannot tell the schemes apart.

    python bench/normalisation_at_prediction.py RUN [RUN ...] --data DATASET [--out DIR]

Where no training case has an exact zero, the nonzero region of every training image is the whole image, so
``zscore_nonzero``, ``zscore_nonzero_keep`` and ``zscore`` give the same training data and (in deterministic
CPU training) bit-identical models: ``bench/plan_ablation.py``'s three planned brain-extraction models of one
seed are byte-equal. The schemes then differ only in how a test case is normalised, so this script takes
each RUN (a retrained run of ``plan_ablation.py``, e.g. the shifted head's planned arm), checks that no
training case has a zero outside, predicts the dataset's test cases with each scheme from the same models
(the run's ``plan.json`` with another scheme, in a copy of the run) and prints DSC per class on the
stripped and the unstripped test cases, per run (seed): equal compute by construction.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np
import torch

from nastk.data.fingerprint import compute_fingerprint
from nastk.inference.predict import PredictOptions, run_predict
from nastk.metrics import dice
from nastk.spec import load_spec

SCHEMES = ("zscore_nonzero", "zscore_nonzero_keep", "zscore")
STRIPPED = 0.5  # a test image exactly 0 over at least this share arrived stripped


def with_scheme(run: Path, scheme: str, out: Path) -> Path:
    """A copy of ``run`` whose plan.json normalises with ``scheme`` (models and folds shared)."""
    copy = out / f"{run.name}-as-{scheme}"
    if copy.exists():
        shutil.rmtree(copy)
    copy.mkdir(parents=True)
    for name in ("arch.json", "splits.json", "spec.yaml"):
        if (run / name).exists():
            shutil.copy(run / name, copy / name)
    (copy / "retrain").symlink_to((run / "retrain").resolve())
    plan = json.loads((run / "plan.json").read_text())
    plan["plan"]["normalization"] = [scheme] * len(plan["plan"]["normalization"])
    (copy / "plan.json").write_text(json.dumps(plan, indent=1))
    return copy


def score(predictions: Path, root: Path, classes: int) -> dict[str, list[float]]:
    rows: dict[str, list] = {"stripped": [], "unstripped": []}
    for ref_path in sorted((root / "labelsTs").glob("*.nii.gz")):
        ref = np.asarray(nib.load(ref_path).dataobj)
        pred = np.asarray(nib.load(predictions / ref_path.name).dataobj)
        image = np.asarray(nib.load(root / "imagesTs" / ref_path.name).dataobj)
        kind = "stripped" if np.mean(image == 0) >= STRIPPED else "unstripped"
        rows[kind].append([dice(pred == c, ref == c) for c in range(1, classes)])
    return {k: np.nanmean(v, 0).tolist() for k, v in rows.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, required=True, help="the dataset the runs were trained on")
    ap.add_argument("--out", type=Path, default=Path("bench-normalisation"))
    args = ap.parse_args()
    fp = compute_fingerprint(args.data)
    zeros = max(max(c.zero_share) for c in fp.cases)
    if zeros > 0:
        raise SystemExit(
            f"{args.data}: a training case is exactly 0 over {zeros:.1%}: the schemes train differently"
        )
    results = {}
    for run in args.runs:
        spec = load_spec(run / "spec.yaml")
        for scheme in SCHEMES:
            copy = with_scheme(run, scheme, args.out)
            # The copy's plan.json is deliberately not the one the folds were trained with.
            with mock.patch("nastk.provenance.check_folds_agree", lambda *a, **k: None):
                run_predict(
                    spec, copy, args.data / "imagesTs", PredictOptions(copy / "predictions", [0], quiet=True)
                )
            results[(run.name, scheme)] = score(copy / "predictions", args.data, spec.dataset.num_classes)
    print(
        "| scheme at prediction | DSC per class, stripped test cases | mean | per seed "
        "| DSC per class, unstripped | mean |"
    )
    print("|---|---|---|---|---|---|")
    for scheme in SCHEMES:
        rows = [results[(run.name, scheme)] for run in args.runs]
        stripped = np.mean([r["stripped"] for r in rows], 0)
        unstripped = np.mean([r["unstripped"] for r in rows], 0)
        per_seed = " ".join(f"{np.mean(r['stripped']):.2f}" for r in rows)
        print(
            f"| {scheme} | {' / '.join(f'{v:.3f}' for v in stripped)} | {stripped.mean():.3f} | {per_seed} "
            f"| {' / '.join(f'{v:.3f}' for v in unstripped)} | {unstripped.mean():.3f} |"
        )
    print(f"\n{platform.machine()}, torch {torch.__version__}; runs: {', '.join(r.name for r in args.runs)}")


if __name__ == "__main__":
    main()
