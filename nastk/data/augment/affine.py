"""Interpolating transforms: rotation in the x-y plane and scaling, one batched ``grid_sample``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nastk.data.augment.checks import (
    _check_number,
    _check_padding,
    _check_pair,
    _check_prob,
    _check_range,
    _rand,
)


class _Affine:
    """Shared resampling for transforms that are a linear map of the patch about its centre.

    Subclasses implement :meth:`draw`, which returns, per sample, whether it is transformed and a
    3x3 matrix in ``affine_grid``'s normalised coordinates (ordered (Z, Y, X), i.e. (W, H, D) of the
    ``[B, C, X, Y, Z]`` tensor) mapping output to input positions. Only the selected samples are
    resampled, all in one ``grid_sample`` call for the image (trilinear, spelled "bilinear" for 5D
    inputs) and one for the label (nearest). Outside the patch the image and the label are padded
    with ``padding_mode``: "zeros" (default; label 0 = background), or "border"/"reflection",
    which are applied to both so that image and label stay consistent. :class:`Compose` merges
    consecutive affine transforms with the same padding into a single resampling.
    """

    name = "_affine"
    padding_mode = "zeros"

    def draw(
        self, shape: Sequence[int], generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        return _apply_affine([self], image, label, generator)


def _apply_affine(
    run: Sequence[_Affine], image: Tensor, label: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Apply the affine transforms in ``run`` (in order) with one resampling."""
    _check_pair(image, label)
    shape = tuple(image.shape)
    selected: Tensor | None = None
    total: Tensor | None = None
    for t in run:
        mask, mats = t.draw(shape, generator)
        eye = torch.eye(3, dtype=mats.dtype, device=mats.device).expand_as(mats)
        mats = torch.where(mask.view(-1, 1, 1), mats, eye)
        # out(p) = t_n(...t_1(img))(p) = img(M_1 ... M_n p): later transforms multiply on the right.
        total = mats if total is None else total @ mats
        selected = mask if selected is None else selected | mask
    assert selected is not None and total is not None
    idx = selected.nonzero().flatten()
    if idx.numel() == 0:
        return image, label
    idx = idx.to(image.device)
    mode = run[0].padding_mode
    work = image.dtype if image.dtype in (torch.float32, torch.float64) else torch.float32
    theta = torch.zeros(idx.numel(), 3, 4, dtype=work, device=image.device)
    theta[:, :, :3] = total.to(image.device)[idx].to(work)
    sub = image.index_select(0, idx).to(work)
    grid = F.affine_grid(theta, list(sub.shape), align_corners=False)
    new_img = F.grid_sample(sub, grid, mode="bilinear", padding_mode=mode, align_corners=False)
    sub_lbl = label.index_select(0, idx).unsqueeze(1).to(work)
    new_lbl = F.grid_sample(sub_lbl, grid, mode="nearest", padding_mode=mode, align_corners=False)
    image = image.index_copy(0, idx, new_img.to(image.dtype))
    label = label.index_copy(0, idx, new_lbl.squeeze(1).round().to(label.dtype))
    return image, label


class RotateXY(_Affine):
    """Rotate selected samples in the x-y plane by an angle uniform in [-max_degrees, max_degrees].

    Each sample is selected with probability ``p`` (default 0.2; default ``max_degrees`` 30). The
    rotation is about the patch centre, in voxel space (patches are isotropic after resampling).
    ``affine_grid`` normalises each axis by its own size, so for X != Y the matrix is corrected by
    the aspect ratio to stay a rotation rather than a shear. Image: trilinear; label: nearest;
    ``padding_mode`` as in :class:`_Affine`.
    """

    name = "rotate_xy"

    def __init__(self, *, p: float = 0.2, max_degrees: float = 30.0, padding_mode: str = "zeros"):
        self.p = _check_prob("p", p)
        self.max_degrees = _check_number("max_degrees", max_degrees, lo=None, hi=180.0)
        if self.max_degrees < 0:
            raise ValueError(f"max_degrees must be >= 0, got {max_degrees!r}")
        self.padding_mode = _check_padding(padding_mode)

    def __repr__(self) -> str:
        return f"RotateXY(p={self.p}, max_degrees={self.max_degrees}, padding_mode={self.padding_mode!r})"

    def draw(self, shape: Sequence[int], generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        b, nx, ny = shape[0], shape[2], shape[3]
        u = _rand(generator, 2, b)
        mask = u[0] < self.p
        angle = torch.deg2rad((2 * u[1] - 1) * self.max_degrees)
        c, s = torch.cos(angle), torch.sin(angle)
        mats = torch.zeros(b, 3, 3, dtype=torch.float64, device=u.device)
        # Voxel offsets from the centre are v = u * N / 2 per axis (align_corners=False), so the
        # voxel-space rotation v_in = R v_out is u_in = diag(2/N) R diag(N/2) u_out.
        mats[:, 0, 0] = 1.0  # Z unchanged
        mats[:, 1, 1] = c  # Y <- Y
        mats[:, 1, 2] = s * (nx / ny)  # Y <- X
        mats[:, 2, 1] = -s * (ny / nx)  # X <- Y
        mats[:, 2, 2] = c  # X <- X
        return mask, mats


class Scale(_Affine):
    """Zoom selected samples about the patch centre by a factor uniform in [min_zoom, max_zoom].

    Each sample is selected with probability ``p`` (default 0.2; default range 0.7-1.4). A factor
    f > 1 enlarges the content (zoom in), f < 1 shrinks it and pads the border with
    ``padding_mode`` (default "zeros": image 0, label 0). The zoom is isotropic in all three axes;
    ``in_plane=True`` zooms X and Y only (a "2D" scaling). Image: trilinear; label: nearest.
    """

    name = "scale"

    def __init__(
        self,
        *,
        p: float = 0.2,
        min_zoom: float = 0.7,
        max_zoom: float = 1.4,
        in_plane: bool = False,
        padding_mode: str = "zeros",
    ):
        self.p = _check_prob("p", p)
        self.min_zoom = _check_number("min_zoom", min_zoom, lo=0.0)
        self.max_zoom = _check_number("max_zoom", max_zoom, lo=0.0)
        _check_range("min_zoom", self.min_zoom, "max_zoom", self.max_zoom)
        if not isinstance(in_plane, bool):
            raise ValueError(f"in_plane must be true or false, got {in_plane!r}")
        self.in_plane = in_plane
        self.padding_mode = _check_padding(padding_mode)

    def __repr__(self) -> str:
        return (
            f"Scale(p={self.p}, min_zoom={self.min_zoom}, max_zoom={self.max_zoom}, "
            f"in_plane={self.in_plane}, padding_mode={self.padding_mode!r})"
        )

    def draw(self, shape: Sequence[int], generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        b = shape[0]
        u = _rand(generator, 2, b)
        mask = u[0] < self.p
        inv = 1.0 / (self.min_zoom + (self.max_zoom - self.min_zoom) * u[1])
        diag = inv[:, None].expand(b, 3).clone()
        if self.in_plane:
            diag[:, 0] = 1.0  # Z (first in affine_grid's order) unchanged
        return mask, torch.diag_embed(diag)
