"""Reading images with SimpleITK (.nii, .nii.gz, .mha, .nrrd) and keeping their full geometry.

Arrays are indexed [x, y, z] (the file's voxel order), the transpose of SimpleITK's [z, y, x].
Geometry follows ITK: spacing, origin and direction in LPS physical space, which is also what
ITK-SNAP and 3D Slicer use, so a prediction written with the same geometry overlays exactly.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nastk.errors import DataError

# Header sizes are checked against this before any voxel is read: a corrupt or hostile header can
# claim 30000^3 voxels. 2^30 (1024^3, 4 GiB as float32) is well above any CT or MRI volume.
DEFAULT_MAX_VOXELS = 2**30
MAX_VOXELS_ENV = "NASTK_MAX_VOXELS"


def max_voxels() -> int:
    """The voxel limit per image (all channels): ``$NASTK_MAX_VOXELS``, or 2^30."""
    try:
        return int(os.environ.get(MAX_VOXELS_ENV, DEFAULT_MAX_VOXELS))
    except ValueError:
        raise DataError(f"${MAX_VOXELS_ENV}: {os.environ[MAX_VOXELS_ENV]!r} is not a whole number") from None


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


# What a damaged file raises in ITK, nibabel, gzip and zlib.
READ_ERRORS = (RuntimeError, OSError, ValueError, EOFError, zlib.error)


def _header(path: Path, what: str) -> sitk.ImageFileReader:
    """ITK's reader with the header read and its voxel count checked against the limit."""
    info = sitk.ImageFileReader()
    info.SetFileName(str(path))
    info.ReadImageInformation()
    size = [int(s) for s in info.GetSize()]
    voxels = int(np.prod(size, dtype=object)) * max(1, info.GetNumberOfComponents())
    limit = max_voxels()
    if voxels > limit:
        raise DataError(
            f"{what}: {path}: the header declares {voxels:,} voxels ({' x '.join(map(str, size))}), over "
            f"the limit of {limit:,} (set ${MAX_VOXELS_ENV} to raise it)"
        )
    return info


def read_file(path: Path, what: str) -> sitk.Image:
    """One image file as read, with its voxel count checked before any voxel is read.

    Raises DataError for a size over the limit, and what the readers raise for a damaged file
    (one of ``READ_ERRORS``).
    """
    info = _header(path, what)
    if path.name.endswith((".nii", ".nii.gz")):
        return _read_nifti(path, info)
    return info.Execute()


def _read(path: Path, what: str) -> sitk.Image:
    try:
        return read_file(path, what)
    except READ_ERRORS as exc:
        text = str(exc).strip()
        first = text.splitlines()[-1][:200] if text else type(exc).__name__
        raise DataError(f"{what}: cannot read {path}: {first}") from None


def _read_nifti(path: Path, info: sitk.ImageFileReader) -> sitk.Image:
    """Geometry from ITK (as ITK-SNAP and Slicer see it), voxels from nibabel.

    ITK's NIfTI reader turns NaN voxels into 0, which would hide corrupt data, and reads a truncated
    file without complaint; so the voxel values are read with nibabel (same file order, same scaling),
    which raises for both, and only the header with ITK.
    """
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except nib.filebasedimages.ImageFileError as exc:
        raise ValueError(str(exc)) from None
    if data.dtype == np.float64:
        big = np.abs(data[np.isfinite(data)]).max(initial=0)
        if big > np.finfo(np.float32).max:
            raise ValueError(f"voxel values up to {big:.3g}, beyond the float32 range")
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


def _channel_mismatch(what: str, paths: tuple[Path, ...], found: int, expected: int) -> DataError:
    files = ", ".join(str(p) for p in paths)
    return DataError(
        f"{what}: {files} has {found} channel(s), but the dataset declares {expected} "
        "(dataset.json 'modality' or 'channel_names')"
    )


def header_channels(path: Path, what: str) -> int:
    """The channels an image file holds, from its header alone (its voxel count checked too)."""
    try:
        info = _header(path, what)
    except READ_ERRORS as exc:
        text = str(exc).strip()
        first = text.splitlines()[-1][:200] if text else type(exc).__name__
        raise DataError(f"{what}: cannot read {path}: {first}") from None
    dim, components = info.GetDimension(), info.GetNumberOfComponents()
    if components > 1:
        return components
    if dim in (3, 4):
        return 1 if dim == 3 else int(info.GetSize()[3])
    raise DataError(f"{what}: {path} is {dim}D; a 3D image (or 4D multi-channel) is required")


def check_headers(paths: tuple[Path, ...], label: Path | None, what: str, expected_channels: int) -> None:
    """Channel count and voxel counts of a case from the headers, before any voxel is read."""
    found = sum(header_channels(p, what) for p in paths)
    if found != expected_channels:
        raise _channel_mismatch(what, paths, found, expected_channels)
    if label is not None:
        header_channels(label, what)


def read_image(paths: tuple[Path, ...], what: str, expected_channels: int | None = None) -> list[sitk.Image]:
    """One float32 3D image per channel, all on the same grid, checked for NaN/Inf, and as many
    channels as the dataset declares (when ``expected_channels`` is given)."""
    channels: list[sitk.Image] = []
    for path in paths:
        channels += _split_channels(_read(path, what), path, what)
    if expected_channels is not None and len(channels) != expected_channels:
        raise _channel_mismatch(what, paths, len(channels), expected_channels)
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
