"""The default task: an organ with a lesion inside it and curved tubes, in a textured body."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nastk.data.synthetic.files import _write_cases, write_dataset_json
from nastk.data.synthetic.shapes import (
    _blur,
    _dilate,
    _ellipsoid_q,
    _erode,
    _rotation,
    _smooth_noise,
    _tube_distance,
    mm_grid,
)

LABEL_NAMES = ("background", "organ", "lesion", "vessel", "duct", "nerve")
_BASE_SPACING = (0.8, 0.8, 1.5)  # mm, (x, y, z) of the voxel axes
# Mean intensities before the per-case scale (arbitrary units; noise std ~0.05, bias field ~+-15%).
_TISSUE, _FAT, _ORGAN, _LESION, _TUBE = 0.30, 0.74, 0.55, 0.70, 0.78


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

    grid = mm_grid(shape, spacing)

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

    description = (
        f"nastk synthetic segmentation task (seed {seed}, size {size}): an organ, a lesion inside it"
        " and tubes, with distractors, bias field and noise. Test labels are in labelsTs/."
    )
    labels = {str(i): LABEL_NAMES[i] for i in range(classes)}
    return write_dataset_json(out, "Synthetic", description, "write_synthetic_task", labels, training, test)
