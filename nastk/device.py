"""Which torch device a command runs on."""

from __future__ import annotations

import torch

from nastk.errors import DataError


def device_kind(device: str | None) -> str:
    """ "cpu" or "cuda": the one asked for (checked to exist), or whatever is available."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise DataError(f"--device: {device!r} is not cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda: no CUDA device is available to this torch build; use --device cpu")
    return device
