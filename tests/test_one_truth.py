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
