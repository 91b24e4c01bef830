"""One run, one truth (issue 23): every artefact knows what it was made from, and nothing mixes what was
not made together. Each test is a user's steps; each failed on the code before the issue."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from conftest import cli_in_process
from tinydata import AFFINE, TINY_SPEC, _save, make_case, merged

# ----------------------------------------------------------------------------------------- helpers


def write_nii_task(root: Path, cases: int = 3, seed: int = 0) -> Path:
    """An MSD task of uncompressed .nii files (MRI: per-case normalisation), so a label edited in place
    keeps its size."""
    rng = np.random.default_rng(seed)
    training = []
    for i in range(cases):
        image, label = make_case(rng)
        _save(image, AFFINE, root / "imagesTr" / f"case_{i:03d}.nii")
        _save(label, AFFINE, root / "labelsTr" / f"case_{i:03d}.nii")
        training.append({"image": f"./imagesTr/case_{i:03d}.nii", "label": f"./labelsTr/case_{i:03d}.nii"})
    dataset = {
        "name": "Syn",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "organ", "2": "lesion"},
        "numTraining": cases,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return root


def spec_file(path: Path, root: Path, **overrides) -> Path:
    data = merged(merged(TINY_SPEC, {"dataset": {"root": str(root)}}), overrides)
    path.write_text(yaml.safe_dump(data))
    return path


def edit_label_in_place(path: Path) -> np.ndarray:
    """Relabel the lesion as organ and write the file over itself: same size, new content."""
    img = nib.load(path)
    label = np.asarray(img.dataobj).copy()
    size = path.stat().st_size
    label[label == 2] = 1
    nib.save(nib.Nifti1Image(label, img.affine, img.header), str(path))
    assert path.stat().st_size == size
    return label


def cache_folders(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir())


# ------------------------------------------------------------------------ (a) content-keyed cache


def test_a_label_edited_in_place_is_preprocessed_again_and_only_its_case(tmp_path, capfd):
    root = write_nii_task(tmp_path / "Syn")
    spec = spec_file(tmp_path / "spec.yaml", root, dataset={"cache_dir": str(tmp_path / "cache")})
    code, _, err = cli_in_process(capfd, "preprocess", spec, "--quiet")
    assert code == 0, err
    (folder,) = cache_folders(tmp_path / "cache")
    label_before = np.load(folder / "case_001_label.npy")
    assert (label_before == 2).any()
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}

    edit_label_in_place(root / "labelsTr" / "case_001.nii")
    code, _, err = cli_in_process(capfd, "preprocess", spec, "--quiet")
    assert code == 0, err

    assert cache_folders(tmp_path / "cache") == [folder]  # the same cache, one case redone
    changed = {p.name for p in folder.glob("case_*.json") if p.stat().st_mtime_ns != stamps[p.name]}
    assert changed == {"case_001.json"}
    label_after = np.load(folder / "case_001_label.npy")
    assert not (label_after == 2).any() and (label_after == 1).sum() == (label_before > 0).sum()


def test_two_datasets_with_one_folder_name_never_share_a_cache(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("NASTK_CACHE", str(tmp_path / "shared"))
    site_a = write_nii_task(tmp_path / "site_a" / "Syn")
    site_b = Path(shutil.copytree(site_a, tmp_path / "site_b" / "Syn"))
    expected_b = edit_label_in_place(site_b / "labelsTr" / "case_000.nii")
    for root, name in ((site_a, "a.yaml"), (site_b, "b.yaml")):
        code, _, err = cli_in_process(capfd, "preprocess", spec_file(tmp_path / name, root), "--quiet")
        assert code == 0, err
    folders = cache_folders(tmp_path / "shared" / "Syn")
    assert len(folders) == 2
    labels = [np.load(f / "case_000_label.npy") for f in folders]
    assert sorted(int((lab == 2).any()) for lab in labels) == [0, 1]  # each its own labels
    assert not (expected_b == 2).any()


# ------------------------------------------------------------------------- (e) overlapping splits


def _splits_spec(tmp_path: Path, folds: list[dict]) -> Path:
    root = write_nii_task(tmp_path / "Syn", cases=4)
    (tmp_path / "splits_final.json").write_text(json.dumps(folds))
    return spec_file(
        tmp_path / "spec.yaml",
        root,
        dataset={"cache_dir": str(tmp_path / "cache"), "splits_file": str(tmp_path / "splits_final.json")},
    )


def test_a_case_validated_by_two_folds_is_refused(tmp_path, capfd):
    folds = [
        {"train": ["case_002", "case_003"], "val": ["case_000", "case_001"]},
        {"train": ["case_000"], "val": ["case_001", "case_002", "case_003"]},
    ]
    code, out, err = cli_in_process(capfd, "preprocess", _splits_spec(tmp_path, folds), "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "splits_final.json" in err and "case_001" in err and "folds 0 and 1" in err
    assert not (tmp_path / "cache").exists()


def test_a_case_twice_in_one_training_list_is_refused(tmp_path, capfd):
    folds = [
        {"train": ["case_002", "case_003", "case_003"], "val": ["case_000", "case_001"]},
        {"train": ["case_000", "case_001"], "val": ["case_002", "case_003"]},
    ]
    code, out, err = cli_in_process(capfd, "preprocess", _splits_spec(tmp_path, folds), "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "case_003 twice in its train list" in err


# ------------------------------------------------------------- (b) folds found by what they are


def _copy_run(run: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run, dest, ignore=shutil.ignore_patterns("predictions", "report")))


def test_copied_or_odd_fold_folders_are_ignored_with_one_warning(retrained, tmp_path, capfd):
    _, root, source = retrained
    run = _copy_run(source, tmp_path / "run")
    shutil.copytree(run / "retrain" / "fold_0", run / "retrain" / "fold_0_bak")  # cp -r fold_0 fold_0_bak
    shutil.copytree(run / "retrain" / "fold_1", run / "retrain" / "fold_x")

    code, out, err = cli_in_process(
        capfd, "predict", run, "--input", root / "imagesTs", "--output", tmp_path / "pred", "--quiet"
    )
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "fold_0_bak" in warnings[0] and "fold_x" in warnings[0], err
    assert "Traceback" not in err
    assert "fold(s) [0, 1]," in (run / "log.txt").read_text()  # not [0, 0, 1]

    code, out, err = cli_in_process(
        capfd, "export", run, "--format", "torchscript", "--out", tmp_path / "exp"
    )
    assert code == 0, err
    models = json.loads((tmp_path / "exp" / "inference.json").read_text())["models"]
    assert [m["fold"] for m in models] == [0, 1]
    assert sum(line.startswith("warning") for line in err.splitlines()) == 1

    code, out, err = cli_in_process(capfd, "report", run, "--out", tmp_path / "report", "--quiet")
    assert code == 0, err
    assert sum(line.startswith("warning") for line in err.splitlines()) == 1, err
    assert "fold_0_bak" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ (c) provenance


def test_each_fold_records_what_it_was_made_from(retrained):
    _, _, run = retrained
    records = [json.loads((run / "retrain" / f"fold_{k}" / "provenance.json").read_text()) for k in (0, 1)]
    for key in ("spec", "arch", "plan", "splits", "dataset"):
        assert records[0][key] and records[0][key] == records[1][key]
    import hashlib

    assert records[0]["plan"] == hashlib.sha256((run / "plan.json").read_bytes()).hexdigest()[:16]
    assert records[0]["splits"] == hashlib.sha256((run / "splits.json").read_bytes()).hexdigest()[:16]
    import torch

    state = torch.load(run / "retrain" / "fold_1" / "model_final.pt", weights_only=True)
    assert json.loads(state["provenance"])["arch"] == records[1]["arch"]
    made_from = json.loads((run / "arch.json").read_text())["made_from"]  # the decoded architecture's record
    params = hashlib.sha256((run / "search" / "arch_params.npz").read_bytes()).hexdigest()[:16]
    assert made_from["arch_params"] == params and made_from["spec"]
    plan = json.loads((run / "plan.json").read_text())
    assert plan["content"] == records[0]["dataset"]  # the plan records the dataset's content key


def test_retraining_a_fold_with_other_settings_into_a_run_is_refused(retrained, tmp_path, capfd):
    _, _, source = retrained
    run = _copy_run(source, tmp_path / "run")
    shutil.rmtree(run / "retrain" / "fold_1")
    kept = {name: (run / name).read_text() for name in ("plan.json", "splits.json", "spec.yaml")}
    cache = f"dataset.cache_dir={tmp_path / 'cache'}"  # the shared fixture's cache stays as it was
    for setting, needle in (
        ("seed=1", "seed 0 vs 1"),
        ("dataset.spacing=[1.5,1.5,1.5]", "dataset.spacing"),
    ):
        code, out, err = _retrain_fold_1_into(capfd, run, setting, cache)
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert "fold_0/provenance.json" in err and "fold_1" in err and needle in err, err
        assert {name: (run / name).read_text() for name in kept} == kept  # nothing replaced
        assert not (run / "retrain" / "fold_1" / "provenance.json").exists()


def _retrain_fold_1_into(capfd, run, *settings):
    """``nastk retrain RUN/spec.yaml --arch RUN/arch.json --fold 1 --out RUN`` with ``--set`` each setting."""
    sets = [arg for setting in settings for arg in ("--set", setting)]
    args = ("retrain", run / "spec.yaml", "--arch", run / "arch.json", "--fold", "1", "--out", run, "--quiet")
    return cli_in_process(capfd, *args, *sets)


def test_a_run_from_before_provenance_records_is_still_protected(retrained, tmp_path, capfd):
    """Folds trained before records were kept: the run's splits.json stands for them."""
    _, _, source = retrained
    run = _copy_run(source, tmp_path / "run")
    shutil.rmtree(run / "retrain" / "fold_1")
    (run / "retrain" / "fold_0" / "provenance.json").unlink()
    kept = (run / "splits.json").read_text()
    code, _, err = _retrain_fold_1_into(capfd, run, "seed=1", f"dataset.cache_dir={tmp_path / 'cache'}")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(run / "splits.json") in err and "fold 0" in err and "fold_1" in err
    assert (run / "splits.json").read_text() == kept


def test_folds_made_differently_are_not_ensembled_exported_or_mixed_silently(retrained, tmp_path, capfd):
    _, root, source = retrained
    run = _copy_run(source, tmp_path / "run")
    other = tmp_path / "other"
    code, _, err = cli_in_process(
        capfd,
        "retrain",
        run / "spec.yaml",
        "--arch",
        run / "arch.json",
        "--fold",
        "1",
        "--out",
        other,
        "--quiet",
        "--set",
        "retrain.iters=3",
    )
    assert code == 0, err
    shutil.rmtree(run / "retrain" / "fold_1")
    shutil.copytree(other / "retrain" / "fold_1", run / "retrain" / "fold_1")  # a fold from elsewhere

    code, _, err = cli_in_process(
        capfd, "predict", run, "--input", root / "imagesTs", "--output", tmp_path / "pred", "--quiet"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "fold_1/provenance.json" in err and "fold_0/provenance.json" in err and "retrain.iters" in err
    assert not (tmp_path / "pred").exists()
    code, _, err = cli_in_process(capfd, "export", run, "--format", "torchscript", "--out", tmp_path / "exp")
    assert code == 2 and "retrain.iters" in err and not (tmp_path / "exp").exists()
    code, out, err = cli_in_process(capfd, "report", run, "--out", tmp_path / "report", "--quiet")
    assert code == 0, err
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Folds: what each was trained with" in text and "retrain.iters" in text


# -------------------------------------------------- (d) re-decoding a retrained run, top-k folders


def _holding_lock(folder: Path):
    """A second process holding nastk's lock on ``folder`` (kill it when done)."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom nastk.lock import run_lock\n"
            "lock = run_lock(sys.argv[1])\nlock.__enter__()\nprint('locked', flush=True)\ntime.sleep(300)\n",
            str(folder),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_decoding_a_retrained_run_keeps_the_architecture_its_folds_were_trained_with(
    retrained, tmp_path, capfd
):
    _, _, source = retrained
    run = _copy_run(source, tmp_path / "run")
    trained_with = (run / "arch.json").read_bytes()

    code, out, err = cli_in_process(capfd, "decode", run, "--budget-gb", "1000", "--no-picture")
    assert code == 0, err
    assert (run / "arch.json").read_bytes() == trained_with and (run / "arch-2.json").is_file()
    assert "arch-2.json" in out

    code, out, err = cli_in_process(capfd, "decode", run, "--out", run / "arch.json", "--no-picture")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--force" in err, err
    assert (run / "arch.json").read_bytes() == trained_with

    holder = _holding_lock(run)  # a retrain running in this run: decode waits its turn
    try:
        code, out, err = cli_in_process(capfd, "decode", run, "--force", "--no-picture")
        assert code == 2 and f"pid {holder.pid}" in err, err
    finally:
        holder.kill()
        holder.wait()
    assert (run / "arch.json").read_bytes() == trained_with

    code, out, err = cli_in_process(
        capfd, "decode", run, "--force", "--no-picture", "--out", run / "arch.json"
    )
    assert code == 0, err


def _searched_run(tmp_path: Path, layers: int = 3, depths: int = 2) -> Path:
    run = tmp_path / "run"
    (run / "search").mkdir(parents=True)
    (run / "spec.yaml").write_text(
        f"space: {{params: {{layers: {layers}, depths: {depths}, filters: 8}}}}\nops: [skip, conv3x3x3]\n"
        "search: {patch_size: [32, 32, 32]}\nretrain: {patch_size: [32, 32, 32]}\n"
        "inference: {patch_size: [32, 32, 32], stride: [16, 16, 16]}\n"
    )
    edges = depths * 3 - 2
    rng = np.random.default_rng(2)
    np.savez(
        run / "search" / "arch_params.npz",
        edge_logits=rng.normal(size=(layers, edges)),
        op_logits=rng.normal(size=(layers, edges, 2)),
    )
    return run


def _folder(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_top_k_replaces_its_whole_folder(tmp_path, capfd, monkeypatch):
    run = _searched_run(tmp_path)
    code, _, err = cli_in_process(capfd, "decode", run, "--top-k", "5", "--no-picture")
    assert code == 0, err
    assert sorted(_folder(run / "arch_top")) == [
        *(f"arch_{k}.json" for k in range(1, 6)),
        "architectures.csv",
    ]
    code, _, err = cli_in_process(capfd, "decode", run, "--top-k", "2", "--no-picture")
    assert code == 0, err
    assert sorted(_folder(run / "arch_top")) == ["arch_1.json", "arch_2.json", "architectures.csv"]
    assert len((run / "arch_top" / "architectures.csv").read_text().strip().splitlines()) == 3
    assert not [p for p in run.iterdir() if p.name.startswith(".arch_top")]

    before = _folder(run / "arch_top")
    import nastk.netstats

    calls = []
    real = nastk.netstats.architecture_stats

    def killed_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill mid-way
        return real(*args, **kwargs)

    monkeypatch.setattr(nastk.netstats, "architecture_stats", killed_on_the_third)
    try:
        cli_in_process(capfd, "decode", run, "--top-k", "4", "--no-picture")
    except KeyboardInterrupt:
        pass
    assert len(calls) == 3
    assert _folder(run / "arch_top") == before  # the old folder, whole
    assert not [p for p in run.iterdir() if p.name.startswith(".arch_top")]


def test_a_top_k_killed_mid_way_leaves_the_old_folder(tmp_path, capfd):
    import signal
    import subprocess
    import sys

    run = _searched_run(tmp_path, layers=12, depths=4)  # about a second per architecture's statistics
    code, _, err = cli_in_process(capfd, "decode", run, "--top-k", "2", "--no-picture")
    assert code == 0, err
    before = _folder(run / "arch_top")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nastk", "decode", str(run), "--top-k", "10", "--no-picture"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stderr:  # its progress lines: statistics of architecture 3 done
            if "architecture statistics: 3/10" in line:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _folder(run / "arch_top") == before  # the old folder, whole: no arch_3.json of the new list
    code, _, err = cli_in_process(capfd, "decode", run, "--top-k", "3", "--no-picture")
    assert code == 0, err
    assert len(_folder(run / "arch_top")) == 4  # 3 + architectures.csv
    assert not [p for p in run.iterdir() if p.name.startswith(".arch_top")]  # the killed one's folder removed


# ---------------------------------------------------------------- (h) damaged params, huge top-k


def test_a_truncated_arch_params_file_is_one_line(tmp_path, capfd):
    run = _searched_run(tmp_path)
    params = run / "search" / "arch_params.npz"
    params.write_bytes(params.read_bytes()[: params.stat().st_size // 2])
    code, _, err = cli_in_process(capfd, "decode", run, "--no-picture")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "arch_params.npz" in err and "not a readable .npz" in err and not (run / "arch.json").exists()


def test_a_huge_top_k_is_refused_at_once(tmp_path, capfd):
    run = _searched_run(tmp_path)
    code, _, err = cli_in_process(capfd, "decode", run, "--top-k", "1000000", "--no-picture")
    assert code == 2 and "--top-k" in err and len(err.strip().splitlines()) == 1, err
    assert not (run / "arch.json").exists()


# ------------------------------------------------------------------- (f) predict locks its output


def test_a_second_predict_into_one_output_folder_is_refused(retrained, tmp_path, capfd):
    _, root, run = retrained
    output = tmp_path / "pred"
    output.mkdir()
    holder = _holding_lock(output)  # a first predict writing there
    try:
        code, _, err = cli_in_process(capfd, "predict", run, "--input", root / "imagesTs", "--output", output)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"pid {holder.pid}" in err and "--output" in err
        assert not list(output.glob("*.nii.gz"))
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------ (g) export under a full disk


def test_export_under_a_full_disk_is_no_space_left_and_leaves_no_half_file(
    retrained, tmp_path, capfd, monkeypatch
):
    import errno

    import nastk.export

    _, _, run = retrained
    out = tmp_path / "exp"
    code, _, err = cli_in_process(capfd, "export", run, "--format", "torchscript", "--out", out)
    assert code == 0, err
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full_disk(path, data):
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 3])  # part of it made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nastk.export, "_write_bytes", full_disk)
    code, _, err = cli_in_process(capfd, "export", run, "--format", "torchscript", "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no space left" in err, err
    assert "model.ts" in err and "Traceback" not in err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the previous export, whole; no temporary file left


# ------------------------------------------------------------------------- (i) absurd and tiny budgets


def _budget_spec(tmp_path: Path, **memory) -> Path:
    root = write_nii_task(tmp_path / "Syn", cases=4)
    losses = [{"name": "dice_ce"}, {"name": "memory", "params": memory}]
    return spec_file(
        tmp_path / "spec.yaml",
        root,
        dataset={"cache_dir": str(tmp_path / "cache")},
        losses=losses,
        retrain={"gpus": 1},
    )


def test_a_budget_that_can_never_bind_searches_at_sigma_one(tmp_path, capfd):
    import csv

    spec = _budget_spec(tmp_path, budget_gb=1e300)
    code, out, err = cli_in_process(capfd, "search", spec, "--out", tmp_path / "run", "--quiet")
    assert code == 0, err  # it died at iteration 4 with "memory is inf ... lower the LR"
    assert "never binds" in err and "sigma 1" in err
    with open(tmp_path / "run" / "search" / "log.csv") as fh:
        sigmas = {float(row["sigma_eff"]) for row in csv.DictReader(fh) if row.get("sigma_eff")}
    assert sigmas == {1.0}


def test_budget_messages_do_not_round_tiny_numbers_to_zero(tmp_path, capfd):
    spec = _budget_spec(tmp_path, budget_gb=1e-6, reserve_gb=0)
    code, out, err = cli_in_process(capfd, "validate", spec)
    assert code == 2 and "smallest network" in err, err
    assert "0.00 GB" not in err
    from nastk.setting import format_gb

    assert [format_gb(v) for v in (0.0004, 0.0123, 0.5, 12.345)] == ["0.0004", "0.012", "0.50", "12.35"]
