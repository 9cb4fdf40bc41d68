"""`launch list | status | logs | cancel` of local jobs (`launch submit --local`; records in launcher/local_jobs.py).

Which jobs a command means: `--local`, this machine's; any cluster flag (`--kubeconfig`, `--context`, `-n`, `-A`,
`--mlflow-uri`), the cluster's; neither: NAME is this machine's local job when there is one by that name (said on
stderr when a kubeconfig is there too, since a cluster job could have the same name), else the cluster's. `launch
list` with neither shows both: the cluster's submissions (when a kubeconfig is there) and this machine's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from launcher.errors import UserError
from launcher.output import emit


def local_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--local", "local", is_flag=True,
                        help="A job `launch submit --local` runs or ran on this machine (default: this machine's job "
                        "of that name when there is one and no cluster flag is given).")(f)


def cluster_configured() -> bool:
    import os

    from launcher.backends.kubeconfig import kubeconfig_paths

    return bool(kubeconfig_paths(None)[1]) or bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def is_local(name: str | None, local: bool, cluster_flags: dict[str, Any]) -> bool:
    """Whether the command is about a local job (see the top)."""
    from launcher import local_jobs

    given = [flag for flag, value in cluster_flags.items() if value]
    if local and given:
        raise UserError(f"--local and {', '.join(given)}: a local job or a cluster's, not both")
    if local or given or name is None:
        return local
    if local_jobs.load(name) is None:
        return False
    if cluster_configured():
        click.echo(f"{name}: the local job on this machine (for a cluster job of that name, give -n, --context or "
                   "--kubeconfig)", err=True)
    return True


def with_hint(name: str, run: Callable[[], None]) -> None:
    """Run a cluster command; when it fails because no cluster is configured, also say there is no local job NAME."""
    try:
        run()
    except UserError as e:
        if e.message.startswith("no kubeconfig"):
            e.message += f"; no local job {name} on this machine either (`launch list --local`)"
        raise


def list_jobs(output: str, cluster: Callable[[], tuple[dict[str, Any], list[str]]] | None) -> None:
    """Local jobs; with `cluster` (the cluster's list, as data and table), the cluster's first."""
    from launcher import local_jobs, local_view

    groups = local_view.list_groups(local_jobs.records())
    data: dict[str, Any] = {}
    table: list[str] = []
    if cluster is not None:
        try:
            data, table = cluster()
            table = [*table, ""]
        except UserError as e:
            click.echo(f"(no cluster's jobs: {e.message})", err=True)
    data["local"] = groups
    if table and not groups:  # the cluster's list, and no local job to add
        emit(data, output, table[:-1])
        return
    heading = ["local jobs (this machine):"] if table else []
    emit(data, output, [*table, *heading, *local_view.list_table(groups)])


def status(name: str, output: str) -> None:
    from launcher import local_jobs, local_view

    rec = local_jobs.find(name)
    emit(local_view.result(rec), output, local_view.status_table(rec))


def logs(name: str, follow: bool, rank: int | None, export: bool, tail: int | None) -> None:
    import time

    from launcher import local_jobs, local_view
    from launcher.local_jobs import LIVE

    rec = local_jobs.find(name)
    pod, path = local_view.log_file(rec, rank, export)
    flags = " --export" if export else f" --rank {rank}" if rank else ""
    waiting = False
    while not path.exists():
        rec = local_jobs.find(name)
        if not follow or rec.status not in LIVE:
            why = "has not started" if rec.status in LIVE else f"did not start (job {rec.status})"
            raise UserError(f"{'export' if export else f'rank {rank or 0}'} of local job {name} {why}: no log"
                            + (f"; `launch logs {name}{flags} -f` waits for it" if rec.status in LIVE else ""))
        if not waiting:
            click.echo(f"waiting for {'the export' if export else f'rank {rank or 0}'} of {name} to start ...", err=True)
            waiting = True
        time.sleep(local_view.FOLLOW_POLL)
    text, end = local_view.lines(path, tail)
    click.echo(text, nl=False)
    if not follow:
        return

    def ended() -> bool:
        now = local_jobs.find(name)
        entry = next(p for p in now.pods if p["log"] == pod["log"])
        return now.status not in LIVE or entry["phase"] in ("Succeeded", "Failed")

    for chunk in local_view.follow(path, end, ended):
        click.echo(chunk, nl=False)


def cancel(name: str, output: str) -> None:
    from launcher import local_view
    from launcher.local_cancel import cancel as stop

    rec, stopped = stop(name)
    line = (f"cancelled local job {name}: {rec.message}; `launch status {name}` shows where it stopped" if stopped
            else f"local job {name} already ended ({rec.status}): nothing to stop; `launch status {name}` shows it")
    emit({"name": name, "namespace": None, "status": rec.status, "stopped": stopped,
          "local": local_view.result(rec)["local"]}, output, [line])


def detach(subs: list[Any], values_files: Any) -> None:
    """`submit --local --detach`: start the jobs in the background and say how to follow them."""
    from launcher.local_detach import detach as start

    recs = start(subs, values_files)
    for rec in recs:
        click.echo(f"job {rec.name}: started in the background on this machine (runner pid {rec.pid}); results in "
                   f"{rec.output_uri}")
        click.echo(f"  follow it:  launch status {rec.name}   launch logs {rec.name} -f   launch cancel {rec.name}")
    if len(recs) > 1:
        click.echo("the jobs run one after the other, in this order", err=True)
