"""Writing a synthetic task's cases: byte-for-byte reproducible NIfTI files, each written atomically."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from nastk.io import atomic_write_bytes, make_dir


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
