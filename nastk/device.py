"""Which torch device a command runs on: ``--device`` is ``cpu``, ``cuda`` or ``cuda:N``, nothing else."""

from __future__ import annotations

import re

import torch

from nastk.errors import DataError

_CUDA_INDEX = re.compile(r"cuda:(\d+)")


def check_device_text(device: str | None) -> None:
    """Refuse a --device that is not cpu, cuda or cuda:N (e.g. gpu, tpu, cuda0) before any work starts."""
    if device is None or device in ("cpu", "cuda") or _CUDA_INDEX.fullmatch(device):
        return
    raise DataError(f"--device: {device!r} is not cpu, cuda or cuda:N")


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """The torch device asked for, checked to exist; without one, CUDA where available, else the CPU.

    ``cuda`` is the process's own GPU (``cuda:LOCAL_RANK`` under torchrun); ``cuda:N`` is GPU N exactly.
    """
    check_device_text(device)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DataError(
            f"--device {device}: no CUDA device is available to this torch build; use --device cpu"
        )
    index = local_rank if device == "cuda" else int(device.split(":")[1])
    count = torch.cuda.device_count()
    if index >= count:
        raise DataError(
            f"--device {device}: there is no cuda:{index}; this machine has {count} CUDA device(s)"
        )
    return torch.device("cuda", index)


def device_kind(device: str | None) -> str:
    """ "cpu" or "cuda": the one asked for (checked to exist), or whatever is available."""
    return resolve_device(device).type
