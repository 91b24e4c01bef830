"""`nastk plan` (issue 17): fingerprints, the planning rules, planned specs on datasets of different
spacings, shapes and modalities, the knobs a user turns, and datasets that cannot be planned."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from nastk import registry
from nastk.data.fingerprint import compute_fingerprint, fingerprint_path
from nastk.data.preprocess import load_case, preprocess
from nastk.data.sampler import PatchDataset
from nastk.errors import DataError
from nastk.inference.sliding_window import sliding_window_predict
from nastk.plan import make_plan, render, rules, write_plan
from nastk.setting import TrainingSetting, required_gb, usable_bytes
from nastk.spec import load_spec, validate

from conftest import cli_in_process
from tinydata import save_nifti, write_msd, write_nnunet

TINY_SPACE = {"name": "dints", "params": {"layers": 2, "depths": 2, "filters": 2}}
NO_RESERVE = [{"name": "dice_ce"}, {"name": "memory", "params": {"reserve_gb": 0.0}}]
BASE = {"space": TINY_SPACE, "losses": NO_RESERVE}


def write_task(
    root: Path,
    shapes,
    spacing=(1.0, 1.0, 1.0),
    modality="MRI",
    zero_outside_foreground=False,
    foreground=True,
    seed=0,
) -> Path:
    """MSD task: a noisy body (a zero border around it) holding an ellipsoid of class 1 with a core of
    class 2. ``zero_outside_foreground``: the image is 0 everywhere but the foreground and a thin rim (a
    skull-stripped head: the nonzero region is mostly foreground)."""
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    training = []
    for i, shape in enumerate(shapes):
        shape = tuple(shape)
        grid = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) / (n / 4) for n in shape], indexing="ij")
        radius = np.sqrt(sum(g * g for g in grid))  # 1 on an ellipsoid of half the image's extent
        label = np.zeros(shape, np.uint8)
        if foreground:
            label[radius < 1] = 1
            label[radius < 0.35] = 2
        image = rng.normal(300, 20, shape).astype(np.float32) + 150 * (label > 0) + 100 * (label == 2)
        if zero_outside_foreground:
            keep = radius < 1.15  # the foreground and a thin rim around it
        else:
            keep = np.zeros(shape, bool)
            keep[1:-1, 1:-1, :] = True
        image = np.where(keep, image, 0).astype(np.float32)
        save_nifti(image, root / "imagesTr" / f"c{i:03d}.nii.gz", affine)
        save_nifti(label, root / "labelsTr" / f"c{i:03d}.nii.gz", affine)
        training.append({"image": f"./imagesTr/c{i:03d}.nii.gz", "label": f"./labelsTr/c{i:03d}.nii.gz"})
    dataset = {
        "name": root.name,
        "modality": {"0": modality},
        "labels": {"0": "background", "1": "organ", "2": "lesion"},
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


def key_lines(lines: list[str]) -> dict[str, int]:
    """Dotted path of each key of a planned spec -> its line (list items: ``section[i].params``)."""
    at: dict[str, int] = {}
    section, item = "", -1
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            section, item = line.split(":")[0], -1
            at[section] = i
        elif line.startswith("  - "):
            item += 1
            at[f"{section}[{item}].params"] = i
        else:
            at[f"{section}.{line.strip().split(':')[0]}"] = i
    return at


# --------------------------------------------------------------------------------------------- rules


def test_target_spacing_median_and_anisotropy_rule():
    spacings = np.array([[1.0, 1.0, 1.2], [0.9, 0.9, 1.6], [1.1, 1.1, 1.4]])
    shapes = np.array([[100, 100, 80]] * 3)
    target, why = rules.target_spacing(spacings, shapes)
    np.testing.assert_allclose(target, [1.0, 1.0, 1.4])
    assert "median" in why
    # Thick slices and few of them: resampled to isotropic voxels (nnU-Net would keep them thick).
    thick = np.array([[0.7, 0.7, s] for s in (3.0, 4.0, 5.0, 6.0, 6.0)])
    target, why = rules.target_spacing(thick, np.array([[256, 256, 20]] * 5))
    np.testing.assert_allclose(target, [0.7, 0.7, 0.7])
    assert "anisotropic" in why
    # As coarse, but with as many voxels along it: the median (nnU-Net's second condition).
    target, _ = rules.target_spacing(thick, np.array([[256, 256, 200]] * 5))
    assert target[2] == 5.0


def test_patch_rules():
    assert rules.covering_patch(np.array([40.5, 42, 28]), 16) == [48, 48, 32]
    assert rules.covering_patch(np.array([3, 3, 3]), 8) == [8, 8, 8]
    # nnU-Net: shrink the axis largest relative to the median; never below the divisor
    assert rules.axis_to_shrink([64, 64, 32], np.array([60, 40, 30]), 16) == 1
    assert rules.axis_to_shrink([16, 16, 16], np.array([60, 40, 30]), 16) is None
    assert rules.sliding_stride([96, 48, 16]) == [16, 8, 3]
    assert rules.batch_cap([64, 64, 64], 1e9, 1) == int(0.05 * 1e9 / 64**3)
    assert rules.batch_cap([64, 64, 64], 1e5, 8) == rules.MIN_BATCH
    assert rules.nsd_tolerance(np.array([0.8, 0.8, 2.5])) == 2.5


def test_normalization_rule():
    """The plan's rule is auto's (tests/test_normalization.py checks it case by case)."""
    assert rules.normalization(["CT"], [[0.5, 0.9]], [0.9, 0.9])[0] == ["ct"]
    schemes, why = rules.normalization(["T1", "CT"], [[0.8, 0.9], [0.0, 0.0]], [0.1, 0.2])
    assert schemes == ["zscore_nonzero", "ct"]
    assert "2 of 2 training cases exactly 0" in why and "foreground up to 20%" in why
    schemes, why = rules.normalization(["T1"], [[0.8, 0.9]], [0.92, 0.9])
    assert schemes == ["zscore_nonzero_keep"] and "foreground up to 92%" in why


def test_parse_duration():
    assert rules.parse_duration("2d") == 2 * 86400
    assert rules.parse_duration("36h") == 36 * 3600
    assert rules.parse_duration("90m") == 5400
    assert rules.parse_duration(" 1.5 D ") == 1.5 * 86400
    assert rules.parse_duration("3600") == 3600
    for bad in ("", "2 days", "-1h", "0s", "h", "1e9999d"):
        with pytest.raises(ValueError):
            rules.parse_duration(bad)


def test_schedule_keeps_the_papers_samples():
    paper = rules.schedule(1.0, 8, 16)
    assert paper["search"] == {
        "warmup_iters": 1000,
        "weight_iters": 10000,
        "joint_iters": 10000,
        "milestones": [8000, 16000],
    }
    assert paper["retrain"] == {
        "warmup_iters": 1000,
        "iters": 40000,
        "milestones": [8000, 16000, 24000, 32000],
    }
    one_gpu = rules.schedule(1.0, 1, 2)  # the same samples, 8x the iterations
    assert one_gpu["retrain"]["iters"] == 8 * 40000 and one_gpu["search"]["joint_iters"] == 8 * 10000
    assert rules.data_scale(100) == 1.0 and rules.data_scale(2 * rules.PAPER_TRAIN_CASES) == 2.0


# --------------------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_read_once_and_cached(tmp_path):
    root = write_msd(tmp_path / "Task01_Tiny")
    fp = compute_fingerprint(root)
    assert fp.path == fingerprint_path(root) == root / ".nastk-cache" / "fingerprint.json"
    assert len(fp.cases) == 4 and fp.modalities == {0: "MRI"}
    case = fp.cases[0]
    # tinydata's affine flips the first axis: canonical (LPS) order keeps the spacings (2, 2, 3)
    assert case.spacing == (2.0, 2.0, 3.0) and case.shape == (20, 18, 10)
    assert case.crop_shape == (16, 14, 8)  # the zero border goes
    assert case.classes[1][1] == 1 and case.classes[2][0] == 3 * 3 * 2  # one box; the inner box's voxels
    assert case.foreground == case.foreground_in_nonzero > 0
    assert set(fp.intensity[0]) >= {"mean", "std", "p00_5", "p99_5"}
    mtime = fp.path.stat().st_mtime_ns
    again = compute_fingerprint(root)
    assert again.path.stat().st_mtime_ns == mtime and again.cases == fp.cases  # from the cache
    # a changed dataset is read again
    (root / "dataset.json").write_text((root / "dataset.json").read_text().replace('"Tiny"', '"Tiny2"'))
    assert compute_fingerprint(root).name == "Tiny2"


# ------------------------------------------------------------------------- zero background: normalisation


def test_zero_background_around_foreground_plan_and_the_keep_scheme(tmp_path):
    """An image zero outside the foreground (a skull-stripped head, the nonzero region mostly
    foreground). "z-score over nonzero, zero outside" maps the outside to the foreground's mean, so the
    plan keeps the outside at its own value (`zscore_nonzero_keep`) and says how much of the nonzero
    region is foreground; padding gets the outside's value too."""
    root = write_task(tmp_path / "Head", [(32, 32, 16)] * 4, zero_outside_foreground=True)
    fp = compute_fingerprint(root)
    assert min(c.foreground_share_of_nonzero for c in fp.cases) > 0.5
    plan = make_plan(root, 0.05, base=BASE)
    assert plan.data["dataset"]["normalization"] == ["zscore_nonzero_keep"]
    share = max(c.foreground_share_of_nonzero for c in fp.cases)
    assert f"foreground up to {share:.0%}" in plan.comments["dataset.normalization"]

    def outside_and_foreground(scheme):
        spec = validate({**plan.data, "dataset": {**plan.data["dataset"], "normalization": [scheme]}})
        cache = preprocess(spec.dataset)
        image, label, meta = load_case(cache.root, cache.case_ids[0])
        # the corners of the crop box are outside the nonzero region
        outside = float(image[0, 0, 0, 0])
        like_outside = float(np.mean(np.abs(image[0][label > 0] - outside) < 1))
        return image, label, meta, outside, like_outside

    _, _, meta, outside, like_outside = outside_and_foreground("zscore_nonzero")
    assert outside == 0 and meta["pad_value"] == [0.0]
    assert like_outside > 0.5  # most foreground voxels within one std of the outside: confusable
    image, label, meta, outside, like_outside = outside_and_foreground("zscore_nonzero_keep")
    assert outside < -3 and like_outside == 0  # several standard deviations apart
    assert meta["pad_value"][0] == pytest.approx(outside, abs=1e-5)
    # padding gets the outside's value, in training patches and in the sliding window
    keep = {**plan.data, "dataset": {**plan.data["dataset"], "normalization": ["zscore_nonzero_keep"]}}
    cache = preprocess(validate(keep).dataset)
    ds = PatchDataset(cache.root, cache.case_ids[:1], (64, 64, 32), fg_fraction=0.0, seed=0)
    patch, _ = ds[0]
    assert torch.isclose(patch[0, 0, 0, 0], torch.tensor(meta["pad_value"][0]))
    seen = []
    sliding_window_predict(
        torch.from_numpy(np.array(image)),
        lambda x: seen.append(x.clone()) or torch.zeros(x.shape[0], 3, *x.shape[2:]),
        (48, 48, 32),
        (48, 48, 32),
        3,
        pad_value=meta["pad_value"],
    )
    assert torch.isclose(seen[0][0, 0, 0, 0, 0], torch.tensor(meta["pad_value"][0]))


# ------------------------------------------------------------------------------- planned specs validate

DATASETS = {
    # (writer, GPU GB): different spacings, shapes, modalities and channel counts
    "mri-aniso-small": (lambda p: write_msd(p), 0.02),
    "ct": (lambda p: write_msd(p, modality="CT"), 0.02),
    "nnunet-2ch": (lambda p: write_nnunet(p, cases=3), 0.02),
    "thick-slices": (lambda p: write_task(p, [(40, 36, 6), (44, 40, 5), (40, 40, 6)], (0.7, 0.7, 4.0)), 0.03),
    "large-vs-gpu": (lambda p: write_task(p, [(96, 88, 64), (90, 96, 60)], (1.0, 1.0, 1.0)), 0.01),
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_planned_spec_validates_fits_and_covers(tmp_path, name):
    writer, gpu = DATASETS[name]
    root = writer(tmp_path / name)
    plan = make_plan(root, gpu, base=BASE)
    out = write_plan(plan, tmp_path / "plan.yaml")
    spec = load_spec(out)  # validates, budget check included
    text = out.read_text()
    assert "largest_component:" not in text and "cross-validation decides" in text
    lines = text.splitlines()
    at = key_lines(lines)
    for path in plan.comments:  # every planned value carries its rule, right above it
        assert lines[at[path] - 1].lstrip().startswith("# "), path

    space = registry.load("spaces", "dints")
    ops = {n: registry.load("ops", n) for n in spec.ops}
    params = space.Params.model_validate(spec.space.params)
    r = spec.retrain
    setting = TrainingSetting(
        tuple(r.patch_size),
        r.batch_multiplier,
        r.filter_multiplier,
        r.amp,
        spec.dataset.in_channels,
        spec.dataset.num_classes,
    )
    small, large = space.network_memory(params, ops, setting)
    usable = usable_bytes(gpu, 0.1, 0.0)
    # estimated retraining memory fits the GPU: the smallest network, and the paper's 80% point
    assert required_gb(small, 0.1, 0.0) <= gpu
    assert small + rules.ROOM * (large - small) <= usable
    search = TrainingSetting(
        tuple(spec.search.patch_size), 1, 1.0, "off", setting.in_channels, setting.num_classes
    )
    assert required_gb(space.supernet_memory(params, ops, search), 0.1, 0.0) <= gpu
    memory = next(loss for loss in spec.losses if loss.name == "memory").params
    assert memory.get("budget_gb") == gpu or (memory.get("sigma") == 0.8 and large <= usable)

    # the patch covers the median shape, or is the largest that fits: one more step on any axis fails
    median = np.array(plan.estimates["median_shape"])
    div = space.patch_divisor(params)
    patch = list(r.patch_size)
    if not all(p >= m for p, m in zip(patch, median)):
        for axis in range(3):
            if patch[axis] < median[axis]:
                bigger = list(patch)
                bigger[axis] += div
                s2, l2 = space.network_memory(
                    params, ops, replace(setting, patch_size=tuple(bigger), batch_size=2)
                )
                assert s2 + rules.ROOM * (l2 - s2) > usable, (name, patch, bigger)
    assert all(p % div == 0 for p in patch)
    assert spec.inference.patch_size == r.patch_size and spec.dataset.num_folds == min(
        5, len(plan.fingerprint.cases)
    )


def test_thick_slices_plan_anisotropic_spacing(tmp_path):
    root = write_task(tmp_path / "thick", [(40, 36, 6), (44, 40, 5), (40, 40, 6)], (0.7, 0.7, 4.0))
    plan = make_plan(root, 0.03, base=BASE)
    assert plan.data["dataset"]["spacing"] == [0.7, 0.7, 0.7]  # isotropic voxels for the search space
    assert "anisotropic" in plan.comments["dataset.spacing"]
    assert plan.data["dataset"]["nsd_tolerance"] == {1: 4.0, 2: 4.0}  # as acquired


# ---------------------------------------------------------------------------------------------- knobs


@pytest.fixture(scope="module")
def big_task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("knobs") / "Big", [(96, 88, 64), (90, 96, 60), (92, 92, 62)])


def _batch_patch(plan):
    r = plan.data["retrain"]
    return r["batch_multiplier"], int(np.prod(r["patch_size"]))


def test_more_gpu_memory_gives_larger_patch_batch_and_budget(big_task):
    outcomes = [_batch_patch(make_plan(big_task, gb, base=BASE)) for gb in (0.01, 0.03, 0.2)]
    work = [b * v for b, v in outcomes]
    assert work == sorted(work) and work[0] < work[-1]
    assert outcomes[0][1] < outcomes[1][1]  # the patch grows first
    budgets = [
        make_plan(big_task, gb, base=BASE).data["losses"][1]["params"].get("budget_gb") for gb in (0.01, 0.03)
    ]
    assert budgets == [0.01, 0.03]


def test_more_gpus_give_a_larger_global_batch_and_fewer_iterations(big_task):
    one, eight = (make_plan(big_task, 0.03, gpus=g, base=BASE).data for g in (1, 8))
    assert eight["search"]["batch_size"] == 8 * one["search"]["batch_size"]
    global_batch = [d["retrain"]["batch_multiplier"] * d["retrain"]["gpus"] for d in (one, eight)]
    assert global_batch[1] > global_batch[0]
    assert eight["retrain"]["iters"] < one["retrain"]["iters"]
    assert eight["search"]["joint_iters"] < one["search"]["joint_iters"]


def test_longer_time_budget_gives_more_iterations(big_task):
    iters = [
        make_plan(big_task, 0.03, time_budget=t, base=BASE).data["retrain"]["iters"] for t in (60, 600, None)
    ]
    assert iters[0] < iters[1] < iters[2]
    assert make_plan(big_task, 0.03, time_budget=60, base=BASE).estimates["hours"] <= 60 / 3600 * 1.01


# ----------------------------------------------------------------------------------------- sizing (DiNTS)


def test_dints_sizing_matches_measurements(paper_ops):
    from torch.utils.flop_counter import FlopCounterMode

    from nastk_dints import memory
    from nastk_dints.budget import memory_model
    from nastk_dints.space import SPACE, DiNTSParams

    params = DiNTSParams(layers=3, depths=2, filters=3)
    setting = TrainingSetting((16, 24, 8), 1, 1.0, "off", 1, 3)
    for (layers, depths, filters), patch in (((3, 2, 3), (16, 24, 8)), ((4, 3, 8), (32, 32, 32))):
        p_ = DiNTSParams(layers=layers, depths=depths, filters=filters)
        net = SPACE.build_supernet(p_, paper_ops, 1, 3, patch)
        steps = {}
        for step in ("weight", "arch"):  # a search step trains the weights or alpha and p, never both
            for p in net.weight_parameters():
                p.requires_grad_(step == "weight")
            for p in net.arch_parameters():
                p.requires_grad_(step == "arch")
            steps[step] = memory.live_saved_bytes(net, (1, 1, *patch), input_requires_grad=False)
        for p in net.parameters():
            p.requires_grad_(True)
        both = memory.live_saved_bytes(net, (1, 1, *patch), input_requires_grad=False)
        assert both > 1.3 * max(steps.values())  # what the plan once counted: no step saves this much
        state = (
            sum(p.numel() for p in net.weight_parameters()) * 12
            + sum(p.numel() for p in net.arch_parameters()) * 16
        )
        at = TrainingSetting(patch, 1, 1.0, "off", 1, 3)
        activations = SPACE.supernet_memory(p_, paper_ops, at) - state
        # never below what the larger step saves; fitted at the smallest patches, it errs high, a little
        assert max(steps.values()) <= activations <= 1.15 * max(steps.values())
    net = SPACE.build_supernet(params, paper_ops, 1, 3, setting.patch_size)
    for cell in net.modules():
        if hasattr(cell, "fuse"):
            cell.fuse = False  # count what the ops compute, not the fused kernels' padded taps
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, 1, 16, 24, 8))
    finally:
        torch.backends.mkldnn.enabled = enabled
    assert SPACE.step_flops(params, paper_ops, setting, "supernet") == pytest.approx(
        counter.get_total_flops()
    )
    retrain = TrainingSetting((16, 24, 8), 2, 2.0, "off", 1, 3)
    model = memory_model(2, 3, paper_ops, retrain)
    assert SPACE.network_memory(params, paper_ops, retrain) == (model.smallest(3), model.largest(3))
    # the calibration constant of the time estimates: the paper's supernet, counted the same way
    paper = SPACE.step_flops(
        DiNTSParams(), paper_ops, TrainingSetting((96,) * 3, 1, 1.0, "off", 1, 3), "supernet"
    )
    assert paper / 1e9 == pytest.approx(rules.PAPER_SUPERNET_GFLOPS, rel=1e-3)


# ---------------------------------------------------------------------------------------------- CLI


def _cli(capfd, *args):
    return cli_in_process(capfd, *args)


def test_cli_plans_then_validates(tmp_path, capfd):
    root = write_msd(tmp_path / "Task02_Tiny")
    base = tmp_path / "base.yaml"
    base.write_text(json.dumps(BASE))
    out = tmp_path / "Task02.yaml"
    code, stdout, err = _cli(
        capfd,
        "plan",
        root,
        "--gpu-memory",
        "0.02",
        "--gpus",
        "2",
        "--time-budget",
        "2h",
        "--base",
        base,
        "--out",
        out,
    )
    assert code == 0, err
    assert "wrote" in stdout and out.exists()
    assert (root / ".nastk-cache" / "fingerprint.json").exists()
    code, stdout, _ = _cli(capfd, "validate", out)
    assert code == 0 and "valid" in stdout
    spec = load_spec(out)
    assert spec.retrain.gpus == 2 and spec.search.batch_size == 2 and spec.name == "Task02"
    # an existing spec is kept unless --force
    before = out.read_text()
    code, _, err = _cli(capfd, "plan", root, "--gpu-memory", "0.02", "--base", base, "--out", out)
    assert code == 2 and "--force" in err and out.read_text() == before
    code, _, _ = _cli(capfd, "plan", root, "--gpu-memory", "0.03", "--base", base, "--out", out, "--force")
    assert code == 0


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _mixed(root: Path) -> Path:
    write_msd(root)
    img = nib.load(root / "imagesTr" / "case_001.nii.gz")
    flat = np.asarray(img.dataobj)[:, :, 4]
    nib.save(nib.Nifti1Image(flat, img.affine), str(root / "imagesTr" / "case_001.nii.gz"))
    lab = nib.load(root / "labelsTr" / "case_001.nii.gz")
    nib.save(
        nib.Nifti1Image(np.asarray(lab.dataobj)[:, :, 4], lab.affine),
        str(root / "labelsTr" / "case_001.nii.gz"),
    )
    return root


UNPLANNABLE = {
    "single case": (lambda p: write_msd(p, cases=1), "single training case"),
    "no foreground": (lambda p: write_task(p, [(20, 20, 10)] * 3, foreground=False), "without foreground"),
    "mixed dimensionality": (_mixed, "mixed dimensionality"),
}


def test_a_base_with_a_quickstart_section_plans(tmp_path):
    """The quickstart's spec as --base: its synth section says how to make a synthetic task, which a plan
    for a real dataset leaves out (it once failed the render's read-back check)."""
    root = write_msd(tmp_path / "Task02_Tiny")
    base = {**BASE, "synth": {"cases": 4, "size": 32}, "name": "quickstart"}
    text = render(make_plan(root, 0.02, base=base))
    assert "synth" not in text and validate(yaml.safe_load(text)).space.name == "dints"


@pytest.mark.parametrize("name", list(UNPLANNABLE))
def test_unplannable_datasets_one_line_exit_2_nothing_written(tmp_path, capfd, name):
    writer, reason = UNPLANNABLE[name]
    root = writer(tmp_path / "Bad")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, _, err = _cli(capfd, "plan", root, "--gpu-memory", "8", "--out", tmp_path / "spec.yaml", "-q")
    assert code == 2
    assert reason in _one_line(err) and "dataset.json" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--gpu-memory", "0"], "--gpu-memory"),
        (["--gpu-memory", "nan"], "--gpu-memory"),
        (["--gpu-memory", "0.5"], "reserve"),  # below the default 0.75 GB reserve
        (["--gpu-memory", "8", "--time-budget", "soon"], "--time-budget"),
        (["--gpu-memory", "1e-6", "--base", "BASE"], "smallest network"),
    ],
)
def test_bad_options_one_line_exit_2(tmp_path, capfd, args, needle):
    root = write_msd(tmp_path / "Task03_Tiny")
    base = tmp_path / "base.yaml"
    base.write_text(json.dumps(BASE))
    args = [str(base) if a == "BASE" else a for a in args]
    code, _, err = _cli(capfd, "plan", root, *args, "--out", tmp_path / "spec.yaml", "-q")
    assert code == 2 and needle in _one_line(err)
    assert not (tmp_path / "spec.yaml").exists()


def test_plan_library_errors_are_typed(tmp_path):
    root = write_msd(tmp_path / "Task04_Tiny")
    with pytest.raises(DataError, match="--gpus"):
        make_plan(root, 8, gpus=0)
    with pytest.raises(DataError, match="--time-budget"):
        make_plan(root, 8, time_budget=-1.0)
    with pytest.raises(DataError, match="spacing"):
        make_plan(root, 8, spacing=[1.0, 0.0, 1.0])
    given = make_plan(root, 0.02, base=BASE, spacing=[1.0, 1.0, 1.5])
    assert (
        given.data["dataset"]["spacing"] == [1.0, 1.0, 1.5] and "given" in given.comments["dataset.spacing"]
    )
    text = render(given)
    assert text.startswith("# Planned by `nastk plan`")


def test_head_task_is_anisotropic_and_stripped_where_asked(tmp_path):
    from nastk.data.synthetic import write_head_task

    root = write_head_task(
        tmp_path / "Head", cases=2, size=24, test_cases=2, stripped_every=2, stripped_test_every=0
    )
    fp = compute_fingerprint(root)
    stripped, full = fp.cases  # head_000 is stripped, head_001 is not
    assert stripped.spacing[2] > 3 * stripped.spacing[0] and stripped.shape[2] * 3 < stripped.shape[0]
    assert stripped.foreground_share_of_nonzero > 0.5 > full.foreground_share_of_nonzero
    assert full.relative_size_after_crop == 1.0 > stripped.relative_size_after_crop  # noisy air is nonzero
    test = [np.asarray(nib.load(p).dataobj) for p in sorted((root / "imagesTs").glob("*.nii.gz"))]
    assert all((image != 0).all() for image in test)  # stripped_test_every=0: no test case stripped


# ------------------------------------------------------------------------- recomputation before shrinking


def test_plan_recomputes_then_uses_mixed_precision_before_it_shrinks_the_search_patch(big_task, monkeypatch):
    """Where the supernet does not fit at the retraining patch, the plan keeps that patch with
    search.recompute: auto (and a target from --gpu-memory); without recomputation it would shrink the
    patch. Where the spec allows mixed precision (retrain.amp), and float32 with every cell recomputed
    does not fit, the search runs bf16."""
    from nastk.plan import planner

    base = {**BASE, "retrain": {"filter_multiplier": 0.5}}  # the supernet, not retraining, binds
    plan = make_plan(big_task, 0.02, base=base)
    s, r = plan.data["search"], plan.data["retrain"]
    assert s["recompute"] == "auto" and s["patch_size"] == r["patch_size"]
    assert 0 < s["memory_target_gb"] < 0.02 and "amp" not in s
    assert (
        "slowdown" in plan.comments["search.recompute"] and "recomputed" in plan.comments["search.patch_size"]
    )
    spec = validate(plan.data, "plan.yaml")
    assert spec.search.recompute == "auto"
    # the same plan without recomputation shrinks the search patch
    monkeypatch.setattr(planner._Costs, "search_modes", lambda self: [("none", "off")])
    plain = make_plan(big_task, 0.02, base=base).data["search"]
    assert plain["recompute"] == "none" and np.prod(plain["patch_size"]) < np.prod(s["patch_size"])
    monkeypatch.undo()
    # plenty of memory: no recomputation
    roomy = make_plan(big_task, 0.5, base=base).data["search"]
    assert roomy["recompute"] == "none"
    # bf16 allowed: at 0.01 GB float32 cannot keep the patch even with every cell recomputed
    tight_off = make_plan(big_task, 0.01, base=base).data
    tight_bf16 = make_plan(
        big_task, 0.01, base={**BASE, "retrain": {"filter_multiplier": 0.5, "amp": "bf16"}}
    )
    assert "amp" not in tight_off["search"]
    assert tight_bf16.data["search"]["amp"] == "bf16" and tight_bf16.data["search"]["recompute"] == "auto"
    assert "mixed precision" in tight_bf16.comments["search.amp"]
