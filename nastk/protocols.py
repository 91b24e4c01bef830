"""What a plugin implements: the shapes the toolkit really calls, one per registry group.

Each ``nastk.*`` entry-point group holds objects of one shape (``GROUP_PROTOCOLS``), and
``tests/test_protocols.py`` checks every registered entry against it with ``isinstance``. The core
shapes are what every plugin of a group must have; optional capabilities are small separate
protocols, and the toolkit asks ``isinstance(x, Capability)`` before it uses one (never ``hasattr``).

``runtime_checkable`` checks that the names exist, not their signatures: the signatures here are the
contract, the check catches a missing method.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: the CLI imports this module, and --help and completion need no torch
    import numpy as np
    import torch
    from pydantic import BaseModel

# ------------------------------------------------------------------------------------------ nastk.ops


@runtime_checkable
class CellOp(Protocol):
    """``nastk.ops``: build a module mapping [B, C, *S] -> [B, C, *S] (same channels, same size).

    Its memory cost is measured automatically (bytes saved for backward), so an op needs nothing
    else to take part in a memory-constrained search.
    """

    def __call__(self, channels: int) -> torch.nn.Module: ...


# ---------------------------------------------------------------------------------------- nastk.spaces


@runtime_checkable
class Architecture(Protocol):
    """A discrete architecture, as a discretizer returns it and ``SearchSpace.load_arch`` reads it back."""

    op_names: list[str]  # the ops it uses; the toolkit loads exactly these from the registry

    def to_dict(self) -> dict[str, Any]: ...

    def to_json(self) -> str:
        """The text of arch.json: what ``save`` writes and a retrained model's checkpoint keeps (the
        space's ``load_arch_from_text`` reads it back)."""
        ...

    def save(self, path: str | Path) -> Path:
        """Write arch.json (atomically) and return its path."""
        ...

    def summary(self) -> str:
        """A few lines for the terminal."""
        ...


@runtime_checkable
class Supernet(Protocol):
    """The differentiable network a search trains (``SearchSpace.build_supernet``); a ``torch.nn.Module``."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """[B, in_channels, *patch] -> logits [B, num_classes, *patch]."""
        ...

    def arch_parameters(self) -> list[torch.nn.Parameter]:
        """What the architecture optimiser steps."""
        ...

    def weight_parameters(self) -> list[torch.nn.Parameter]:
        """What the weight optimiser steps."""
        ...

    def arch_parameters_numpy(self) -> dict[str, np.ndarray]:
        """The arrays saved to ``search/arch_params.npz``; the space's discretizer reads them."""
        ...


@runtime_checkable
class SearchSpace(Protocol):
    """``nastk.spaces``: a differentiable supernet and the discrete network decoded from it."""

    name: str
    Params: type[BaseModel]  # validated from ``space.params`` in a spec

    def patch_divisor(self, params: BaseModel) -> int:
        """Every patch side must be a multiple of this."""
        ...

    def build_supernet(
        self,
        params: BaseModel,
        ops: dict[str, CellOp],
        in_channels: int,
        num_classes: int,
        patch_size: tuple[int, ...],
    ) -> Supernet: ...

    def build_network(
        self,
        arch: Architecture,
        ops: dict[str, CellOp],
        in_channels: int,
        num_classes: int,
        filter_multiplier: float = 1.0,
    ) -> torch.nn.Module: ...

    def load_arch(self, path: str | Path) -> Architecture:
        """Read an arch.json written by this space's discretizer."""
        ...

    def load_arch_from_text(self, text: str) -> Architecture:
        """The architecture kept in a retrained model's checkpoint (arch.json text)."""
        ...


# ---------------------------------------------------------------------------------------- nastk.losses


@runtime_checkable
class Loss(Protocol):
    """``nastk.losses`` entries are factories: ``factory(**params)`` returns a loss, and both have ``kind``.

    ``kind`` is "segmentation" (called as ``loss(logits, target)``) or "architecture" (called as
    ``loss(supernet)``; Eq. 11 ramps these by t/t_all). A factory may carry a pydantic ``Params``
    model that validates its params in a spec.
    """

    kind: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


# ----------------------------------------------------------------------------------- nastk.discretizers


@runtime_checkable
class Discretizer(Protocol):
    """``nastk.discretizers``: turn searched arch parameters into a discrete architecture."""

    def check_arrays(self, arrays: dict[str, np.ndarray], op_names: list[str]) -> dict[str, Any]:
        """Check a loaded arch_params.npz before decoding it: raise ``DataError`` naming a missing
        array or a shape that disagrees with ``op_names``. Returns the space params the arrays decide
        (e.g. the number of layers), which override the spec's."""
        ...

    def __call__(
        self, arch_params: dict[str, np.ndarray], space_params: dict[str, Any], op_names: list[str]
    ) -> Architecture: ...


# ------------------------------------------------------------------------------------ nastk.references


@runtime_checkable
class ReferenceTables(Protocol):
    """``nastk.references``: published numbers that ``nastk report --reference NAME`` puts beside a run's.

    ``test`` is the test-set leaderboard (Table 2 of the DiNTS paper): task -> (columns, one row of
    values per method in ``methods`` order), in percent. ``cv`` is the cross-validation table of one
    task (``cv_task``; Table 1): rows of (method, GMACs, params_M, est_train_MB, DSC1, DSC2, ...).
    """

    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    test: dict[str, tuple[tuple[str, ...], tuple[tuple[float, ...], ...]]]
    test_label: str  # the ``source`` column of its rows, e.g. "paper Table 2"
    test_title: str  # for messages, e.g. "the paper's Table 2"
    test_source: str  # the citation under the table
    task_aliases: dict[str, str]  # other spellings (normalised: lower case, letters and digits) -> task
    class_names: dict[str, dict[int, str]]  # task -> {label: name}
    cv_task: str
    cv_columns: tuple[str, ...]
    cv: tuple[tuple[Any, ...], ...]
    cv_label: str
    cv_title: str
    cv_source: str


# Each registry group and the protocol its entries have (``nastk.registry.GROUPS`` names the groups).
GROUP_PROTOCOLS: dict[str, type] = {
    "spaces": SearchSpace,
    "ops": CellOp,
    "losses": Loss,
    "discretizers": Discretizer,
    "references": ReferenceTables,
    "defaults": SearchSpace,  # its one entry, ``space``, names the space a spec gets when it names none
}


# ---------------------------------------------------------------------------------------------------
# Optional capabilities: an object has one when it has the method (checked with isinstance).
# ---------------------------------------------------------------------------------------------------


@runtime_checkable
class Drawable(Protocol):
    """An architecture that can draw itself (arch.png beside arch.json)."""

    def draw(self, path: str | Path) -> Path: ...


@runtime_checkable
class HasDefaultLosses(Protocol):
    """A space whose specs get these losses when they list none: one mapping per loss, shaped like a
    spec's ``losses`` item (name, and optionally weight and params). A space without them gets the
    segmentation loss ``dice_ce`` alone."""

    default_losses: tuple[dict[str, Any], ...]


@runtime_checkable
class HasDefaultOps(Protocol):
    """A space whose specs get these cell ops (registered names) when they list none; a spec of a space
    without them must list its ops."""

    default_ops: tuple[str, ...]


@runtime_checkable
class ChecksSpaceParams(Protocol):
    """An architecture that can tell whether a spec's ``space.params`` disagree with it (retraining stops
    with that message before it builds anything)."""

    def spec_mismatch(self, space_params: dict[str, Any]) -> str | None: ...


@runtime_checkable
class ReportsDiagnostics(Protocol):
    """A supernet with numbers worth columns of ``search/log.csv`` (e.g. a memory ratio and gap)."""

    def diagnostics(self) -> dict[str, float]: ...


@runtime_checkable
class ChoosesRecompute(Protocol):
    """A supernet that can recompute parts of itself in backward, and choose which ones fit a memory
    target (``search.recompute: auto``)."""

    def choose_recompute(self, target_bytes: float, batch: int, amp: str, device: Any) -> dict[str, Any]:
        """Recompute the parts that keep a search step within ``target_bytes`` at the least time; return
        {"parts": names chosen, "expected_bytes": ..., "none_bytes": ..., "seconds": ...}."""
        ...

    def use_recompute(self, parts: list[str]) -> None:
        """Recompute exactly ``parts`` (names ``choose_recompute`` returned, e.g. on another rank)."""
        ...

    def recompute_all(self, flag: bool) -> None: ...


@runtime_checkable
class ImportsArchitectures(Protocol):
    """A search space that converts other tools' architecture files (``nastk import-arch``)."""

    def import_arch(self, path: str | Path, **kwargs: Any) -> Architecture: ...


@runtime_checkable
class EstimatesMemory(Protocol):
    """A search space that estimates what retraining an architecture costs (``nastk decode --memory``)."""

    def estimate_memory(self, arch: Architecture, ops: dict[str, CellOp], **setting: Any) -> dict[str, float]:
        """{part: bytes} one GPU holds, with a ``total``."""
        ...


@runtime_checkable
class ChecksSpec(Protocol):
    """A loss that checks its params against the rest of the spec at ``nastk validate``."""

    def check_spec(self, spec: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(errors, warnings) as (field, message); a field without a dot is one of the loss's params."""
        ...


@runtime_checkable
class ForSpaces(Protocol):
    """An architecture loss that reads what only some spaces' supernets have: ``spaces`` names them, and
    ``nastk validate`` refuses it in a spec of another space (instead of a search failing inside it)."""

    spaces: tuple[str, ...]


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
class SizesRecompute(Protocol):
    """A search space whose supernet can recompute its parts in backward (``search.recompute``):
    ``nastk plan`` then keeps the search patch where recomputation makes the supernet fit."""

    def supernet_memory_recomputed(self, params: BaseModel, ops: dict[str, CellOp], setting: Any) -> float:
        """Bytes of a search step with everything recomputable recomputed (the least ``auto`` reaches)."""
        ...

    def recompute_slowdown(self, params: BaseModel, ops: dict[str, CellOp], setting: Any) -> float:
        """Expected step time with everything recomputed over the time without (>= 1)."""
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
