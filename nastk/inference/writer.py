"""Write label maps back in the source image's geometry, atomically, as uint8 NIfTI (or .mha/.nrrd)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_label(label: sitk.Image, source: Path, out: Path) -> Path:
    """``label`` is on the source image's grid. NIfTI sources keep their header (affine, codes)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(out.suffixes[-2:]) if out.name.endswith(".nii.gz") else out.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
    os.close(fd)
    try:
        array = sitk.GetArrayFromImage(label).transpose(2, 1, 0).astype(np.uint8)
        if source.name.endswith((".nii", ".nii.gz")) and out.name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            src = nib.load(str(source))
            header = src.header.copy()
            header.set_data_shape(array.shape)
            header.set_data_dtype(np.uint8)
            header.set_slope_inter(1, 0)
            img = nib.Nifti1Image(array, src.affine, header)
            img.set_qform(*src.get_qform(coded=True))
            img.set_sform(*src.get_sform(coded=True))
            nib.save(img, tmp)
        else:
            sitk.WriteImage(sitk.Cast(label, sitk.sitkUInt8), tmp, useCompression=True)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
