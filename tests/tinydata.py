"""Tiny MSD- and nnU-Net-layout datasets written on the fly for data tests, and the tiny spec the engine
and quickstart tests shrink the pipeline to."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nibabel as nib
import numpy as np

# Anisotropic, flipped first axis, non-zero origin: exercises reorientation and resampling.
AFFINE = np.array([[-2.0, 0, 0, 40.0], [0, 2.0, 0, -30.0], [0, 0, 3.0, 12.0], [0, 0, 0, 1]])
SHAPE = (20, 18, 10)


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def make_case(rng: np.random.Generator, channels: int = 1, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Image with a zero border (so cropping acts) and a two-class label: a box, a smaller box inside it."""
    label = np.zeros(shape, np.uint8)
    x0, y0, z0 = (int(rng.integers(3, 6)) for _ in range(3))
    label[x0 : x0 + 8, y0 : y0 + 8, z0 : z0 + 4] = 1
    label[x0 + 2 : x0 + 5, y0 + 2 : y0 + 5, z0 + 1 : z0 + 3] = 2
    image = np.zeros((*shape, channels), np.float32)
    body = np.zeros(shape, bool)
    body[2:-2, 2:-2, 1:-1] = True
    for c in range(channels):
        base = rng.normal(100 + 10 * c, 5, shape).astype(np.float32)
        image[..., c] = np.where(body, base + 40 * label, 0)
    return (image[..., 0] if channels == 1 else image), label


def write_msd(root: Path, cases: int = 4, channels: int = 1, modality: str = "MRI", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    training = []
    for i in range(cases):
        image, label = make_case(rng, channels)
        _save(image, AFFINE, root / "imagesTr" / f"case_{i:03d}.nii.gz")
        _save(label, AFFINE, root / "labelsTr" / f"case_{i:03d}.nii.gz")
        training.append(
            {"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"}
        )
    (root / "imagesTr" / "._case_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    dataset = {
        "name": "Tiny",
        "modality": {str(c): modality if c == 0 else f"{modality}{c}" for c in range(channels)},
        "labels": {"0": "background", "1": "organ", "2": "lesion"},
        "numTraining": cases,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return root


def write_nnunet(root: Path, cases: int = 3, channels: int = 2, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(cases):
        image, label = make_case(rng, channels)
        for c in range(channels):
            _save(image[..., c], AFFINE, root / "imagesTr" / f"tiny_{i:03d}_{c:04d}.nii.gz")
        _save(label, AFFINE, root / "labelsTr" / f"tiny_{i:03d}.nii.gz")
    (root / "imagesTr" / "._tiny_000_0000.nii.gz").write_bytes(b"junk")
    dataset = {
        "channel_names": {"0": "T1", "1": "T2"},
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return root


def save_nifti(array, path, affine=AFFINE):
    _save(array, affine, Path(path))


# Search and retrain at the smallest sizes that still exercise every phase (dataset.root is set per test).
TINY_SPEC = {
    "seed": 0,
    "dataset": {
        "spacing": [2.0, 2.0, 2.0],
        "num_classes": 3,
        "num_folds": 2,
        "num_workers": 0,
        "fg_fraction": 0.5,
    },
    "space": {"params": {"layers": 2, "depths": 2, "filters": 2}},
    "search": {
        "patch_size": [16, 16, 16],
        "batch_size": 2,
        "warmup_iters": 2,
        "weight_iters": 2,
        "joint_iters": 4,
        "milestones": [3],
        "log_every": 1,
        "checkpoint_every": 2,
    },
    "retrain": {
        "patch_size": [16, 16, 16],
        "batch_multiplier": 1,
        "filter_multiplier": 2.0,
        "warmup_iters": 2,
        "iters": 6,
        "milestones": [4],
        "val_every": 4,
        "checkpoint_every": 2,
    },
    "inference": {"patch_size": [16, 16, 16], "stride": [8, 8, 8]},
}


def merged(base: dict, overrides: dict) -> dict:
    """A deep copy of ``base`` with ``overrides`` merged in, nested dicts key by key."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
