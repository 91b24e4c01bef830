"""An embedded synthetic segmentation task in Medical Segmentation Decathlon (MSD) format.

``write_synthetic_task`` writes a small task folder (``dataset.json``, ``imagesTr``, ``labelsTr``,
``imagesTs`` and, as a held-out reference not listed in ``dataset.json``, ``labelsTs``) that the
quickstart and the tests use instead of real data. It is built to exercise a real pipeline:

* geometry: anisotropic spacing (about 0.8 x 0.8 x 1.5 mm, varying per case), an affine with the first
  axis flipped and a non-zero origin, non-cubic shapes that vary per case, qform and sform codes 1;
* content: a body (outside of which the image is exactly 0) with a subcutaneous fat shell and textured
  tissue; class 1 an "organ" (a lobulated, rotated ellipsoid); class 2 a "lesion" strictly inside it
  (slightly brighter, overlapping intensities); classes 3.. curved tubes; organ-like distractor blobs;
  a smooth multiplicative bias field, partial-volume blur and Rician noise, in arbitrary units.

Structures are drawn in millimetres, so they are round in space, not in voxels. A global intensity
threshold cannot solve the task (``threshold_baseline`` measures the best one with an oracle); shape and
context can. Each case comes from its own stream ``np.random.default_rng([seed, case_id])``, so a case's
arrays depend only on ``(seed, case_id, size, classes)``, and the files are byte-for-byte reproducible.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from nastk.io import atomic_write_bytes, make_dir

__all__ = [
    "HEAD_LABELS",
    "LABEL_NAMES",
    "threshold_baseline",
    "threshold_baseline_dice",
    "write_head_task",
    "write_synthetic_task",
]

LABEL_NAMES = ("background", "organ", "lesion", "vessel", "duct", "nerve")
_BASE_SPACING = (0.8, 0.8, 1.5)  # mm, (x, y, z) of the voxel axes
# Mean intensities before the per-case scale (arbitrary units; noise std ~0.05, bias field ~+-15%).
_TISSUE, _FAT, _ORGAN, _LESION, _TUBE = 0.30, 0.74, 0.55, 0.70, 0.78


# --------------------------------------------------------------------------------------------- helpers
def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation matrix (from a random unit quaternion)."""
    a, b, c, d = rng.standard_normal(4)
    n = np.sqrt(a * a + b * b + c * c + d * d)
    a, b, c, d = a / n, b / n, c / n, d / n
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ]
    )


def _local(grid, center, rot):
    """Coordinates of every voxel in the frame of a rotated body centred at ``center`` (mm)."""
    d = [g - c for g, c in zip(grid, center)]
    return [rot[0, k] * d[0] + rot[1, k] * d[1] + rot[2, k] * d[2] for k in range(3)]


def _ellipsoid_q(grid, center, semi, rot=None, lobes=None):
    """Normalised radius: < 1 inside the (optionally rotated and lobulated) ellipsoid."""
    if rot is None:
        loc = [g - c for g, c in zip(grid, center)]
    else:
        loc = _local(grid, center, rot)
    q = np.sqrt(sum((x / a) ** 2 for x, a in zip(loc, semi)))
    if lobes is not None:  # low-order radial perturbation: r_surface(u) = 1 + lin.u + quad.(u*u - 1/3)
        lin, quad = lobes
        r = np.sqrt(sum(x * x for x in loc)) + 1e-6
        u = [x / r for x in loc]
        pert = sum(lin[k] * u[k] + quad[k] * (u[k] * u[k] - 1 / 3) for k in range(3))
        q = q / (1.0 + pert)
    return q


def _shift_reduce(mask: np.ndarray, op) -> np.ndarray:
    """Combine ``mask`` with its 26 neighbours (``np.logical_or``: dilation, ``np.logical_and``: erosion)."""
    pad = np.pad(mask, 1, mode="constant", constant_values=op is np.logical_and)
    out = mask.copy()
    nx, ny, nz = mask.shape
    for i in range(3):
        for j in range(3):
            for k in range(3):
                if (i, j, k) != (1, 1, 1):
                    op(out, pad[i : i + nx, j : j + ny, k : k + nz], out=out)
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    return _shift_reduce(mask, np.logical_or)


def _erode(mask: np.ndarray) -> np.ndarray:
    return _shift_reduce(mask, np.logical_and)


def _blur(a: np.ndarray, passes: int = 1) -> np.ndarray:
    """Separable [1, 2, 1] / 4 smoothing along every axis, ``passes`` times (edge-padded)."""
    a = a.astype(np.float32, copy=True)
    for _ in range(passes):
        for ax in range(3):
            p = np.moveaxis(np.pad(a, [(1, 1) if i == ax else (0, 0) for i in range(3)], mode="edge"), ax, 0)
            a = np.moveaxis(0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:], 0, ax)
    return np.ascontiguousarray(a)


def _smooth_noise(rng: np.random.Generator, shape, passes: int) -> np.ndarray:
    """Zero-mean, unit-std spatially correlated noise."""
    n = _blur(rng.standard_normal(shape, dtype=np.float32), passes)
    return (n - n.mean()) / (n.std() + 1e-12)


def _tube_distance(grid, points: np.ndarray) -> np.ndarray:
    """Distance (mm) from every voxel to the polyline through ``points`` (K x 3)."""
    best = None
    for p0, p1 in zip(points[:-1], points[1:]):
        seg = p1 - p0
        length2 = float(seg @ seg) + 1e-12
        d = [g - p for g, p in zip(grid, p0)]
        t = np.clip((d[0] * seg[0] + d[1] * seg[1] + d[2] * seg[2]) / length2, 0.0, 1.0)
        dist2 = sum((d[k] - t * seg[k]) ** 2 for k in range(3))
        best = dist2 if best is None else np.minimum(best, dist2)
    return np.sqrt(best)


# ------------------------------------------------------------------------------------------------ case
def _make_case(seed: int, case_id: int, size: int, classes: int):
    """One case: ``(image float32, label uint8, affine 4x4)``; arrays are indexed (x, y, z)."""
    rng = np.random.default_rng([seed, case_id])

    # Geometry: non-cubic shape, anisotropic spacing, first axis flipped, non-zero origin.
    shape = (
        int(round(size * rng.uniform(0.9, 1.1))),
        int(round(size * rng.uniform(0.9, 1.1))),
        max(8, int(round(0.6 * size * rng.uniform(0.9, 1.1)))),
    )
    s_xy = round(_BASE_SPACING[0] * rng.uniform(0.92, 1.08), 4)
    spacing = np.array([s_xy, s_xy, round(_BASE_SPACING[2] * rng.uniform(0.9, 1.1), 4)])
    extent = np.array(shape) * spacing
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    # The volume's centre lies near a random point a few cm from the scanner's isocentre.
    world_center = rng.uniform([-20, -30, -60], [20, 10, 60])
    affine[:3, 3] = np.round(world_center - affine[:3, :3] @ ((np.array(shape) - 1) / 2), 3)

    # Voxel-centre coordinates in mm, relative to the volume centre; broadcastable (x,1,1), (1,y,1), (1,1,z).
    grid = [
        ((np.arange(n, dtype=np.float32) - (n - 1) / 2) * np.float32(s)).reshape(
            [-1 if i == ax else 1 for i in range(3)]
        )
        for ax, (n, s) in enumerate(zip(shape, spacing))
    ]

    # Body: a large ellipsoid with a subcutaneous fat shell; outside it the image is exactly 0.
    body_c = rng.uniform(-0.04, 0.04, 3) * extent
    # in-plane the body stays inside the field of view; along z it runs through it (cut like a scan)
    body_semi = rng.uniform([0.40, 0.40, 0.55], [0.47, 0.47, 0.7]) * extent
    fat = rng.uniform(0.08, 0.13) * body_semi.min()
    body = _ellipsoid_q(grid, body_c, body_semi) < 1.0
    inner_semi = body_semi - fat
    inner = _ellipsoid_q(grid, body_c, inner_semi) < 1.0
    r_in = float(inner_semi.min())

    label = np.zeros(shape, dtype=np.uint8)
    clean = np.where(inner, _TISSUE, _FAT).astype(np.float32)
    clean += np.float32(0.045) * _smooth_noise(rng, shape, 2)  # tissue texture

    # Organ (class 1): a rotated, lobulated ellipsoid well inside the inner body.
    organ_semi = np.sort(rng.uniform(0.55, 0.75, 3) * r_in)[::-1]
    slack = np.maximum(inner_semi - 1.15 * organ_semi[0], 0.0)
    organ_c = body_c + rng.uniform(-0.8, 0.8, 3) * slack
    organ_rot = _rotation(rng)
    lobes = (rng.uniform(-0.08, 0.08, 3), rng.uniform(-0.12, 0.12, 3))
    organ_q = _ellipsoid_q(grid, organ_c, organ_semi, organ_rot, lobes)
    organ = (organ_q < 1.0) & inner
    organ_int = _ORGAN * rng.uniform(0.95, 1.05)
    clean[organ] = organ_int + 0.03 * _smooth_noise(rng, shape, 1)[organ]
    clean[organ & ~_erode(organ)] -= 0.06  # a thin, slightly darker capsule
    label[organ] = 1

    # Lesion (class 2): a smaller rotated ellipsoid strictly inside the organ (one voxel of organ around it).
    if classes >= 3:
        lesion_semi = organ_semi * rng.uniform(0.42, 0.6, 3)
        offset = rng.standard_normal(3)
        offset *= rng.uniform(0.0, 1.0) ** (1 / 3) / np.linalg.norm(offset)
        lesion_c = organ_c + organ_rot @ (offset * (organ_semi - lesion_semi.max()) * 0.85)
        lesion_rot = _rotation(rng)
        lesion = (_ellipsoid_q(grid, lesion_c, lesion_semi, lesion_rot) < 1.0) & _erode(organ)
        halo = organ & ~lesion & (_ellipsoid_q(grid, lesion_c, lesion_semi * 1.35, lesion_rot) < 1.0)
        clean[lesion] = organ_int + (_LESION - _ORGAN) * rng.uniform(0.85, 1.2)
        clean[lesion] += 0.03 * _smooth_noise(rng, shape, 1)[lesion]
        # a faint darker halo (oedema) around the lesion, inside the organ only
        clean[halo] -= 0.04
        label[lesion] = 2

    # Distractors: organ- and lesion-like blobs in the body, never touching the organ.
    keep_out = _dilate(_dilate(organ))
    for _ in range(int(rng.integers(6, 11))):
        semi = rng.uniform(0.15, 0.45, 3) * r_in
        for _try in range(8):
            u = rng.standard_normal(3)
            u *= rng.uniform(0.0, 1.0) ** (1 / 3) / np.linalg.norm(u)  # uniform in the unit ball
            c = np.clip(body_c + u * np.maximum(inner_semi - semi.min(), 0.0), -extent / 2, extent / 2)
            blob = (_ellipsoid_q(grid, c, semi, _rotation(rng)) < 1.0) & inner
            if blob.any() and not (blob & keep_out).any():
                clean[blob] = rng.uniform(0.45, 0.72) + 0.03 * _smooth_noise(rng, shape, 1)[blob]
                break

    # Tubes (classes 3..): curved tubes across the inner body, drawn over background only.
    for cls in range(3, classes):
        a = rng.standard_normal(3)
        a /= np.linalg.norm(a)
        b = -a + 0.6 * rng.standard_normal(3)
        b /= np.linalg.norm(b)
        p0 = body_c + 0.85 * a * inner_semi
        p1 = body_c + 0.85 * b * inner_semi
        normal = np.cross(p1 - p0, rng.standard_normal(3))
        normal /= np.linalg.norm(normal) + 1e-12
        t = np.linspace(0.0, 1.0, 17)[:, None]
        bend = rng.uniform(0.15, 0.35) * np.linalg.norm(p1 - p0)
        wiggle = (
            rng.uniform(0.0, 0.06) * np.linalg.norm(p1 - p0) * np.sin(2 * np.pi * 2 * t + rng.uniform(0, 6.3))
        )
        points = p0 + t * (p1 - p0) + (bend * np.sin(np.pi * t) + wiggle) * normal
        radius = max(rng.uniform(0.1, 0.14) * r_in, 0.9 * float(spacing.max()))
        tube = (_tube_distance(grid, points) < radius) & inner & (label == 0)
        clean[tube] = _TUBE * rng.uniform(0.93, 1.07) + 0.03 * _smooth_noise(rng, shape, 1)[tube]
        label[tube] = cls

    # Acquisition: partial-volume blur, smooth multiplicative bias field, Rician noise, arbitrary units.
    clean = _blur(clean * body, 1)
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(3):
        freq = rng.uniform(-1.0, 1.0, 3) / extent  # at most ~one cycle across the field of view
        phase = rng.uniform(0, 2 * np.pi)
        arg = sum(np.float32(2 * np.pi * f) * g for f, g in zip(freq, grid)) + np.float32(phase)
        field += np.float32(rng.uniform(0.04, 0.08)) * np.cos(arg)
    clean *= np.exp(field)
    sigma = np.float32(rng.uniform(0.04, 0.06))
    re = clean + sigma * rng.standard_normal(shape, dtype=np.float32)
    im = sigma * rng.standard_normal(shape, dtype=np.float32)
    image = np.sqrt(re * re + im * im) * np.float32(1000.0 * rng.uniform(0.6, 1.4))
    image = np.where(body, image, np.float32(0)).astype(np.float32)
    return image, label, affine


# ------------------------------------------------------------------------------------------------- I/O
def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _write_cases(out: Path, prefix: str, cases: int, test_cases: int, make) -> tuple[list[dict], list[str]]:
    """Write ``cases`` training cases and ``test_cases`` test cases (numbered from the next multiple of
    100) made by ``make(case_id) -> (image, label, affine)`` into an MSD folder, atomically, and return
    the ``training`` and ``test`` lists of its dataset.json (written by the caller, last)."""
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        make_dir(out / sub)
    first_test = -(-cases // 100) * 100
    training, test = [], []
    for case_id in [*range(cases), *range(first_test, first_test + test_cases)]:
        image, label, affine = make(case_id)
        fname = f"{prefix}_{case_id:03d}.nii.gz"
        split = "Tr" if case_id < cases else "Ts"
        atomic_write_bytes(out / f"images{split}" / fname, _nifti_bytes(image, affine))
        atomic_write_bytes(out / f"labels{split}" / fname, _nifti_bytes(label, affine))
        if split == "Tr":
            training.append({"image": f"./imagesTr/{fname}", "label": f"./labelsTr/{fname}"})
        else:
            test.append(f"./imagesTs/{fname}")
    return training, test


def write_synthetic_task(
    out: str | Path,
    cases: int = 12,
    size: int = 48,
    classes: int = 3,
    seed: int = 0,
    test_cases: int = 2,
) -> Path:
    """Write a synthetic MSD task folder to ``out`` and return its path.

    ``cases`` training cases ``synth_000..`` and ``test_cases`` test cases (numbered from the next
    multiple of 100, e.g. ``synth_100..``), each roughly ``size x size x 0.6 size`` voxels with
    ``classes`` labels including background (1 organ, 2 lesion inside the organ, 3.. tubes). Test labels
    go to ``labelsTs/`` (not listed in ``dataset.json``). Every file is written atomically and
    ``dataset.json`` last, so a folder with a ``dataset.json`` is complete.
    """
    for name, value in (("cases", cases), ("size", size), ("classes", classes), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(test_cases, bool) or not isinstance(test_cases, (int, np.integer)):
        raise ValueError(f"test_cases must be an integer, got {test_cases!r}")
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    if size < 16:
        raise ValueError(f"size must be >= 16 (voxels along the first axes), got {size}")
    if not 2 <= classes <= len(LABEL_NAMES):
        raise ValueError(
            f"classes must be between 2 and {len(LABEL_NAMES)} (including background), got {classes}"
        )
    if test_cases < 0:
        raise ValueError(f"test_cases must be >= 0, got {test_cases}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")

    out = Path(out)
    training, test = _write_cases(
        out,
        "synth",
        cases,
        test_cases,
        lambda case_id: _make_case(int(seed), case_id, int(size), int(classes)),
    )

    meta = {
        "name": "Synthetic",
        "description": (
            f"nastk synthetic segmentation task (seed {seed}, size {size}): an organ, a lesion inside it"
            " and tubes, with distractors, bias field and noise. Test labels are in labelsTs/."
        ),
        "reference": "generated by nastk.data.synthetic.write_synthetic_task",
        "licence": "CC0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {str(i): LABEL_NAMES[i] for i in range(classes)},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    atomic_write_bytes(out / "dataset.json", (json.dumps(meta, indent=2) + "\n").encode())
    return out


# -------------------------------------------------------------------------------------- the head variant
HEAD_LABELS = ("background", "brain", "lesion")
_HEAD_SPACING = (1.0, 1.0, 4.0)  # mm: thick MR slices, strongly anisotropic
# MR-like T1 contrast (arbitrary units): fat bright, bone dark, CSF darker than brain.
_SCALP, _SKULL, _CSF, _BRAIN, _HEAD_LESION = 0.85, 0.08, 0.25, 0.55, 0.80


def _make_head_case(seed: int, case_id: int, size: int, stripped: bool):
    """One head: ``(image, label, affine)``. Label 1 is the brain, 2 a lesion inside it. A stripped
    case is 0 everywhere outside the brain and a one-voxel in-plane rim (as skull-stripped MR is), so its
    nonzero region is mostly foreground; the others have scalp, skull, CSF and noisy air around it."""
    rng = np.random.default_rng([seed, 7_000_000 + case_id])
    s_xy = round(_HEAD_SPACING[0] * rng.uniform(0.9, 1.1), 4)
    s_z = round(_HEAD_SPACING[2] * rng.uniform(0.9, 1.1), 4)
    shape = (
        int(round(size * rng.uniform(0.95, 1.05))),
        int(round(size * rng.uniform(0.95, 1.05))),
        max(6, int(round(size * s_xy / s_z * rng.uniform(0.95, 1.05)))),
    )
    spacing = np.array([s_xy, s_xy, s_z])
    extent = np.array(shape) * spacing
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    affine[:3, 3] = np.round(-affine[:3, :3] @ ((np.array(shape) - 1) / 2), 3)
    grid = [
        ((np.arange(n, dtype=np.float32) - (n - 1) / 2) * np.float32(sp)).reshape(
            [-1 if i == ax else 1 for i in range(3)]
        )
        for ax, (n, sp) in enumerate(zip(shape, spacing))
    ]
    centre = rng.uniform(-0.03, 0.03, 3) * extent
    head_semi = rng.uniform([0.40, 0.42, 0.40], [0.45, 0.47, 0.46]) * extent
    scalp = _ellipsoid_q(grid, centre, head_semi) < 1.0
    skull = _ellipsoid_q(grid, centre, head_semi * 0.90) < 1.0
    csf = _ellipsoid_q(grid, centre, head_semi * 0.82) < 1.0
    lobes = (rng.uniform(-0.05, 0.05, 3), rng.uniform(-0.08, 0.08, 3))
    brain = (_ellipsoid_q(grid, centre, head_semi * 0.78, np.eye(3), lobes) < 1.0) & csf
    clean = np.zeros(shape, np.float32)
    clean[scalp] = _SCALP
    clean[skull] = _SKULL
    clean[csf] = _CSF
    texture = _smooth_noise(rng, shape, 1)
    clean[brain] = _BRAIN * rng.uniform(0.95, 1.05) + 0.06 * texture[brain]  # grey/white matter
    label = np.zeros(shape, np.uint8)
    label[brain] = 1
    semi = head_semi * 0.78 * rng.uniform(0.18, 0.3, 3)
    offset = rng.uniform(-0.35, 0.35, 3) * head_semi
    lesion = (_ellipsoid_q(grid, centre + offset, semi, _rotation(rng)) < 1.0) & _erode(brain)
    clean[lesion] = _HEAD_LESION * rng.uniform(0.9, 1.1) + 0.03 * texture[lesion]
    label[lesion] = 2
    # Acquisition: blur, bias field, Rician noise everywhere (the air is noise, not zero), scale.
    clean = _blur(clean, 1)
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(2):
        freq = rng.uniform(-1.0, 1.0, 3) / extent
        arg = sum(np.float32(2 * np.pi * f) * g for f, g in zip(freq, grid)) + np.float32(rng.uniform(0, 6.3))
        field += np.float32(rng.uniform(0.05, 0.1)) * np.cos(arg)
    clean *= np.exp(field)
    sigma = np.float32(rng.uniform(0.03, 0.05))
    re = clean + sigma * rng.standard_normal(shape, dtype=np.float32)
    im = sigma * rng.standard_normal(shape, dtype=np.float32)
    image = np.sqrt(re * re + im * im) * np.float32(1000.0 * rng.uniform(0.6, 1.4))
    if stripped:  # a one-voxel rim in-plane, as brain masks leave (a 4 mm slice above would be more)
        rim = brain.copy()
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                rim |= np.roll(brain, (dx, dy), axis=(0, 1))  # the brain is inside the image: no wrap
        image = np.where(rim, image, np.float32(0))
    return image.astype(np.float32), label, affine


def write_head_task(
    out: str | Path,
    cases: int = 12,
    size: int = 64,
    seed: int = 0,
    test_cases: int = 6,
    stripped_every: int = 2,
    stripped_test_every: int | None = None,
) -> Path:
    """Write a synthetic head-MR task in MSD format: thick slices (about 1 x 1 x 4 mm), MR-like contrast,
    and every ``stripped_every``-th training case skull-stripped, that is 0 outside the brain (0: none),
    and every ``stripped_test_every``-th test case (default: as the training cases). Stripped test cases
    with no stripped training case are the shift of issue 17: a head from another source, held out.

    It is the planning ablation's second dataset (``bench/plan_ablation.py``): unlike the body task its
    spacing is strongly anisotropic and, in the stripped cases, the nonzero region is mostly foreground.
    Layout and reproducibility as ``write_synthetic_task``; ``size`` is the in-plane side in voxels.
    """
    for name, value in (("cases", cases), ("size", size), ("seed", seed), ("test_cases", test_cases)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    test_every = stripped_every if stripped_test_every is None else stripped_test_every
    if cases < 1 or size < 24 or stripped_every < 0 or test_every < 0:
        raise ValueError("cases must be >= 1, size >= 24, stripped_every and stripped_test_every >= 0")
    out = Path(out)

    def make(case_id: int):
        every = stripped_every if case_id < cases else test_every
        return _make_head_case(int(seed), case_id, int(size), every > 0 and case_id % every == 0)

    training, test = _write_cases(out, "head", cases, test_cases, make)
    meta = {
        "name": "SyntheticHead",
        "description": (
            f"nastk synthetic head MR (seed {seed}, size {size}): brain and a lesion, thick slices; "
            f"skull-stripped (0 outside the brain): every {stripped_every}-th training and every "
            f"{test_every}-th test case (0: none). Test labels are in labelsTs/."
        ),
        "reference": "generated by nastk.data.synthetic.write_head_task",
        "licence": "CC0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {str(i): name for i, name in enumerate(HEAD_LABELS)},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    atomic_write_bytes(out / "dataset.json", (json.dumps(meta, indent=2) + "\n").encode())
    return out


# ------------------------------------------------------------------------------------ threshold oracle
def threshold_baseline_dice(
    image: np.ndarray, label: np.ndarray, classes: int, quantiles: int = 64
) -> list[float]:
    """Best Dice per foreground class (1..classes-1) of a global intensity-interval segmenter.

    For each class ``c`` every interval ``lo <= image < hi`` with ``lo < hi`` taken from ``quantiles``
    quantiles of the nonzero (body) intensities (the top one open-ended) is tried as a prediction within
    the body, and the highest Dice against ``label == c`` is kept: an optimistic oracle, since it picks
    the interval with the answer in hand. A class absent from ``label`` gives ``nan``.
    """
    image = np.asarray(image)
    label = np.asarray(label)
    if image.shape != label.shape:
        raise ValueError(f"image shape {image.shape} != label shape {label.shape}")
    body = image != 0
    values = image[body].astype(np.float64)
    if values.size == 0:
        return [float("nan")] * (classes - 1)
    edges = np.quantile(values, np.linspace(0.0, 1.0, quantiles))
    edges[-1] = np.inf
    bins = np.searchsorted(edges, values, side="right") - 1  # bin k: edges[k] <= v < edges[k+1]
    nbins = quantiles - 1
    pred_cum = np.concatenate([[0], np.cumsum(np.bincount(bins, minlength=nbins))])
    lab_body = label[body]
    lo, hi = np.triu_indices(quantiles, k=1)  # interval [edges[lo], edges[hi]) = bins lo..hi-1
    dice = []
    for c in range(1, classes):
        n_true = int((label == c).sum())
        if n_true == 0:
            dice.append(float("nan"))
            continue
        tp_cum = np.concatenate([[0], np.cumsum(np.bincount(bins[lab_body == c], minlength=nbins))])
        tp = tp_cum[hi] - tp_cum[lo]
        pred = pred_cum[hi] - pred_cum[lo]
        dice.append(float(np.max(2.0 * tp / (pred + n_true))))
    return dice


def threshold_baseline(task_dir: str | Path) -> dict:
    """``threshold_baseline_dice`` over the test cases of a synthetic task (labels from ``labelsTs/``).

    Returns ``{"cases": n, "per_class": {"1": dice, ...}, "labels": {"1": name, ...}, "mean": dice,
    "per_case": [{"case": file, "dice": [...]}, ...]}`` where ``per_class`` averages over cases (ignoring
    cases without the class) and ``mean`` averages ``per_class`` over the foreground classes.
    """
    task_dir = Path(task_dir)
    meta = json.loads((task_dir / "dataset.json").read_text())
    classes = len(meta["labels"])
    per_case = []
    for rel in meta["test"]:
        name = Path(rel).name
        label_path = task_dir / "labelsTs" / name
        if not label_path.exists():
            continue
        image = np.asarray(nib.load(task_dir / rel).dataobj, dtype=np.float32)
        label = np.asarray(nib.load(label_path).dataobj).astype(np.int64)
        per_case.append({"case": name, "dice": threshold_baseline_dice(image, label, classes)})
    if not per_case:
        raise ValueError(f"{task_dir}: no test cases with labels in labelsTs/")
    table = np.array([row["dice"] for row in per_case], dtype=np.float64)
    per_class = {
        str(c): float(np.nanmean(table[:, c - 1])) if np.isfinite(table[:, c - 1]).any() else float("nan")
        for c in range(1, classes)
    }
    return {
        "cases": len(per_case),
        "per_class": per_class,
        "labels": {str(c): meta["labels"][str(c)] for c in range(1, classes)},
        "mean": float(np.nanmean(list(per_class.values()))),
        "per_case": per_case,
    }
