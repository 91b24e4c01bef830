"""Batched augmentation: shapes/dtypes, determinism, exactness, image-label alignment, specs."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from nastk.data import augment as A

NAMES = ["rot90_xy", "flip", "rotate_xy", "scale", "gamma"]
SHAPES = [(16, 16, 8), (16, 12, 8)]
# Interpolation disagreements live in a ~half-voxel band around label boundaries, so their
# fraction scales like 1/size: the alignment tests use somewhat larger (still small) patches.
ALIGN_SHAPES = [(32, 32, 16), (32, 24, 16)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tensors here are tiny: intra-op threads only add barrier overhead, which becomes seconds
    # per test when the machine is busy with other work. Restored after this module.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_batch(shape=(16, 16, 8), b=4, seed=0, label_dtype=torch.long):
    """Channel 0: smooth random field; channel 1: constant 1 (marks padding after resampling).

    Label = (channel 0 > 0), a function of the image.
    """
    g = gen(seed)
    coarse = torch.randn(b, 1, 3, 3, 2, generator=g)
    field = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    image = torch.cat([field, torch.ones_like(field)], dim=1)
    return image, (image[:, 0] > 0).to(label_dtype)


def random_batch(shape=(16, 16, 8), b=4, seed=0, dtype=torch.float32, label_dtype=torch.long):
    g = gen(seed)
    image = torch.randn(b, 2, *shape, generator=g, dtype=dtype)
    label = torch.randint(0, 3, (b, *shape), generator=g).to(label_dtype)
    return image, label


def one(name, **params):
    return A.build([{"name": name, **params}])


def dihedral_images(image, label, square):
    """All rot90^k (x-y) o flips images of one sample ([C,X,Y,Z], [X,Y,Z]); X != Y: k in {0, 2}."""
    out = []
    for k in range(4) if square else (0, 2):
        ri, rl = torch.rot90(image, k, (1, 2)), torch.rot90(label, k, (0, 1))
        for n in range(4):
            for axes in itertools.combinations((0, 1, 2), n):
                fi = ri.flip([1 + a for a in axes]) if axes else ri
                fl = rl.flip(list(axes)) if axes else rl
                out.append((fi, fl))
    return out


# ----------------------------------------------------------------------------- shapes, dtypes, determinism


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("label_dtype", [torch.long, torch.uint8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shapes_dtypes_devices_preserved(shape, label_dtype, dtype):
    image, label = random_batch(shape, dtype=dtype, label_dtype=label_dtype)
    pipelines = [one(n, p=1.0) for n in NAMES] + [A.build(A.PAPER_BASIC), A.build(A.PAPER_EXTENDED)]
    for pipe in pipelines:
        out_i, out_l = pipe(image, label, gen(1))
        assert out_i.shape == image.shape and out_l.shape == label.shape
        assert out_i.dtype == dtype and out_l.dtype == label_dtype
        assert out_i.device == image.device and out_l.device == label.device
        assert set(out_l.unique().tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("name", NAMES + ["PAPER_EXTENDED"])
def test_deterministic_for_a_generator_state(name):
    if name == "PAPER_EXTENDED":
        pipe = A.build(A.PAPER_EXTENDED)
    else:  # p=1 for the continuous ones; rot90/flip need p<1 to differ between seeds
        pipe = one(name) if name in ("rot90_xy", "flip") else one(name, p=1.0)
    image, label = random_batch()
    a = pipe(image, label, gen(7))
    b = pipe(image, label, gen(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = pipe(image, label, gen(8))
    assert not torch.equal(a[0], c[0])


def test_none_generator_uses_global_rng():
    image, label = random_batch()
    torch.manual_seed(3)
    a = A.build(A.PAPER_EXTENDED)(image, label)
    torch.manual_seed(3)
    b = A.build(A.PAPER_EXTENDED)(image, label, None)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------------------------- exact transforms


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spec", [[{"name": "rot90_xy", "p": 1.0}], [{"name": "flip"}], A.PAPER_BASIC])
def test_rot90_and_flip_are_exact_dihedral_permutations(shape, spec):
    image, label = random_batch(shape, b=6)
    pipe = A.build(spec)
    square = shape[0] == shape[1]
    for seed in range(3):
        out_i, out_l = pipe(image, label, gen(seed))
        for b in range(image.shape[0]):
            assert torch.equal(out_i[b].flatten().sort().values, image[b].flatten().sort().values)
            assert torch.allclose(out_i[b].sum(), image[b].sum(), atol=1e-4)
            assert torch.equal(
                out_l[b].flatten().bincount(minlength=3), label[b].flatten().bincount(minlength=3)
            )
            cands = dihedral_images(image[b], label[b], square)
            assert any(torch.equal(out_i[b], ci) and torch.equal(out_l[b], cl) for ci, cl in cands)


@pytest.mark.parametrize("shape", SHAPES)
def test_rot90_matches_torch_rot90(shape):
    image, label = random_batch(shape, b=16)
    out_i, out_l = one("rot90_xy", p=1.0)(image, label, gen(0))
    seen = set()
    for b in range(image.shape[0]):
        ks = [k for k in range(4) if torch.rot90(image[b], k, (1, 2)).shape == out_i[b].shape]
        k = next(k for k in ks if torch.equal(torch.rot90(image[b], k, (1, 2)), out_i[b]))
        assert torch.equal(torch.rot90(label[b], k, (0, 1)), out_l[b])
        seen.add(k)
    assert seen == ({1, 2, 3} if shape[0] == shape[1] else {2})


def test_rot90_default_orientations_uniform():
    # Default p=0.75 with k in {1,2,3}: each of 0/90/180/270 has probability 1/4.
    image = torch.arange(4.0).view(1, 1, 2, 2, 1).expand(4000, 1, 2, 2, 1).contiguous()
    label = torch.zeros(4000, 2, 2, 1, dtype=torch.long)
    out, _ = one("rot90_xy")(image, label, gen(0))
    counts = torch.stack(
        [(out.flatten(1) == torch.rot90(image[0], k, (1, 2)).flatten()).all(1) for k in range(4)]
    )
    freq = counts.sum(1).double() / 4000
    assert torch.allclose(freq, torch.full((4,), 0.25, dtype=torch.float64), atol=0.03)


@pytest.mark.parametrize("shape", SHAPES)
def test_fused_permutations_equal_sequential(shape):
    image, label = random_batch(shape, b=8)
    specs = [
        {"name": "rot90_xy"},
        {"name": "flip", "p": 0.5},
        {"name": "rot90_xy", "p": 0.6},
        {"name": "flip", "p": 0.3, "axes": [1, 2]},
    ]
    for seed in range(5):
        fused = A.build(specs, fuse=True)(image, label, gen(seed))
        steps = A.build(specs, fuse=False)(image, label, gen(seed))
        assert torch.equal(fused[0], steps[0]) and torch.equal(fused[1], steps[1])


def test_flip_axes_param():
    image, label = random_batch(b=8)
    out, _ = one("flip", p=1.0, axes=[2])(image, label, gen(0))
    assert torch.equal(out, image.flip(4))


# ----------------------------------------------------------------------------- alignment


def _interp_bound(field):
    """Largest |f(q)| at which sign(trilinear f(q)) can differ from sign(f(nearest voxel of q))."""
    return 0.5 * sum(field.diff(dim=d).abs().amax().item() for d in (-3, -2, -1))


@pytest.mark.parametrize("shape", ALIGN_SHAPES)
@pytest.mark.parametrize("name", NAMES[:4])
def test_label_stays_aligned_with_image(shape, name):
    image, label = smooth_batch(shape, b=4, seed=1)
    thr = _interp_bound(image[:, 0]) * 1.01
    pipe = one(name, p=1.0)
    for seed in range(6):
        out_i, out_l = pipe(image, label, gen(seed))
        bad = out_l != (out_i[:, 0] > 0).long()
        if name in ("rot90_xy", "flip"):
            assert not bad.any()
            continue
        # Next to the zero padding the trilinear image blends with 0 while the label is nearest:
        # those voxels are excluded (the constant channel 1 drops below 1 there).
        inside = out_i[:, 1] > 1 - 1e-5
        assert (bad & inside).sum() < 0.03 * inside.sum()
        assert (out_i[:, 0].abs() <= thr)[bad & inside].all()


def _best_threshold_error(values, labels, weight):
    """Per sample: weighted fraction of voxels misclassified by the best 'label = value > t'."""
    order = values.flatten(1).argsort(dim=1, stable=True)
    lab = labels.flatten(1).gather(1, order).double()
    w = weight.flatten(1).gather(1, order).double()
    zero = torch.zeros_like(lab[:, :1])
    ones_below = torch.cat([zero, (w * lab).cumsum(1)], 1)  # label-1 voxels under the threshold
    zeros_above = torch.cat([(w * (1 - lab)).flip(1).cumsum(1).flip(1), zero], 1)  # label-0 above
    return (ones_below + zeros_above).amin(1) / w.sum(1)


@pytest.mark.parametrize("shape", ALIGN_SHAPES)
@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("always", [False, True])
def test_paper_extended_pipeline_keeps_alignment(shape, fuse, always):
    # Gamma is strictly monotone per channel, so after it the label is still a threshold of the
    # image, just not at 0: check the best threshold misclassifies < 3% of each sample's voxels
    # (away from the zero padding; gamma leaves the constant channel 1 alone).
    specs = [{**s, "p": 1.0} for s in A.PAPER_EXTENDED] if always else A.PAPER_EXTENDED
    pipe = A.build(specs, fuse=fuse)
    image, label = smooth_batch(shape, b=4, seed=2)
    for seed in range(8):
        out_i, out_l = pipe(image, label, gen(seed))
        inside = out_i[:, 1] > 1 - 1e-5
        assert (_best_threshold_error(out_i[:, 0], out_l, inside) < 0.03).all()
        if always:
            assert all(not torch.equal(out_i[b], image[b]) for b in range(image.shape[0]))


def test_fused_affine_matches_sequential_in_the_interior():
    image, label = smooth_batch((16, 16, 8), b=4, seed=3)
    specs = [{"name": "rotate_xy", "p": 1.0}, {"name": "scale", "p": 1.0, "min_zoom": 1.0, "max_zoom": 1.3}]
    fi, fl = A.build(specs, fuse=True)(image, label, gen(5))
    si, sl = A.build(specs, fuse=False)(image, label, gen(5))
    inside = (fi[:, 1] > 1 - 1e-5) & (si[:, 1] > 1 - 1e-5)
    assert inside.double().mean() > 0.5
    assert (fi[:, 0] - si[:, 0]).abs()[inside].max() < 0.1
    assert (fl != sl)[inside].double().mean() < 0.03


# ----------------------------------------------------------------------------- probabilities


@pytest.mark.parametrize("name", NAMES)
def test_p0_is_identity_and_p1_always_changes(name):
    image, label = random_batch(b=4)
    for seed in range(3):
        i0, l0 = one(name, p=0.0)(image, label, gen(seed))
        assert torch.equal(i0, image) and torch.equal(l0, label)
        i1, _ = one(name, p=1.0)(image, label, gen(seed))
        assert all(not torch.equal(i1[b], image[b]) for b in range(image.shape[0]))


# ----------------------------------------------------------------------------- geometry


def _disk(shape, radius, b=8):
    x, y = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in shape[:2])
    disk = (x[:, None] ** 2 + y[None, :] ** 2) <= radius**2
    label = disk[None, :, :, None].expand(b, *shape).long()
    return label.unsqueeze(1).float(), label


def test_rotate_xy_is_a_rotation_on_non_square_patches():
    # On a 16x24 patch a centred disk keeps its area and a radial field stays the same radial
    # field. An uncorrected affine (a shear: determinant 1) would keep the area too but deform
    # the field by ~0.1 (checked by hand), far above the ~0.01 interpolation error.
    shape = (16, 24, 4)
    x, y = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in shape[:2])
    r2 = x[:, None] ** 2 + y[None, :] ** 2
    label = (r2 <= 5.0**2)[None, :, :, None].expand(8, *shape).long()
    image = torch.exp(-r2 / 32.0)[None, None, :, :, None].expand(8, 1, *shape).contiguous()
    out_i, out_l = one("rotate_xy", p=1.0, max_degrees=45)(image, label, gen(0))
    area, new_area = label.sum((1, 2, 3)).double(), out_l.sum((1, 2, 3)).double()
    assert ((new_area - area).abs() / area < 0.05).all()
    inside = (r2 < 36)[None, :, :, None]
    assert ((out_i[:, 0] - image[:, 0]).abs() * inside).max() < 0.02
    assert not torch.equal(out_i, image)
    # An off-centre bump keeps its distance from the centre (in voxels).
    bump = torch.exp(-((x[:, None] - 4) ** 2 + y[None, :] ** 2) / 2.0)
    bump = bump[None, None, :, :, None].expand(8, 1, *shape).contiguous()
    out, _ = one("rotate_xy", p=1.0, max_degrees=60)(bump, label, gen(1))
    w = out[:, 0, :, :, 0]
    cx = (w * x[:, None]).sum((1, 2)) / w.sum((1, 2))
    cy = (w * y[None, :]).sum((1, 2)) / w.sum((1, 2))
    assert torch.allclose(torch.hypot(cx, cy), torch.full((8,), 4.0), atol=0.15)
    assert cy.abs().max() > 1.0  # it did rotate


def test_scale_zoom_factor_enlarges_content():
    image, label = _disk((24, 24, 4), radius=4.0, b=2)
    _, zin = one("scale", p=1.0, min_zoom=1.5, max_zoom=1.5, in_plane=True)(image, label, gen(0))
    _, zout = one("scale", p=1.0, min_zoom=0.75, max_zoom=0.75, in_plane=True)(image, label, gen(0))
    area = label.sum((1, 2, 3)).double()
    assert torch.allclose(
        zin.sum((1, 2, 3)).double() / area, torch.full((2,), 2.25, dtype=torch.float64), rtol=0.1
    )
    assert torch.allclose(
        zout.sum((1, 2, 3)).double() / area, torch.full((2,), 0.5625, dtype=torch.float64), rtol=0.1
    )
    # Isotropic by default: the Z extent changes too (zero padding shows up at the Z ends).
    img3 = torch.ones(1, 1, 16, 16, 16)
    out, _ = one("scale", p=1.0, min_zoom=0.7, max_zoom=0.7)(
        img3, torch.zeros(1, 16, 16, 16, dtype=torch.long), gen(0)
    )
    assert out[0, 0, 8, 8, 0] == 0 and out[0, 0, 8, 8, 8] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- gamma


def test_gamma_keeps_min_max_and_label():
    image, label = random_batch(b=6)
    out_i, out_l = one("gamma", p=1.0)(image, label, gen(0))
    assert torch.equal(out_l, label)
    assert torch.equal(out_i.flatten(2).amin(2), image.flatten(2).amin(2))
    assert torch.equal(out_i.flatten(2).amax(2), image.flatten(2).amax(2))
    # Monotone per channel: the order of voxel values is unchanged.
    o = image.flatten(2).argsort(2)
    assert (out_i.flatten(2).gather(2, o).diff(dim=2) >= 0).all()


def test_gamma_formula_and_constant_channels():
    image, label = random_batch(b=2)
    image[:, 1] = 3.0
    out, _ = one("gamma", p=1.0, min_gamma=2.0, max_gamma=2.0)(image, label, gen(0))
    lo = image.flatten(2).amin(2)[..., None, None, None]
    hi = image.flatten(2).amax(2)[..., None, None, None]
    expected = lo + (hi - lo) * ((image - lo) / (hi - lo)) ** 2
    assert torch.allclose(out[:, 0], expected[:, 0], atol=1e-5)
    assert torch.equal(out[:, 1], image[:, 1])


# ----------------------------------------------------------------------------- build()


def test_build_paper_sets():
    assert [t.name for t in A.build(A.PAPER_BASIC)] == ["rot90_xy", "flip"]
    assert [t.name for t in A.build(A.PAPER_EXTENDED)] == ["rot90_xy", "flip", "rotate_xy", "scale", "gamma"]
    assert set(A.TRANSFORMS) == set(NAMES)
    for cls in A.TRANSFORMS.values():
        assert isinstance(cls(), A.Transform)


@pytest.mark.parametrize(
    ("specs", "needles"),
    [
        ([{"name": "flip"}, {"name": "elastic"}], ["entry 1", "elastic"]),
        ([{"p": 0.5}], ["entry 0", "name"]),
        (["flip"], ["entry 0", "flip"]),
        ({"name": "flip"}, ["list"]),
        ([{"name": "flip", "prob": 0.5}], ["flip", "prob"]),
        ([{"name": "rot90_xy", "p": 1.5}], ["rot90_xy", "p", "1.5"]),
        ([{"name": "flip", "p": "often"}], ["flip", "p", "often"]),
        ([{"name": "flip", "axes": [0, 3]}], ["flip", "axes"]),
        ([{"name": "rotate_xy", "max_degrees": -5}], ["rotate_xy", "max_degrees"]),
        ([{"name": "scale", "min_zoom": 1.5, "max_zoom": 1.2}], ["scale", "min_zoom", "max_zoom"]),
        ([{"name": "scale", "min_zoom": 0}], ["scale", "min_zoom"]),
        ([{"name": "scale", "padding_mode": "wrap"}], ["scale", "padding_mode", "wrap"]),
        ([{"name": "gamma", "max_gamma": float("nan")}], ["gamma", "max_gamma"]),
    ],
)
def test_build_rejects_bad_specs(specs, needles):
    with pytest.raises(ValueError) as info:
        A.build(specs)
    for needle in needles:
        assert needle in str(info.value)


def test_bad_tensors_rejected():
    pipe = A.build(A.PAPER_BASIC)
    image, label = random_batch()
    with pytest.raises(ValueError, match="label"):
        pipe(image, label[:, :-1], gen(0))
    with pytest.raises(ValueError, match="image"):
        pipe(image[0], label, gen(0))
    with pytest.raises(ValueError, match="integer"):
        pipe(image, label.float(), gen(0))
