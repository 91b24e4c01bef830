"""Patches from the memory-mapped cache, with foreground oversampling.

Sample ``i`` is a pure function of (seed, i): its case, position and foreground choice come from
``np.random.default_rng([seed, i])``. So the stream does not depend on how many workers or ranks
there are, ``DistributedSampler`` (or any index sampler) splits it across ranks, and resuming at
iteration t only needs the index to start from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from nastk.data.preprocess import load_case, load_foreground, pad_value


class PatchDataset(Dataset):
    def __init__(
        self,
        cache_root: str | Path,
        case_ids: list[str],
        patch_size,
        fg_fraction: float = 0.33,
        seed: int = 0,
        length: int = 10**9,
    ):
        if not case_ids:
            raise ValueError("PatchDataset needs at least one case")
        self.cache_root = Path(cache_root)
        self.case_ids = sorted(case_ids)
        self.patch = np.asarray(patch_size, dtype=np.int64)
        self.fg_fraction = float(fg_fraction)
        self.seed = int(seed)
        self.length = int(length)
        self._cases: dict[str, tuple] = {}

    def __len__(self) -> int:
        return self.length

    def _case(self, case_id: str):
        # Opened lazily in each worker: memory maps are cheap and not shared across fork boundaries.
        if case_id not in self._cases:
            image, label, meta = load_case(self.cache_root, case_id, mmap=True)
            fg = load_foreground(self.cache_root, case_id)
            pad = np.broadcast_to(np.asarray(pad_value(meta), np.float32), (image.shape[0],))
            self._cases[case_id] = (image, label, fg, pad)
        return self._cases[case_id]

    def patch_start(self, rng: np.random.Generator, shape: np.ndarray, fg: np.ndarray) -> np.ndarray:
        """Corner of the patch in (possibly negative / overhanging) volume coordinates."""
        slack = shape - self.patch  # negative when the volume is smaller: it gets padded
        if len(fg) and rng.random() < self.fg_fraction:
            classes = np.unique(fg[:, 0])
            cls = classes[rng.integers(len(classes))]
            rows = fg[fg[:, 0] == cls]
            centre = rows[rng.integers(len(rows)), 1:]
            start = centre - self.patch // 2
            low, high = np.minimum(0, slack), np.maximum(0, slack)
            return np.clip(start, low, high)
        low = np.minimum(0, slack)
        high = np.maximum(0, slack)
        return np.array([rng.integers(lo, hi + 1) for lo, hi in zip(low, high)])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        case_id = self.case_ids[rng.integers(len(self.case_ids))]
        image, label, fg, pad = self._case(case_id)
        shape = np.asarray(image.shape[1:])
        start = self.patch_start(rng, shape, fg)
        stop = start + self.patch
        src = tuple(slice(max(a, 0), min(b, s)) for a, b, s in zip(start, stop, shape))
        dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, start))
        # What reaches past the volume gets the value its outside has (0 unless the normalisation
        # keeps the outside's own value: see preprocess).
        out_image = np.empty((image.shape[0], *self.patch), dtype=np.float32)
        out_image[:] = pad[:, None, None, None]
        out_label = np.zeros(tuple(self.patch), dtype=np.uint8)
        out_image[(slice(None), *dst)] = image[(slice(None), *src)]
        out_label[dst] = label[src]
        return torch.from_numpy(out_image), torch.from_numpy(out_label)


class IndexRange(Sampler[int]):
    """Indices start, start+1, ... for one rank: rank r of R takes every R-th (as DistributedSampler)."""

    def __init__(self, start: int, count: int, rank: int = 0, world_size: int = 1):
        self.start, self.count, self.rank, self.world = start, count, rank, world_size

    def __iter__(self):
        return iter(
            range(self.start * self.world + self.rank, (self.start + self.count) * self.world, self.world)
        )

    def __len__(self) -> int:
        return self.count


def make_loader(
    dataset: PatchDataset,
    batch_size: int,
    start_sample: int = 0,
    num_samples: int | None = None,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader over this rank's samples start_sample .. start_sample + num_samples."""
    count = num_samples if num_samples is not None else len(dataset) // world_size - start_sample
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=IndexRange(start_sample, count, rank, world_size),
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        drop_last=False,
    )
