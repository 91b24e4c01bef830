"""Batched, device-resident data augmentation for 3D segmentation patches.

Every transform works on a whole batch at once:

* ``image`` is ``[B, C, X, Y, Z]`` floating point, ``label`` is ``[B, X, Y, Z]`` integer (any integer
  dtype, typically ``long`` or ``uint8``). X and Y span the axial (x-y) plane, Z is the slice axis.
* Per-sample randomness (whether a sample is augmented, and with which angle/factor) is drawn as
  tensors from the ``torch.Generator`` passed to the call. ``rot90_xy`` and ``flip`` then move
  voxels with one batched ``gather`` (a per-sample permutation), ``rotate_xy`` and ``scale``
  resample the selected samples with one batched ``affine_grid``/``grid_sample``, and ``gamma`` is
  one batched elementwise expression. There is no Python loop over samples or voxels.
* Outputs keep the inputs' shape, dtype and device; the label dtype is preserved. Inputs are never
  modified in place; when no sample is selected a transform may return its inputs themselves.

Generators and devices: random numbers are drawn on the *generator's* device and then moved to the
tensors' device, so both a CPU generator (``torch.Generator()``, the simplest choice; the draws are a
few scalars per sample, so the host-to-device copy is negligible and, with a CPU generator, choosing
the selected samples needs no device synchronisation) and a generator on the tensors' device
(``torch.Generator(device="cuda")``) work with CPU or CUDA tensors. For a given generator state the
outputs are deterministic; a CPU generator gives the same draws whatever device the tensors are on.
``generator=None`` falls back to torch's global CPU generator.

The two sets used in DiNTS (CVPR 2021, Sec. 4.1) are provided as specs for :func:`build`:
``PAPER_BASIC`` (search and Pancreas retraining: 90-degree rotations in the x-y plane and flips in
all three axes, the C2FNAS augmentation) and ``PAPER_EXTENDED`` (the other nine MSD tasks: the basic
set plus "random rotation, scaling and gamma correction"). The paper gives no ranges or
probabilities for the extended set; the defaults here follow the widely used nnU-Net defaults
(rotation +-30 degrees with p=0.2, zoom 0.7-1.4 with p=0.2, gamma 0.7-1.5 with p=0.3).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PAPER_BASIC",
    "PAPER_EXTENDED",
    "TRANSFORMS",
    "Compose",
    "Flip",
    "Gamma",
    "Rot90XY",
    "RotateXY",
    "Scale",
    "Transform",
    "build",
]


@runtime_checkable
class Transform(Protocol):
    """What :class:`Compose` runs: ``(image, label, generator) -> (image, label)``."""

    name: str

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]: ...


# --------------------------------------------------------------------------- helpers


def _check_pair(image: Tensor, label: Tensor) -> None:
    if image.ndim != 5:
        raise ValueError(f"image must be [B, C, X, Y, Z], got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be floating point, got {image.dtype}")
    if label.ndim != 4 or label.shape[0] != image.shape[0] or label.shape[1:] != image.shape[2:]:
        raise ValueError(
            f"label must be [B, X, Y, Z] matching image {tuple(image.shape)}, got {tuple(label.shape)}"
        )
    if label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
        raise ValueError(f"label must have an integer dtype, got {label.dtype}")


def _rand(generator: torch.Generator | None, *size: int) -> Tensor:
    """Uniform [0, 1) float64 numbers on the generator's device (CPU for ``None``)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(size, generator=generator, device=device, dtype=torch.float64)


def _check_prob(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _check_number(name: str, value: object, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and not value > lo:
        raise ValueError(f"{name} must be > {lo}, got {value!r}")
    if hi is not None and not value <= hi:
        raise ValueError(f"{name} must be <= {hi}, got {value!r}")
    return float(value)


def _check_range(lo_name: str, lo: float, hi_name: str, hi: float) -> None:
    if lo > hi:
        raise ValueError(f"{lo_name} ({lo}) must be <= {hi_name} ({hi})")


_PADDING_MODES = ("zeros", "border", "reflection")


def _check_padding(value: object) -> str:
    if value not in _PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {list(_PADDING_MODES)}, got {value!r}")
    return str(value)


# --------------------------------------------------------------------------- exact (permutation) transforms


class _Dihedral:
    """Shared gather for transforms that only permute voxels (flips and x-y transposes).

    Subclasses implement :meth:`draw`, which returns a per-sample ``[B, 4]`` boolean tensor
    ``(flip X, flip Y, flip Z, transpose X<->Y)`` meaning "flip the selected axes, then transpose".
    The permutation is applied with one ``gather`` over the flattened patch for the image and one
    for the label (no interpolation, so values are only moved, and image and label get the same
    permutation). :class:`Compose` merges consecutive such transforms into a single gather.
    """

    name = "_dihedral"

    def draw(
        self, shape: Sequence[int], generator: torch.Generator | None
    ) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        return _apply_dihedral([self], image, label, generator)


def _compose_dihedral(first: Tensor, then: Tensor) -> Tensor:
    """``then o first`` for ``[B, 4]`` (fx, fy, fz, swap) elements, each "flip, then transpose"."""
    # swap2 F2 swap1 F1 = swap2 swap1 F2' F1, where F2' exchanges the X/Y flips of F2 when swap1.
    swap1 = first[:, 3]
    fx2 = torch.where(swap1, then[:, 1], then[:, 0])
    fy2 = torch.where(swap1, then[:, 0], then[:, 1])
    return torch.stack(
        [first[:, 0] ^ fx2, first[:, 1] ^ fy2, first[:, 2] ^ then[:, 2], swap1 ^ then[:, 3]], dim=1
    )


def _apply_dihedral(
    run: Sequence[_Dihedral], image: Tensor, label: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    _check_pair(image, label)
    shape = tuple(image.shape)
    total: Tensor | None = None
    for t in run:
        ops = t.draw(shape, generator)
        total = ops if total is None else _compose_dihedral(total, ops)
    assert total is not None
    if not bool(total.any()):
        return image, label
    b, c, nx, ny, nz = shape
    ops = total.to(image.device)
    fx, fy, fz, swap = (ops[:, i] for i in range(4))
    dev = image.device
    i = torch.arange(nx, device=dev).view(1, nx, 1)
    j = torch.arange(ny, device=dev).view(1, 1, ny)
    k = torch.arange(nz, device=dev).view(1, nz)
    # Output voxel (i, j, k) reads input voxel (src_x, src_y, src_z): transpose (only when X == Y,
    # which draw() guarantees), then undo the flips.
    src_x = torch.where(swap.view(-1, 1, 1), j, i)
    src_y = torch.where(swap.view(-1, 1, 1), i, j)
    src_x = torch.where(fx.view(-1, 1, 1), nx - 1 - src_x, src_x)
    src_y = torch.where(fy.view(-1, 1, 1), ny - 1 - src_y, src_y)
    src_z = torch.where(fz.view(-1, 1), nz - 1 - k, k)
    idx = ((src_x * ny + src_y).unsqueeze(-1) * nz + src_z.view(b, 1, 1, nz)).view(b, 1, -1)
    image = image.flatten(2).gather(2, idx.expand(b, c, -1)).view(shape)
    label = label.flatten(1).gather(1, idx.view(b, -1)).view(b, nx, ny, nz)
    return image, label


class Rot90XY(_Dihedral):
    """Rotate each sample in the x-y plane by a multiple of 90 degrees.

    With probability ``p`` a sample is rotated by k*90 degrees with k uniform in {1, 2, 3}
    ("2D rotation by [90, 180, 270] degrees in the x-y plane", DiNTS Sec. 4.1); otherwise it is
    left as is. The default ``p=0.75`` makes the four orientations 0/90/180/270 equally likely
    (each 1/4), i.e. the same distribution as "always rotate by k uniform in {0, 1, 2, 3}", while
    ``p=1`` guarantees a rotation. Patches with X != Y cannot be rotated by 90 or 270 degrees
    without changing shape, so for them only k=2 (180 degrees) is used when a sample is selected
    (the orientations are then {0, 180}). The result equals ``torch.rot90(x, k, dims=(X, Y))``.

    Implemented as rot90^k = [transpose if k odd] o [flip X if k in {2, 3}] o [flip Y if k in
    {1, 2}], applied as one gather (see :class:`_Dihedral`).
    """

    name = "rot90_xy"

    def __init__(self, *, p: float = 0.75):
        self.p = _check_prob("p", p)

    def __repr__(self) -> str:
        return f"Rot90XY(p={self.p})"

    def draw(self, shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
        u = _rand(generator, 2, shape[0])
        apply = u[0] < self.p
        if shape[2] == shape[3]:
            k = torch.where(apply, 1 + (u[1] * 3).long().clamp(max=2), 0)
        else:
            k = torch.where(apply, 2, 0)
        no_z = torch.zeros_like(apply)
        return torch.stack([(k == 2) | (k == 3), (k == 1) | (k == 2), no_z, (k % 2) == 1], dim=1)


class Flip(_Dihedral):
    """Flip each spatial axis of each sample independently with probability ``p`` (default 0.5).

    ``axes`` selects which spatial axes may be flipped (0=X, 1=Y, 2=Z; default all three, as
    "flip in all three axis" in DiNTS Sec. 4.1). Applied as one gather (see :class:`_Dihedral`).
    """

    name = "flip"

    def __init__(self, *, p: float = 0.5, axes: Sequence[int] = (0, 1, 2)):
        self.p = _check_prob("p", p)
        if isinstance(axes, (str, bytes)) or not isinstance(axes, Sequence):
            raise ValueError(f"axes must be a list of spatial axes in {{0, 1, 2}}, got {axes!r}")
        if (
            not axes
            or any(isinstance(a, bool) or a not in (0, 1, 2) for a in axes)
            or len(set(axes)) != len(axes)
        ):
            raise ValueError(f"axes must be distinct spatial axes in {{0, 1, 2}}, got {list(axes)!r}")
        self.axes = tuple(int(a) for a in axes)

    def __repr__(self) -> str:
        return f"Flip(p={self.p}, axes={list(self.axes)})"

    def draw(self, shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
        u = _rand(generator, len(self.axes), shape[0])
        ops = torch.zeros(shape[0], 4, dtype=torch.bool, device=u.device)
        ops[:, list(self.axes)] = (u < self.p).T
        return ops


# --------------------------------------------------------------------------- interpolating transforms


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


# --------------------------------------------------------------------------- intensity transforms


class Gamma:
    """Gamma correction with gamma uniform in [min_gamma, max_gamma] (default 0.7-1.5), p=0.3.

    For a selected sample each channel is rescaled to [0, 1] by its own min/max, raised to the
    sample's gamma (one gamma per sample, shared by its channels) and mapped back, so the per-channel
    min and max are preserved exactly. Constant channels are left unchanged. The label is untouched.
    """

    name = "gamma"

    def __init__(self, *, p: float = 0.3, min_gamma: float = 0.7, max_gamma: float = 1.5):
        self.p = _check_prob("p", p)
        self.min_gamma = _check_number("min_gamma", min_gamma, lo=0.0)
        self.max_gamma = _check_number("max_gamma", max_gamma, lo=0.0)
        _check_range("min_gamma", self.min_gamma, "max_gamma", self.max_gamma)

    def __repr__(self) -> str:
        return f"Gamma(p={self.p}, min_gamma={self.min_gamma}, max_gamma={self.max_gamma})"

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        _check_pair(image, label)
        b = image.shape[0]
        u = _rand(generator, 2, b)
        mask = u[0] < self.p
        idx = mask.nonzero().flatten()
        if idx.numel() == 0:
            return image, label
        idx = idx.to(image.device)
        gamma = (self.min_gamma + (self.max_gamma - self.min_gamma) * u[1]).to(image.device)[idx]
        work = image.dtype if image.dtype in (torch.float32, torch.float64) else torch.float32
        sub = image.index_select(0, idx).to(work)
        flat = sub.flatten(2)
        lo = flat.amin(dim=2).view(*sub.shape[:2], 1, 1, 1)
        hi = flat.amax(dim=2).view(*sub.shape[:2], 1, 1, 1)
        span = hi - lo
        unit = ((sub - lo) / torch.where(span > 0, span, 1)).clamp(0, 1)
        curved = unit.pow(gamma.to(work).view(-1, 1, 1, 1, 1))
        # lerp returns exactly lo at weight 0 and exactly hi at weight 1, so min/max are kept bit-exact.
        out = torch.where(span > 0, torch.lerp(lo.expand_as(sub), hi.expand_as(sub), curved), sub)
        return image.index_copy(0, idx, out.to(image.dtype)), label


# --------------------------------------------------------------------------- composition and specs


class Compose:
    """Run transforms in order, merging consecutive transforms of the same kind.

    With ``fuse=True`` (default) a run of consecutive ``rot90_xy``/``flip`` becomes one gather (the
    composed permutation), and a run of consecutive ``rotate_xy``/``scale`` with the same
    ``padding_mode`` becomes one ``grid_sample`` (the composed matrix), which halves the
    interpolation blur and the cost. The random draws are exactly those of the unfused pipeline;
    permutations give identical results, resampling differs only by interpolation (and content
    that an intermediate step would have cropped is kept).
    """

    def __init__(self, transforms: Sequence[Transform], *, fuse: bool = True):
        self.transforms = list(transforms)
        self.fuse = bool(fuse)
        Step = Callable[[Tensor, Tensor, torch.Generator | None], tuple[Tensor, Tensor]]
        self._steps: list[Step] = []
        run: list = []
        run_key: tuple | None = None

        def close_run() -> None:
            if len(run) == 1:
                self._steps.append(run[0])
            elif run:
                apply = _apply_affine if isinstance(run[0], _Affine) else _apply_dihedral
                self._steps.append(lambda i, lb, g, _r=list(run), _f=apply: _f(_r, i, lb, g))
            run.clear()

        for t in self.transforms:
            if isinstance(t, _Affine):
                key: tuple | None = ("affine", t.padding_mode)
            elif isinstance(t, _Dihedral):
                key = ("dihedral",)
            else:
                key = None
            if not self.fuse or key is None or key != run_key:
                close_run()
            run_key = key if self.fuse else None
            if key is None:
                self._steps.append(t)
            else:
                run.append(t)
        close_run()

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self):
        return iter(self.transforms)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        _check_pair(image, label)
        for step in self._steps:
            image, label = step(image, label, generator)
        return image, label


TRANSFORMS: dict[str, type] = {cls.name: cls for cls in (Rot90XY, Flip, RotateXY, Scale, Gamma)}

PAPER_BASIC: list[dict] = [{"name": "rot90_xy"}, {"name": "flip"}]
PAPER_EXTENDED: list[dict] = [*PAPER_BASIC, {"name": "rotate_xy"}, {"name": "scale"}, {"name": "gamma"}]


def _accepted_params(cls: type) -> list[str]:
    sig = inspect.signature(cls.__init__)
    return [n for n, prm in sig.parameters.items() if n != "self" and prm.kind is prm.KEYWORD_ONLY]


def build(specs: Sequence[dict], *, fuse: bool = True) -> Compose:
    """Build a :class:`Compose` from ``[{"name": ..., "p": ..., **params}, ...]``.

    Raises ``ValueError`` naming the offending entry (index and name) and parameter.
    """
    if isinstance(specs, (str, bytes, dict)) or not isinstance(specs, Sequence):
        raise ValueError(f"augmentation specs must be a list of mappings, got {type(specs).__name__}")
    transforms = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise ValueError(f"augmentation entry {i}: expected a mapping, got {spec!r}")
        if "name" not in spec:
            raise ValueError(f"augmentation entry {i}: missing 'name' (one of {sorted(TRANSFORMS)})")
        name = spec["name"]
        if not isinstance(name, str) or name not in TRANSFORMS:
            raise ValueError(
                f"augmentation entry {i}: unknown transform {name!r}; known: {sorted(TRANSFORMS)}"
            )
        cls = TRANSFORMS[name]
        params = {k: v for k, v in spec.items() if k != "name"}
        accepted = _accepted_params(cls)
        unknown = sorted(str(k) for k in params if k not in accepted)
        if unknown:
            raise ValueError(
                f"augmentation entry {i} ({name}): unknown parameter(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {accepted}"
            )
        try:
            transforms.append(cls(**params))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"augmentation entry {i} ({name}): {exc}") from exc
    return Compose(transforms, fuse=fuse)
