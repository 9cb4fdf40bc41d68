"""Options several commands share: the job spec argument and its `--set` overrides, defined once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def spec_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """`SPEC` (the job spec file) and `--set KEY=VALUE` (repeatable; parsed by trainer/spec/io.py
    `parse_override`, a path read from the current directory as helm and kubectl do)."""
    f = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a spec field, e.g. --set training.learning_rate=1e-4 (repeatable).",
    )(f)
    return click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))(f)
