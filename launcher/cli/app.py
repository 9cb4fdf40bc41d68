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

from launcher.cli.cluster import COMMANDS, cluster_options, mlflow_option, namespace_option, stuck_option
from launcher.cli.data import data as data_group
from launcher.cli.options import spec_options
from launcher.cli.plan import plan as plan_command
from launcher.errors import UserError
from launcher.output import output_option
from trainer.spec.errors import KubetuneError


class Launch(click.Group):
    """Turns our errors into a clean message and an exit code, unless KUBETUNE_DEBUG=1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KubetuneError as e:  # ours, from the launcher or the spec contract: one message, its exit code
            if os.environ.get("KUBETUNE_DEBUG") == "1":
                raise
            _print_error(e)
            ctx.exit(e.exit_code)


def _print_error(e: KubetuneError) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(f"[bold red]error:[/] {escape(getattr(e, 'message', None) or str(e))}")
    for problem in getattr(e, "problems", []):
        console.print(f"  [red]-[/] {escape(problem)}")


def target_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = namespace_option(f)
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

    specs = client.load_all(spec, overrides)
    if len(specs) == 1:
        click.echo(f"{spec}: ok: {client.summary(specs[0])}")
        return
    click.echo(f"{spec}: ok: a matrix of {len(specs)} jobs")
    for job in specs:
        click.echo(f"  {client.summary(job)}")


def _render(
    spec: Path, overrides: tuple[str, ...], local: bool, namespace: str | None, values_files: tuple[Path, ...],
    auto_fit: bool = False,
) -> None:
    from launcher import client

    for sub in client.prepare_all(spec, overrides, local=local, dry_run=True, auto_fit=auto_fit):
        click.echo(client.render(sub, values_files, namespace=namespace or "default"), nl=False)
        for note in sub.notes:
            click.echo(note, err=True)
        if sub.warnings:
            click.echo(f"warning: a cluster would refuse {sub.spec.name} as it is (`--local` runs it on this machine):",
                       err=True)
            for w in sub.warnings:
                click.echo(f"  - {w}", err=True)


@main.command()
@spec_options
@target_options
def render(
    spec: Path, overrides: tuple[str, ...], local: bool, namespace: str | None, values_files: tuple[Path, ...]
) -> None:
    """Print the Kubernetes manifests for SPEC (real `helm template`); same as `submit --dry-run`."""
    _render(spec, overrides, local, namespace, values_files)


@main.command()
@spec_options
@target_options
@click.option("--dry-run", is_flag=True, help="Print the manifests instead of submitting (same as `launch render`).")
@click.option("--auto-fit", is_flag=True, help="When the job would not fit its GPUs' memory, apply the first rungs of "
              "the ladder `launch plan` prints (shorter sequences, lower rank, ...) that make it fit, and say so.")
@cluster_options
@click.option("--wait", is_flag=True, help="Follow the job to its end (exit 0 succeeded, 1 failed or unable to start "
              "within --stuck-grace); --local waits unless --detach.")
@click.option("--detach", is_flag=True, help="With --local: start the job in the background and return at once; "
              "follow it with `launch status NAME`, `launch logs NAME -f`, stop it with `launch cancel NAME`.")
@stuck_option
@click.option("--resume", "resume", metavar="JOB", help="Run JOB (an earlier submission's name, e.g. "
              "support-bot-v3-x7k2p) again under its own name; it continues from its latest checkpoint in output.uri. "
              "On a cluster, for a job that failed (its Jobs are deleted first) or was cancelled.")
@mlflow_option
@output_option
def submit(
    spec: Path,
    overrides: tuple[str, ...],
    local: bool,
    namespace: str | None,
    values_files: tuple[Path, ...],
    dry_run: bool,
    auto_fit: bool,
    context: str | None,
    kubeconfig: str | None,
    wait: bool,
    detach: bool,
    stuck_grace: float | None,
    resume: str | None,
    mlflow_uri: str | None,
    output: str,
) -> None:
    """Submit SPEC as a uniquely named job to the cluster (kubeconfig context, namespace); with --local, run its
    pods as processes here."""
    cluster_only = {"--context": context, "--kubeconfig": kubeconfig, "--wait": wait and dry_run,
                    "--stuck-grace": stuck_grace,
                    "--mlflow-uri": mlflow_uri, "-o": None if output == "table" else output}
    _refuse_unused_flags(cluster_only, local, dry_run, resume, detach)
    if resume and not local:
        overrides = _resume_overrides(resume, overrides, context, kubeconfig, namespace)
    if dry_run:
        _render(spec, overrides, local, namespace, values_files, auto_fit)
        return
    from launcher import client

    subs = client.prepare_all(spec, overrides, local=local, auto_fit=auto_fit, resume=resume)
    if len(subs) > 1:
        click.echo(f"{spec}: a matrix of {len(subs)} jobs: {', '.join(s.spec.name for s in subs)}", err=True)
    for sub in subs:
        for note in sub.notes:
            click.echo(note, err=True)
    if not local:
        from launcher.cli.cluster import submit_to_cluster

        submit_to_cluster(subs, values_files, context=context, kubeconfig=kubeconfig, namespace=namespace, wait=wait,
                          output=output, mlflow_uri=mlflow_uri, stuck_grace=stuck_grace)
        return
    _run_here(subs, values_files, detach)


def _refuse_unused_flags(cluster_only: dict[str, Any], local: bool, dry_run: bool, resume: str | None,
                         detach: bool = False) -> None:
    """Flags that mean nothing for this submit: cluster flags given to --local or --dry-run, --resume to --dry-run,
    --detach to anything but --local."""
    if detach and (dry_run or not local):
        raise UserError("--detach: runs a job in the background; --dry-run submits nothing" if dry_run else
                        "--detach: for --local (a cluster job runs on its own already: submit without --wait)")
    if (local or dry_run) and (unused := [flag for flag, value in cluster_only.items() if value]):
        why = "--dry-run submits nothing" if dry_run else "--local runs the job on this machine (and always waits)"
        raise UserError(f"{', '.join(unused)}: for cluster submissions; {why}")
    if resume and dry_run:
        raise UserError("--resume: runs an earlier submission again; --dry-run submits nothing")


def _run_here(subs: list[Any], values_files: tuple[Path, ...], detach: bool = False) -> None:
    """`submit --local`: each job's pods as processes on this machine, one job after the other (each job's pods
    take this machine's cores); --detach: in a background process (launcher/local_detach.py)."""
    from launcher import local_job

    if detach:
        from launcher.cli.local import detach as run_detached

        run_detached(subs, values_files)
        return
    for sub in subs:
        res = sub.spec.resources
        click.echo(
            f"job {sub.name}: {res.nodes} pod(s) x {res.processes_per_node} process(es) on this machine; "
            f"results in {sub.spec.output.uri}; from another terminal: `launch status {sub.name}`"
        )
        local_job.run_local(sub, extra_values=values_files)
        click.echo(f"job {sub.name} succeeded")
        for line in local_job.result_lines(sub):
            click.echo(f"  {line}")


def _resume_overrides(resume: str, overrides: tuple[str, ...], context: str | None, kubeconfig: str | None,
                      namespace: str | None) -> tuple[str, ...]:
    """A cluster --resume renders chat templates with the date the job first trained with (its spec ConfigMap's
    `data.template_date`; once that is gone, the trainer refuses a different one and says so)."""
    if any(o.split("=", 1)[0].strip() == "data.template_date" for o in overrides):
        return overrides
    from launcher.backends.kube_resume import recorded_template_date
    from launcher.cli.cluster import _cluster

    day = recorded_template_date(_cluster(context, kubeconfig, namespace), resume)
    return overrides if day is None else (*overrides, f"data.template_date={day}")


for command in COMMANDS:
    main.add_command(command)
main.add_command(plan_command)
main.add_command(data_group)

if __name__ == "__main__":
    main(prog_name="launch")
