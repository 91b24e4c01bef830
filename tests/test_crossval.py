"""Cross-validation: out-of-fold predictions as `predict` writes them, resumable, split over DDP ranks; the
post-processing they choose and `predict` applies; the cross-validation table, recomputed from the files."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import ndimage

from nastk.crossval import prediction_file, update_postprocessing
from nastk.engine.options import RunOptions
from nastk.engine.retrain import run_retrain
from nastk.inference import predict as predict_module
from nastk.inference.predict import PredictOptions, postprocessing_classes, run_predict
from nastk.metrics import surface_dice
from nastk.report.command import ReportOptions, run_report
from nastk.spec import load_spec, validate

from conftest import run_cli
from tinydata import save_nifti

FULL = np.ones((3, 3, 3), bool)  # 26-connectivity, as nastk's post-processing


def _array(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _splits(run: Path) -> list[dict]:
    return json.loads((run / "splits.json").read_text())


def _copy_run(run: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run, dest, ignore=shutil.ignore_patterns("predictions", "report")))


def _spec_file(run: Path, dest: Path, **inference) -> Path:
    data = yaml.safe_load((run / "spec.yaml").read_text())
    data["inference"].update(inference)
    dest.write_text(yaml.safe_dump(data))
    return dest


# ----------------------------------------------------------------------------- out-of-fold predictions


def test_out_of_fold_predictions_are_predict_output_in_the_original_geometry(retrained, tmp_path):
    """Every training case is predicted once, by the fold that did not train on it, on its source grid;
    and the file is what `nastk predict` with that fold alone and no post-processing writes."""
    _, root, run = retrained
    splits = _splits(run)
    seen = []
    for k, split in enumerate(splits):
        for case in split["val"]:
            out, src = nib.load(prediction_file(run, k, case)), nib.load(root / "imagesTr" / f"{case}.nii.gz")
            assert out.shape == src.shape and out.get_data_dtype() == np.uint8
            np.testing.assert_allclose(out.affine, src.affine)
            seen.append(case)
    assert sorted(seen) == sorted(p.name.removesuffix(".nii.gz") for p in (root / "labelsTr").iterdir())

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for case in splits[0]["val"]:
        (inputs / f"{case}.nii.gz").symlink_to(root / "imagesTr" / f"{case}.nii.gz")
    spec = _spec_file(run, tmp_path / "spec.yaml", largest_component=False)
    res = run_cli(
        "predict", run, "--input", inputs, "--folds", "0", "--spec", spec, "--output", tmp_path / "p"
    )
    assert res.returncode == 0, res.stderr
    for case in splits[0]["val"]:
        np.testing.assert_array_equal(
            _array(tmp_path / "p" / f"{case}.nii.gz"), _array(prediction_file(run, 0, case))
        )


def test_resume_finishes_missing_out_of_fold_predictions(retrained, tmp_path):
    _, _, shared = retrained
    run = _copy_run(shared, tmp_path / "run")
    case = _splits(run)[1]["val"][0]
    lost = prediction_file(run, 1, case)
    expected = _array(lost)
    lost.unlink()
    (run / "postprocessing.json").unlink()
    final0 = run / "retrain" / "fold_0" / "model_final.pt"
    final0.unlink()  # as if killed after the last checkpoint, before the final model
    kept = {p: p.stat().st_mtime_ns for p in run.rglob("*.nii.gz")} | {
        p: p.stat().st_mtime_ns for p in run.rglob("model_*.pt")
    }
    spec = load_spec(run / "spec.yaml")
    run_retrain(spec, run / "arch.json", "all", RunOptions(out=run, resume=True, quiet=True))
    np.testing.assert_array_equal(_array(lost), expected)  # the same model, the same prediction
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # nothing else redone
    assert (run / "postprocessing.json").is_file()  # every fold complete again
    weights = torch.load(final0, weights_only=True)["model"]
    last = torch.load(run / "retrain" / "fold_0" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(weights[k], last[k]) for k in last)


def test_two_ranks_split_the_out_of_fold_predictions(retrained, tmp_path):
    """Under DDP each rank predicts its share of the validation cases (none waits at a barrier for the
    others'), and the process group gets the explicit timeout."""
    _, _, shared = retrained
    spec = _spec_file(shared, tmp_path / "spec.yaml")
    script = tmp_path / "ddp_oof.py"
    script.write_text(
        "import json, os, sys\n"
        "import torch.distributed as tdist\n"
        "from nastk.spec import load_spec\n"
        "from nastk.engine.options import RunOptions\n"
        "from nastk.engine import retrain\n"
        "seen, init = [], tdist.init_process_group\n"
        "def record_init(*a, **kw):\n"
        "    seen.append({'timeout_s': kw['timeout'].total_seconds()})\n"
        "    return init(*a, **kw)\n"
        "tdist.init_process_group = record_init\n"
        "validate = retrain.validate\n"
        "def record(net, root, cases, spec, device, amp, oof=None):\n"
        "    seen.append({'cases': list(cases), 'oof': oof is not None})\n"
        "    return validate(net, root, cases, spec, device, amp, oof)\n"
        "retrain.validate = record\n"
        "opts = RunOptions(out=sys.argv[2], quiet=True)\n"
        "retrain.run_retrain(load_spec(sys.argv[1]), sys.argv[3], '0', opts)\n"
        "open(sys.argv[2] + '/rank' + os.environ['RANK'] + '.json', 'w').write(json.dumps(seen))\n"
    )
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NASTK_DIST_TIMEOUT_MIN": "7"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519"]
    res = subprocess.run(
        [*cmd, str(script), str(spec), str(out), str(shared / "arch.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(calls[0] == {"timeout_s": 420.0} for calls in ranks)
    finals = [[c["cases"] for c in calls[1:] if c["oof"]] for calls in ranks]
    val = _splits(out)[0]["val"]
    assert finals[0] == [val[0::2]] and finals[1] == [val[1::2]]  # one share each, at the fold's end
    assert all(prediction_file(out, 0, case).is_file() for case in val)
    rows = pd.read_csv(out / "retrain" / "fold_0" / "val_metrics.csv")
    assert set(rows["case"]) == set(val)  # rank 0 logged every rank's scores


# ----------------------------------------------------------------------------- post-processing


def _two_lesion_run(tmp_path: Path) -> tuple[Path, dict]:
    """A fake run with one fold and two cases. Case a: an organ and two separated lesions, predicted with
    both lesions right and a spurious organ blob. Case b: one lesion, predicted with a small false lesion
    speck beside it. Keeping the largest component helps the organ; for lesions it helps case b a
    little and deletes a real lesion in case a."""
    ref_a = np.zeros((24, 24, 12), np.uint8)
    ref_a[2:10, 2:10, 2:8] = 1  # the organ
    ref_a[14:18, 14:18, 2:6] = 2  # lesion one
    ref_a[18:22, 2:6, 6:10] = 2  # lesion two, far from the first
    pred_a = ref_a.copy()
    pred_a[20:22, 18:22, 2:4] = 1  # a spurious organ blob far from the organ
    ref_b = np.zeros_like(ref_a)
    ref_b[2:10, 2:10, 2:8] = 1
    ref_b[14:20, 14:20, 2:6] = 2
    pred_b = ref_b.copy()
    pred_b[22, 22, 10] = 2  # a one-voxel false lesion
    run = tmp_path / "run"
    refs = {}
    for case, ref, pred in (("a", ref_a, pred_a), ("b", ref_b, pred_b)):
        refs[case] = tmp_path / "labels" / f"{case}.nii.gz"
        save_nifti(ref, refs[case])
        save_nifti(pred, prediction_file(run, 0, case))
    (run / "splits.json").write_text(json.dumps([{"train": [], "val": ["a", "b"]}]))
    (run / "retrain" / "fold_0" / "model_final.pt").write_bytes(b"")
    return run, refs


def _largest(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return mask
    labels, _ = ndimage.label(mask, FULL)
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def _independent_dice(pred: np.ndarray, ref: np.ndarray, c: int, keep_largest: bool) -> float:
    p, r = pred == c, ref == c
    p = _largest(p) if keep_largest else p
    total = p.sum() + r.sum()
    return float("nan") if total == 0 else 2 * (p & r).sum() / total


def test_postprocessing_keeps_the_largest_component_where_it_helps_and_not_where_it_hurts(tmp_path):
    run, refs = _two_lesion_run(tmp_path)
    assert update_postprocessing(run, 3, refs) == run / "postprocessing.json"
    chosen = json.loads((run / "postprocessing.json").read_text())
    assert chosen["largest_component"] == [1]  # organ yes, lesions no
    for c in (1, 2):
        pairs = [
            [_independent_dice(_array(prediction_file(run, 0, k)), _array(refs[k]), c, lcc) for lcc in (0, 1)]
            for k in ("a", "b")
        ]
        raw, kept = np.mean(pairs, axis=0)
        entry = chosen["classes"][str(c)]
        assert entry["mean_dice"] == pytest.approx(raw, abs=1e-6)
        assert entry["mean_dice_largest_component"] == pytest.approx(kept, abs=1e-6)
        if c == 2:  # helps case b, hurts case a more
            (a_raw, a_kept), (b_raw, b_kept) = pairs
            assert b_kept > b_raw and a_kept < a_raw and kept < raw

    prediction_file(run, 0, "b").unlink()  # a fold with a missing prediction decides nothing
    (run / "postprocessing.json").unlink()
    assert update_postprocessing(run, 3, refs) is None and not (run / "postprocessing.json").exists()


def test_predict_applies_the_post_processing_cross_validation_chose(retrained, tmp_path, monkeypatch):
    """`auto` takes RUN/postprocessing.json: with [1], a spurious organ blob goes and both separated
    lesions stay; `true` would delete a lesion; without the file nothing is removed."""
    _, root, shared = retrained
    run = _copy_run(shared, tmp_path / "run")

    def designed(volume, net, spec, device, progress=None, accumulate_on=None, pad_value=0.0):
        shape = volume.shape[1:]
        assert min(shape) >= 5, shape
        labels = torch.zeros(shape, dtype=torch.long)
        labels[:2, :2, :2] = 1  # the organ
        labels[4, 4, 4] = 1  # a spurious organ voxel
        labels[0, 4, 0] = labels[4, 0, 0] = 2  # two separated lesions
        return torch.nn.functional.one_hot(labels, 3).permute(3, 0, 1, 2).float()

    monkeypatch.setattr(predict_module, "window_probabilities", designed)

    def components(setting, post: list[int] | None):
        (run / "postprocessing.json").unlink(missing_ok=True)
        if post is not None:
            (run / "postprocessing.json").write_text(json.dumps({"largest_component": post}))
        spec = load_spec(_spec_file(run, tmp_path / "spec.yaml", largest_component=setting))
        out = tmp_path / f"out_{setting}_{post}"
        [path] = run_predict(spec, run, root / "imagesTs", PredictOptions(out, [0], quiet=True))[:1]
        labels = _array(path)
        return [ndimage.label(labels == c, FULL)[1] for c in (1, 2)], postprocessing_classes(spec, run)

    counts, (classes, note) = components("auto", [1])
    assert counts == [1, 2] and classes == [1] and "cross-validation chose" in note
    counts, (classes, note) = components("auto", None)
    assert counts == [2, 2] and classes == [] and "not found" in note
    assert components(True, None)[0] == [1, 1]
    assert components(False, [1, 2])[0] == [2, 2]


def test_largest_component_setting_is_checked():
    assert validate({}).inference.largest_component == "auto"
    assert validate({"inference": {"largest_component": [2]}}).inference.largest_component == [2]
    with pytest.raises(Exception, match="inference.largest_component"):
        validate({"inference": {"largest_component": [3]}})


# ----------------------------------------------------------------------------- the cross-validation table


def test_cross_validation_table_recomputed_from_the_nifti_files(retrained, tmp_path):
    """The scores of cv_cases.csv and the means and stds of cv_leaderboard.csv, recomputed here from the
    out-of-fold files and the original labels. The files are damaged copies of the labels (a shift and a
    stray blob), so the numbers are far from 0 and 1 and post-processing matters."""
    _, root, shared = retrained
    run = _copy_run(shared, tmp_path / "run")
    splits = _splits(run)
    for k, split in enumerate(splits):
        for case in split["val"]:
            img = nib.load(root / "labelsTr" / f"{case}.nii.gz")
            labels = np.roll(np.asarray(img.dataobj), 1 + k, axis=0)
            labels[:2, :2, :2] = 1  # a stray organ blob in a corner
            nib.save(
                nib.Nifti1Image(labels.astype(np.uint8), img.affine, img.header),
                prediction_file(run, k, case),
            )
    report = run_report([run], None, None, ReportOptions(out=tmp_path / "rep", quiet=True))
    cases = pd.read_csv(report["cv_cases"])
    rows = []
    for k, split in enumerate(splits):
        for case in split["val"]:
            pred = _array(prediction_file(run, k, case))
            ref_img = nib.load(root / "labelsTr" / f"{case}.nii.gz")
            ref, spacing = np.asarray(ref_img.dataobj), ref_img.header.get_zooms()[:3]
            for c in (1, 2):
                for variant, lcc in (("none", False), ("largest_component", True)):
                    p = _largest(pred == c) if lcc else pred == c
                    dsc = _independent_dice(pred, ref, c, lcc)
                    nsd = surface_dice(p, ref == c, spacing, 1.0)
                    rows.append(
                        {
                            "fold": k,
                            "case": case,
                            "class": c,
                            "postprocessing": variant,
                            "dsc": dsc,
                            "nsd": nsd,
                        }
                    )
    mine = pd.DataFrame(rows).sort_values(["fold", "case", "class", "postprocessing"]).reset_index(drop=True)
    theirs = cases.sort_values(["fold", "case", "class", "postprocessing"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, theirs[mine.columns], check_dtype=False, atol=1e-9)

    board = pd.read_csv(report["cv_leaderboard_csv"])
    raw = board[board["post-processing"] == "none"].iloc[0]
    for i, c in enumerate((1, 2), 1):
        for metric in ("dsc", "nsd"):
            v = mine[(mine["class"] == c) & (mine["postprocessing"] == "none")][metric] * 100
            assert raw[f"{metric.upper()}{i}"] == pytest.approx(v.mean(), abs=1e-9)
            assert raw[f"{metric.upper()}{i} std"] == pytest.approx(v.std(ddof=1), abs=1e-9)
    assert raw["DSC avg"] == pytest.approx((raw["DSC1"] + raw["DSC2"]) / 2)
    assert raw["folds"] == 2 and raw["cases"] == 4
    # the stray blob is never the largest component: keeping it off the organ helps, so it is chosen
    chosen = board[board["post-processing"] != "none"].iloc[0]
    assert chosen["post-processing"].startswith("largest component: 1") and chosen["DSC1"] > raw["DSC1"]
    arch = pd.read_csv(report["architectures"])
    assert arch.loc[0, "cv_DSC1"] == pytest.approx(chosen["DSC1"], abs=0.01)  # written with 4 digits
    assert "with its largest component" in report["cv_leaderboard_md"].read_text()
