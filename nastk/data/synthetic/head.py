"""The head variant: a brain in a skull on thick, strongly anisotropic MR slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nastk.data.synthetic.files import _write_cases, write_dataset_json
from nastk.data.synthetic.shapes import (
    _blur,
    _ellipsoid_q,
    _erode,
    _rotation,
    _smooth_noise,
    mm_grid,
)

HEAD_LABELS = ("background", "brain", "lesion")
EXTRACTION_LABELS = ("background", "brain")
_HEAD_SPACING = (1.0, 1.0, 4.0)  # mm: thick MR slices, strongly anisotropic
# MR-like T1 contrast (arbitrary units): fat bright, bone dark, CSF darker than brain.
_SCALP, _SKULL, _CSF, _BRAIN, _HEAD_LESION = 0.85, 0.08, 0.25, 0.55, 0.80


def _make_head_case(seed: int, case_id: int, size: int, stripped: bool, extraction: bool = False):
    """One head: ``(image, label, affine)``. Label 1 is the brain, 2 a lesion inside it. A stripped
    case is 0 everywhere outside the brain and a one-voxel in-plane rim (as skull-stripped MR is), so its
    nonzero region is mostly foreground; the others have scalp, skull, CSF and noisy air around it.

    ``extraction``: brain extraction instead. Label 1 is the whole brain (the lesion is brain tissue),
    and a stripped case is exactly 0 outside it, no rim: its nonzero region *is* the label, as in a
    brain template. Drawn from its own random stream."""
    rng = np.random.default_rng([seed, (8_000_000 if extraction else 7_000_000) + case_id])
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
    grid = mm_grid(shape, spacing)
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
    label[lesion] = 1 if extraction else 2
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
    if stripped and extraction:  # exactly the brain, as a template or a tight brain mask
        image = np.where(brain, image, np.float32(0))
    elif stripped:  # a one-voxel rim in-plane, as brain masks leave (a 4 mm slice above would be more)
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
    extraction: bool = False,
) -> Path:
    """Write a synthetic head-MR task in MSD format: thick slices (about 1 x 1 x 4 mm), MR-like contrast,
    and every ``stripped_every``-th training case skull-stripped, that is 0 outside the brain (0: none),
    and every ``stripped_test_every``-th test case (default: as the training cases). Stripped test cases
    with no stripped training case are the shift of issue 17: a head from another source, held out.

    It is the planning ablation's second dataset (``bench/plan_ablation.py``): unlike the body task its
    spacing is strongly anisotropic and, in the stripped cases, the nonzero region is mostly foreground.
    Layout and reproducibility as ``write_synthetic_task``; ``size`` is the in-plane side in voxels.

    ``extraction=True`` writes the brain-extraction variant (see ``write_extraction_task``).
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
        stripped = every > 0 and case_id % every == 0
        return _make_head_case(int(seed), case_id, int(size), stripped, extraction)

    training, test = _write_cases(out, "brain" if extraction else "head", cases, test_cases, make)
    what = "the whole brain" if extraction else "brain and a lesion"
    description = (
        f"nastk synthetic head MR (seed {seed}, size {size}): {what}, thick slices; "
        f"skull-stripped (0 outside the brain): every {stripped_every}-th training and every "
        f"{test_every}-th test case (0: none). Test labels are in labelsTs/."
    )
    names = EXTRACTION_LABELS if extraction else HEAD_LABELS
    labels = {str(i): name for i, name in enumerate(names)}
    name, writer = (
        ("SyntheticBrainExtraction", "write_extraction_task")
        if extraction
        else (
            "SyntheticHead",
            "write_head_task",
        )
    )
    return write_dataset_json(out, name, description, writer, labels, training, test)


def write_extraction_task(
    out: str | Path,
    cases: int = 12,
    size: int = 64,
    seed: int = 0,
    test_cases: int = 6,
    stripped_every: int = 0,
    stripped_test_every: int = 2,
) -> Path:
    """Write a synthetic brain-extraction task in MSD format: the label is the whole brain, which is
    exactly the nonzero region of a stripped head. By default no training head is stripped (each has
    scalp, skull and a noisy, nonzero background) and every second test head arrives stripped, exactly 0
    outside the brain: the real-head failure of issue 22. Under ``zscore_nonzero`` such a head's outside
    gets the brain's mean intensity, so no edge is left between brain and outside.

    Geometry and contrast as ``write_head_task``; ``stripped_every`` and ``stripped_test_every`` as there
    (0: none)."""
    return write_head_task(
        out,
        cases=cases,
        size=size,
        seed=seed,
        test_cases=test_cases,
        stripped_every=stripped_every,
        stripped_test_every=stripped_test_every,
        extraction=True,
    )
