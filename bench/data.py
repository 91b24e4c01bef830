"""Patches per second from the preprocessed cache at 96^3 with the paper's augmentation, per worker.

    python bench/data.py [--patch 96] [--samples 200] [--no-search-step]

Data loading must never limit the search: the table compares one worker's patch rate with the
search step rate of the paper's configuration (L=12, D=4, 16 filters, one 96^3 patch) measured on
the same machine, and prints the ratio (target >= 4).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from nastk import registry
from nastk.data import augment
from nastk.data.preprocess import foreground_locations
from nastk.data.sampler import PatchDataset


def fake_cache(root: Path, cases: int = 4, shape=(192, 192, 128)) -> list[str]:
    """Cases shaped like preprocessed abdominal CT (1 mm), written as the cache would write them."""
    rng = np.random.default_rng(0)
    ids = []
    for i in range(cases):
        case = f"bench_{i}"
        image = rng.normal(size=(1, *shape)).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        label[60:120, 70:130, 40:90] = 1
        label[80:95, 90:105, 55:70] = 2
        np.save(root / f"{case}_image.npy", image)
        np.save(root / f"{case}_label.npy", label)
        np.save(root / f"{case}_fg.npy", foreground_locations(label, 0))
        (root / f"{case}.json").write_text(json.dumps({"id": case, "shape": list(shape)}))
        ids.append(case)
    return ids


def patch_rate(
    root: Path, ids: list[str], patch: int, samples: int, fg_fraction: float
) -> tuple[float, float]:
    ds = PatchDataset(root, ids, (patch,) * 3, fg_fraction=fg_fraction, seed=0)
    ds[0]  # open the memory maps
    t0 = time.perf_counter()
    for i in range(1, samples + 1):
        ds[i]
    load = samples / (time.perf_counter() - t0)
    aug = augment.build(augment.PAPER_BASIC)
    gen = torch.Generator().manual_seed(0)
    img, lab = ds[0]
    img, lab = img[None], lab[None]
    t0 = time.perf_counter()
    for _ in range(samples):
        aug(img, lab, gen)
    augmented = samples / (time.perf_counter() - t0)
    return load, augmented


def search_step_rate(patch: int, repeats: int) -> float:
    space = registry.load("spaces", "dints")
    ops = registry.load_ops(["skip", "conv3x3x3", "p3d_3x3x1", "p3d_3x1x3", "p3d_1x3x3"])
    net = space.build_supernet({"layers": 12, "depths": 4, "filters": 16}, ops, 1, 3, (patch,) * 3)
    x = torch.randn(1, 1, patch, patch, patch)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        net(x).mean().backward()
        times.append(time.perf_counter() - t0)
    return 1.0 / float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--fg-fraction", type=float, default=0.33)
    parser.add_argument("--no-search-step", action="store_true", help="skip timing the paper's search step")
    parser.add_argument("--step-repeats", type=int, default=2)
    args = parser.parse_args()
    all_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one worker = one core
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ids = fake_cache(root)
        load, augmented = patch_rate(root, ids, args.patch, args.samples, args.fg_fraction)
    per_worker = 1.0 / (1.0 / load + 1.0 / augmented)
    table = Table(title=f"data pipeline, {args.patch}^3 patches, one worker (one core)")
    table.add_column("what")
    table.add_column("per second", justify="right")
    table.add_row("patch read from memory-mapped cache", f"{load:.1f}")
    table.add_row("paper augmentation (rot90_xy + flip), CPU", f"{augmented:.1f}")
    table.add_row("read + augment, per worker", f"{per_worker:.1f}")
    if not args.no_search_step:
        torch.set_num_threads(all_threads)
        steps = search_step_rate(args.patch, args.step_repeats)
        table.add_row(f"paper search step (L=12, D=4, 16 filters, {args.patch}^3), all cores", f"{steps:.3f}")
        table.add_row(
            "ratio: one worker's patches / search steps (target >= 4)", f"{per_worker / steps:.0f}x"
        )
    console = Console()
    console.print(table)
    console.print(f"{platform.machine()}, torch {torch.__version__}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
