"""specs/msd: one search and one retrain spec per MSD task, with the paper's settings (Sec. 4.1)."""

from pathlib import Path

import pytest
import yaml

from nastk.data.augment import PAPER_BASIC, PAPER_EXTENDED
from nastk.report.paper import MSD_CLASSES, resolve_task
from nastk.spec import load_spec

from conftest import run_cli

SPECS = Path(__file__).resolve().parents[1] / "specs" / "msd"

# task: (in_channels, num_classes, patch, stride)
TASKS = {
    "Task01_BrainTumour": (4, 4, (96, 96, 96), (16, 16, 16)),
    "Task02_Heart": (1, 2, (96, 96, 96), (16, 16, 16)),
    "Task03_Liver": (1, 3, (96, 96, 96), (16, 16, 16)),
    "Task04_Hippocampus": (1, 3, (32, 32, 32), (4, 4, 4)),
    "Task05_Prostate": (2, 3, (96, 96, 32), (16, 16, 4)),
    "Task06_Lung": (1, 2, (96, 96, 96), (16, 16, 16)),
    "Task07_Pancreas": (1, 3, (96, 96, 96), (16, 16, 16)),
    "Task08_HepaticVessel": (1, 3, (96, 96, 96), (16, 16, 16)),
    "Task09_Spleen": (1, 2, (96, 96, 96), (16, 16, 16)),
    "Task10_Colon": (1, 2, (96, 96, 96), (16, 16, 16)),
}
FILES = [f"{task}-{kind}.yaml" for task in TASKS for kind in ("search", "retrain")]
CAVEAT = "not verified against the MSD paper in this repository"


def test_exactly_one_search_and_one_retrain_spec_per_task():
    assert sorted(p.name for p in SPECS.iterdir()) == sorted(FILES)
    assert len(FILES) == 20


@pytest.mark.parametrize("name", FILES)
def test_spec_validates_with_the_paper_settings(name):
    path = SPECS / name
    task, kind = name.removesuffix(".yaml").rsplit("-", 1)
    in_channels, num_classes, patch, stride = TASKS[task]
    spec = load_spec(path)
    text = path.read_text()
    assert text.startswith("# DiNTS "), "header comment"

    d = spec.dataset
    assert d.root == f"data/{task}"
    assert d.spacing == (1.0, 1.0, 1.0)
    assert (d.in_channels, d.num_classes, d.num_folds) == (in_channels, num_classes, 5)
    assert num_classes - 1 == len(MSD_CLASSES[resolve_task(task)])  # Table 2's class list agrees

    # NSD tolerance for every foreground class and nothing else, with the caveat on the values
    assert sorted(d.nsd_tolerance) == list(range(1, num_classes))
    assert all(v > 0 for v in d.nsd_tolerance.values())
    assert CAVEAT in text and "check before publishing" in text

    # Sec. 4.1: the C2FNAS augmentation for Pancreas, plus rotation, scaling and gamma for the other nine
    assert d.augment == (PAPER_BASIC if task == "Task07_Pancreas" else PAPER_EXTENDED)

    # patch in all three places, stride of the sliding window
    assert spec.search.patch_size == spec.retrain.patch_size == spec.inference.patch_size == patch
    assert spec.inference.stride == stride
    assert all(p % 32 == 0 for p in patch)  # 2^(D+1) with D = 4

    assert spec.space.name == "dints"
    assert {k: spec.space.params[k] for k in ("layers", "depths", "filters")} == {
        "layers": 12,
        "depths": 4,
        "filters": 16,
    }
    assert spec.ops == ["skip", "conv3x3x3", "p3d_3x3x1", "p3d_3x1x3", "p3d_1x3x3"]
    assert spec.search.batch_size == 8
    r = spec.retrain
    assert (r.filter_multiplier, r.batch_multiplier) == (2.0, 2)
    assert (r.warmup_iters, r.iters, r.milestones) == (1000, 40000, [8000, 16000, 24000, 32000])
    inf = spec.inference
    assert (inf.ensemble, inf.largest_component, inf.flip_tta) == ("vote", "auto", False)

    if kind == "search":
        s = spec.search
        assert (s.warmup_iters, s.weight_iters, s.joint_iters, s.milestones) == (
            1000,
            10000,
            10000,
            [8000, 16000],
        )
        assert (s.weights.lr_start, s.weights.lr, s.weights.momentum) == (0.025, 0.2, 0.9)
        assert (s.weights.weight_decay, s.weights.gamma) == (4e-5, 0.5)
        assert (s.arch.lr, s.arch.weight_decay) == (0.008, 0.0)
        losses = [(loss.name, loss.weight, loss.params) for loss in spec.losses]
        assert losses == [
            ("dice_ce", 1.0, {}),
            ("entropy_alpha", 1.0, {}),
            ("entropy_eta", 1.0, {}),
            ("topology", 0.001, {}),
            ("memory", 1.0, {"sigma": 0.8}),
        ]
    else:
        assert [loss.name for loss in spec.losses] == ["dice_ce"]
        assert "specs/archs/dints-cvpr2021.json" in text


def test_search_and_retrain_specs_of_a_task_agree_on_data():
    for task in TASKS:
        search = yaml.safe_load((SPECS / f"{task}-search.yaml").read_text())["dataset"]
        retrain = yaml.safe_load((SPECS / f"{task}-retrain.yaml").read_text())["dataset"]
        search.pop("fold")
        assert search == retrain, task


def test_pancreas_search_matches_the_reference_spec():
    ours = load_spec(SPECS / "Task07_Pancreas-search.yaml").model_dump()
    ref = load_spec(SPECS.parent / "dints-msd-search.yaml").model_dump()
    for spec in (ours, ref):
        spec.pop("name")
    assert ours["dataset"].pop("nsd_tolerance") == {1: 5.0, 2: 5.0}
    assert ref["dataset"].pop("nsd_tolerance") == {}
    assert ours == ref


def test_validate_cli_accepts_one():
    res = run_cli("validate", SPECS / "Task05_Prostate-retrain.yaml")
    assert res.returncode == 0, res.stderr
    assert "valid" in res.stdout and "- 96\n  - 96\n  - 32" in res.stdout
