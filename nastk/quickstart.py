"""``nastk quickstart``: the whole pipeline on the embedded synthetic task, in ./nastk-quickstart/.

synth -> search -> decode (arch.json, arch.png) -> retrain 2 folds (each ending with its out-of-fold
predictions; then the post-processing cross-validation chooses) -> predict held-out cases -> report (the
cross-validation table and the held-out leaderboard).
Each stage is skipped when its output exists, and an interrupted stage resumes from its checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from nastk.engine.options import RunOptions
from nastk.errors import DataError
from nastk.io import atomic_write_text
from nastk.spec import load_spec, parse_yaml, read_spec_text


def run_quickstart(spec_path: Path, out: Path, quiet: bool = False, echo=print) -> dict:
    from nastk.crossval import missing_predictions, read_splits
    from nastk.data.synthetic import threshold_baseline, write_synthetic_task
    from nastk.engine.retrain import run_retrain
    from nastk.engine.search import run_search
    from nastk.inference.predict import PredictOptions, postprocessing_classes, run_predict
    from nastk.report.command import ReportOptions, run_report

    if not spec_path.is_file():
        raise DataError(
            f"{spec_path}: quickstart spec not found (run from the repository root, or pass --spec)"
        )
    t0 = time.monotonic()
    data = out / "data"
    run = out / "run"
    base = parse_yaml(read_spec_text(spec_path), str(spec_path))
    synth = (base.get("synth") if isinstance(base, dict) else None) or {}
    if not (data / "dataset.json").exists():
        echo(f"[1/6] writing the synthetic task to {data}")
        write_synthetic_task(data, **synth)
    else:
        echo(f"[1/6] synthetic task exists: {data}")
    base.setdefault("dataset", {})["root"] = str(data)
    local = out / "spec.yaml"
    atomic_write_text(local, yaml.safe_dump(base, sort_keys=False))
    spec = load_spec(local)

    if (run / "arch.json").exists():
        echo("[2/6] search done, skipping")
    else:
        resume = (run / "search" / "checkpoint.pt").exists()
        echo(f"[2/6] search ({'resuming' if resume else 'starting'})")
        run_search(spec, RunOptions(out=run, resume=resume, quiet=quiet))
    from nastk import registry

    arch = registry.load("spaces", spec.space.name).load_arch(run / "arch.json")
    echo("[3/6] decoded architecture (arch.json, arch.png):")
    echo(arch.summary())

    for fold in range(2):
        fold_dir = run / "retrain" / f"fold_{fold}"
        done = (fold_dir / "model_final.pt").exists()
        resume = done or (fold_dir / "checkpoint.pt").exists()
        splits = read_splits(run)
        if done and splits and not missing_predictions(run, fold, splits[fold]["val"]):
            echo(f"[4/6] retrain fold {fold} done, skipping")
            continue
        what = "finishing its out-of-fold predictions" if done else "resuming" if resume else "starting"
        echo(f"[4/6] retrain fold {fold} ({what})")
        run_retrain(spec, run / "arch.json", str(fold), RunOptions(out=run, resume=resume, quiet=quiet))

    echo("[5/6] predicting the held-out cases")
    echo(postprocessing_classes(spec, run)[1])
    run_predict(spec, run, data / "imagesTs", PredictOptions(run / "predictions", resume=True, quiet=quiet))

    echo("[6/6] report")
    result = run_report([run], None, None, ReportOptions(out=run / "report", quiet=True))
    for key, title in (("cv_leaderboard_md", None), ("leaderboard_md", "# Held-out cases")):
        if key in result.paths:
            text = result.paths[key].read_text()
            echo(text.replace("# Leaderboard", title, 1) if title else text)
    for line in result.skipped:
        echo(f"skipped: {line}")
    baseline = threshold_baseline(data)
    minutes = (time.monotonic() - t0) / 60
    echo(f"threshold baseline (best global intensity interval, an oracle): mean Dice {baseline['mean']:.3f}")
    echo(f"quickstart finished in {minutes:.1f} min; everything is in {out} (see {result.out / 'report.md'})")
    return {"report": result, "baseline": baseline, "minutes": minutes}
