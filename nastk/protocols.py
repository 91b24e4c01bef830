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


# Optional capabilities: an object has one when it has the method (checked with isinstance).


@runtime_checkable
class ChecksSpec(Protocol):
    """A loss that checks its params against the rest of the spec at ``nastk validate``."""

    def check_spec(self, spec: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(errors, warnings) as (field, message); a field without a dot is one of the loss's params."""
        ...


@runtime_checkable
class NeedsSetting(Protocol):
    """An architecture loss that needs the supernet and the retraining setting before the search."""

    def bind(self, supernet: Any, setting: Any) -> None: ...


@runtime_checkable
class Diagnoses(Protocol):
    """An architecture loss with numbers worth a column of ``search/log.csv``."""

    def diagnostics(self, supernet: Any) -> dict[str, float]: ...


@runtime_checkable
class SizesTraining(Protocol):
    """A search space that can say what training costs before any search (``nastk plan`` needs it).

    ``setting`` is a ``nastk.setting.TrainingSetting`` (per GPU); filters are ``params``' times
    ``setting.filter_multiplier``. Bytes are what one GPU holds: activations saved for backward plus
    parameter state (``setting.state_bytes_per_param``), with no margin or reserve.
    """

    def network_memory(self, params: BaseModel, ops: dict[str, CellOp], setting: Any) -> tuple[float, float]:
        """(smallest, largest): bytes to retrain the cheapest and the costliest network of the space."""
        ...

    def supernet_memory(self, params: BaseModel, ops: dict[str, CellOp], setting: Any) -> float:
        """Bytes of a search step of the supernet."""
        ...

    def step_flops(self, params: BaseModel, ops: dict[str, CellOp], setting: Any, network: str) -> float:
        """FLOPs of one forward of the per-GPU batch; ``network``: "supernet" or "largest"."""
        ...


@runtime_checkable
class RanksArchitectures(Protocol):
    """A discretizer that returns the k best distinct architectures, optionally under a memory budget
    (``nastk.setting.MemoryBudget``); ``nastk decode --top-k/--budget-gb`` need it."""

    def top_k(
        self,
        arch_params: dict[str, np.ndarray],
        space_params: dict[str, Any],
        op_names: list[str],
        k: int,
        budget: Any = None,
    ) -> list[Any]: ...
