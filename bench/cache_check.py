"""The time `preprocess` takes to find an unchanged dataset's cache current (target: under 1 s for 100 cases).

    python bench/cache_check.py [--cases 100] [--size 96]

Writes a synthetic MSD task of ``--cases`` uncompressed ``.nii`` cases (``size x size x size/2`` voxels),
preprocesses it once, then times: a second `preprocess` (the whole check: dataset.json, each file's
size/mtime/inode against the content-hash index, each cached case's headers), the content-hash lookup alone,
hashing every file from scratch (the first run's extra cost), and after one label was edited in place with the
same size: the dataset fingerprint (which `preprocess` reads to resolve normalisation; it is recomputed from
every case when any file changed) and the `preprocess` that then redoes that case alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from rich.console import Console
from rich.table import Table

from nastk.data.dataset import read_dataset
from nastk.data.digest import DIGESTS_FILE, content_hash, listed_files, read_digests
from nastk.data.fingerprint import compute_fingerprint
from nastk.data.preprocess import preprocess
from nastk.spec import validate


def write_task(root: Path, cases: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    shape = (size, size, size // 2)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    training = []
    for i in range(cases):
        label = np.zeros(shape, np.uint8)
        label[size // 4 : size // 2, size // 4 : size // 2, size // 8 : size // 4] = 1
        image = (rng.normal(100, 5, shape) + 40 * label).astype(np.int16)
        for kind, array in (("imagesTr", image), ("labelsTr", label)):
            (root / kind).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), str(root / kind / f"c_{i:03d}.nii"))
        training.append({"image": f"./imagesTr/c_{i:03d}.nii", "label": f"./labelsTr/c_{i:03d}.nii"})
    dataset = {
        "name": "Bench",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "organ"},
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_task(Path(tmp) / "Bench", args.cases, args.size)
        cache = Path(tmp) / "cache"
        spec = validate(
            {
                "dataset": {
                    "root": str(root),
                    "cache_dir": str(cache),
                    "spacing": [2.0, 2.0, 2.0],
                    "num_classes": 2,
                    "num_workers": 0,
                }
            },
            "<bench>",
        )
        megabytes = sum(p.stat().st_size for p in root.rglob("*.nii")) / 2**20
        first = timed(lambda: preprocess(spec.dataset, quiet=True))
        check = min(timed(lambda: preprocess(spec.dataset, quiet=True)) for _ in range(3))
        files = listed_files(read_dataset(root))
        index = cache / DIGESTS_FILE
        lookup = min(timed(lambda: read_digests(files, index)) for _ in range(3))
        hashing = timed(lambda: [content_hash(p) for p in files])
        label = root / "labelsTr" / "c_007.nii"
        img = nib.load(label)
        data = np.asarray(img.dataobj).copy()
        data[0, 0, 0] = 1
        nib.save(nib.Nifti1Image(data, img.affine, img.header), str(label))
        # preprocess reads the dataset fingerprint first (auto normalisation): time it on its own
        fingerprint = timed(lambda: compute_fingerprint(root, cache_dir=cache, plannable=False))
        edited = timed(lambda: preprocess(spec.dataset, quiet=True))
    table = Table(
        title=f"preprocess cache check: {args.cases} cases, {megabytes:.0f} MB of .nii, {platform.machine()}"
    )
    table.add_column("what")
    table.add_column("s", justify="right")
    table.add_row("first preprocess (hash + preprocess every case)", f"{first:.2f}")
    table.add_row("unchanged dataset: preprocess finds the cache current", f"{check:.3f}")
    table.add_row("  of which the content-hash lookup (stat each file)", f"{lookup:.3f}")
    table.add_row("hashing every file from scratch (BLAKE2b)", f"{hashing:.3f}")
    table.add_row(
        "label edited in place, same size: fingerprint recomputed (every case)", f"{fingerprint:.2f}"
    )
    table.add_row("  then preprocess: that case alone redone", f"{edited:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
