"""DSC and NSD against DeepMind's ``surface-distance`` 0.1, the implementation the MSD challenge used."""

import math
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from nastk.errors import DataError
from nastk.metrics import dice, evaluate_case, evaluate_files, surface_dice
from nastk.metrics.surface import neighbour_codes, surfel_area_table

ANISO = (0.7, 1.3, 2.9)


@pytest.fixture
def reference():
    """The reference package, with ``np.Inf``/``np.NaN`` (gone in NumPy 2) put back while it runs."""
    sd = pytest.importorskip("surface_distance")
    added = []
    for name, value in (("Inf", np.inf), ("NaN", np.nan)):
        if not hasattr(np, name):
            setattr(np, name, value)
            added.append(name)

    class Reference:
        @staticmethod
        def nsd(gt, pred, spacing, tol):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy.ndimage.filters deprecation, 0/0
                distances = sd.compute_surface_distances(gt, pred, spacing)
                return float(sd.compute_surface_dice_at_tolerance(distances, tol))

        @staticmethod
        def dice(gt, pred):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return float(sd.compute_dice_coefficient(gt, pred))

    try:
        yield Reference
    finally:
        for name in added:
            delattr(np, name)


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def _blob(rng, shape):
    """Union of random ellipsoids (centres may lie near or past the border) with a little noise."""
    grid = np.indices(shape, dtype=float)
    m = np.zeros(shape, bool)
    for _ in range(rng.integers(1, 4)):
        centre = rng.uniform(-3, np.array(shape) + 3)[:, None, None, None]
        radii = rng.uniform(2, 12, 3)[:, None, None, None]
        m |= (((grid - centre) / radii) ** 2).sum(0) <= 1
    return m ^ (rng.random(shape) < 0.01)


def _touches_border(m):
    return any(np.take(m, i, axis=a).any() for a in range(3) for i in (0, -1))


# --- Dice ---------------------------------------------------------------------------------


def test_dice_exact_on_boxes():
    a = _box((20, 20, 20), (2, 2, 2), (8, 8, 8))  # 216 voxels
    b = _box((20, 20, 20), (5, 2, 2), (11, 8, 8))  # 216 voxels, 108 shared
    assert dice(a, b) == 0.5
    a = _box((10, 10, 10), (0, 0, 0), (4, 5, 6))  # 120
    b = _box((10, 10, 10), (2, 1, 0), (6, 5, 3))  # 48, overlap 2 * 4 * 3 = 24
    assert dice(a, b) == 2 * 24 / 168 == 2 / 7
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert dice(a.astype(np.uint8) * 3, b) == 2 / 7  # non-zero is foreground


def test_dice_empty_conventions(reference):
    empty = np.zeros((6, 6, 6), bool)
    full = _box((6, 6, 6), (1, 1, 1), (3, 4, 5))
    assert math.isnan(dice(empty, empty)) and math.isnan(reference.dice(empty, empty))
    assert dice(full, empty) == reference.dice(empty, full) == 0.0
    assert dice(empty, full) == reference.dice(full, empty) == 0.0


def test_dice_matches_reference_on_random(reference):
    rng = np.random.default_rng(7)
    for _ in range(5):
        a, b = _blob(rng, (24, 30, 28)), _blob(rng, (24, 30, 28))
        assert dice(a, b) == reference.dice(b, a)


def test_one_dice_convention_in_training_logs_validation_and_report():
    """The same case scores the same wherever it is shown: a class in neither map is nan and left out
    of means (it used to be 1.0 in validation and skipped in training logs)."""
    import torch

    from nastk.engine.common import hard_dice
    from nastk.metrics import dice_per_class, nan_mean

    ref = np.zeros((8, 8, 8), np.int64)
    ref[2:6, 2:6, 2:6] = 1
    pred = np.roll(ref, 1, axis=0)  # class 1 overlaps by 3/4; class 2 is in neither
    report = evaluate_case(pred, ref, (1.0, 1.0, 1.0), [1, 2], {1: 1.0, 2: 1.0})
    assert report[0]["dsc"] == 0.75 and math.isnan(report[1]["dsc"])
    validation = dice_per_class(torch.from_numpy(pred), torch.from_numpy(ref), [1, 2])
    assert validation[0] == 0.75 and math.isnan(validation[1])
    assert dice_per_class(pred, ref, [1, 2])[0] == 0.75
    logits = torch.nn.functional.one_hot(torch.from_numpy(pred), 3).permute(3, 0, 1, 2)[None].float()
    assert hard_dice(logits, torch.from_numpy(ref)[None], 3) == 0.75  # the mean leaves class 2 out
    assert math.isnan(hard_dice(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 4, 4, 4, dtype=torch.long), 3))
    assert nan_mean([0.5, float("nan"), 1.0]) == (0.75, 1)
    mean, n_nan = nan_mean([float("nan")])
    assert math.isnan(mean) and n_nan == 1


# --- surfels ------------------------------------------------------------------------------


def test_surfel_area_table_matches_reference():
    lookup = pytest.importorskip("surface_distance.lookup_tables")
    rng = np.random.default_rng(0)
    for spacing in [(1.0, 1.0, 1.0), ANISO, *rng.uniform(0.2, 5.0, (20, 3))]:
        ours = surfel_area_table(spacing)
        theirs = lookup.create_table_neighbour_code_to_surface_area(spacing)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_neighbour_codes_match_reference_kernel():
    lookup = pytest.importorskip("surface_distance.lookup_tables")
    ndimage = pytest.importorskip("scipy.ndimage")
    m = np.random.default_rng(1).random((7, 8, 9)) < 0.5
    padded = np.zeros(np.array(m.shape) + 1, np.uint8)
    padded[:-1, :-1, :-1] = m
    expected = ndimage.correlate(padded, lookup.ENCODE_NEIGHBOURHOOD_3D_KERNEL, mode="constant", cval=0)
    np.testing.assert_array_equal(neighbour_codes(m), expected)


# --- NSD ----------------------------------------------------------------------------------


def _random_cases(n=20, seed=2024):
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = tuple(int(s) for s in rng.integers(24, 41, 3))
        a = _blob(rng, shape)
        b = np.roll(a, tuple(rng.integers(-2, 3, 3)), axis=(0, 1, 2)) if i % 4 == 0 else _blob(rng, shape)
        spacing = tuple(float(s) for s in rng.uniform(0.5, 3.0, 3)) if i % 2 else ANISO
        # random tolerances, plus ones that equal lattice distances exactly (ties must count)
        tols = [float(t) for t in rng.uniform(0.5, 3.0, 3)]
        tols += [spacing[i % 3], math.hypot(spacing[0], spacing[1]), 0.0]
        yield a, b, spacing, tols


def test_nsd_matches_reference_on_random_shapes(reference):
    worst = 0.0
    touching = 0
    for a, b, spacing, tols in _random_cases():
        touching += _touches_border(a) or _touches_border(b)
        for tol in tols:
            ours = surface_dice(a, b, spacing, tol)
            theirs = reference.nsd(b, a, spacing, tol)
            worst = max(worst, abs(ours - theirs))
    assert touching >= 5
    assert worst < 1e-6


def test_nsd_tie_at_tolerance_counts_as_within(reference):
    a = _box((12, 12, 12), (3, 3, 3), (8, 9, 7))
    b = np.roll(a, 1, axis=2)
    assert surface_dice(a, b, ANISO, 2.9) == pytest.approx(1.0) == reference.nsd(b, a, ANISO, 2.9)
    assert surface_dice(a, b, ANISO, 2.8999) == pytest.approx(reference.nsd(b, a, ANISO, 2.8999), abs=1e-12)
    assert surface_dice(a, b, ANISO, 2.8999) < 1.0


@pytest.mark.parametrize("which", ["pred", "ref", "both"])
def test_nsd_empty_masks_follow_reference(reference, which):
    blob = _blob(np.random.default_rng(3), (24, 26, 28))
    empty = np.zeros_like(blob)
    pred = empty if which in ("pred", "both") else blob
    ref = empty if which in ("ref", "both") else blob
    ours = surface_dice(pred, ref, ANISO, 1.5)
    theirs = reference.nsd(ref, pred, ANISO, 1.5)
    assert math.isnan(ours) == math.isnan(theirs)
    if which == "both":
        assert math.isnan(ours)
    else:
        assert ours == theirs == 0.0


def test_nsd_is_symmetric(reference):
    for a, b, spacing, tols in _random_cases(n=6, seed=5):
        for tol in tols[:2]:
            assert surface_dice(a, b, spacing, tol) == pytest.approx(
                surface_dice(b, a, spacing, tol), abs=1e-12
            )
            assert reference.nsd(a, b, spacing, tol) == pytest.approx(
                reference.nsd(b, a, spacing, tol), abs=1e-12
            )


def test_nsd_identical_masks_is_one():
    rng = np.random.default_rng(11)
    for _ in range(4):
        m = _blob(rng, (30, 25, 33))
        assert surface_dice(m, m, ANISO, 0.0) == pytest.approx(1.0, abs=1e-12)
    whole = np.ones((5, 6, 7), bool)  # touches every face of the volume
    assert surface_dice(whole, whole, ANISO, 1.0) == pytest.approx(1.0, abs=1e-12)


def test_nsd_tolerance_zero_on_shifted_masks_is_below_one():
    a = _box((20, 20, 20), (4, 4, 4), (12, 14, 10))
    b = np.roll(a, 1, axis=0)
    assert 0.0 < surface_dice(a, b, ANISO, 0.0) < 1.0
    assert surface_dice(a, b, ANISO, 0.7) == pytest.approx(1.0)


def test_nsd_rejects_bad_arguments():
    m = np.ones((4, 4, 4), bool)
    with pytest.raises(ValueError):
        surface_dice(m, m[:3], ANISO, 1.0)
    with pytest.raises(ValueError):
        surface_dice(m, m, (1.0, 1.0), 1.0)
    with pytest.raises(ValueError):
        surface_dice(m, m, ANISO, -1.0)


# --- evaluate_case / evaluate_files -------------------------------------------------------


def _label_maps(shape=(24, 28, 20)):
    rng = np.random.default_rng(4)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[_blob(rng, shape)] = 1
    ref[_box(shape, (3, 3, 3), (10, 12, 9))] = 2
    pred[_blob(rng, shape)] = 1
    pred[_box(shape, (4, 3, 3), (11, 12, 10))] = 2
    return pred, ref


def test_evaluate_case_rows():
    pred, ref = _label_maps()
    tols = {1: 1.5, 2: 2.0, 3: 1.0}
    rows = evaluate_case(pred, ref, ANISO, [0, 1, 2, 3], tols)
    assert [r["class"] for r in rows] == [1, 2, 3]
    for row in rows:
        c = row["class"]
        assert set(row) == {"class", "dsc", "nsd", "tolerance"}
        assert row["tolerance"] == tols[c]
        if c == 3:  # absent from both
            assert math.isnan(row["dsc"]) and math.isnan(row["nsd"])
        else:
            assert row["dsc"] == dice(pred == c, ref == c)
            assert row["nsd"] == surface_dice(pred == c, ref == c, ANISO, tols[c])
    with pytest.raises(ValueError, match="class 2"):
        evaluate_case(pred, ref, ANISO, [1, 2], {1: 1.0})


def _write(path, arr_xyz, spacing=ANISO, origin=(0.0, 0.0, 0.0), direction=None):
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr_xyz.transpose(2, 1, 0)))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return path


def test_evaluate_files_matches_evaluate_case(tmp_path):
    pred, ref = _label_maps()
    p = _write(tmp_path / "pred.nii.gz", pred)
    r = _write(tmp_path / "ref.nii.gz", ref)
    tols = {1: 1.5, 2: 2.0}
    rows = evaluate_files(p, r, [1, 2], tols, case_id="case_007")
    spacing = sitk.ReadImage(str(r)).GetSpacing()  # NIfTI stores single precision
    expected = evaluate_case(pred, ref, spacing, [1, 2], tols)
    assert rows == [{"case": "case_007", **row} for row in expected]
    assert list(rows[0]) == ["case", "class", "dsc", "nsd", "tolerance"]
    # nearly equal geometry (within 1e-3) is accepted
    _write(p, pred, spacing=(0.7004, 1.3, 2.9), origin=(0.0005, 0.0, 0.0))
    assert len(evaluate_files(p, r, [1, 2], tols, case_id="case_007")) == 2


@pytest.mark.parametrize(
    "change, word",
    [
        ({"spacing": (0.7, 1.3, 3.0)}, "spacing"),
        ({"origin": (0.0, 2.0, 0.0)}, "origin"),
        ({"direction": (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)}, "direction"),
    ],
)
def test_evaluate_files_geometry_mismatch(tmp_path, change, word):
    pred, ref = _label_maps()
    p = _write(tmp_path / "pred.nii.gz", pred, **change)
    r = _write(tmp_path / "ref.nii.gz", ref)
    with pytest.raises(DataError, match=rf"case 'liver_3'.*{word}") as info:
        evaluate_files(p, r, [1, 2], {1: 1.0, 2: 1.0}, case_id="liver_3")
    assert "\n" not in str(info.value)


def test_evaluate_files_shape_mismatch(tmp_path):
    pred, ref = _label_maps()
    p = _write(tmp_path / "pred.nii.gz", pred[:, :, :-1])
    r = _write(tmp_path / "ref.nii.gz", ref)
    with pytest.raises(DataError, match=r"case 'liver_3'.*size.*\(24, 28, 19\) vs \(24, 28, 20\)") as info:
        evaluate_files(p, r, [1, 2], {1: 1.0, 2: 1.0}, case_id="liver_3")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("role", ["prediction", "reference"])
def test_evaluate_files_bad_labels(tmp_path, role):
    pred, ref = _label_maps()
    bad = pred if role == "prediction" else ref
    bad[0, 0, 0] = 7
    bad[1, 0, 0] = 9
    p = _write(tmp_path / "pred.nii.gz", pred)
    r = _write(tmp_path / "ref.nii.gz", ref)
    name = "pred.nii.gz" if role == "prediction" else "ref.nii.gz"
    with pytest.raises(DataError, match=rf"case 'liver_3': {role} file .*{name}.*\[7, 9\]") as info:
        evaluate_files(p, r, [1, 2], {1: 1.0, 2: 1.0}, case_id="liver_3")
    assert "\n" not in str(info.value)


def test_evaluate_files_unreadable(tmp_path):
    pred, _ = _label_maps()
    p = _write(tmp_path / "pred.nii.gz", pred)
    with pytest.raises(DataError, match=r"case 'liver_3': cannot read reference file .*missing.nii.gz"):
        evaluate_files(p, tmp_path / "missing.nii.gz", [1, 2], {1: 1.0, 2: 1.0}, case_id="liver_3")
