"""The planned spec as YAML: every field of the resolved spec, each planned one under a comment with
the rule that set it, written atomically after it has been read back and validated."""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path
from typing import Any

import yaml

from nastk.errors import OutputError
from nastk.io import atomic_write_text
from nastk.plan.planner import Plan

WIDTH = 110
# Left out of a planned spec: the run name defaults to the file's stem, and largest-component
# post-processing is for cross-validation to decide (issue 13).
_LEFT_OUT = {"name", "synth", "inference.largest_component"}


def _flow(value: Any) -> str:
    if isinstance(value, dict) and value and all(isinstance(k, str) and k.isdigit() for k in value):
        value = {int(k): v for k, v in value.items()}  # JSON made the class keys of nsd_tolerance strings
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(text, WIDTH - len(indent) - 2)]


def _emit(data: dict, comments: dict[str, str], prefix: str, indent: str, out: list[str]) -> None:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path in _LEFT_OUT:
            continue
        if path in comments:
            out.extend(_comment(comments[path], indent))
        # sections are blocks; their settings (optimisers, params) one flow line each
        if isinstance(value, dict) and not prefix and key not in ("synth",):
            out.append(f"{indent}{key}:")
            _emit(value, comments, f"{path}.", indent + "  ", out)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out.append(f"{indent}{key}:")
            for i, item in enumerate(value):
                if f"{path}[{i}].params" in comments:
                    out.extend(_comment(comments[f"{path}[{i}].params"], indent + "  "))
                out.append(f"{indent}  - {_flow(item)}")
        else:
            out.append(f"{indent}{key}: {_flow(value)}")


def render(plan: Plan) -> str:
    """YAML text of the plan; read back, it validates to the same spec (checked)."""
    from nastk.spec import parse_yaml, validate

    resolved = json.loads(validate(copy.deepcopy(plan.data), "<plan>").model_dump_json())
    lines = [line for text in plan.header for line in _comment(text, "")]
    lines += _comment(
        "Values without a comment are not planned: the paper's (Sec. 4.1) or the base spec's.", ""
    )
    body: list[str] = []
    _emit(resolved, plan.comments, "", "", body)
    text = "\n".join(lines + body) + "\n"
    again = json.loads(validate(parse_yaml(text, "<plan>"), "<plan>").model_dump_json())
    for path in _LEFT_OUT:  # what the text leaves out reads back as its default
        *parents, key = path.split(".")
        for data in (again, resolved):
            for part in parents:
                data = data[part]
            data.pop(key, None)
    if again != resolved:  # a bug in this module, never a user error
        raise AssertionError("the rendered plan does not read back as the planned spec")
    return text


def write_plan(plan: Plan, out: str | Path, force: bool = False) -> Path:
    out = Path(out)
    check_output(out, force)
    return atomic_write_text(out, render(plan))


def check_output(out: str | Path, force: bool) -> None:
    """Refuse to replace a spec (perhaps edited by hand) unless told to; before any work is done."""
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; --out names the spec file to write")
    if out.exists() and not force:
        raise OutputError(f"{out}: exists; pass --force to replace it")
