"""Sliding-window inference, nastk vs MONAI's ``sliding_window_inference``, same network, windows, blending.

    pip install -e .[bench]      # MONAI, for this comparison only
    python bench/predict.py [--size 128 128 96] [--patch 64] [--stride 32] [--filters 4] [--repeats 3]

The network is the paper's published architecture (specs/archs/dints-cvpr2021.json) at the given width.
nastk gets the network (it applies the softmax itself), MONAI a predictor returning softmax
probabilities, so both do the same work and the blended outputs are comparable;
the stride is chosen so MONAI's overlap gives the same windows. Prints seconds per case and the
largest difference between the two outputs, for constant and Gaussian blending. The network is the
same on both sides, so the columns "outside the net" (total minus the time spent in network calls,
softmax included) isolate what differs: window extraction, blending and normalisation.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from nastk import registry
from nastk.inference.sliding_window import sliding_window_predict


class _TimedNet:
    """The network, timing its own calls, so each side's time splits into network and machinery."""

    def __init__(self, net, sync):
        self.net, self.sync, self.seconds = net, sync, 0.0

    def __call__(self, x):
        self.sync()
        t0 = time.perf_counter()
        out = self.net(x)
        self.sync()
        self.seconds += time.perf_counter() - t0
        return out


def _interleaved_medians(fns, timed: _TimedNet, repeats: int, sync):
    """Median seconds of each function (total, and outside the network), run in turn ``repeats``
    times so that drift in the machine's speed hits every side alike."""
    outs = [fn() for fn in fns]  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    overhead: list[list[float]] = [[] for _ in fns]
    for rep in range(repeats):
        order = range(len(fns)) if rep % 2 == 0 else reversed(range(len(fns)))  # ABBA: no order bias
        for k in order:
            fn = fns[k]
            sync()
            timed.seconds = 0.0
            t0 = time.perf_counter()
            outs[k] = fn()
            sync()
            times[k].append(time.perf_counter() - t0)
            overhead[k].append(times[k][-1] - timed.seconds)
    # the ratio of each back-to-back pair, then the median: drift between pairs cancels
    ratio = float(np.median(np.array(times[0]) / np.array(times[1])))
    medians = [float(np.median(t)) for t in times]
    return medians, [float(np.median(o)) for o in overhead], outs, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, nargs=3, default=[128, 128, 96])
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--filters", type=float, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        raise SystemExit("MONAI is needed for this comparison: pip install -e .[bench]") from None
    device = torch.device(args.device)
    space = registry.load("spaces", "dints")
    arch = space.load_arch("specs/archs/dints-cvpr2021.json")
    ops = registry.load_ops(arch.op_names)
    torch.manual_seed(0)
    net = space.build_network(arch, ops, 1, 3, filters=args.filters).to(device).eval()
    volume = torch.randn(1, *args.size, device=device)
    patch = (args.patch,) * 3
    overlap = 1 - args.stride / args.patch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    timed = _TimedNet(net, sync)

    def probs(x):  # MONAI's predictor: the softmax counts as its machinery, as it does for nastk
        return torch.softmax(timed(x), 1)

    table = Table(
        title=f"sliding window, volume {args.size}, patch {args.patch}^3, stride {args.stride}, "
        f"{device.type}, paper arch at {args.filters:g} filters"
    )
    cols = ("blend", "nastk s/case", "MONAI s/case", "nastk / MONAI (median of pairs)")
    cols += ("nastk outside the net", "MONAI outside the net", "max |difference|")
    for col in cols:
        table.add_column(col, justify="right" if col != "blend" else "left")
    for blend in ("constant", "gaussian"):
        with torch.no_grad():
            (ours_t, theirs_t), (ours_o, theirs_o), (ours, theirs), ratio = _interleaved_medians(
                [
                    lambda blend=blend: sliding_window_predict(
                        volume, timed, patch, (args.stride,) * 3, 3, batch_size=args.batch, blend=blend
                    ),
                    lambda blend=blend: sliding_window_inference(
                        volume[None], patch, args.batch, probs, overlap=overlap, mode=blend
                    )[0],
                ],
                timed,
                args.repeats,
                sync,
            )
        diff = float((ours.to(theirs.device) - theirs).abs().max())
        table.add_row(
            blend,
            f"{ours_t:.2f}",
            f"{theirs_t:.2f}",
            f"{ratio:.2f}",
            f"{ours_o * 1e3:.0f} ms",
            f"{theirs_o * 1e3:.0f} ms",
            f"{diff:.2e}",
        )
    Console().print(table)
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
