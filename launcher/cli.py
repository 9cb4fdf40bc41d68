"""`launch`: validate a job spec, render the chart for it, submit it (locally for now).

Kept light so `launch --help` is instant: click only at import; everything else is imported by
the command that needs it. User errors exit 2, a failed pod 1; `KUBETUNE_DEBUG=1` shows tracebacks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from launcher.errors import PodFailed, UserError


class Launch(click.Group):
    """Turns our errors into a clean message and an exit code, unless KUBETUNE_DEBUG=1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (UserError, PodFailed) as e:
            if os.environ.get("KUBETUNE_DEBUG") == "1":
                raise
            _print_error(e)
            ctx.exit(e.exit_code)


def _print_error(e: UserError | PodFailed) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(f"[bold red]error:[/] {escape(e.message)}")
    for problem in getattr(e, "problems", []):
        console.print(f"  [red]-[/] {escape(problem)}")


def spec_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a spec field, e.g. --set training.learning_rate=1e-4 (repeatable).",
    )(f)
    return click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))(f)


def target_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("-n", "--namespace", default="default", show_default=True, help="Kubernetes namespace.")(f)
    f = click.option(
        "-f",
        "--values",
        "values_files",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A chart values file applied on top of what the spec derives (a platform team's image, tolerations, "
        "...); repeatable, later files win.",
    )(f)
    return click.option(
        "--local",
        is_flag=True,
        help="For this machine: local paths in the spec are allowed (made absolute) and output defaults to runs/<name>.",
    )(f)


@click.group(cls=Launch, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kubetune")
def main() -> None:
    """Fine-tune an open LLM with LoRA from one job spec, on Kubernetes or on this machine."""


@main.command()
@spec_options
def validate(spec: Path, overrides: tuple[str, ...]) -> None:
    """Check SPEC and print a one-line summary; lists every problem (exit 2) otherwise."""
    from launcher import client

    click.echo(f"{spec}: ok: {client.summary(client.load(spec, overrides))}")


def _render(
    spec: Path, overrides: tuple[str, ...], local: bool, namespace: str, values_files: tuple[Path, ...]
) -> None:
    from launcher import client

    sub = client.prepare(spec, overrides, local=local, dry_run=True)
    click.echo(client.render(sub, values_files, namespace=namespace), nl=False)
    if sub.warnings:
        click.echo(f"warning: a cluster would refuse {spec} as it is (`--local` runs it on this machine):", err=True)
        for w in sub.warnings:
            click.echo(f"  - {w}", err=True)


@main.command()
@spec_options
@target_options
def render(
    spec: Path, overrides: tuple[str, ...], local: bool, namespace: str, values_files: tuple[Path, ...]
) -> None:
    """Print the Kubernetes manifests for SPEC (real `helm template`); same as `submit --dry-run`."""
    _render(spec, overrides, local, namespace, values_files)


@main.command()
@spec_options
@target_options
@click.option("--dry-run", is_flag=True, help="Print the manifests instead of submitting (same as `launch render`).")
def submit(
    spec: Path, overrides: tuple[str, ...], local: bool, namespace: str, values_files: tuple[Path, ...], dry_run: bool
) -> None:
    """Submit SPEC as a uniquely named job; with --local, run its pods as processes here."""
    if dry_run:
        _render(spec, overrides, local, namespace, values_files)
        return
    from launcher import client

    sub = client.prepare(spec, overrides, local=local)
    if not local:
        raise UserError(
            f"{spec}: submitting to a cluster is not available yet; `launch render {spec}` prints the "
            "manifests, `launch submit --local` runs the job on this machine"
        )
    res = sub.spec.resources
    click.echo(
        f"job {sub.name}: {res.nodes} pod(s) x {res.processes_per_node} process(es) on this machine; "
        f"results in {sub.spec.output.uri}"
    )
    client.run_local(sub, extra_values=values_files)
    click.echo(f"job {sub.name} succeeded")
    for line in client.result_lines(sub):
        click.echo(f"  {line}")


if __name__ == "__main__":
    main(prog_name="launch")
