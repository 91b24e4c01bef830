"""predict: geometry of the written labels, ensembles, post-processing, the command end to end."""

import nibabel as nib
import numpy as np
import torch

from nastk.data.dataset import read_dataset
from nastk.data.preprocess import load_case, preprocess, restore_geometry
from nastk.inference.ensemble import mean_probabilities, vote
from nastk.inference.postprocess import largest_component
from nastk.inference.writer import write_label
from nastk.spec import DatasetSpec

from conftest import run_cli
from tinydata import write_msd


def test_written_label_overlays_its_source_voxel_for_voxel(tmp_path):
    root = write_msd(tmp_path / "Task", channels=2, cases=2)  # 4D multi-modal, flipped anisotropic affine
    cache = preprocess(DatasetSpec(root=str(root), in_channels=2, num_workers=0, num_folds=2))
    info = read_dataset(root)
    for case in info.training:
        _, label, meta = load_case(cache.root, case.id, mmap=False)
        out = write_label(
            restore_geometry(label, meta), case.images[0], tmp_path / "pred" / f"{case.id}.nii.gz"
        )
        written, source, ref = nib.load(out), nib.load(case.images[0]), nib.load(case.label)
        assert written.shape == source.shape[:3] and written.get_data_dtype() == np.uint8
        np.testing.assert_allclose(written.affine, source.affine)
        assert int(written.header["sform_code"]) == int(source.header["sform_code"])
        np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(ref.dataobj))
    assert not list((tmp_path / "pred").glob(".*"))  # no temp files left


def test_majority_vote_and_mean():
    a = torch.tensor([[0, 1, 2, 2]], dtype=torch.uint8)
    b = torch.tensor([[0, 1, 1, 2]], dtype=torch.uint8)
    c = torch.tensor([[1, 2, 1, 0]], dtype=torch.uint8)
    assert vote([a, b, c], 3).tolist() == [[0, 1, 1, 2]]
    assert vote([a, c], 3).tolist() == [[0, 1, 1, 0]]  # ties -> lower label
    p = torch.zeros(2, 3, 1, 1)
    p[0, 0] = 0.6
    p[1, 0] = 0.4
    q = torch.zeros(2, 3, 1, 1)
    q[1] = 1.0
    assert mean_probabilities([p, q]).tolist() == [[[1]], [[1]], [[1]]]


def test_largest_component_per_class():
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:5, 1:5, 1:5] = 1  # big
    labels[8:10, 8:10, 8:10] = 1  # small, separate
    labels[6:8, 1:3, 1:3] = 2
    labels[10, 1, 1] = 2  # speck
    out = largest_component(labels, [1, 2])
    assert (out == 1).sum() == 64 and (out[8:10, 8:10, 8:10] == 0).all()
    assert (out == 2).sum() == 8 and out[10, 1, 1] == 0
    only1 = largest_component(labels, [1])
    assert only1[10, 1, 1] == 2  # class 2 untouched when not listed


def test_predict_command_end_to_end(retrained):
    tmp, root, run = retrained
    res = run_cli("predict", run, "--input", root / "imagesTs", "--quiet")
    assert res.returncode == 0, res.stderr
    for case in ("synth_100", "synth_101"):
        out, src = (
            nib.load(run / "predictions" / f"{case}.nii.gz"),
            nib.load(root / "imagesTs" / f"{case}.nii.gz"),
        )
        assert out.shape == src.shape and np.allclose(out.affine, src.affine)
        assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2}
    stamp = (run / "predictions" / "synth_100.nii.gz").stat().st_mtime_ns
    again = run_cli("predict", run, "--input", root / "dataset.json", "--continue", "--quiet", "--folds", "1")
    assert again.returncode == 0, again.stderr
    assert (run / "predictions" / "synth_100.nii.gz").stat().st_mtime_ns == stamp  # skipped
    # the run carries its preprocessing plan: prediction works without the training data
    assert (run / "plan.json").exists()
    moved = root.parent / "moved_away"
    (root / "imagesTr").rename(moved)
    try:
        elsewhere = run_cli("predict", run, "--input", root / "imagesTs", "--output", tmp / "p2", "--quiet")
        assert elsewhere.returncode == 0, elsewhere.stderr
    finally:
        moved.rename(root / "imagesTr")
    for case in ("synth_100", "synth_101"):
        a = np.asarray(nib.load(run / "predictions" / f"{case}.nii.gz").dataobj)
        b = np.asarray(nib.load(tmp / "p2" / f"{case}.nii.gz").dataobj)
        np.testing.assert_array_equal(a, b)
    bad = run_cli("predict", run, "--input", root / "imagesTs", "--folds", "3", "--output", tmp / "x")
    assert bad.returncode == 2 and "--folds" in bad.stderr and not (tmp / "x").exists()
