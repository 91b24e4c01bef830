"""Intensity transforms: gamma correction within each sample's own range."""

from __future__ import annotations

import torch
from torch import Tensor

from nastk.data.augment.checks import _check_number, _check_pair, _check_prob, _check_range, _rand


class Gamma:
    """Gamma correction with gamma uniform in [min_gamma, max_gamma] (default 0.7-1.5), p=0.3.

    For a selected sample each channel is rescaled to [0, 1] by its own min/max, raised to the
    sample's gamma (one gamma per sample, shared by its channels) and mapped back, so the per-channel
    min and max are preserved exactly. Constant channels are left unchanged. The label is untouched.
    """

    name = "gamma"

    def __init__(self, *, p: float = 0.3, min_gamma: float = 0.7, max_gamma: float = 1.5):
        self.p = _check_prob("p", p)
        self.min_gamma = _check_number("min_gamma", min_gamma, lo=0.0)
        self.max_gamma = _check_number("max_gamma", max_gamma, lo=0.0)
        _check_range("min_gamma", self.min_gamma, "max_gamma", self.max_gamma)

    def __repr__(self) -> str:
        return f"Gamma(p={self.p}, min_gamma={self.min_gamma}, max_gamma={self.max_gamma})"

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        _check_pair(image, label)
        b = image.shape[0]
        u = _rand(generator, 2, b)
        mask = u[0] < self.p
        idx = mask.nonzero().flatten()
        if idx.numel() == 0:
            return image, label
        idx = idx.to(image.device)
        gamma = (self.min_gamma + (self.max_gamma - self.min_gamma) * u[1]).to(image.device)[idx]
        work = image.dtype if image.dtype in (torch.float32, torch.float64) else torch.float32
        sub = image.index_select(0, idx).to(work)
        flat = sub.flatten(2)
        lo = flat.amin(dim=2).view(*sub.shape[:2], 1, 1, 1)
        hi = flat.amax(dim=2).view(*sub.shape[:2], 1, 1, 1)
        span = hi - lo
        unit = ((sub - lo) / torch.where(span > 0, span, 1)).clamp(0, 1)
        curved = unit.pow(gamma.to(work).view(-1, 1, 1, 1, 1))
        # lerp returns exactly lo at weight 0 and exactly hi at weight 1, so min/max are kept bit-exact.
        out = torch.where(span > 0, torch.lerp(lo.expand_as(sub), hi.expand_as(sub), curved), sub)
        return image.index_copy(0, idx, out.to(image.dtype)), label
