"""What identifies a dataset's content: the key of the preprocessing cache and of the fingerprint."""

from __future__ import annotations

import hashlib

from nastk.data.dataset import DatasetInfo


def dataset_fingerprint(info: DatasetInfo) -> str:
    h = hashlib.sha256((info.root / "dataset.json").read_bytes())
    for case in info.training + info.test:
        for p in (*case.images, case.label):
            if p is not None:
                h.update(f"{p.relative_to(info.root.resolve())}:{p.stat().st_size}".encode())
    return h.hexdigest()[:16]
