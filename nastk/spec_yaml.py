"""Reading a spec file safely: a size cap, UTF-8, and YAML without aliases or duplicate keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nastk.errors import SpecError

# Specs are a few KB; the cap keeps a huge file from holding the parser for minutes.
MAX_SPEC_BYTES = 4 * 2**20


class SpecLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing aliases and duplicate keys.

    An alias makes the validator walk the aliased value again at each use: a chain of ten anchors of
    ten aliases each (the "billion laughs") expands to 10^10 values and takes the process down.
    A duplicate key would silently keep its last value.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"alias *{event.anchor} is not allowed in a spec; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {first})", key_node.start_mark
                    )
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, file: str) -> Any:
    """The YAML document in ``text``; SpecError (naming line and column) when it is not valid."""
    try:
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(file, [("", f"not valid YAML: {where}{getattr(exc, 'problem', exc)}")]) from None
    except RecursionError:
        raise SpecError(file, [("", "not valid YAML: nested too deeply")]) from None


def read_spec_text(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(str(path), [("", "file not found")]) from None
    except OSError as exc:
        raise SpecError(str(path), [("", f"cannot read: {exc.strerror}")]) from None
    if len(raw) > MAX_SPEC_BYTES:
        limit = MAX_SPEC_BYTES // 2**20
        raise SpecError(str(path), [("", f"larger than {limit} MB; a spec is a few KB of YAML")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(
            str(path), [("", f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})")]
        ) from None
