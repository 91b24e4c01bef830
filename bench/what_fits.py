"""What fits where: the largest cubic search patch of the paper's space (L=12, D=4, 16 filters, the five
paper ops, one patch per GPU) on cards of 12-80 GB, from nastk's memory model (estimated, not measured on
a GPU): without recomputation, with every cell recomputed (the least search.recompute: auto reaches),
and both under bf16 autocast.

    python bench/what_fits.py [--classes 3] [--modalities 1]

The memory is the search step's bytes saved for backward plus weights, gradients, SGD momentum and Adam's
state, with nastk's default margin (10%) and reserve (0.75 GB), as `nastk plan` counts it. Patches go in
steps of 32 voxels a side (the space needs multiples of 2^(D+1) = 32).
"""

from __future__ import annotations

import argparse

from nastk import registry
from nastk.plugin import TrainingSetting
from nastk.setting import usable_bytes
from nastk.spec import Spec
from nastk_dints import sizing
from nastk_dints.params import DiNTSParams

CARDS = (12, 16, 24, 32, 40, 80)


def largest(fits, step: int = 32, limit: int = 512) -> int:
    side = 0
    while side + step <= limit and fits(side + step):
        side += step
    return side


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--modalities", type=int, default=1)
    args = parser.parse_args()
    params = DiNTSParams(layers=12, depths=4, filters=16)
    ops = registry.load_ops(Spec().ops)

    def need(side: int, amp: str, recompute: bool) -> float:
        setting = TrainingSetting((side,) * 3, 1, 1.0, amp, args.modalities, args.classes)
        if recompute:
            return sizing.supernet_memory_recomputed(params, ops, setting)
        return sizing.supernet_memory(params, ops, setting)

    modes = [("off", False), ("off", True), ("bf16", False), ("bf16", True)]
    print("| card | float32 | float32, cells recomputed | bf16 | bf16, cells recomputed |")
    print("|---|---|---|---|---|")
    for gb in CARDS:
        room = usable_bytes(gb)
        cells = []
        for amp, rec in modes:
            side = largest(lambda s, amp=amp, rec=rec, room=room: need(s, amp, rec) <= room)
            cells.append(f"{side}^3 ({need(side, amp, rec) / 2**30:.1f} GB)" if side else "none")
        print(f"| {gb} GB | " + " | ".join(cells) + " |")
    s96 = [need(96, amp, rec) / 2**30 for amp, rec in modes]
    print(
        "at the paper's 96^3: "
        + ", ".join(f"{m[0]}{' recomputed' if m[1] else ''} {v:.1f} GB" for m, v in zip(modes, s96))
    )


if __name__ == "__main__":
    main()
