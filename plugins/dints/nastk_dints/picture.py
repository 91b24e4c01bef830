"""Draw a decoded DiNTS architecture in the style of the paper's Fig. 7.

Columns are layers (0 = the stem's outputs, L = the last cell), rows are depths with the finest
resolution (1/2 of the input) at the top. Every selected edge is a line from (layer i-1, source)
to (layer i, target), coloured by its op; active feature nodes are filled circles.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Protocol

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from nastk.plugin import atomic_write_bytes
from nastk_dints.topology import edge_list


class Drawn(Protocol):
    """What a picture reads of an architecture (``nastk_dints.architecture.Architecture`` has it; the
    picture does not import that module, which imports this one to draw)."""

    depths: int
    layers: int
    edge_mask: np.ndarray  # [L, E] bool
    op_index: np.ndarray  # [L, E]
    op_names: list[str]
    node_active: np.ndarray  # [L+1, D] bool
    path_cost: float | None
    gap: int | None


def _title(arch: Drawn) -> str:
    parts = [f"DiNTS: {arch.layers} layers", f"{int(arch.edge_mask.sum())} edges"]
    if arch.path_cost is not None:
        parts.append(f"path cost {arch.path_cost:.3f}")
    if arch.gap is not None:
        parts.append(f"gap G = {arch.gap}")
    return ", ".join(parts)


def draw(arch: Drawn, path: str | Path) -> Path:
    """Write a PNG picture of ``arch`` to ``path`` (atomically) and return the path."""
    path = Path(path)
    n_layers, depths = arch.layers, arch.depths
    active = arch.node_active  # [L+1, D]
    head_x = n_layers + 1
    size = (max(6.0, 0.75 * n_layers + 3.5), 1.8 + 0.8 * depths)
    fig = Figure(figsize=size, dpi=150, layout="constrained")
    ax = fig.add_subplot()

    edges = edge_list(depths)
    colours = [f"C{i % 10}" for i in range(len(arch.op_names))]
    styles = ["-", "--", ":", "-."]
    for i, e in zip(*np.nonzero(arch.edge_mask)):
        (s, t), k = edges[e], int(arch.op_index[i, e])
        style = styles[(k // 10) % len(styles)]
        ax.plot([i, i + 1], [s, t], color=colours[k], ls=style, lw=2.2, alpha=0.9, zorder=1)

    xs, ys = np.meshgrid(np.arange(n_layers + 1), np.arange(depths), indexing="ij")
    on = active.astype(bool)
    ax.scatter(xs[~on], ys[~on], s=70, facecolor="#f0f0f0", edgecolor="#cccccc", zorder=2)
    ax.scatter(xs[on], ys[on], s=90, facecolor="white", edgecolor="black", lw=1.4, zorder=3)

    # Stem on the left feeds the layer-1 inputs; the head on the right gathers the last layer.
    mid = (depths - 1) / 2
    for d in np.flatnonzero(active[0]):
        ax.plot([-1, 0], [mid, d], color="#888888", lw=1.2, zorder=0)
    for d in np.flatnonzero(active[-1]):
        ax.plot([n_layers, head_x], [d, mid], color="#888888", lw=1.2, zorder=0)
    box = {"boxstyle": "round,pad=0.35", "fc": "#dde8f5", "ec": "#4a6fa5"}
    ax.text(-1, mid, "stem", ha="center", va="center", fontsize=9, bbox=box, zorder=4)
    ax.text(head_x, mid, "head", ha="center", va="center", fontsize=9, bbox=box, zorder=4)

    ax.set_xlim(-1.6, head_x + 0.6)
    ax.set_ylim(depths - 0.5, -0.5)  # finest depth at the top
    ax.set_xticks(range(n_layers + 1))
    ax.set_xlabel("layer (0 = stem output)")
    ax.set_yticks(range(depths), [f"1/{2 ** (d + 1)}" for d in range(depths)])
    ax.set_ylabel("resolution")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    ax.set_title(_title(arch), fontsize=10)

    handles = [
        Line2D([], [], color=colours[k], ls=styles[(k // 10) % len(styles)], lw=2.2, label=name)
        for k, name in enumerate(arch.op_names)
    ]
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(len(handles), 7), frameon=False, fontsize=8
    )

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path
