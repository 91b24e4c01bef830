"""Reading images with SimpleITK (.nii, .nii.gz, .mha, .nrrd) and keeping their full geometry.

Arrays are indexed [x, y, z] (the file's voxel order), the transpose of SimpleITK's [z, y, x].
Geometry follows ITK: spacing, origin and direction in LPS physical space, which is also what
ITK-SNAP and 3D Slicer use, so a prediction written with the same geometry overlays exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nastk.errors import DataError


@dataclass(frozen=True)
class Geometry:
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major 3x3

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(
            tuple(int(s) for s in image.GetSize()),
            tuple(float(s) for s in image.GetSpacing()),
            tuple(float(o) for o in image.GetOrigin()),
            tuple(float(d) for d in image.GetDirection()),
        )

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def reference(self) -> sitk.Image:
        """An empty image on this grid, to resample onto."""
        return self.apply(sitk.Image(list(self.size), sitk.sitkUInt8))

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(tuple(d["size"]), tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))

    def matches(self, other: Geometry, tol: float = 1e-3) -> str | None:
        """None when equal within ``tol`` (relative spacing, mm origin, direction cosines), else why not."""
        if self.size != other.size:
            return f"shape {list(other.size)} != {list(self.size)}"
        if not np.allclose(self.spacing, other.spacing, rtol=tol, atol=0):
            return f"spacing {list(other.spacing)} != {list(self.spacing)}"
        scale = max(1.0, float(np.max(self.spacing)))
        if not np.allclose(self.origin, other.origin, rtol=0, atol=tol * 10 * scale):
            return f"origin {list(other.origin)} != {list(self.origin)}"
        if not np.allclose(self.direction, other.direction, rtol=0, atol=tol):
            return f"direction {list(other.direction)} != {list(self.direction)}"
        return None


def to_array(image: sitk.Image) -> np.ndarray:
    """[x, y, z] numpy view order of a 3D SimpleITK image."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def from_array(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    return geometry.apply(image)


def _read(path: Path, what: str) -> sitk.Image:
    try:
        if path.name.endswith((".nii", ".nii.gz")):
            return _read_nifti(path)
        return sitk.ReadImage(str(path))
    except (RuntimeError, OSError, ValueError, EOFError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[-1][:200] if text else type(exc).__name__
        raise DataError(f"{what}: cannot read {path}: {first}") from None


def _read_nifti(path: Path) -> sitk.Image:
    """Geometry from ITK (as ITK-SNAP and Slicer see it), voxels from nibabel.

    ITK's NIfTI reader turns NaN voxels into 0, which would hide corrupt data, so the voxel
    values are read with nibabel (same file order, same scaling) and only the header with ITK.
    """
    import nibabel as nib

    info = sitk.ImageFileReader()
    info.SetFileName(str(path))
    info.ReadImageInformation()
    data = np.asanyarray(nib.load(str(path)).dataobj)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    dim = info.GetDimension()
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.T), isVector=False)
    if image.GetDimension() != dim:
        raise ValueError(f"nibabel sees {data.ndim} dims, ITK {dim}")
    image.SetSpacing(info.GetSpacing())
    image.SetOrigin(info.GetOrigin())
    image.SetDirection(info.GetDirection())
    return image


def _split_channels(image: sitk.Image, path: Path, what: str) -> list[sitk.Image]:
    dim = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() > 1:
        return [sitk.VectorIndexSelectionCast(image, c) for c in range(image.GetNumberOfComponentsPerPixel())]
    if dim == 3:
        return [image]
    if dim == 4:  # MSD multi-modal: the 4th axis is the channel
        size = list(image.GetSize())
        channels = []
        for c in range(size[3]):
            channels.append(sitk.Extract(image, size[:3] + [0], [0, 0, 0, c]))
        return channels
    raise DataError(f"{what}: {path} is {dim}D; a 3D image (or 4D multi-channel) is required")


def read_image(paths: tuple[Path, ...], what: str) -> list[sitk.Image]:
    """One float32 3D image per channel, all on the same grid, checked for NaN/Inf."""
    channels: list[sitk.Image] = []
    for path in paths:
        channels += _split_channels(_read(path, what), path, what)
    reference = Geometry.of(channels[0])
    out = []
    for c, image in enumerate(channels):
        problem = reference.matches(Geometry.of(image))
        if problem:
            raise DataError(
                f"{what}: channel {c} of {paths[min(c, len(paths) - 1)]} is on another grid ({problem})"
            )
        image = sitk.Cast(image, sitk.sitkFloat32)
        if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
            raise DataError(f"{what}: {paths[min(c, len(paths) - 1)]} contains NaN or Inf voxels")
        out.append(image)
    return out


def read_label(path: Path, image_geometry: Geometry, allowed: set[int], what: str) -> sitk.Image:
    """The label map, on the image's grid (within tolerance), with only declared values."""
    image = _read(path, what)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{what}: label {path} must be a single-channel 3D image")
    problem = image_geometry.matches(Geometry.of(image))
    if problem:
        raise DataError(f"{what}: label {path} does not match its image: {problem}")
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind == "f" and not np.all(values == np.round(values)):
        raise DataError(f"{what}: label {path} has non-integer values")
    present = {int(v) for v in np.unique(values)}
    extra = sorted(present - allowed)
    if extra:
        raise DataError(f"{what}: label {path} has values {extra} not declared in 'labels' {sorted(allowed)}")
    # Snap to the image grid exactly: a tiny header difference must not shift anything later.
    label = sitk.Cast(image, sitk.sitkUInt8)
    return image_geometry.apply(label)
