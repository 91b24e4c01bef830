"""The package is a pyramid: engine may import inference, never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "nastk"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_nothing_below_the_engine_imports_it():
    below = [*(PACKAGE / "inference").glob("*.py"), *(PACKAGE / "report").glob("*.py")]
    below += [PACKAGE / "network.py", PACKAGE / "checkpoint.py", PACKAGE / "device.py"]
    upward = {
        str(path.relative_to(PACKAGE.parent)): sorted(
            n for n in imported_modules(path) if n.startswith("nastk.engine")
        )
        for path in below
    }
    assert not {k: v for k, v in upward.items() if v}
