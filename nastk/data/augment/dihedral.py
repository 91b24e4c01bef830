"""Exact transforms that only permute voxels: 90-degree rotations in the x-y plane and flips."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nastk.data.augment.checks import _check_pair, _check_prob, _rand


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
