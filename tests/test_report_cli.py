"""`nastk report`: any predictions against references, several runs ranked, bad input."""

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from nastk.data.synthetic import write_synthetic_task

from conftest import run_cli
from tinydata import TINY_SPEC, merged


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
    from nastk.report.command import ReportOptions, run_report

    pred = _predictions(task, tmp_path / "pred", 0)
    complete = run_report([], pred, task / "dataset.json", ReportOptions(out=tmp_path / "all", quiet=True))
    assert "every reference case has one" in complete["leaderboard_md"].read_text()
    (pred / "synth_101.nii.gz").unlink()
    options = ReportOptions(out=tmp_path / "r", quiet=True, missing="empty")
    paths = run_report([], pred, task / "dataset.json", options)
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


# ----------------------------------------------------------------------------- every stage of a run


def _stage(run: Path, dest: Path, *keep: str) -> Path:
    dest.mkdir()
    for name in ("spec.yaml", *keep):
        src = run / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def test_report_after_search_only_writes_the_architecture_and_curves(retrained, tmp_path):
    _, _, run = retrained
    searched = _stage(run, tmp_path / "searched", "arch.json", "search")
    res = run_cli("report", searched, "--quiet")
    assert res.returncode == 0, res.stderr
    report = searched / "report"
    row = pd.read_csv(report / "architectures.csv").iloc[0]
    assert row["run"] == "searched" and row["GMACs"] > 0 and row["params_M"] > 0 and row["est_train_MB"] > 0
    for name in ("arch.png", "search_curves.png", "report.md"):
        assert (report / name).stat().st_size > 0, name
    assert not (report / "leaderboard.csv").exists() and not (report / "cv_leaderboard.csv").exists()
    assert "cross-validation: no retrained fold" in res.stdout and "test set: no predictions" in res.stdout


def test_report_on_predictions_without_labels_lists_them_and_says_why_no_scores(retrained, tmp_path):
    """A run retrained from an arch.json kept elsewhere, with predictions of cases nobody has labels for."""
    _, root, run = retrained
    data = Path(
        shutil.copytree(root, tmp_path / "Synth", ignore=shutil.ignore_patterns("labelsTs", ".nastk*"))
    )
    unlabelled = _stage(run, tmp_path / "run", "retrain")  # retrained from an arch.json kept elsewhere
    spec = yaml.safe_load((unlabelled / "spec.yaml").read_text())
    spec["dataset"]["root"] = str(data)
    (unlabelled / "spec.yaml").write_text(yaml.safe_dump(spec))
    _predictions(root, unlabelled / "predictions", 0)  # any label maps, named as the test cases
    res = run_cli("report", unlabelled, "--quiet")
    assert res.returncode == 0, res.stderr
    assert "2 case(s) predicted" in res.stdout and "synth_100, synth_101" in res.stdout
    assert "No scores" in res.stdout and "MSD leaderboard" in res.stdout
    assert not (unlabelled / "report" / "leaderboard.csv").exists()
    assert pd.read_csv(unlabelled / "report" / "architectures.csv").loc[0, "GMACs"] > 0  # from model_final.pt
    assert "splits.json" in res.stdout  # no cross-validation table without the folds, and it says so


def test_gap_of_several_runs_in_one_figure_styled_by_sigma_and_topology_loss(tmp_path):
    """Fig. 8: one line per run, colour by sigma (a GB budget by the sigma_eff it logged), dashed with the
    topology loss and solid without."""
    from nastk.report.command import gap_runs
    from nastk.report.figures import gap_figure

    def run(name, losses, gaps, sigma_eff=None, budget_gb=None):
        folder = tmp_path / name
        (folder / "search").mkdir(parents=True)
        spec = merged(TINY_SPEC, {"losses": [{"name": "dice_ce"}, *losses], "retrain": {"gpus": 1}})
        (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
        log = pd.DataFrame({"iteration": range(len(gaps)), "phase": "joint", "gap": gaps})
        if sigma_eff is not None:  # what the memory loss logs: the sigma it searches at
            log["sigma_eff"] = sigma_eff
        if budget_gb is not None:
            log["budget_gb"] = budget_gb
        log.to_csv(folder / "search" / "log.csv", index=False)
        return folder

    topo = {"name": "topology", "weight": 0.001}
    runs = [
        run("s02_topo", [topo, {"name": "memory", "params": {"sigma": 0.2}}], [4, 2, 0], 0.2),
        run("s02_none", [{"name": "memory", "params": {"sigma": 0.2}}], [6, 5, 5], 0.2),
        run("s08_topo", [topo, {"name": "memory", "params": {"sigma": 0.8}}], [2, 1, 0], 0.8),
        run("budget", [topo, {"name": "memory", "params": {"budget_gb": 8.0}}], [3, 3, 1], 0.43, 8.0),
    ]
    res = run_cli("report", *runs, "--out", tmp_path / "rep", "--quiet")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "rep" / "gap.png").stat().st_size > 0
    lines = gap_figure(gap_runs(runs)).axes[0].get_lines()
    style = {line.get_label().split(":")[0]: (line.get_color(), line.get_linestyle()) for line in lines}
    assert style["s02_topo"][1] == style["s08_topo"][1] == style["budget"][1] == "--"
    assert style["s02_none"][1] == "-"
    assert style["s02_topo"][0] == style["s02_none"][0] != style["s08_topo"][0]
    assert len({style[r][0] for r in ("s02_topo", "s08_topo", "budget")}) == 3
    assert "0.43" in next(line.get_label() for line in lines if line.get_label().startswith("budget"))
    assert list(lines[1].get_ydata()) == [6, 5, 5]


def test_pred_ref_without_dataset_json_scores_the_classes_in_either_file(tmp_path):
    """The class list is the union of the values in the predictions and the references (a class the
    predictions miss is scored 0, not dropped), the same on every run."""
    from nastk.report.command import ReportOptions, run_report

    rng = np.random.default_rng(0)
    for i in range(2):
        ref = rng.integers(0, 3, (16, 16, 12)).astype(np.uint8)
        nib.save(nib.Nifti1Image(ref, np.eye(4)), _mkdir(tmp_path / "R") / f"c{i}.nii.gz")
        pred = np.where(ref == 2, 0, ref).astype(np.uint8)  # never predicts class 2
        nib.save(nib.Nifti1Image(pred, np.eye(4)), _mkdir(tmp_path / "P") / f"c{i}.nii.gz")
    seen = set()
    for k in range(20):
        report = run_report(
            [], tmp_path / "P", tmp_path / "R", ReportOptions(out=tmp_path / f"r{k}", quiet=True)
        )
        cases = pd.read_csv(report["cases"])
        seen.add(tuple(sorted(set(cases["class"]))))
        assert (cases.loc[cases["class"] == 2, "dsc"] == 0).all()
    assert seen == {(1, 2)}


def _mkdir(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    return path
