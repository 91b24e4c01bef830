"""Normalisation planned from what the scans show (issue 22): the ``auto`` rule, its thresholds, the
synthetic task whose stripped test heads "0 outside" fails, and what predict, export and validate say."""

from __future__ import annotations

import itertools
import json

import nibabel as nib
import numpy as np
import pytest

from nastk.data.dataset import read_dataset
from nastk.data.normalize import (
    OUTSIDE_KEPT,
    WHOLE_IMAGE,
    Background,
    auto_scheme,
    background,
    background_mismatch,
)
from nastk.data.preprocess import preprocess, process_case, resolve_normalization
from nastk.data.synthetic import write_extraction_task, write_synthetic_task
from nastk.errors import DataError
from nastk.plan import rules
from nastk.spec import validate

from conftest import cli_in_process

# ------------------------------------------------------------------------------------------ the rule


def _bg(zero_shares, fg_shares, stripped_share=0.1):
    return background(0, zero_shares, fg_shares, stripped_share)


def _brute_force_scheme(modality, zero_shares, fg_shares, stripped_share, fg_limit):
    """The rule as the docs state it, case by case: 0 outside only where it cannot give the outside a
    tissue's intensity (every case stripped, the foreground a small part of each nonzero region)."""
    if modality.upper() == "CT":
        return "ct"
    every_case_stripped = all(z >= stripped_share for z in zero_shares)
    no_case_stripped = all(z < stripped_share for z in zero_shares)
    foreground_small = all(f <= fg_limit for f in fg_shares)
    if every_case_stripped and foreground_small:
        return "zscore_nonzero"
    return WHOLE_IMAGE if no_case_stripped else OUTSIDE_KEPT


def test_auto_rule_matches_its_statement_on_every_small_dataset():
    """Every dataset of up to three cases over a grid of zero and foreground shares, both thresholds."""
    grid = [0.0, 0.05, 0.1, 0.3, 0.8]
    fg_grid = [0.0, 0.2, 0.5, 0.9]
    checked = 0
    for n in (1, 2, 3):
        for zeros in itertools.product(grid, repeat=n):
            for fgs in itertools.product(fg_grid, repeat=n):
                for tau, limit in ((0.1, 0.5), (0.3, 0.2)):
                    for modality in ("MRI", "CT"):
                        got, why = auto_scheme(modality, _bg(zeros, fgs, tau), limit)
                        assert got == _brute_force_scheme(modality, zeros, fgs, tau, limit)
                        assert why
                        checked += 1
    assert checked > 10_000


def test_auto_rule_names_each_situation():
    assert auto_scheme("CT", _bg([0.9, 0.9], [0.9, 0.9]), 0.5)[0] == "ct"
    scheme, why = auto_scheme("MRI", _bg([0.8, 0.85], [0.05, 0.1]), 0.5)  # BraTS-like: every case stripped
    assert scheme == "zscore_nonzero" and "every case has a zero outside" in why
    scheme, why = auto_scheme("MRI", _bg([0.0, 0.0], [0.15, 0.2]), 0.5)  # noisy backgrounds only
    assert scheme == WHOLE_IMAGE and "stripped at test time" in why
    scheme, why = auto_scheme("MRI", _bg([0.8, 0.0], [0.9, 0.2]), 0.5)  # the cases disagree
    assert scheme == OUTSIDE_KEPT and "disagree" in why
    scheme, why = auto_scheme("MRI", _bg([0.8, 0.78], [0.92, 0.9]), 0.5)  # a template: label = nonzero
    assert scheme == OUTSIDE_KEPT and "foreground's intensity" in why


def test_each_threshold_turns_the_decision():
    every_case_30_percent_zeros = [0.3, 0.3, 0.3]
    small = [0.1, 0.1, 0.1]
    assert auto_scheme("MRI", _bg(every_case_30_percent_zeros, small, 0.1), 0.5)[0] == "zscore_nonzero"
    # a stricter idea of "stripped": no case counts as stripped, so the whole image's statistics
    assert auto_scheme("MRI", _bg(every_case_30_percent_zeros, small, 0.5), 0.5)[0] == WHOLE_IMAGE
    half_foreground = [0.6, 0.55, 0.4]
    assert auto_scheme("MRI", _bg([0.8] * 3, half_foreground), 0.5)[0] == OUTSIDE_KEPT
    assert auto_scheme("MRI", _bg([0.8] * 3, half_foreground), 0.7)[0] == "zscore_nonzero"


def test_plan_rule_is_auto_per_channel():
    schemes, why = rules.normalization(
        ["MRI", "CT", "T2"], [[0.8, 0.9], [0.0, 0.0], [0.0, 0.0]], [0.1, 0.2], 0.1, 0.5
    )
    assert schemes == ["zscore_nonzero", "ct", WHOLE_IMAGE]
    assert why.count("channel ") == 3


def test_background_mismatch_both_ways():
    none_stripped = Background(0, 8, 0, 0.1, 0.0, 0.01, 0.2)
    all_stripped = Background(0, 8, 8, 0.1, 0.6, 0.9, 0.1)
    mixed = Background(0, 8, 3, 0.1, 0.0, 0.9, 0.9)
    assert "none of the 8 training cases" in background_mismatch(0.78, none_stripped)
    assert background_mismatch(0.02, none_stripped) is None
    assert "every one of the 8" in background_mismatch(0.0, all_stripped)
    assert background_mismatch(0.7, all_stripped) is None
    assert background_mismatch(0.0, mixed) is None and background_mismatch(0.8, mixed) is None
    assert Background.from_dict(mixed.to_dict()) == mixed


# ------------------------------------------------------------------------------------------ the spec


def test_spec_normalization_defaults_to_auto_and_accepts_old_specs():
    assert validate({}).dataset.normalization == "auto"
    assert validate({"dataset": {"normalization": None}}).dataset.normalization == "auto"
    spec = validate({"dataset": {"in_channels": 2, "normalization": ["auto", "zscore"]}})
    assert spec.dataset.normalization == ["auto", "zscore"]
    from nastk.errors import SpecError

    with pytest.raises(SpecError, match="normalization"):
        validate({"dataset": {"in_channels": 2, "normalization": ["zscore"]}})
    with pytest.raises(SpecError, match="stripped_share"):
        validate({"dataset": {"auto_normalization": {"stripped_share": 0}}})


# ------------------------------------------------------------------------------- the synthetic task


@pytest.fixture(scope="module")
def extraction(tmp_path_factory):
    """Brain extraction: no training head stripped; test heads 100 (stripped) and 101 (not)."""
    return write_extraction_task(tmp_path_factory.mktemp("ext") / "Brain", cases=4, size=24, test_cases=2)


def _dataset_spec(root, tmp_path, **dataset):
    return validate(
        {
            "dataset": {
                "root": str(root),
                "cache_dir": str(tmp_path / "cache"),
                "num_classes": len(read_dataset(root).labels),
                "num_folds": 2,
                "num_workers": 0,
                "spacing": [2.0, 2.0, 2.0],
                **dataset,
            }
        }
    )


def test_extraction_task_stripped_heads_are_exactly_their_label(extraction):
    meta = json.loads((extraction / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "brain"}
    for split, name, stripped in (
        ("Tr", "brain_000", False),
        ("Ts", "brain_100", True),
        ("Ts", "brain_101", False),
    ):
        image = np.asarray(nib.load(extraction / f"images{split}" / f"{name}.nii.gz").dataobj)
        label = np.asarray(nib.load(extraction / f"labels{split}" / f"{name}.nii.gz").dataobj)
        if stripped:
            assert np.array_equal(image != 0, label == 1)  # the nonzero region is the brain
        else:
            assert (image != 0).mean() > 0.99 and (label == 1).mean() < 0.5  # a noisy, nonzero outside


def _normalised_test_case(root, tmp_path, name, **dataset):
    """A test head preprocessed as predict does, with the scheme ``auto`` (or the spec) gives."""
    from nastk.data.dataset import Case

    spec = _dataset_spec(root, tmp_path, **dataset)
    cache = preprocess(spec.dataset, quiet=True)
    from nastk.data.preprocess import load_plan

    plan, stats = load_plan(cache.root / "plan.json")
    case = Case(name, [root / "imagesTs" / f"{name}.nii.gz"], root / "labelsTs" / f"{name}.nii.gz")
    image, label, meta = process_case(case, plan, stats, {0, 1})
    return plan, image[0], label, meta


def test_zero_outside_gives_a_stripped_heads_outside_the_brains_intensity(extraction, tmp_path):
    """The mechanism of the real-head failure, and its absence under auto."""
    plan, image, label, _ = _normalised_test_case(
        extraction, tmp_path / "a", "brain_100", normalization=["zscore_nonzero"]
    )
    brain, outside = image[label == 1], image[label == 0]
    assert plan.normalization == ("zscore_nonzero",)
    assert abs(outside.mean() - brain.mean()) < 0.05 * brain.std()  # no edge left
    plan, image, label, _ = _normalised_test_case(extraction, tmp_path / "b", "brain_100")
    brain, outside = image[label == 1], image[label == 0]
    assert plan.normalization == (WHOLE_IMAGE,)  # auto, from the training heads' noisy backgrounds
    assert brain.mean() - outside.mean() > 3 * brain.std()  # the outside far below the brain


def test_auto_default_and_its_thresholds_on_two_datasets(extraction, tmp_path):
    body = write_synthetic_task(tmp_path / "Body", cases=3, size=24, test_cases=0)
    assert preprocess(_dataset_spec(body, tmp_path / "b1").dataset, quiet=True).plan.normalization == (
        "zscore_nonzero",
    )  # the body task: every case 0 outside the body, organ and lesion a small part of it
    strict = {"auto_normalization": {"stripped_share": 0.9}}  # then no body case counts as stripped
    assert preprocess(
        _dataset_spec(body, tmp_path / "b2", **strict).dataset, quiet=True
    ).plan.normalization == (WHOLE_IMAGE,)
    ext = preprocess(_dataset_spec(extraction, tmp_path / "e1").dataset, quiet=True)
    assert ext.plan.normalization == (WHOLE_IMAGE,)
    saved = json.loads((ext.root / "plan.json").read_text())
    assert (
        saved["normalization_why"][0].startswith("auto: ")
        and "0 of 4 training cases" in saved["normalization_why"][0]
    )
    assert saved["background"][0]["stripped_cases"] == 0 and saved["background"][0]["cases"] == 4
    explicit = preprocess(
        _dataset_spec(extraction, tmp_path / "e2", normalization=["zscore_nonzero_keep"]).dataset, quiet=True
    )
    assert explicit.plan.normalization == ("zscore_nonzero_keep",)
    assert json.loads((explicit.root / "plan.json").read_text())["normalization_why"] == ["set in the spec"]
    assert explicit.root != ext.root  # a different scheme is a different cache


def test_foreground_share_threshold_on_a_stripped_template_dataset(tmp_path):
    """Every head stripped to exactly its brain: the foreground is the whole nonzero region."""
    root = write_extraction_task(tmp_path / "Templates", cases=3, size=24, test_cases=0, stripped_every=1)
    default = preprocess(_dataset_spec(root, tmp_path / "a").dataset, quiet=True)
    assert default.plan.normalization == (OUTSIDE_KEPT,)
    lax = {"auto_normalization": {"foreground_share": 1.0}}  # "0 outside" even where the brain fills it
    assert preprocess(_dataset_spec(root, tmp_path / "b", **lax).dataset, quiet=True).plan.normalization == (
        "zscore_nonzero",
    )


def test_resolution_refuses_a_wrong_channel_count(extraction, tmp_path):
    spec = _dataset_spec(extraction, tmp_path)
    two = spec.dataset.model_copy(update={"normalization": ["auto", "auto"]})
    with pytest.raises(DataError, match="1 channels, but dataset.normalization names 2"):
        resolve_normalization(two, read_dataset(extraction))


# --------------------------------------------------------------------------------------------- CLI


def test_validate_prints_what_auto_resolves_to(extraction, tmp_path, capfd):
    path = tmp_path / "spec.yaml"
    path.write_text(
        f"dataset:\n  root: {extraction}\n  cache_dir: {tmp_path / 'cache'}\n"
        "  num_classes: 2\n  num_workers: 0\n"
    )
    code, out, _ = cli_in_process(capfd, "validate", path)
    assert code == 0
    assert f"# dataset.normalization: auto resolves to ['{WHOLE_IMAGE}']" in out
    assert "stripped at test time" in out
    code, out, _ = cli_in_process(capfd, "validate", path, "--set", "dataset.normalization=[zscore]")
    assert code == 0 and "resolves to" not in out
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"dataset:\n  root: {tmp_path / 'nowhere'}\n")
    code, out, _ = cli_in_process(capfd, "validate", missing)
    assert code == 0 and "auto, resolved when preprocessing reads the dataset" in out


def test_synth_writes_each_task(tmp_path, capfd):
    code, out, _ = cli_in_process(
        capfd,
        "synth",
        tmp_path / "e",
        "--task",
        "extraction",
        "--cases",
        "2",
        "--size",
        "24",
        "--test-cases",
        "2",
    )
    assert code == 0 and "extraction" in out
    assert json.loads((tmp_path / "e" / "dataset.json").read_text())["name"] == "SyntheticBrainExtraction"
    test_zeros = [
        float(np.mean(np.asarray(nib.load(p).dataobj) == 0))
        for p in sorted((tmp_path / "e" / "imagesTs").iterdir())
    ]
    assert test_zeros[0] > 0.5 and test_zeros[1] < 0.01  # every second test head stripped
    code, _, _ = cli_in_process(
        capfd,
        "synth",
        tmp_path / "h",
        "--task",
        "head",
        "--cases",
        "2",
        "--size",
        "24",
        "--stripped-every",
        "0",
    )
    assert code == 0
    code, _, err = cli_in_process(capfd, "synth", tmp_path / "b", "--stripped-every", "2")
    assert code == 2 and "--task head or extraction" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------- trained: the failure, end to end


@pytest.fixture(scope="module")
def trained_both_ways(tmp_path_factory):
    """Brain extraction at tiny size: one short search, then the same architecture retrained under the
    paper's "0 outside" and under auto, each predicting the held-out heads (100, 102 stripped)."""
    from nastk.engine.options import RunOptions
    from nastk.engine.retrain import run_retrain
    from nastk.engine.search import run_search
    from nastk.inference.predict import PredictOptions, run_predict
    from nastk.metrics import dice

    from tinydata import TINY_SPEC, merged

    tmp = tmp_path_factory.mktemp("ext-trained")
    root = write_extraction_task(tmp / "Brain", cases=6, size=32, test_cases=4)
    base = merged(
        TINY_SPEC,
        {
            "dataset": {"root": str(root), "cache_dir": str(tmp / "cache"), "num_classes": 2},
            "retrain": {
                "iters": 200,
                "warmup_iters": 5,
                "milestones": [100],
                "val_every": 1000,
                "checkpoint_every": 1000,
            },
            "inference": {"largest_component": False},
        },
    )
    run_search(validate(base), RunOptions(out=tmp / "search", quiet=True))
    runs, dsc = {}, {}
    for name, scheme in (("zero_outside", ["zscore_nonzero"]), ("auto", "auto")):
        spec = validate(merged(base, {"dataset": {"normalization": scheme}}))
        run = tmp / name
        run.mkdir()
        (run / "arch.json").write_text((tmp / "search" / "arch.json").read_text())
        run_retrain(spec, run / "arch.json", "0", RunOptions(out=run, quiet=True))
        run_predict(spec, run, root / "imagesTs", PredictOptions(run / "pred", [0], quiet=True))
        dsc[name] = {
            p.name.split(".")[0]: dice(
                np.asarray(nib.load(run / "pred" / p.name).dataobj) == 1, np.asarray(nib.load(p).dataobj) == 1
            )
            for p in sorted((root / "labelsTs").glob("*.nii.gz"))
        }
        runs[name] = (spec, run)
    return root, runs, dsc


def test_zero_outside_fails_on_stripped_test_heads_and_auto_does_not(trained_both_ways):
    _, _, dsc = trained_both_ways
    stripped, kept = ("brain_100", "brain_102"), ("brain_101", "brain_103")

    def mean(name, cases):
        return float(np.mean([dsc[name][c] for c in cases]))

    # "0 outside": the stripped heads lose their edge, and much of their Dice
    assert mean("zero_outside", stripped) < mean("zero_outside", kept) - 0.1, dsc
    # auto keeps the outside dark: the stripped heads do clearly better, the others no worse
    assert mean("auto", stripped) > mean("zero_outside", stripped) + 0.08, dsc
    assert mean("auto", kept) > mean("zero_outside", kept) - 0.05, dsc


def test_predict_warns_about_each_head_unlike_training(trained_both_ways, capfd):
    from nastk.inference.predict import PredictOptions, run_predict

    root, runs, _ = trained_both_ways
    spec, run = runs["auto"]
    capfd.readouterr()
    run_predict(spec, run, root / "imagesTs", PredictOptions(run / "again", [0], quiet=True))
    err = capfd.readouterr().err
    warned = [line for line in err.splitlines() if "WARNING" in line or "warning" in line.lower()]
    assert [w for w in warned if "brain_100" in w] and [w for w in warned if "brain_102" in w]
    assert not [w for w in warned if "brain_101" in w or "brain_103" in w]
    assert "none of the 6 training cases was" in err
    log = (run / "log.txt").read_text()
    assert "case brain_100: channel 0 is exactly 0 over" in log


def test_export_records_the_scheme_and_why(trained_both_ways):
    from nastk.export import inference_description

    _, runs, _ = trained_both_ways
    spec, run = runs["auto"]
    entry = inference_description(spec, run, [0], "torchscript", "final")["preprocessing"]["normalization"][0]
    assert entry["scheme"] == WHOLE_IMAGE and entry["pad"] == "-mean / std"
    assert entry["chosen"].startswith("auto: ") and "stripped at test time" in entry["chosen"]
    assert entry["training_background"]["stripped_cases"] == 0
    assert entry["training_background"]["cases"] == 6
