"""The vnas space through the unchanged pipeline at tiny size: search -> decode (plain, --budget-gb,
--top-k, an infeasible budget) -> retrain -> predict -> report -> export; and the U-Net baseline file
retrained through the same pipeline with --arch and no search."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import cli_in_process
from tinydata import TINY_SPEC, write_msd

REPO = Path(__file__).resolve().parents[3]
OPS = ["skip", "conv3x3x3", "vnas.conv3x3x1"]


def vnas_spec(tmp_path: Path, root: Path, name: str = "spec.yaml", **space) -> Path:
    data = json.loads(json.dumps(TINY_SPEC))
    data["dataset"]["root"] = str(root)
    data["dataset"]["cache_dir"] = str(tmp_path / "cache")
    data["space"] = {"name": "vnas", "params": {"depths": 2, "convs": 1, "filters": 2, **space}}
    data["ops"] = OPS
    data["losses"] = [{"name": "dice_ce"}]  # V-NAS: the segmentation loss only
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vnas")
    return tmp, write_msd(tmp / "data", cases=4)


def test_search_decode_retrain_predict_report_export(data, capfd):
    tmp, root = data
    spec = vnas_spec(tmp, root)
    run = tmp / "run"
    code, _, err = cli_in_process(capfd, "search", spec, "--out", run, "-q")
    assert code == 0, err
    arch = json.loads((run / "arch.json").read_text())
    assert arch["space"]["name"] == "vnas" and len(arch["layers"]) == 3
    assert (run / "arch.png").stat().st_size > 0
    with open(run / "search" / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert "op_entropy" in rows[-1] and float(rows[-1]["op_entropy"]) > 0

    # --top-k 3 with no budget, then a budget between the smallest network and the most likely one
    code, out, err = cli_in_process(capfd, "decode", run, "--top-k", "3", "--memory")
    assert code == 0, err
    with open(run / "arch_top" / "architectures.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 3 and list(table[0]) == [
        "rank",
        "arch",
        "path_cost",
        "est_train_MB",
        "needs_GB",
        "GMACs",
        "params_M",
    ]
    costs = [float(r["path_cost"]) for r in table]
    assert costs == sorted(costs) and len({r["arch"] for r in table}) == 3
    needs = float(table[0]["needs_GB"])
    smallest_mb = min(float(r["est_train_MB"]) for r in table)
    assert "needs" in out
    over = run_budget = needs - 1e-4  # just below what the most likely network needs
    code, out, err = cli_in_process(capfd, "decode", run, "--budget-gb", f"{over:.6f}")
    if code == 2:  # the most likely network was already the smallest: nothing smaller fits
        assert "the smallest needs" in err
    else:
        decoded = json.loads((run / "arch.json").read_text())
        assert decoded["memory"]["estimated_gb"] <= run_budget
        assert decoded["layers"] != arch["layers"] or smallest_mb < float(table[0]["est_train_MB"])
    code, _, err = cli_in_process(capfd, "decode", run, "--budget-gb", "0.2")
    assert code == 2 and err.count("\n") == 1 and "the smallest needs" in err and "Traceback" not in err

    code, _, err = cli_in_process(capfd, "decode", run)  # back to the most likely
    assert code == 0, err
    code, _, err = cli_in_process(capfd, "retrain", spec, "--arch", run / "arch.json", "--fold", "all", "-q")
    assert code == 0, err
    code, _, err = cli_in_process(capfd, "predict", run, "--input", root / "imagesTr", "-q")
    assert code == 0, err
    assert len(list((run / "predictions").glob("*.nii.gz"))) == 4
    code, _, err = cli_in_process(capfd, "report", run)
    assert code == 0, err
    report = (run / "report" / "report.md").read_text()
    assert "lesion" in report
    code, _, err = cli_in_process(capfd, "export", run, "--format", "torchscript", "--out", tmp / "exported")
    assert code == 0, err
    net = torch.jit.load(str(tmp / "exported" / "fold_0" / "model.ts"))
    assert net(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_the_unet_baseline_retrains_through_the_same_pipeline(data, capfd):
    """specs/archs/unet3d.json, with no search: filters 16 x 0.125 = 2 here to stay tiny."""
    tmp, root = data
    spec = vnas_spec(tmp, root, "unet.yaml", depths=4, convs=2)
    text = yaml.safe_load(spec.read_text())
    text["retrain"]["filter_multiplier"] = 0.125
    spec.write_text(yaml.safe_dump(text))
    run = tmp / "unet"
    code, _, err = cli_in_process(
        capfd,
        "retrain",
        spec,
        "--arch",
        REPO / "specs" / "archs" / "unet3d.json",
        "--out",
        run,
        "--fold",
        "0",
        "-q",
    )
    assert code == 0, err
    assert (run / "retrain" / "fold_0" / "model_final.pt").exists()
    model = torch.load(run / "retrain" / "fold_0" / "model_final.pt", weights_only=True)
    assert json.loads(model["arch"])["ops"] == ["conv3x3x3"] and model["space"] == "vnas"
    # a spec whose skeleton differs from the file's is refused in one line naming the field
    bad = vnas_spec(tmp, root, "bad.yaml", depths=3, convs=2)
    code, _, err = cli_in_process(
        capfd,
        "retrain",
        bad,
        "--arch",
        REPO / "specs" / "archs" / "unet3d.json",
        "--out",
        tmp / "bad",
        "--fold",
        "0",
    )
    assert code == 2 and "depths" in err and err.count("\n") == 1


def test_the_quickstart_runs_with_a_spec_naming_the_space(tmp_path, capfd):
    """`nastk quickstart --spec` with the shipped vnas quickstart shrunk to tiny sizes."""
    shipped = yaml.safe_load((REPO / "specs" / "quickstart-vnas.yaml").read_text())
    assert shipped["space"]["name"] == "vnas"
    tiny = json.loads(json.dumps(TINY_SPEC))
    tiny.update(synth={"cases": 4, "size": 24, "test_cases": 1, "seed": 1}, space=shipped["space"])
    tiny["space"]["params"] = {**shipped["space"]["params"], "filters": 2}
    tiny["ops"] = shipped["ops"]
    tiny.pop("losses", None)  # the shipped spec lists none: the space's default (dice_ce alone)
    assert "losses" not in shipped
    tiny["dataset"]["cache_dir"] = str(tmp_path / "cache")
    spec = tmp_path / "quickstart.yaml"
    spec.write_text(yaml.safe_dump(tiny))
    code, out, err = cli_in_process(capfd, "quickstart", "--spec", spec, "--out", tmp_path / "qs", "--quiet")
    assert code == 0, err
    run = tmp_path / "qs" / "run"
    assert "V-NAS architecture" in out and len(list((run / "predictions").glob("*.nii.gz"))) == 1
    assert (run / "report" / "cv_leaderboard.csv").exists()


def test_report_compares_runs_of_two_spaces_and_the_baseline_at_equal_compute(data, capfd, tmp_path):
    """A DiNTS search, a vnas architecture and the U-Net baseline on the same data: one table, the
    Pareto front against brute force, and the baseline retrained longer flagged as not trained alike."""
    import pandas as pd

    from nastk.report.compare import pareto_front

    _, root = data
    dints = json.loads(json.dumps(TINY_SPEC))
    dints["dataset"].update(root=str(root), cache_dir=str(tmp_path / "cache"))
    (tmp_path / "dints.yaml").write_text(yaml.safe_dump(dints))
    assert cli_in_process(capfd, "search", tmp_path / "dints.yaml", "--out", tmp_path / "dints", "-q")[0] == 0
    runs = {"dints": tmp_path / "dints" / "arch.json"}
    spec = vnas_spec(tmp_path, root)
    text = yaml.safe_load(spec.read_text())
    text["dataset"]["cache_dir"] = str(tmp_path / "cache")
    spec.write_text(yaml.safe_dump(text))
    Architecture = __import__("nastk_vnas.architecture", fromlist=["Architecture"]).Architecture
    runs["vnas"] = Architecture(2, 1, 2, OPS, ["vnas.conv3x3x1", "skip", "conv3x3x3"]).save(
        tmp_path / "v.json"
    )
    for name, arch in runs.items():
        code, _, err = cli_in_process(
            capfd,
            "retrain",
            tmp_path / f"{'dints' if name == 'dints' else 'spec'}.yaml",
            "--arch",
            arch,
            "--out",
            tmp_path / name,
            "--fold",
            "all",
            "-q",
        )
        assert code == 0, err
    longer = dict(text, retrain={**text["retrain"], "iters": 8})
    (tmp_path / "unet.yaml").write_text(yaml.safe_dump(longer))
    unet = Architecture(2, 1, 2, ["conv3x3x3"], ["conv3x3x3"] * 3).save(tmp_path / "u.json")
    code, _, err = cli_in_process(
        capfd,
        "retrain",
        tmp_path / "unet.yaml",
        "--arch",
        unet,
        "--out",
        tmp_path / "unet",
        "--fold",
        "all",
        "-q",
    )
    assert code == 0, err

    out = tmp_path / "cmp"
    code, stdout, err = cli_in_process(
        capfd, "report", tmp_path / "dints", tmp_path / "vnas", tmp_path / "unet", "--out", out
    )
    assert code == 0, err
    table = pd.read_csv(out / "compare.csv")
    assert list(table["run"]) == ["dints", "vnas", "unet"] and list(table["space"]) == [
        "dints",
        "vnas",
        "vnas",
    ]
    assert list(table["trained alike"].str.startswith("yes")) == [True, True, False]
    assert "iterations 10 vs 8" in table.loc[2, "trained alike"]
    for col in ("DSC 1 organ", "DSC 2 lesion std", "NSD 1 organ", "GMACs", "params_M", "est_train_MB"):
        assert table[col].notna().all(), col
    assert (
        table.loc[0, "search_s"] > 0 and pd.isna(table.loc[1, "search_s"]) and (table["retrain_s"] > 0).all()
    )
    assert table.loc[2, "GMACs"] > table.loc[1, "GMACs"]  # conv3x3x3 everywhere costs more than a skip
    assert list(table["pareto"]) == list(pareto_front(table["GMACs"], table["DSC mean"]))
    report = (out / "report.md").read_text()
    assert "## Compared at equal compute" in report and "**Not trained alike**" in report
    assert (out / "compare.png").stat().st_size > 0


def test_the_pareto_front_equals_brute_force():
    import numpy as np

    from nastk.report.compare import pareto_front

    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 9))
        cost, gain = rng.integers(0, 4, n).astype(float), rng.integers(0, 4, n).astype(float)
        want = [
            not any(
                cost[j] <= cost[i] and gain[j] >= gain[i] and (cost[j] < cost[i] or gain[j] > gain[i])
                for j in range(n)
                if j != i
            )
            for i in range(n)
        ]
        assert list(pareto_front(cost, gain)) == want
    assert list(pareto_front([1.0, np.nan], [1.0, 5.0])) == [True, False]
