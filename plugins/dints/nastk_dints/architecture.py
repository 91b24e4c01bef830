"""A decoded DiNTS architecture and its versioned, readable ``arch.json`` form."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nastk.plugin import DataError, atomic_write_text, read_json
from nastk_dints.topology import edge_list, topology

FORMAT = "nastk.arch"
VERSION = 1
PAPER_OPS = ["skip", "conv3x3x3", "p3d_3x3x1", "p3d_3x1x3", "p3d_1x3x3"]


@dataclass
class Architecture:
    """Per layer, the selected edges (as [source, target] depths) and the op on each.

    ``edge_mask`` [L, E] and ``op_index`` [L, E] follow the edge order of ``topology.edge_list``;
    ``op_index`` is only meaningful where the mask is set.
    """

    depths: int
    edge_mask: np.ndarray
    op_index: np.ndarray
    op_names: list[str]
    space: dict[str, Any] = field(default_factory=lambda: {"name": "dints", "params": {}})
    path_cost: float | None = None
    gap: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.edge_mask = np.asarray(self.edge_mask, dtype=bool)
        self.op_index = np.asarray(self.op_index, dtype=np.int64)
        n_edges = 3 * self.depths - 2
        if self.edge_mask.ndim != 2 or self.edge_mask.shape[1] != n_edges:
            raise DataError(f"edge_mask must be [layers, {n_edges}], got {list(self.edge_mask.shape)}")
        if self.op_index.shape != self.edge_mask.shape:
            raise DataError(
                f"op_index shape {list(self.op_index.shape)} != edge_mask {list(self.edge_mask.shape)}"
            )
        used = self.op_index[self.edge_mask]
        if used.size and (used.min() < 0 or used.max() >= len(self.op_names)):
            raise DataError(f"op index out of range for {len(self.op_names)} ops")
        if not self.edge_mask.any(axis=1).all():
            raise DataError("every layer needs at least one edge")

    @property
    def layers(self) -> int:
        return len(self.edge_mask)

    @property
    def pattern_indices(self) -> np.ndarray:
        return ((self.edge_mask.astype(np.int64) << np.arange(self.edge_mask.shape[1])).sum(1)) - 1

    @property
    def node_active(self) -> np.ndarray:
        """[L+1, D] bool: row 0 is the input depths used by layer 1, row i the targets of layer i."""
        topo = topology(self.depths)
        idx = self.pattern_indices
        rows = [topo.node_sets[topo.pattern_sources[idx[0]]]]
        rows += [topo.node_sets[t] for t in topo.pattern_targets[idx]]
        return np.stack(rows)

    @property
    def input_depths(self) -> list[int]:
        return [int(d) for d in np.flatnonzero(self.node_active[0])]

    def spec_mismatch(self, space_params: dict[str, Any]) -> str | None:
        """Why a spec with these ``space.params`` cannot train this architecture, or None.

        The spec's depths set the patch divisor its sizes were validated against; a network with
        more depths would not divide the patches, one with fewer is not what the spec describes.
        """
        depths = space_params.get("depths")
        if depths is not None and int(depths) != self.depths:
            return f"'depths' is {self.depths} but the spec's space.params.depths is {depths}"
        return None

    def is_feasible(self) -> bool:
        """Every active node of layers 1..L-1 feeds the next layer, and nothing else does."""
        topo = topology(self.depths)
        idx = self.pattern_indices
        return bool(np.all(topo.pattern_targets[idx[:-1]] == topo.pattern_sources[idx[1:]]))

    def layer_edges(self, layer: int) -> list[tuple[int, int, str]]:
        """(source, target, op name) of the selected edges of layer ``layer`` (0-based)."""
        edges = edge_list(self.depths)
        return [
            (s, t, self.op_names[self.op_index[layer, e]])
            for e, (s, t) in enumerate(edges)
            if self.edge_mask[layer, e]
        ]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "space": {"name": self.space.get("name", "dints"), "params": dict(self.space.get("params", {}))},
            "layers": self.layers,
            "depths": self.depths,
            "ops": list(self.op_names),
            "input_depths": self.input_depths,
            "cells": [
                [{"edge": [s, t], "op": op} for s, t, op in self.layer_edges(i)] for i in range(self.layers)
            ],
            "path_cost": None if self.path_cost is None else float(self.path_cost),
            "gap": None if self.gap is None else int(self.gap),
        }
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<arch>") -> Architecture:
        try:
            if data.get("format") != FORMAT:
                raise DataError(f"{source}: 'format' must be {FORMAT!r}")
            if int(data.get("version", 0)) > VERSION:
                raise DataError(f"{source}: 'version' {data['version']} is newer than this nastk ({VERSION})")
            depths = int(data["depths"])
            ops = [str(o) for o in data["ops"]]
            edges = {e: i for i, e in enumerate(edge_list(depths))}
            cells = data["cells"]
            mask = np.zeros((len(cells), len(edges)), dtype=bool)
            index = np.zeros((len(cells), len(edges)), dtype=np.int64)
            for i, layer in enumerate(cells):
                for j, cell in enumerate(layer):
                    where = f"cells[{i}][{j}]"
                    s, t = (int(v) for v in cell["edge"])
                    if (s, t) not in edges:
                        raise DataError(
                            f"{source}: {where}.edge: [{s}, {t}] is not an edge of a {depths}-depth space"
                        )
                    if cell["op"] not in ops:
                        raise DataError(f"{source}: {where}.op: {cell['op']!r} is not one of 'ops' {ops}")
                    mask[i, edges[(s, t)]] = True
                    index[i, edges[(s, t)]] = ops.index(cell["op"])
            if len(cells) != int(data.get("layers", len(cells))):
                raise DataError(f"{source}: 'layers' is {data['layers']} but 'cells' has {len(cells)} layers")
            known = {
                "format",
                "version",
                "space",
                "layers",
                "depths",
                "ops",
                "input_depths",
                "cells",
                "path_cost",
                "gap",
            }
            arch = cls(
                depths=depths,
                edge_mask=mask,
                op_index=index,
                op_names=ops,
                space=data.get("space", {"name": "dints", "params": {}}),
                path_cost=data.get("path_cost"),
                gap=data.get("gap"),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except DataError as exc:
            if str(exc).startswith(source):
                raise
            raise DataError(f"{source}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{source}: malformed architecture ({type(exc).__name__}: {exc})") from None
        declared = data.get("input_depths")
        if declared is not None and sorted(declared) != arch.input_depths:
            raise DataError(
                f"{source}: input_depths {declared} disagree with layer 1's sources {arch.input_depths}"
            )
        return arch

    def to_json(self) -> str:
        """Readable JSON: one top-level key per line, one cell per line."""
        d = self.to_dict()
        cells = d.pop("cells")
        lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in d.items()]
        layers = []
        for layer in cells:
            inner = ",\n    ".join(json.dumps(c) for c in layer)
            layers.append(f"   [\n    {inner}\n   ]")
        return "{\n" + "\n".join(lines) + '\n "cells": [\n' + ",\n".join(layers) + "\n ]\n}\n"

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Architecture:
        return cls.from_dict(read_json(path), str(path))

    def draw(self, path: str | Path) -> Path:
        """Write a Fig. 7-style picture (PNG)."""
        from nastk_dints.picture import draw

        return draw(self, path)

    def summary(self) -> str:
        lines = [
            f"DiNTS architecture: {self.layers} layers, {self.depths} depths, "
            f"{int(self.edge_mask.sum())} edges, input depths {self.input_depths}"
        ]
        if self.path_cost is not None:
            lines.append(f"path cost (sum -log eta) {self.path_cost:.4f}, gap G = {self.gap}")
        for i in range(self.layers):
            cells = ", ".join(f"{s}->{t} {op}" for s, t, op in self.layer_edges(i))
            lines.append(f"  layer {i + 1:2d}: {cells}")
        return "\n".join(lines)
