"""`nastk report`: any predictions against references, several runs ranked, bad input."""

import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from nastk.data.synthetic import write_synthetic_task

from conftest import run_cli


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_synthetic_task(tmp_path_factory.mktemp("rep") / "Synth", cases=2, size=24, test_cases=3)


def _predictions(task, folder, damage):
    folder.mkdir(parents=True)
    for ref in sorted((task / "labelsTs").glob("*.nii.gz")):
        img = nib.load(ref)
        data = np.asarray(img.dataobj).copy()
        if damage:
            data = np.roll(data, damage, axis=0)  # a shifted segmentation: worse DSC and NSD
        nib.save(nib.Nifti1Image(data.astype(np.uint8), img.affine, img.header), folder / ref.name)
    return folder


def _run(task, root, name, damage):
    run = root / name
    _predictions(task, run / "predictions", damage)
    spec = {
        "dataset": {"root": str(task), "nsd_tolerance": {1: 1.0, 2: 1.0}},
        "search": {"patch_size": [32, 32, 32]},
        "retrain": {"patch_size": [32, 32, 32]},
        "inference": {"patch_size": [32, 32, 32], "stride": [16, 16, 16]},
    }
    (run / "spec.yaml").write_text(yaml.safe_dump(spec))
    return run


def test_two_runs_ranked_best_first_in_table2_layout(task, tmp_path):
    good, bad = _run(task, tmp_path, "good", 0), _run(task, tmp_path, "bad", 2)
    res = run_cli("report", bad, good, "--out", tmp_path / "report", "--quiet")
    assert res.returncode == 0, res.stderr
    board = pd.read_csv(tmp_path / "report" / "leaderboard.csv")
    assert list(board.columns) == ["rank", "method", "DSC1", "DSC2", "DSC avg", "NSD1", "NSD2", "NSD avg"]
    assert list(board["method"]) == ["good", "bad"] and board.loc[0, "DSC avg"] == 100.0
    cases = pd.read_csv(tmp_path / "report" / "cases.csv")
    assert {"method", "case", "class", "dsc", "nsd", "tolerance"} <= set(cases.columns) and len(
        cases
    ) == 2 * 3 * 2
    for name in ("summary.json", "leaderboard.md", "dice.png", "architectures.csv"):
        assert (tmp_path / "report" / name).exists(), name
    assert "| rank | method |" in (tmp_path / "report" / "leaderboard.md").read_text()


def test_any_folder_with_paper_reference_rows(task, tmp_path):
    pred = _predictions(task, tmp_path / "pred", 1)
    res = run_cli(
        "report",
        "--pred",
        pred,
        "--ref",
        task / "dataset.json",
        "--tolerance",
        "1=2",
        "--tolerance",
        "2=2",
        "--reference",
        "paper",
        "--task",
        "Pancreas",
        "--out",
        tmp_path / "r",
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    board = pd.read_csv(tmp_path / "r" / "leaderboard.csv")
    assert {"DiNTS", "nnUNet", "C2FNAS", "pred"} <= set(board["method"])
    assert set(board["source"]) == {"paper Table 2", "this run"}
    dints = board[board["method"] == "DiNTS"].iloc[0]
    assert dints["DSC1"] == pytest.approx(81.02) and dints["NSD2"] == pytest.approx(75.90)
    assert dints["NSD avg"] == pytest.approx(86.08)
    assert set(pd.read_csv(tmp_path / "r" / "cases.csv")["tolerance"]) == {2.0}


@pytest.mark.parametrize("problem", ["shape", "missing", "values"])
def test_bad_predictions_exit_2_naming_the_case(task, tmp_path, problem):
    pred = _predictions(task, tmp_path / "pred", 0)
    target = sorted(pred.glob("*.nii.gz"))[1]
    case = target.name.replace(".nii.gz", "")
    img = nib.load(target)
    if problem == "shape":
        nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), img.affine), target)
    elif problem == "values":
        data = np.asarray(img.dataobj).copy()
        data[0, 0, 0] = 9
        nib.save(nib.Nifti1Image(data, img.affine, img.header), target)
    else:
        shutil.copy(target, pred / "stranger.nii.gz")
        case = "stranger"
    res = run_cli(
        "report", "--pred", pred, "--ref", task / "dataset.json", "--out", tmp_path / "r", "--quiet"
    )
    assert res.returncode == 2, res.stdout
    assert case in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r" / "leaderboard.csv").exists()


def test_missing_predictions_scored_as_empty_only_when_asked(task, tmp_path):
    """Ranking over the cases that happen to have predictions compares methods on different data:
    a missing case is an error, or with --missing empty an empty prediction, and the table says so."""
    from nastk.report.command import run_report

    pred = _predictions(task, tmp_path / "pred", 0)
    complete = run_report([], pred, task / "dataset.json", {}, tmp_path / "all", False, None, quiet=True)
    assert "every reference case has one" in complete["leaderboard_md"].read_text()
    (pred / "synth_101.nii.gz").unlink()
    paths = run_report([], pred, task / "dataset.json", {}, tmp_path / "r", False, None, True, "empty")
    cases = pd.read_csv(paths["cases"])
    scored_empty = cases[cases["case"] == "synth_101"]
    assert len(scored_empty) == 2 and set(scored_empty["prediction"]) == {"missing, scored as empty"}
    assert (scored_empty["dsc"] == 0).all()  # the reference has both classes
    assert set(cases["case"]) == {"synth_100", "synth_101", "synth_102"}
    assert (
        "scored as empty (--missing empty): pred: 1 of 3 (synth_101)" in paths["leaderboard_md"].read_text()
    )
    board = pd.read_csv(paths["leaderboard_csv"])
    assert board.loc[0, "DSC avg"] < 100
