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
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from nastk.data.augment.affine import RotateXY, Scale, _Affine, _apply_affine
from nastk.data.augment.checks import Transform, _check_pair
from nastk.data.augment.dihedral import Flip, Rot90XY, _apply_dihedral, _Dihedral
from nastk.data.augment.intensity import Gamma

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
