"""The Markdown reference of every spec field (docs/spec-reference.md), generated from the models."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel


def markdown_reference() -> str:
    """A Markdown reference of every spec field (type, default, description), from the models."""
    from nastk.spec import Spec  # here: nastk.spec re-exports this function

    def type_name(annotation: Any) -> str:
        text = str(annotation).replace("typing.", "")
        if isinstance(annotation, type):
            text = annotation.__name__
        return text.replace("NoneType", "None")

    lines = [
        "# Spec reference",
        "",
        "Generated from the models in `nastk/spec.py` by `nastk spec-schema --markdown`; do not edit.",
        "Defaults are the DiNTS paper's values (Sec. 4.1) unless the description says otherwise.",
        "",
    ]

    def section(model: type[BaseModel], prefix: str) -> None:
        rows, nested = [], []
        for name, field in model.model_fields.items():
            ann = field.annotation
            sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if sub is not None:
                nested.append((sub, f"{prefix}{name}."))
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump(mode="json")
            if isinstance(default, list):
                default = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in default]
            shown = json.dumps(default, default=str).replace("|", "\\|")
            desc = (field.description or "").replace("|", "\\|")
            kind = type_name(ann).replace("nastk.spec.", "").replace("|", "\\|")
            rows.append(f"| `{prefix}{name}` | `{kind}` | `{shown}` | {desc} |")
        if rows:
            lines.extend(
                [
                    f"## `{prefix.rstrip('.') or 'top level'}`",
                    "",
                    "| field | type | default | meaning |",
                    "|---|---|---|---|",
                    *rows,
                    "",
                ]
            )
        for sub, sub_prefix in nested:
            section(sub, sub_prefix)

    section(Spec, "")
    return "\n".join(lines)
