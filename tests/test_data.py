"""Datasets in, cached preprocessed volumes, patches out."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from torch.utils.data import DataLoader, DistributedSampler

from nastk.data.dataset import read_dataset
from nastk.data.imageio import Geometry
from nastk.data.preprocess import load_case, make_splits, preprocess, restore_geometry, search_halves
from nastk.data.sampler import PatchDataset, make_loader
from nastk.spec import DatasetSpec

from conftest import run_cli
from tinydata import AFFINE, make_case, save_nifti, write_msd, write_nnunet


def _spec(root, **kw) -> DatasetSpec:
    base = {
        "root": str(root),
        "num_workers": 0,
        "in_channels": 1,
        "num_classes": 3,
        "spacing": (1.0, 1.0, 1.0),
        "num_folds": 2,
    }
    return DatasetSpec(**{**base, **kw})


@pytest.fixture
def msd(tmp_path):
    return write_msd(tmp_path / "Task99_Tiny")


def test_read_both_layouts(tmp_path):
    info = read_dataset(write_msd(tmp_path / "msd", channels=2))
    assert info.format == "msd" and len(info.training) == 4 and info.num_channels == 2
    assert info.labels == {0: "background", 1: "organ", 2: "lesion"}
    nn = read_dataset(write_nnunet(tmp_path / "nn"))
    assert nn.format == "nnunet" and [c.id for c in nn.training] == ["tiny_000", "tiny_001", "tiny_002"]
    assert all(len(c.images) == 2 for c in nn.training)  # ._ files ignored
    assert nn.labels[2] == "lesion" and nn.modalities == {0: "T1", 1: "T2"}


@pytest.mark.parametrize("layout", ["msd4d", "nnunet"])
def test_multichannel_layouts_preprocess(tmp_path, layout):
    root = (
        write_msd(tmp_path / "d", channels=2, cases=3) if layout == "msd4d" else write_nnunet(tmp_path / "d")
    )
    cache = preprocess(_spec(root, in_channels=2, num_folds=3))
    image, label, meta = load_case(cache.root, cache.case_ids[0])
    assert image.shape[0] == 2 and image.dtype == np.float32 and label.dtype == np.uint8
    assert image.shape[1:] == label.shape
    # z-scored over nonzero voxels per channel, zero outside
    nz = image[0] != 0
    assert abs(image[0][nz].mean()) < 0.05 and abs(image[0][nz].std() - 1) < 0.05


def test_round_trip_restores_labels_exactly(msd):
    cache = preprocess(_spec(msd))  # 2 x 2 x 3 mm, x flipped -> 1 mm canonical
    for case_id in cache.case_ids:
        _, label, meta = load_case(cache.root, case_id, mmap=False)
        assert meta["resampled"]["spacing"] == [1.0, 1.0, 1.0]
        assert meta["canonical"]["direction"] == [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
        restored = restore_geometry(label, meta)
        original = sitk.ReadImage(str(msd / "labelsTr" / f"{case_id}.nii.gz"))
        assert Geometry.of(restored).matches(Geometry.of(original)) is None
        np.testing.assert_array_equal(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(original))


def test_resampling_and_crop_geometry(msd):
    cache = preprocess(_spec(msd))
    image, label, meta = load_case(cache.root, "case_000")
    # 20 x 18 x 10 voxels of 2 x 2 x 3 mm -> 40 x 36 x 30 at 1 mm, then cropped to the body
    assert meta["resampled"]["size"] == [40, 36, 30]
    assert image.shape[1:] < (40, 36, 30) and meta["shape"] == list(image.shape[1:])
    assert meta["classes"] == [1, 2]
    # the zero border of 2 voxels (4 mm) in x is gone
    assert meta["crop"][0] == [4, 36]


def test_ct_normalisation_uses_dataset_statistics(tmp_path):
    root = write_msd(tmp_path / "ct", modality="CT")
    cache = preprocess(_spec(root))
    plan = json.loads((cache.root / "plan.json").read_text())
    stats = plan["ct_statistics"]["0"]
    assert stats["lo"] < stats["mean"] < stats["hi"] and stats["std"] > 0
    image, label, _ = load_case(cache.root, cache.case_ids[0])
    clipped_max = (stats["hi"] - stats["mean"]) / stats["std"]
    assert image.max() <= clipped_max + 1e-4


@pytest.mark.parametrize("modality", ["MRI", "CT"])
def test_huge_integer_intensities_normalise_like_small_ones(tmp_path, modality):
    """int64 intensities near 4e18 overflowed the float32 std (to inf), which zeroed the whole case
    without a word. Z-scores do not depend on the scale, so the cache must match the unscaled case's."""
    small = write_msd(tmp_path / "small", cases=2, modality=modality)
    big = write_msd(tmp_path / "big", cases=2, modality=modality)
    for case in ("case_000", "case_001"):
        src = nib.load(small / "imagesTr" / f"{case}.nii.gz")
        scaled = np.round(np.asarray(src.dataobj, np.float64) * 2.5e16).astype(np.int64)
        nib.save(nib.Nifti1Image(scaled, src.affine, dtype=np.int64), big / "imagesTr" / f"{case}.nii.gz")
    assert scaled.max() > 4e18
    expected = np.load(preprocess(_spec(small)).root / "case_000_image.npy")
    got = np.load(preprocess(_spec(big)).root / "case_000_image.npy")
    assert np.isfinite(got).all() and got.std() > 0.5
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_stale_temporaries_are_removed_and_live_ones_kept(msd):
    """A killed writer leaves its temporary file; the next run removes it, but never a live writer's
    (this process), one written on another host, or a file of another naming."""
    import socket
    import subprocess
    import sys

    cache = preprocess(_spec(msd))
    dead = int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout
    )
    host = socket.gethostname()
    stale = cache.root / f".case_000_image.npy.nastk-{dead}@{host}.k2j4h1x9.tmp"
    kept = [
        cache.root / f".case_001_image.npy.nastk-{os.getpid()}@{host}.a8d7f6g5.tmp",
        cache.root / f".case_002_image.npy.nastk-{dead}@another-host.q1w2e3r4.tmp",
        cache.root / ".case_003_image.npy.abcdefgh.tmp",
    ]
    for path in (stale, *kept):
        path.write_bytes(b"half a file")
    preprocess(_spec(msd))
    assert not stale.exists()
    assert all(path.exists() for path in kept)


def test_cache_is_reused_and_keyed_by_settings(msd):
    first = preprocess(_spec(msd))
    stamps = {p.name: p.stat().st_mtime_ns for p in first.root.iterdir()}
    again = preprocess(_spec(msd))
    assert again.root == first.root
    assert {p.name: p.stat().st_mtime_ns for p in again.root.iterdir()} == stamps  # nothing rewritten
    other = preprocess(_spec(msd, spacing=(2.0, 2.0, 2.0)))
    assert other.root != first.root and other.root.parent == first.root.parent
    assert not list(first.root.glob("*.tmp")) and not list(first.root.glob(".*"))


def test_interrupted_case_is_redone(msd):
    cache = preprocess(_spec(msd))
    (cache.root / "case_001.json").unlink()  # as if killed before the case finished
    (cache.root / "case_001_image.npy").write_bytes(b"truncated")
    preprocess(_spec(msd))
    image, _, _ = load_case(cache.root, "case_001")
    assert image.ndim == 4


def test_splits_are_deterministic_and_nnunet_shaped(msd):
    ids = [f"c{i}" for i in range(11)]
    a, b = make_splits(ids, 5, seed=3), make_splits(ids, 5, seed=3)
    assert a == b and a != make_splits(ids, 5, seed=4)
    assert sorted(v for f in a for v in f["val"]) == sorted(ids)
    for fold in a:
        assert set(fold) == {"train", "val"} and not set(fold["train"]) & set(fold["val"])
    t1, t2 = search_halves(a[0]["train"], seed=0)
    assert sorted(t1 + t2) == sorted(a[0]["train"]) and abs(len(t1) - len(t2)) <= 1
    cache = preprocess(_spec(msd, num_folds=2))
    assert len(json.loads((cache.root / "splits.json").read_text())) == 2


def test_patches_deterministic_padded_and_oversampled(msd):
    cache = preprocess(_spec(msd))
    big = (48, 48, 32)  # larger than every cropped volume: padded
    ds = PatchDataset(cache.root, cache.case_ids, big, fg_fraction=1.0, seed=5)
    img, lab = ds[7]
    assert img.shape == (1, *big) and lab.shape == big
    torch.testing.assert_close(ds[7][0], img)
    assert not torch.equal(ds[8][0], img) or not torch.equal(ds[8][1], lab)
    small = (16, 16, 16)
    for fraction in (0.5, 1.0):
        ds = PatchDataset(cache.root, cache.case_ids, small, fg_fraction=fraction, seed=1)
        hits = np.mean([bool((ds[i][1] > 0).any()) for i in range(200)])
        assert hits >= fraction - 0.08, (fraction, hits)


def test_patch_stream_splits_across_ranks(msd):
    cache = preprocess(_spec(msd))
    ds = PatchDataset(cache.root, cache.case_ids, (16, 16, 16), seed=2, length=8)
    whole = [ds[i][0] for i in range(8)]
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=False)
        got = [x[0][0] for x in DataLoader(ds, batch_size=1, sampler=sampler)]
        for g, i in zip(got, sampler):
            torch.testing.assert_close(g, whole[i])
    loader = make_loader(ds, batch_size=2, start_sample=1, num_samples=2, rank=1, world_size=2)
    batches = list(loader)
    torch.testing.assert_close(batches[0][0][0], whole[3])  # rank 1's samples 1, 2 are 3, 5


# ----------------------------------------------------------------------------------- bad input


def _write_spec(tmp_path, root, **dataset):
    spec = {
        "dataset": {"root": str(root), "num_workers": 0, "num_folds": 2, **dataset},
        "search": {"patch_size": [32, 32, 32]},
        "retrain": {"patch_size": [32, 32, 32]},
        "inference": {"patch_size": [32, 32, 32], "stride": [16, 16, 16]},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _expect_error(tmp_path, root, *needles):
    res = run_cli("preprocess", _write_spec(tmp_path, root), "--quiet")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr)


def test_missing_dataset_json(tmp_path):
    (tmp_path / "empty").mkdir()
    _expect_error(tmp_path, tmp_path / "empty", "dataset.json", "missing")


def test_malformed_dataset_json(tmp_path, msd):
    (msd / "dataset.json").write_text("{not json")
    _expect_error(tmp_path, msd, "dataset.json", "not valid JSON")


def test_listed_file_missing(tmp_path, msd):
    (msd / "labelsTr" / "case_002.nii.gz").unlink()
    _expect_error(tmp_path, msd, "training[2].label", "case_002.nii.gz", "missing")


def test_path_escaping_root(tmp_path, msd):
    data = json.loads((msd / "dataset.json").read_text())
    save_nifti(np.zeros((4, 4, 4), np.float32), tmp_path / "outside.nii.gz")
    data["training"][1]["image"] = "../outside.nii.gz"
    (msd / "dataset.json").write_text(json.dumps(data))
    _expect_error(tmp_path, msd, "training[1].image", "escapes the dataset root")


def test_label_shape_mismatch(tmp_path, msd):
    save_nifti(np.zeros((20, 18, 9), np.uint8), msd / "labelsTr" / "case_001.nii.gz")
    _expect_error(tmp_path, msd, "case case_001", "labelsTr/case_001.nii.gz", "shape")


def test_label_geometry_mismatch(tmp_path, msd):
    _, label = make_case(np.random.default_rng(0))
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0
    save_nifti(label, msd / "labelsTr" / "case_003.nii.gz", shifted)
    _expect_error(tmp_path, msd, "case case_003", "origin")


def test_label_value_not_declared(tmp_path, msd):
    _, label = make_case(np.random.default_rng(0))
    label[0, 0, 0] = 7
    save_nifti(label, msd / "labelsTr" / "case_000.nii.gz")
    _expect_error(tmp_path, msd, "case case_000", "[7]", "not declared")


def test_nan_voxels(tmp_path, msd):
    image, _ = make_case(np.random.default_rng(0))
    image[5, 5, 5] = np.nan
    save_nifti(image, msd / "imagesTr" / "case_001.nii.gz")
    _expect_error(tmp_path, msd, "case case_001", "NaN or Inf")


def test_values_beyond_float32(tmp_path, msd):
    image, _ = make_case(np.random.default_rng(0))
    save_nifti(image.astype(np.float64) * 1e300, msd / "imagesTr" / "case_000.nii.gz")
    _expect_error(tmp_path, msd, "case case_000", "case_000.nii.gz", "float32 range")


def test_truncated_image(tmp_path, msd):
    path = msd / "imagesTr" / "case_000.nii.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _expect_error(tmp_path, msd, "case case_000", "case_000.nii.gz", "cannot read")


def test_2d_image(tmp_path, msd):
    img = nib.Nifti1Image(np.zeros((20, 18), np.float32), np.eye(4))
    nib.save(img, str(msd / "imagesTr" / "case_002.nii.gz"))
    _expect_error(tmp_path, msd, "case case_002", "2D")


def test_preprocess_cli_runs_and_is_idempotent(tmp_path, msd):
    spec = _write_spec(tmp_path, msd)
    first = run_cli("preprocess", spec)
    assert first.returncode == 0, first.stderr
    assert "4 cases preprocessed" in first.stdout
    second = run_cli("preprocess", spec)
    assert second.returncode == 0 and "preprocess:" not in second.stderr  # nothing left to do


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".nii"])
def test_other_image_formats(tmp_path, suffix):
    """The same case written as .mha / .nrrd / .nii reads to the same voxels and geometry."""
    import SimpleITK as sitk

    from nastk.data.imageio import read_image, read_label

    root = write_msd(tmp_path / "src", cases=1)
    src = sitk.ReadImage(str(root / "imagesTr" / "case_000.nii.gz"))
    lab = sitk.ReadImage(str(root / "labelsTr" / "case_000.nii.gz"))
    img_path, lab_path = tmp_path / f"img{suffix}", tmp_path / f"lab{suffix}"
    sitk.WriteImage(src, str(img_path))
    sitk.WriteImage(lab, str(lab_path))
    (image,) = read_image((img_path,), "case x")
    assert Geometry.of(image).matches(Geometry.of(src)) is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(src))
    label = read_label(lab_path, Geometry.of(image), {0, 1, 2}, "case x")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(lab))
