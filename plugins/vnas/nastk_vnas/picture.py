"""arch.png of a ``vnas`` architecture: the U of the encoder-decoder, one box per searched layer
coloured by its op, levels going down the page."""

from __future__ import annotations

import io
from pathlib import Path

from nastk.plugin import atomic_write_bytes
from nastk_vnas.layout import layers


def draw(arch, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layout = layers(arch.depths, arch.convs)
    colours = {op: plt.get_cmap("tab10")(i % 10) for i, op in enumerate(arch.candidates)}
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(layout), 1.5 + 0.8 * arch.depths))
    centres = []
    for x, (layer, op) in enumerate(zip(layout, arch.choices)):
        y = -layer.level
        ax.add_patch(plt.Rectangle((x - 0.35, y - 0.3), 0.7, 0.6, color=colours[op], ec="k"))
        ax.text(x, y, op, ha="center", va="center", fontsize=6, rotation=90)
        ax.text(x, y + 0.38, layer.name, ha="center", va="bottom", fontsize=6)
        centres.append((x, y))
    ax.plot([c[0] for c in centres], [c[1] for c in centres], "k-", lw=0.8, zorder=0)
    for level in range(arch.depths - 1):  # skip connections: last encoder layer -> first decoder layer
        enc = max(i for i, la in enumerate(layout) if la.part == "enc" and la.level == level)
        dec = min(i for i, la in enumerate(layout) if la.part == "dec" and la.level == level)
        ax.annotate(
            "", (dec - 0.35, -level), (enc + 0.35, -level), arrowprops={"arrowstyle": "->", "ls": "--"}
        )
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, list(colours), loc="lower right", fontsize=7, frameon=False)
    ax.set_xlim(-0.8, len(layout) - 0.2)
    ax.set_ylim(-arch.depths + 0.4, 0.9)
    ax.set_yticks([-d for d in range(arch.depths)], [f"level {d} (1/{2**d})" for d in range(arch.depths)])
    ax.set_xticks([])
    ax.set_title(f"V-NAS architecture ({len(layout)} searched layers)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
