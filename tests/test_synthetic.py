"""The embedded synthetic MSD task: format, geometry (nibabel and SimpleITK agree), content, determinism."""

import json
import time

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nastk.data.synthetic import (
    LABEL_NAMES,
    threshold_baseline,
    threshold_baseline_dice,
    write_synthetic_task,
)


def _load(path):
    img = nib.load(path)
    return img, np.asarray(img.dataobj)


def _pairs(task):
    """(image path, label path) for every training and test case."""
    meta = json.loads((task / "dataset.json").read_text())
    pairs = [(task / e["image"], task / e["label"]) for e in meta["training"]]
    pairs += [(task / rel, task / "labelsTs" / task.joinpath(rel).name) for rel in meta["test"]]
    return pairs


def _dilate(mask):
    pad = np.pad(mask, 1)
    out = np.zeros_like(mask)
    nx, ny, nz = mask.shape
    for i in range(3):
        for j in range(3):
            for k in range(3):
                out |= pad[i : i + nx, j : j + ny, k : k + nz]
    return out


@pytest.fixture(scope="module")
def task5(tmp_path_factory):
    """Organ, lesion and two tubes (classes=5) on small volumes."""
    return write_synthetic_task(
        tmp_path_factory.mktemp("s5") / "Task", cases=6, size=32, classes=5, test_cases=2
    )


@pytest.fixture(scope="module")
def default_task(tmp_path_factory):
    t0 = time.perf_counter()
    task = write_synthetic_task(tmp_path_factory.mktemp("s3") / "Task")
    return task, time.perf_counter() - t0


def test_dataset_json_is_msd(task5):
    meta = json.loads((task5 / "dataset.json").read_text())
    assert (
        meta["name"] == "Synthetic" and meta["tensorImageSize"] == "3D" and meta["modality"] == {"0": "MRI"}
    )
    assert meta["labels"] == {"0": "background", "1": "organ", "2": "lesion", "3": "vessel", "4": "duct"}
    assert meta["numTraining"] == len(meta["training"]) == 6 and meta["numTest"] == len(meta["test"]) == 2
    assert meta["training"][0] == {
        "image": "./imagesTr/synth_000.nii.gz",
        "label": "./labelsTr/synth_000.nii.gz",
    }
    assert meta["test"] == ["./imagesTs/synth_100.nii.gz", "./imagesTs/synth_101.nii.gz"]
    for image, label in _pairs(task5):
        assert image.is_file() and label.is_file()
    assert sorted(p.name for p in (task5 / "labelsTs").iterdir()) == ["synth_100.nii.gz", "synth_101.nii.gz"]
    assert not list(task5.rglob("*.tmp")), "temporary files left behind"


def test_default_task_counts_and_speed(default_task):
    task, seconds = default_task
    meta = json.loads((task / "dataset.json").read_text())
    assert (meta["numTraining"], meta["numTest"]) == (12, 2)
    assert list(meta["labels"].values()) == list(LABEL_NAMES[:3])
    assert seconds < 30, f"12+2 cases at size 48 took {seconds:.1f} s"  # ~1 s expected; catches voxel loops


def test_geometry_is_realistic(task5):
    shapes = set()
    for image_path, label_path in _pairs(task5):
        img, image = _load(image_path)
        lab, label = _load(label_path)
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == label.shape and np.allclose(img.affine, lab.affine)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert np.allclose(img.get_qform(), img.get_sform(), atol=1e-4)
        a = img.affine
        assert a[0, 0] < 0 < a[1, 1] and a[2, 2] > 0, "first axis flipped"
        assert np.allclose(a[:3, :3], np.diag(np.diag(a[:3, :3])))
        assert np.abs(a[:3, 3]).max() > 1, "origin is not zero"
        zooms = np.array(img.header.get_zooms())
        assert 0.7 < zooms[0] < 0.9 and zooms[0] == zooms[1] and 1.3 < zooms[2] < 1.7
        assert image.shape[2] < 0.8 * min(image.shape[:2]), "not a cube"
        shapes.add(image.shape)
    assert len(shapes) > 1, "shapes vary per case"


def test_nibabel_and_simpleitk_agree(task5):
    for path in [p for pair in _pairs(task5)[:3] for p in pair]:
        img, arr = _load(path)
        itk = sitk.ReadImage(str(path))
        assert np.allclose(itk.GetSpacing(), img.header.get_zooms(), rtol=1e-5)
        # RAS (nibabel) -> LPS (ITK): flip the signs of the first two world axes.
        lps = np.diag([-1.0, -1.0, 1.0]) @ img.affine[:3, :3] / np.array(img.header.get_zooms())
        direction = np.array(itk.GetDirection()).reshape(3, 3)
        assert np.allclose(direction, lps, atol=1e-5)
        assert direction[0, 0] > 0  # negative affine[0, 0] in RAS = positive x direction in LPS
        assert np.allclose(itk.GetOrigin(), img.affine[:3, 3] * [-1, -1, 1], atol=1e-3)
        assert np.array_equal(sitk.GetArrayFromImage(itk).transpose(2, 1, 0), arr)


def test_deterministic(tmp_path):
    a = write_synthetic_task(tmp_path / "a", cases=2, size=24, classes=4, seed=3, test_cases=1)
    b = write_synthetic_task(tmp_path / "b", cases=2, size=24, classes=4, seed=3, test_cases=1)
    c = write_synthetic_task(tmp_path / "c", cases=1, size=24, classes=4, seed=3, test_cases=0)
    d = write_synthetic_task(tmp_path / "d", cases=1, size=24, classes=4, seed=4, test_cases=0)
    for (ia, la), (ib, lb) in zip(_pairs(a), _pairs(b)):
        assert np.array_equal(_load(ia)[1], _load(ib)[1]) and np.array_equal(_load(la)[1], _load(lb)[1])
        assert ia.read_bytes() == ib.read_bytes() and la.read_bytes() == lb.read_bytes()
    # a case depends only on (seed, case id, size, classes), not on how many cases are written
    assert (c / "imagesTr/synth_000.nii.gz").read_bytes() == (a / "imagesTr/synth_000.nii.gz").read_bytes()
    assert not np.array_equal(
        _load(d / "labelsTr/synth_000.nii.gz")[1], _load(c / "labelsTr/synth_000.nii.gz")[1]
    )


def test_content(task5):
    complete = 0
    pairs = _pairs(task5)
    for image_path, label_path in pairs:
        image, label = _load(image_path)[1], _load(label_path)[1]
        complete += set(np.unique(label)) == set(range(5))
        assert label.max() <= 4
        body = image != 0
        assert body.sum() < 0.9 * body.size, "crop to nonzero must do something"
        assert (image >= 0).all() and (image[body] > 0).all()
        assert not label[~body].any(), "labels lie inside the body"
        # nested: the lesion is surrounded by organ (its 26-neighbourhood is organ or lesion)
        lesion = label == 2
        assert lesion.any() and (label[_dilate(lesion)] <= 2).all() and (label[_dilate(lesion)] >= 1).all()
        # not trivially separable: the lesion is brighter than the organ on average, but they overlap
        organ_v, lesion_v = image[label == 1], image[lesion]
        assert lesion_v.mean() > organ_v.mean() and lesion_v.min() < np.percentile(organ_v, 90)
    assert complete >= 0.75 * len(pairs), f"only {complete}/{len(pairs)} cases contain every class"


def test_threshold_oracle_is_exact_on_an_easy_image():
    label = np.zeros((10, 10, 10), dtype=np.uint8)
    label[2:5] = 1
    label[6:9] = 2
    image = np.where(label == 1, 3.0, np.where(label == 2, 7.0, 1.0)).astype(np.float32)
    image[0] = 0  # outside the body
    image[5] = 5.0  # between the classes
    assert threshold_baseline_dice(image, label, 3) == pytest.approx([1.0, 1.0])
    assert np.isnan(threshold_baseline_dice(image, label, 4)[2])  # absent class


def test_threshold_baseline_is_far_from_solving_the_task(default_task):
    task, _ = default_task
    result = threshold_baseline(task)
    assert result["cases"] == 2 and set(result["per_class"]) == {"1", "2"}
    assert result["labels"] == {"1": "organ", "2": "lesion"}
    assert result["mean"] < 0.6, result  # clearly below 0.9 (about 0.3 in practice)
    assert all(d < 0.8 for d in result["per_class"].values()), result


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cases": 0}, "cases"),
        ({"size": 15}, "size"),
        ({"classes": 1}, "classes"),
        ({"classes": 7}, "classes"),
        ({"test_cases": -1}, "test_cases"),
        ({"cases": 2.5}, "cases"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_synthetic_task(tmp_path / "t", **kwargs)
    assert not (tmp_path / "t").exists()
