"""Entry-point registry: plugins are found through installed metadata and imported only when asked for.

Groups are the public extension points. A third-party distribution adds, e.g.::

    [project.entry-points."nastk.ops"]
    "myplugin.dwconv3" = "myplugin.ops:dwconv3"

and the name ``myplugin.dwconv3`` becomes usable in any spec. Nothing is imported until a spec
(or a command) asks for that name.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from nastk.errors import PluginError

GROUPS = {
    "spaces": "nastk.spaces",
    "ops": "nastk.ops",
    "losses": "nastk.losses",
    "discretizers": "nastk.discretizers",
    "references": "nastk.references",
    "defaults": "nastk.defaults",
}


@dataclass(frozen=True)
class Entry:
    group: str  # short group name, e.g. "ops"
    name: str
    value: str  # "module:attr"
    distribution: str
    version: str
    _ep: Any = None

    def load(self) -> Any:
        try:
            return self._ep.load()
        except Exception as exc:  # any import-time failure of a plugin is the plugin's fault
            raise PluginError(
                f"plugin {self.name!r} in group {GROUPS[self.group]} (entry point '{self.value}' "
                f"from distribution {self.distribution} {self.version}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def _short_group(group: str) -> str:
    for short, full in GROUPS.items():
        if group in (short, full):
            return short
    raise PluginError(f"unknown plugin group {group!r}; groups are: {', '.join(GROUPS.values())}")


def _distribution_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "<unknown>", "?"
    return dist.metadata["Name"] or "<unknown>", dist.version or "?"


@cache
def _scan(group: str) -> tuple[dict[str, Entry], dict[str, tuple[Entry, ...]]]:
    """Read entry points once per process. Returns (unique names, conflicting names)."""
    seen: dict[str, list[Entry]] = {}
    for ep in md.entry_points(group=GROUPS[group]):
        dist, version = _distribution_of(ep)
        entry = Entry(group, ep.name, ep.value, dist, version, ep)
        bucket = seen.setdefault(ep.name, [])
        # The same distribution can be visible twice (e.g. an editable install plus a stale
        # egg-info on sys.path); that is not a conflict when it points at the same object.
        if not any(e.distribution == dist and e.value == ep.value for e in bucket):
            bucket.append(entry)
    unique = {n: es[0] for n, es in seen.items() if len(es) == 1}
    conflicts = {n: tuple(es) for n, es in seen.items() if len(es) > 1}
    return unique, conflicts


def refresh() -> None:
    """Forget cached metadata (after installing a plugin in-process, e.g. in tests)."""
    _scan.cache_clear()
    _load.cache_clear()


def names(group: str) -> list[str]:
    unique, conflicts = _scan(_short_group(group))
    return sorted([*unique, *conflicts])


def entries(group: str | None = None) -> list[Entry]:
    groups = [_short_group(group)] if group else list(GROUPS)
    out: list[Entry] = []
    for g in groups:
        unique, conflicts = _scan(g)
        out.extend(unique.values())
        for es in conflicts.values():
            out.extend(es)
    return sorted(out, key=lambda e: (e.group, e.name, e.distribution))


def entry(group: str, name: str) -> Entry:
    """Find one entry without importing it."""
    g = _short_group(group)
    unique, conflicts = _scan(g)
    if name in conflicts:
        dists = " and ".join(f"{e.distribution} {e.version} ('{e.value}')" for e in conflicts[name])
        raise PluginError(f"{GROUPS[g]} name {name!r} is registered by more than one distribution: {dists}")
    if name not in unique:
        available = ", ".join(sorted([*unique, *conflicts])) or "none"
        raise PluginError(f"unknown {GROUPS[g]} name {name!r}; available: {available}")
    return unique[name]


@cache
def _load(group: str, name: str) -> Any:
    return entry(group, name).load()


def load(group: str, name: str) -> Any:
    """Import and return the object a plugin registered under ``name``."""
    return _load(_short_group(group), name)


def default_space() -> str:
    """The space a spec gets when it names none, decided by what is installed, never by nastk's code.

    A distribution declares its default as the entry point ``space`` of group ``nastk.defaults``,
    pointing at the same object as one of its ``nastk.spaces`` entries. Without such a declaration the
    only installed space is the default; with several spaces and none declared, a spec must name one.
    """
    spaces, _ = _scan("spaces")
    declared, conflicts = _scan("defaults")
    if "space" in conflicts:
        dists = " and ".join(f"{e.distribution} ('{e.value}')" for e in conflicts["space"])
        raise PluginError(f"more than one distribution declares the default space ({dists}); name one")
    if "space" in declared:
        value = declared["space"].value
        named = [n for n, e in spaces.items() if e.value == value]
        if len(named) != 1:
            raise PluginError(
                f"the default space '{value}' (nastk.defaults, from {declared['space'].distribution}) "
                f"is not one registered nastk.spaces entry; name a space: {', '.join(names('spaces'))}"
            )
        return named[0]
    if len(spaces) == 1:
        return next(iter(spaces))
    raise PluginError(
        f"no default search space is installed; name one: {', '.join(names('spaces')) or 'none'}"
    )


def load_ops(op_names: Iterable[str]) -> dict[str, Any]:
    """The cell-op builders named in a spec or an architecture, by name, in the given order."""
    return {name: load("ops", name) for name in op_names}
