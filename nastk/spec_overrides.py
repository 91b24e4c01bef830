"""``--set key.path=value``: change fields of a validated spec for one run, and validate the result again.

Overrides apply to the spec with every default filled in, so a field the file leaves out (or an item of a
default list, ``losses[4].params.sigma``) can be set as easily as one it writes.
"""

from __future__ import annotations

import re
from typing import Any

from nastk.errors import SpecError
from nastk.spec_yaml import parse_yaml

_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*|\d+)((?:\[\d+\])*)")


def parse_override(text: str, file: str) -> tuple[list[str | int], Any]:
    """``"search.patch_size=[32,32,32]"`` -> (["search", "patch_size"], [32, 32, 32]); the value is YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(file, [(f"--set {text}", "expected KEY.PATH=VALUE, e.g. search.batch_size=2")])
    return _key_path(key, text, file), parse_yaml(value.strip() or "null", f"{file}: --set {key}")


def _key_path(key: str, text: str, file: str) -> list[str | int]:
    path: list[str | int] = []
    for part in key.split("."):
        match = _SEGMENT.fullmatch(part)
        if not match:
            raise SpecError(file, [(f"--set {text}", f"{key!r} is not a dotted field path like search.lr")])
        name, indices = match.groups()
        path.append(int(name) if name.isdigit() else name)
        path += [int(i) for i in re.findall(r"\d+", indices)]
    return path


def apply_override(data: dict, path: list[str | int], value: Any, file: str) -> None:
    """Set ``value`` at ``path`` in ``data``, creating mappings on the way; a path through a value that is
    not a mapping (or past a list's end) is a SpecError naming the field."""
    node: Any = data
    for depth, step in enumerate(path[:-1]):
        node = _child(node, step, path[: depth + 1], file, create=True)
    last = path[-1]
    if isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
    elif isinstance(node, dict) and isinstance(last, str):
        node[last] = value
    else:
        _refuse(path, node, file)


def _child(node: Any, step: str | int, where: list[str | int], file: str, create: bool) -> Any:
    if isinstance(node, dict) and isinstance(step, str):
        if node.get(step) is None and create:
            node[step] = {}
        return node[step]
    if isinstance(node, list) and isinstance(step, int) and step < len(node):
        return node[step]
    _refuse(where, node, file)


def _refuse(path: list[str | int], node: Any, file: str) -> None:
    field = dotted(path)
    if isinstance(node, list):
        problem = f"--set: {dotted(path[:-1])} is a list of {len(node)}; give an index 0..{len(node) - 1}"
    else:
        problem = f"--set: {dotted(path[:-1]) or 'the spec'} is not a mapping ({type(node).__name__})"
    raise SpecError(file, [(field, problem)])


def dotted(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out
