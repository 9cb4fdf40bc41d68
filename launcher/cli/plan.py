"""`launch plan SPEC`: estimated memory per GPU, the fit per GPU type and count, and how to make it fit."""

from __future__ import annotations

import json
from pathlib import Path

import click

from launcher.cli.options import spec_options


@click.command()
@spec_options
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--model-config", type=click.Path(exists=True, path_type=Path),
              help="The base model's architecture when the plan cannot find it: its config.json, a folder holding "
              "one, or its .gguf.")
@click.option("--auto-fit", is_flag=True,
              help="Also print what `launch submit --auto-fit` would change (the ladder's first rungs that fit).")
def plan(spec: Path, overrides: tuple[str, ...], output: str, model_config: Path | None, auto_fit: bool) -> None:
    """Estimate SPEC's peak memory per GPU and whether it fits each catalog GPU at 1-8 GPUs and its own layout."""
    from launcher import client
    from launcher.plan import report, source

    jobs = client.load_all(spec, overrides)  # a matrix spec: a plan per job
    results = [report.make(job, source.architecture(job, spec.resolve().parent, model_config)) for job in jobs]
    if output == "json":
        docs = [report.as_dict(r, with_auto_fit=auto_fit) for r in results]
        click.echo(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
        return
    for job, result in zip(jobs, results, strict=True):
        if len(jobs) > 1:
            click.echo(f"== {job.name} (matrix {', '.join(f'{k}={v}' for k, v in (job.matrix or {}).items())})")
        click.echo(report.render_table(result, with_auto_fit=auto_fit), nl=False)
