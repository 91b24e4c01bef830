"""What a plugin implements. Each group of the registry holds objects of one of these shapes.

The protocols are deliberately small: a cell op is one function, a loss is a factory of a
callable, a discretizer is one function. Anything more is the plugin's own business.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel


@runtime_checkable
class CellOp(Protocol):
    """``nastk.ops``: build a module mapping [B, C, *S] -> [B, C, *S] (same channels, same size).

    Its memory cost is measured automatically (bytes saved for backward), so an op needs nothing
    else to take part in a memory-constrained search.
    """

    def __call__(self, channels: int) -> torch.nn.Module: ...


@runtime_checkable
class SearchSpace(Protocol):
    """``nastk.spaces``: a differentiable supernet and the discrete network decoded from it."""

    name: str
    Params: type[BaseModel]  # validated from ``space.params`` in a spec

    def patch_divisor(self, params: BaseModel) -> int:
        """Every patch side must be a multiple of this."""
        ...

    def build_supernet(
        self, params: BaseModel, ops: dict[str, CellOp], in_channels: int, num_classes: int
    ) -> torch.nn.Module:
        """The supernet exposes ``arch_parameters()`` and ``weight_parameters()``."""
        ...

    def build_network(
        self, arch: dict[str, Any], ops: dict[str, CellOp], in_channels: int, num_classes: int, **kwargs: Any
    ) -> torch.nn.Module: ...

    def load_arch(self, path: Any) -> Any:
        """Read an arch.json written by this space's discretizer."""
        ...

    # Optional: ``import_arch(path, **kw)`` converts other tools' files (``nastk import-arch``);
    # ``estimate_memory(arch, ops, **setting) -> {part: bytes}`` (``nastk decode --memory``).


@runtime_checkable
class ArchLoss(Protocol):
    """``nastk.losses`` entries are factories: ``factory(**params)`` returns a loss.

    A loss has ``kind``: "segmentation" (called as ``loss(logits, target)``) or "architecture"
    (called as ``loss(supernet)``; Eq. 11 ramps these by t/t_all).
    """

    kind: str

    def __call__(self, *args: Any) -> torch.Tensor: ...


@runtime_checkable
class Discretizer(Protocol):
    """``nastk.discretizers``: turn searched arch parameters into a discrete architecture."""

    def __call__(
        self, arch_params: dict[str, np.ndarray], space_params: dict[str, Any], op_names: list[str]
    ) -> Any:
        """Returns an architecture with ``to_dict()``, ``save(path)`` and ``summary()``, and
        optionally ``draw(path)`` for a picture."""
        ...
