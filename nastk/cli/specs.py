"""Commands about specs and plugins: validate, spec-schema, plugins."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from nastk import registry
from nastk.cli.common import (
    SetOption,
    SpecArgument,
    _load_spec,
    app,
    out,
)


@app.command()
def validate(spec: SpecArgument, set_fields: SetOption = None) -> None:
    """Validate a spec and print it resolved, with every default filled in."""
    from nastk.spec import dump_spec

    resolved = _load_spec(spec, set_fields)
    out.print(f"[green]valid[/green]: {spec}", highlight=False)
    out.print(dump_spec(resolved), markup=False, highlight=False, end="")
    for line in _normalization_lines(resolved):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def _normalization_lines(resolved) -> list[str]:
    """What ``auto`` normalisation resolves to for the spec's dataset, and why (comment lines, so the
    output stays a valid spec); where the dataset cannot be read here, when it will be resolved."""
    from nastk.data.dataset import read_dataset
    from nastk.data.normalize import requested_schemes
    from nastk.data.preprocess import resolve_normalization
    from nastk.errors import NastkError

    ds = resolved.dataset
    if ds.normalization != "auto" and "auto" not in ds.normalization:
        return []
    try:
        info = read_dataset(ds.root, ds.format)
        requested_schemes(ds, info.num_channels, info.root / "dataset.json")
        result = resolve_normalization(ds, info, workers=ds.num_workers, quiet=True)
    except (NastkError, OSError, TypeError, ValueError) as exc:
        return [f"# dataset.normalization: auto, resolved when preprocessing reads the dataset ({exc})"]
    lines = [f"# dataset.normalization: auto resolves to {list(result.schemes)} for {info.root}"]
    lines += [f"#   channel {c} ({info.modalities[c]}): {why}" for c, why in enumerate(result.why)]
    return lines


@app.command("spec-schema")
def spec_schema(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="A Markdown field reference instead of JSON Schema.")
    ] = False,
) -> None:
    """Print the JSON Schema of spec files (or, with --markdown, the field reference)."""
    from nastk.spec import json_schema, markdown_reference

    print(markdown_reference() if markdown else json.dumps(json_schema(), indent=2))


@app.command()
def plugins() -> None:
    """List every registered plugin name with its group, distribution and version."""
    table = Table(title="nastk plugins")
    for col in ("group", "name", "distribution", "version", "object"):
        table.add_column(col)
    for e in registry.entries():
        table.add_row(registry.GROUPS[e.group], e.name, e.distribution, e.version, e.value)
    out.print(table)
