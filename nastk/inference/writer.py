"""Write label maps back in the source image's geometry, atomically, as uint8 NIfTI (or .mha/.nrrd)."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nastk.io import atomic_path


def _nifti_like(label: sitk.Image, source: Path):
    """A NIfTI image of ``label`` with the source's header (affine, qform and sform codes)."""
    import nibabel as nib

    array = sitk.GetArrayFromImage(label).transpose(2, 1, 0).astype(np.uint8)
    src = nib.load(str(source))
    header = src.header.copy()
    header.set_data_shape(array.shape)
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    img = nib.Nifti1Image(array, src.affine, header)
    img.set_qform(*src.get_qform(coded=True))
    img.set_sform(*src.get_sform(coded=True))
    return img


def write_label(label: sitk.Image, source: Path, out: Path) -> Path:
    """``label`` is on the source image's grid. NIfTI sources keep their header (affine, codes)."""
    suffix = "".join(out.suffixes[-2:]) if out.name.endswith(".nii.gz") else out.suffix
    if source.name.endswith((".nii", ".nii.gz")) and out.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = _nifti_like(label, source)
        with atomic_path(out, ext=suffix) as tmp:
            nib.save(img, str(tmp))
        return out
    with atomic_path(out, ext=suffix) as tmp:
        try:
            sitk.WriteImage(sitk.Cast(label, sitk.sitkUInt8), str(tmp), useCompression=True)
        except RuntimeError as exc:  # ITK reports any write failure (a full disk too) this way
            raise OSError(errno.EIO, str(exc).strip().splitlines()[-1][:200]) from None
    return out
