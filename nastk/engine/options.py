"""Run-time options of a training command (not part of the spec: they do not change the result's meaning)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunOptions:
    out: Path
    resume: bool = False  # continue from the checkpoint; refuse when there is none
    auto_resume: bool = False  # continue from the checkpoint when there is one, else start fresh
    quiet: bool = False
    device: str | None = None  # "cpu" | "cuda" | None (whatever is available)
    amp: str = "off"  # "off" | "bf16" | "fp16"
    channels_last: bool = False
    checkpoint_cells: bool = False
    compile: bool = False  # torch.compile the training forward (mainly for GPUs)
    deterministic: bool = False
    workers: int | None = None  # data-loader workers (default: dataset.num_workers)
    logger: str = "csv"  # "csv" | "tensorboard" | "mlflow": where log rows go besides the CSV
