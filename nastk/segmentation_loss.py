"""The segmentation loss of a search and a retraining (L_seg), registered in the ``nastk.losses`` group as
``dice_ce``; the architecture losses are the space plugin's."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class dice_ce:  # noqa: N801 - registered names are lower case
    """Soft Dice plus cross-entropy, summed evenly (C2FNAS / DiNTS L_seg).

    Dice is computed over the whole batch per class (background included, as C2FNAS) and
    averaged over classes; ``smooth`` keeps empty classes finite.
    """

    kind = "segmentation"

    def __init__(self, smooth: float = 1e-5, include_background: bool = True):
        self.smooth = float(smooth)
        self.include_background = bool(include_background)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` [B, C, *S]; ``target`` [B, *S] integer labels."""
        target = target.long()
        ce = F.cross_entropy(logits, target)
        prob = torch.softmax(logits, dim=1)
        onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(prob.dtype)
        dims = (0, *range(2, logits.ndim))
        inter = (prob * onehot).sum(dims)
        denom = prob.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        if not self.include_background:
            dice = dice[1:]
        return ce + (1 - dice.mean())
