"""The training setting a network's memory is estimated at (one GPU's share of retraining), and
memory budgets in GB.

A spec describes retraining globally (a global batch over ``retrain.gpus`` GPUs, filters as a
multiple of the search's); memory budgets are per GPU, so this is the one place that turns the first
into the second.

A budget of B GB (GB = 2^30 bytes, as ``nvidia-smi`` and ``torch.cuda`` count) is met by a network
whose estimated bytes (activations saved for backward + weights, gradients, optimiser state) satisfy
``bytes * (1 + margin) + reserve <= B``. The margin stands for what that sum leaves out: the caching
allocator's rounding and fragmentation, and the gradients of activations that live for a moment in
backward. The reserve stands for the CUDA context and cuDNN's workspace. Both defaults are
allowances, not measurements (docs/planning.md and the reference plugin's "Memory budgets").
"""

from __future__ import annotations

from dataclasses import dataclass

# bytes per parameter: float32 weight + float32 gradient, + float32 momentum buffer if any.
# Mixed precision keeps all three in float32 (autocast casts on the fly, the scaler unscales in place).
_WEIGHT_AND_GRADIENT = 8
_MOMENTUM = 4


GIB = 2**30
DEFAULT_MARGIN = 0.10
DEFAULT_RESERVE_GB = 0.75


@dataclass(frozen=True)
class TrainingSetting:
    patch_size: tuple[int, int, int]
    batch_size: int  # per GPU
    filter_multiplier: float
    amp: str  # "off" | "bf16" | "fp16"
    in_channels: int
    num_classes: int
    state_bytes_per_param: int = _WEIGHT_AND_GRADIENT + _MOMENTUM

    def describe(self) -> str:
        return (
            f"patch {list(self.patch_size)}, batch {self.batch_size} per GPU, filters "
            f"x{self.filter_multiplier:g}, amp {self.amp}"
        )


def global_retrain_batch(spec) -> int:
    return spec.search.batch_size * spec.retrain.batch_multiplier


def retrain_setting(spec, batch_size: int | None = None) -> TrainingSetting:
    """The per-GPU retraining setting of a spec (``batch_size`` overrides the per-GPU batch)."""
    r = spec.retrain
    per_gpu = batch_size if batch_size is not None else max(1, global_retrain_batch(spec) // r.gpus)
    return TrainingSetting(
        patch_size=tuple(r.patch_size),
        batch_size=per_gpu,
        filter_multiplier=r.filter_multiplier,
        amp=r.amp,
        in_channels=spec.dataset.in_channels,
        num_classes=spec.dataset.num_classes,
        state_bytes_per_param=_WEIGHT_AND_GRADIENT + (_MOMENTUM if r.weights.momentum > 0 else 0),
    )


@dataclass(frozen=True)
class MemoryBudget:
    """A per-GPU memory budget at a training setting."""

    gb: float
    setting: TrainingSetting
    margin: float = DEFAULT_MARGIN
    reserve_gb: float = DEFAULT_RESERVE_GB

    @property
    def usable_bytes(self) -> float:
        """The most a network may count (activations + parameter state) to fit the budget."""
        return usable_bytes(self.gb, self.margin, self.reserve_gb)

    def required_gb(self, nbytes: float) -> float:
        return required_gb(nbytes, self.margin, self.reserve_gb)


def usable_bytes(
    budget_gb: float, margin: float = DEFAULT_MARGIN, reserve_gb: float = DEFAULT_RESERVE_GB
) -> float:
    return (budget_gb - reserve_gb) * GIB / (1.0 + margin)


def format_gb(value: float) -> str:
    """GB for a message: two decimals from 0.1 GB up, two significant digits below (0.0042, never 0.00)."""
    return f"{value:.2f}" if abs(value) >= 0.1 or value == 0 else f"{value:.2g}"


def required_gb(
    nbytes: float, margin: float = DEFAULT_MARGIN, reserve_gb: float = DEFAULT_RESERVE_GB
) -> float:
    """The budget a network of ``nbytes`` needs: the inverse of ``usable_bytes``."""
    return nbytes * (1.0 + margin) / GIB + reserve_gb


_BUDGET_KEYS = ("budget_gb", "margin", "reserve_gb")


def _budget_params(spec) -> dict | None:
    """The params of the first loss that states a budget, margin or reserve, if any."""
    return next((dict(loss.params) for loss in spec.losses if set(_BUDGET_KEYS) & set(loss.params)), None)


def uses_gb_budget(spec) -> bool:
    return "budget_gb" in (_budget_params(spec) or {})


def spec_budget(spec, gb: float | None = None, batch_size: int | None = None) -> MemoryBudget | None:
    """The spec's memory budget at its retraining setting: ``gb`` if given, else the ``budget_gb`` of
    its memory loss; the margin and reserve of that loss where it sets them. None without either."""
    params = _budget_params(spec) or {}
    gb = gb if gb is not None else params.get("budget_gb")
    if gb is None:
        return None
    return MemoryBudget(
        gb=float(gb),
        setting=retrain_setting(spec, batch_size),
        margin=float(params.get("margin", DEFAULT_MARGIN)),
        reserve_gb=float(params.get("reserve_gb", DEFAULT_RESERVE_GB)),
    )
