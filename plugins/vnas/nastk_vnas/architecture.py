"""A decoded ``vnas`` architecture: one op name per searched layer, as versioned, readable JSON.

::

    {"format": "nastk.arch", "version": 1, "space": {"name": "vnas", "params": {...}},
     "depths": 3, "convs": 2, "filters": 16, "ops": ["skip", "conv3x3x3", ...],
     "layers": [{"name": "enc0.1", "op": "conv3x3x3"}, ...], "path_cost": 1.23}

``ops`` are the candidates the search chose among (the spec's ``ops``); ``layers`` names, in data-flow
order (``layout.py``), the op each searched layer uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nastk.plugin import DataError, atomic_write_text, read_json
from nastk_vnas.layout import layers

FORMAT = "nastk.arch"
VERSION = 1
_KNOWN = {"format", "version", "space", "depths", "convs", "filters", "ops", "layers", "path_cost"}


@dataclass
class Architecture:
    depths: int
    convs: int
    filters: int
    candidates: list[str]  # the ops searched among
    choices: list[str]  # one op name per layer, layout order
    path_cost: float | None = None  # sum over layers of -log softmax(logits)[choice]
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(layers(self.depths, self.convs))
        if len(self.choices) != n:
            raise DataError(
                f"'layers' has {len(self.choices)} entries; depths {self.depths} and convs {self.convs} "
                f"make {n}"
            )
        unknown = [c for c in self.choices if c not in self.candidates]
        if unknown:
            raise DataError(f"'layers' uses {unknown[0]!r}, which is not one of 'ops' {self.candidates}")

    @property
    def op_names(self) -> list[str]:
        """The ops the network is built from (the toolkit loads exactly these)."""
        return [op for op in self.candidates if op in self.choices]

    @property
    def space(self) -> dict[str, Any]:
        return {
            "name": "vnas",
            "params": {"depths": self.depths, "convs": self.convs, "filters": self.filters},
        }

    def spec_mismatch(self, space_params: dict[str, Any]) -> str | None:
        """Why a spec with these ``space.params`` cannot retrain this architecture, or None."""
        for key in ("depths", "convs"):
            value = space_params.get(key)
            if value is not None and int(value) != getattr(self, key):
                return f"{key!r} is {getattr(self, key)} but the spec's space.params.{key} is {value}"
        return None

    def to_dict(self) -> dict[str, Any]:
        names = [layer.name for layer in layers(self.depths, self.convs)]
        out: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "space": self.space,
            "depths": self.depths,
            "convs": self.convs,
            "filters": self.filters,
            "ops": list(self.candidates),
            "layers": [{"name": n, "op": op} for n, op in zip(names, self.choices)],
            "path_cost": None if self.path_cost is None else float(self.path_cost),
        }
        out.update(self.extra)
        return out

    def to_json(self) -> str:
        """One top-level key per line, one layer per line."""
        d = self.to_dict()
        rows = d.pop("layers")
        lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in d.items()]
        body = ",\n".join(f"  {json.dumps(r)}" for r in rows)
        return "{\n" + "\n".join(lines) + '\n "layers": [\n' + body + "\n ]\n}\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "<arch>") -> Architecture:
        if not isinstance(data, dict):
            raise DataError(f"{source}: top level must be an object")
        if data.get("format") != FORMAT:
            raise DataError(f"{source}: 'format' must be {FORMAT!r}")
        space = data.get("space", {})
        if not isinstance(space, dict) or space.get("name") != "vnas":
            raise DataError(f"{source}: 'space': this is not a vnas architecture ({space!r})")
        try:
            if int(data.get("version", 0)) > VERSION:
                raise DataError(f"'version' {data['version']} is newer than this plugin ({VERSION})")
            for key in ("depths", "convs", "filters"):
                if not isinstance(data.get(key), int) or data[key] < 1:
                    raise DataError(f"{key!r} must be a positive integer, got {data.get(key)!r}")
            ops = data["ops"]
            if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops) or not ops:
                raise DataError("'ops' must be a non-empty list of op names")
            rows = data["layers"]
            if not isinstance(rows, list):
                raise DataError("'layers' must be a list")
            expected = [layer.name for layer in layers(data["depths"], data["convs"])]
            choices = []
            for i, row in enumerate(rows):
                if not isinstance(row, dict) or not isinstance(row.get("op"), str):
                    raise DataError(f"layers[{i}]: needs an 'op' name")
                if i < len(expected) and row.get("name", expected[i]) != expected[i]:
                    raise DataError(f"layers[{i}].name: {row['name']!r}, expected {expected[i]!r}")
                choices.append(row["op"])
            return cls(
                depths=data["depths"],
                convs=data["convs"],
                filters=data["filters"],
                candidates=[str(o) for o in ops],
                choices=choices,
                path_cost=data.get("path_cost"),
                extra={k: v for k, v in data.items() if k not in _KNOWN},
            )
        except DataError as exc:
            raise DataError(f"{source}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{source}: malformed architecture ({type(exc).__name__}: {exc})") from None

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Architecture:
        return cls.from_dict(read_json(path), str(path))

    def draw(self, path: str | Path) -> Path:
        from nastk_vnas.picture import draw

        return draw(self, path)

    def summary(self) -> str:
        lines = [
            f"V-NAS architecture: {self.depths} levels, {self.convs} searched conv(s) per level and side, "
            f"{len(self.choices)} layers"
        ]
        if self.path_cost is not None:
            lines.append(f"path cost (sum -log softmax) {self.path_cost:.4f}")
        for name, op in zip([la.name for la in layers(self.depths, self.convs)], self.choices):
            lines.append(f"  {name:>8}: {op}")
        return "\n".join(lines)
