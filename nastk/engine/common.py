"""Pieces shared by search and retrain: seeding, AMP, batches, logging, Dice."""

from __future__ import annotations

import contextlib
import csv
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nastk.errors import NastkError
from nastk.metrics.dice import dice_per_class, nan_mean


class TrainingError(NastkError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def autocast(device: torch.device, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


def make_scaler(device: torch.device, amp: str):
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def set_requires_grad(params, flag: bool) -> None:
    """Freeze (``False``) or unfreeze parameters; a search step differentiates only what it updates."""
    for p in params:
        p.requires_grad_(flag)


def sgd(params, cfg) -> torch.optim.SGD:
    """SGD with the spec's settings, fused where the device supports it.

    The fused kernel updates each parameter in one pass; the default multi-tensor path materialises
    the weight-decayed gradients, a transient copy as large as all the weights.
    """
    params = list(params)
    kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    try:
        return torch.optim.SGD(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.SGD(params, **kwargs)


def batch_generator(
    seed: int, rank: int, iteration: int, stream: int, device: torch.device
) -> torch.Generator:
    """Augmentation randomness as a function of (seed, rank, iteration, stream): resumes exactly."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(((seed * 1_000_003 + rank) * 1_000_003 + iteration) * 7 + stream)
    return gen


def to_device(batch, device: torch.device, channels_last: bool):
    image, label = batch
    image = image.to(device, non_blocking=True)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last_3d)
    return image, label.to(device, non_blocking=True).long()


def hard_dice(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean over the foreground classes of the batch's Dice (the batch as one volume), MSD's convention:
    a class in neither prediction nor target is left out; ``nan`` when no class is in either."""
    scores = dice_per_class(logits.argmax(1), target, range(1, num_classes))
    return nan_mean(scores)[0]


def check_finite(terms: dict[str, torch.Tensor], iteration: int) -> None:
    for name, value in terms.items():
        if not torch.isfinite(value).all():
            raise TrainingError(
                f"iteration {iteration}: loss term {name!r} is {value.item()}; stopped, the last good "
                "checkpoint is kept (lower the LR, or try --amp off)"
            )


class CsvLog:
    """An append-only CSV; on resume, rows past the checkpoint's iteration are dropped."""

    def __init__(self, path: Path, resume_from: int | None):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if resume_from is not None and path.exists():
            with path.open() as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["iteration"]) <= resume_from]
        self._write_all()

    def _write_all(self) -> None:
        from nastk.io import atomic_write_text

        if not self.rows:
            atomic_write_text(self.path, "")
            return
        keys = list(self.rows[0])
        for row in self.rows:
            keys += [k for k in row if k not in keys]
        lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in self.rows]
        atomic_write_text(self.path, "\n".join(lines) + "\n")

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._write_all()
