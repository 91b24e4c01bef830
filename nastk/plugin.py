"""What a plugin may import from nastk: its errors, atomic file writes, JSON reads with one-line errors,
the training setting and memory budget it is sized at, the registry's op loader, and the memory
measurement (``nastk.memory``: bytes a module saves for backward, fitted over sizes). Everything else
in nastk is internal and may change; this module and ``nastk.protocols`` (the shapes a plugin
implements) are the public surface.
"""

from __future__ import annotations

from nastk.errors import DataError, NastkError, PluginError, SpecError
from nastk.io import atomic_write_bytes, atomic_write_text, read_json
from nastk.memory import autocast, cost, live_saved_bytes, output_dtype, parameter_count, saved_bytes
from nastk.protocols import CellOp
from nastk.registry import load_ops
from nastk.setting import (
    DEFAULT_MARGIN,
    DEFAULT_RESERVE_GB,
    MemoryBudget,
    TrainingSetting,
    format_gb,
    global_retrain_batch,
    required_gb,
    retrain_setting,
    usable_bytes,
)

__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_RESERVE_GB",
    "CellOp",
    "DataError",
    "MemoryBudget",
    "NastkError",
    "PluginError",
    "SpecError",
    "TrainingSetting",
    "atomic_write_bytes",
    "atomic_write_text",
    "autocast",
    "cost",
    "live_saved_bytes",
    "output_dtype",
    "parameter_count",
    "read_json",
    "saved_bytes",
    "global_retrain_batch",
    "load_ops",
    "required_gb",
    "retrain_setting",
    "format_gb",
    "usable_bytes",
]
