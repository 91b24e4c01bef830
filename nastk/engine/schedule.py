"""The paper's learning-rate schedule (Sec. 4.1), as a pure function of the iteration.

Linear warm-up from ``lr_start`` to ``lr`` over ``warmup`` iterations, then ``lr`` multiplied by
``gamma`` at each milestone, milestones counted after the warm-up: for search (1k warm-up,
[8k, 16k]) the LR halves at global iterations 9k and 17k; for retraining ([8k, 16k, 24k, 32k]) at
9k, 17k, 25k and 33k.
"""

from __future__ import annotations

import bisect


def lr_at(
    iteration: int, warmup: int, lr_start: float, lr: float, milestones: list[int], gamma: float
) -> float:
    if iteration < warmup:
        return lr_start + (lr - lr_start) * iteration / warmup
    after = iteration - warmup
    return lr * gamma ** bisect.bisect_right(sorted(milestones), after)


def lr_lambda(warmup: int, lr_start: float, lr: float, milestones: list[int], gamma: float):
    """A LambdaLR factor (relative to ``lr``) implementing ``lr_at``."""
    return lambda it: lr_at(it, warmup, lr_start, lr, milestones, gamma) / lr
