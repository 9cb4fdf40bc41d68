"""`-o table|json|yaml`: one result, printed for people (aligned columns) or for programs.

With json or yaml, stdout holds exactly one document; progress lines for people go to stderr
(`Say`), so `launch submit ... -o json | jq .status` works.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

FORMATS = ("table", "json", "yaml")


def output_option(f: Any) -> Any:
    return click.option(
        "-o", "--output", type=click.Choice(FORMATS), default="table", show_default=True,
        help="table for people; json or yaml: one document on stdout (progress lines go to stderr).",
    )(f)


def document(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    import yaml

    return yaml.safe_dump(data, sort_keys=False).rstrip("\n")


def emit(data: Any, fmt: str, table: Sequence[str]) -> None:
    """Print `data` as json/yaml, or the table lines for `-o table`."""
    click.echo(document(data, fmt) if fmt != "table" else "\n".join(table))


def columns(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "") -> list[str]:
    """kubectl-style aligned columns; `-` for empty cells."""
    cells = [[str(c) if c not in (None, "") else "-" for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return [indent + "   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]


class Say:
    """Progress lines for people: stdout with `-o table`, stderr otherwise (stdout is the document)."""

    def __init__(self, fmt: str):
        self.err = fmt != "table"

    def __call__(self, line: str = "") -> None:
        click.echo(line, err=self.err)
        (sys.stderr if self.err else sys.stdout).flush()
