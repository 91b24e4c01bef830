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
