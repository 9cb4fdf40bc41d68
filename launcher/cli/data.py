"""`launch data ...`: commands about training data. `validate` reads a spec's data the way training will.

Light at import (click only): the tokenizer stack is imported by the command that needs it.
"""

from __future__ import annotations

from pathlib import Path

import click

from launcher.cli.datagen import COMMANDS as DATAGEN_COMMANDS
from launcher.cli.options import spec_options
from launcher.errors import UserError
from launcher.output import emit


@click.group()
def data() -> None:
    """Check and prepare training data."""


@data.command()
@spec_options
@click.option("--sample", type=click.IntRange(min=1), default=None, metavar="N",
              help="Read only the first N rows of each split (default: every row).")
@click.option("--tokenizer", "tokenizer", metavar="PATH", default=None,
              help="A local model folder or .gguf whose tokenizer to use instead of base_model's (for a hub id that is "
              "not in the local cache, or an s3:// base model).")
@click.option("-o", "--output", type=click.Choice(("table", "json")), default="table", show_default=True,
              help="table for people; json: one document on stdout.")
def validate(spec: Path, overrides: tuple[str, ...], sample: int | None, tokenizer: str | None, output: str) -> None:
    """Read SPEC's training (and eval) data through its format, chat template and tokenizer; report row counts, bad
    rows, token lengths, trained share and packing (preference data: pairs, or KTO's desirable / undesirable rows, and
    prompt / answer lengths). Exit 2 when a split is empty, all bad or over data.bad_rows."""
    from launcher import client, datacheck

    jobs = client.load_all(spec, overrides)
    spec_dir = spec.resolve().parent
    seen: dict[str, list[datacheck.SplitReport]] = {}
    documents, table = [], []
    for job in jobs:  # a matrix spec: each distinct data / tokenizer combination once
        key = job.data.model_dump_json() + job.base_model + str(job.model.chat_template)
        if key not in seen:
            seen[key] = datacheck.validate(job, spec_dir, sample, tokenizer)
        reports = seen[key]
        documents.append({"job": job.name, "ok": not any(r.problems for r in reports),
                          "splits": [r.as_dict() for r in reports]})
        table += ([f"job {job.name}:"] if len(jobs) > 1 else []) + [line for r in reports for line in r.lines()]
    problems = [p for reports in seen.values() for r in reports for p in r.problems]
    table.append(f"{spec}: {'not ok' if problems else 'ok'}")
    emit(documents[0] if len(documents) == 1 else documents, output, table)
    if problems:
        raise UserError(f"{spec}: the data would stop the job", problems)


for command in DATAGEN_COMMANDS:  # `chunk`, `search`, `generate`: data from documents
    data.add_command(command)
