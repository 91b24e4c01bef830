"""Per-op memory cost: the measurement moved into the toolkit (``nastk.memory``, offered to every plugin
through ``nastk.plugin``); this module keeps the old import path."""

from nastk.memory import (  # noqa: F401
    AMP_DTYPES,
    autocast,
    cost,
    cost_per_sample,
    live_saved_bytes,
    live_saved_storages,
    output_dtype,
    parameter_count,
    saved_bytes,
)
