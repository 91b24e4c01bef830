"""Write real distribution metadata (a .dist-info with entry_points.txt) into a folder.

Putting that folder on sys.path makes importlib.metadata see an installed distribution, exactly
as pip would leave it, without installing anything into the test environment.
"""

from __future__ import annotations

from pathlib import Path


def make_dist(
    root: Path, name: str, version: str, entry_points: dict[str, dict[str, str]], modules=None
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for rel, text in (modules or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
