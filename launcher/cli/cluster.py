"""`launch list | status | logs | cancel`: submissions in a cluster, and the cluster half of `submit`.

Cluster and namespace are found like kubectl finds them (launcher/backends/kubeconfig.py):
`--kubeconfig`, `--context`, `-n`. The same verbs for jobs run on this machine (`--local`, or found by name):
launcher/cli/local.py. Kept light: click at import, the kubernetes client only inside the commands.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from launcher.cli import local as local_cli
from launcher.cli.local import local_option
from launcher.errors import PodFailed, UserError
from launcher.output import Say, emit, output_option


def cluster_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--kubeconfig", metavar="FILE", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).")(f)
    return click.option("--context", metavar="NAME", help="kubeconfig context (default: the current context).")(f)


def namespace_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-n", "--namespace", metavar="NS",
        help="Kubernetes namespace (default: the kubeconfig context's namespace, else `default`; "
        "`render` and `submit --dry-run` use `default`).",
    )(f)


def mlflow_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--mlflow-uri", metavar="URL",
        help="Reach the job's MLflow server here instead of at the spec's tracking.mlflow_uri (e.g. a port-forward).",
    )(f)


class Duration(click.ParamType):
    """`90s`, `10m`, `1h`, `0.5s`, or plain seconds."""

    name = "duration"
    UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        unit = text[-1:] if text[-1:] in ("s", "m", "h") else ""
        try:
            seconds = float(text[: len(text) - len(unit)]) * self.UNITS[unit]
        except ValueError:
            seconds = -1.0
        if seconds <= 0:
            self.fail(f"{value!r} is not a duration: a number above 0 with s, m or h (90s, 10m, 1h)", param, ctx)
        return seconds


def stuck_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--stuck-grace", metavar="DURATION", type=Duration(), default=None,
        help="With --wait: how long a job may stay unable to start before the wait ends with exit 1 (the job stays): "
        "a ResourceQuota refusing its pods, a pod no node can take while no scale-up or preemption is under way, "
        "an image that cannot be pulled, a missing Secret. Each is printed with its fix as soon as seen. "
        "Default 10m; e.g. 90s, 30m, 1h.",
    )(f)


def _cluster(context: str | None, kubeconfig: str | None, namespace: str | None) -> Any:
    from launcher.backends.kubeconfig import connect
    from launcher.backends.kubernetes import Cluster

    return Cluster(connect(context, kubeconfig, namespace))


def submit_to_cluster(
    subs: list[Any], values_files: tuple[Path, ...], *, context: str | None, kubeconfig: str | None,
    namespace: str | None, wait: bool, output: str, mlflow_uri: str | None, stuck_grace: float | None = None,
) -> None:
    """The cluster branch of `launch submit`: plan and create every job (a matrix spec has several), then with
    --wait follow each to its end (exit 1 when one failed, or could not start within the stuck grace).
    `-o json|yaml` prints one object per job (a list for a matrix)."""
    from launcher.backends.kubeconfig import connect
    from launcher.backends.kubernetes import Cluster
    from launcher.cluster_submit import submit_cluster

    if stuck_grace is not None and not wait:
        raise UserError("--stuck-grace: for --wait (how long it waits on a job that cannot start)")
    say = Say(output)
    target = connect(context, kubeconfig, namespace)
    kube = Cluster(target)
    ns = target.namespace
    created = {}
    for sub in subs:
        created[sub.name] = submit_cluster(sub, target, values_files, say)
        say(f"submitted {sub.name} to namespace {ns}: `launch status {sub.name} -n {ns}`, "
            f"`launch logs {sub.name} -f -n {ns}`")
    results = [_follow(kube, target, sub, created[sub.name], say, wait, mlflow_uri, stuck_grace) for sub in subs]
    if output != "table":
        emit(results[0] if len(results) == 1 else results, output, [])
    failed = [r["name"] for r in results if r.get("status") == "failed"]
    stuck = [r for r in results if r.get("gave_up")]
    if len(failed) + len(stuck) == 1 and stuck:
        name = stuck[0]["name"]
        raise PodFailed(f"job {ns}/{name} cannot start ({stuck[0]['gave_up']}): stopped waiting; the job stays "
                        f"and Kubernetes keeps retrying: fix it and `launch cancel {name} -n {ns}`, or watch it with "
                        f"`launch status {name} -n {ns}`")
    if stuck:
        raise PodFailed(f"{len(failed) + len(stuck)} of {len(subs)} jobs did not succeed: "
                        + ", ".join([f"{n} failed" for n in failed] + [f"{r['name']} cannot start" for r in stuck])
                        + f"; `launch status NAME -n {ns}` shows each")
    if failed:
        raise PodFailed(f"job {', '.join(f'{ns}/{name}' for name in failed)} failed" if len(failed) == 1
                        else f"{len(failed)} of {len(subs)} jobs failed: {', '.join(failed)}")


def _follow(kube: Any, target: Any, sub: Any, created: list[Any], say: Say, wait: bool,
            mlflow_uri: str | None, stuck_grace: float | None) -> dict[str, Any]:
    """One submitted job's result: as it is now, or (--wait) once it has ended."""
    from launcher import cluster
    from launcher.status import gather

    ns = target.namespace
    tracking = cluster.Tracking.of(sub.spec, mlflow_uri)
    if not wait:
        data = cluster.result(gather(kube, sub.name), target, None, None)
        data["objects"] = [{"kind": c.kind, "name": c.name, "note": c.note} for c in created]
        return data
    snap = cluster.follow(kube, sub.name, say, tracking, cluster.STUCK_GRACE if stuck_grace is None else stuck_grace)
    if snap.gave_up:  # each blocker was said with its fix when first seen; the error line names the one
        data = cluster.result(snap, target, None, None)
        data["objects"] = [{"kind": c.kind, "name": c.name, "note": c.note} for c in created]
        return data
    found, note = tracking.progress(sub.name)
    if snap.status == "failed":
        for line in cluster.diagnosis(kube, snap):
            say(line)
    if found:
        say(f"MLflow run {found.run_id} ({found.tracking_uri}): {cluster.progress_line(found)}")
        if found.registered_model:
            say(f"registered: {found.registered_model}")
    elif note:
        say(f"MLflow: {note}")
    data = cluster.result(snap, target, found, note)
    data["objects"] = [{"kind": c.kind, "name": c.name, "note": c.note} for c in created]
    if snap.status != "failed":
        say(f"job {ns}/{sub.name} succeeded")
    return data


@click.command("list")
@cluster_options
@namespace_option
@click.option("-A", "--all-namespaces", is_flag=True, help="Submissions in every namespace.")
@click.option("--exports", is_flag=True, help="Also the shared base and adapter GGUFs of each exported cluster "
              "submission, from the model versions registered from its MLflow run (one query each).")
@mlflow_option
@local_option
@output_option
def list_jobs(context: str | None, kubeconfig: str | None, namespace: str | None, all_namespaces: bool,
              exports: bool, mlflow_uri: str | None, local: bool, output: str) -> None:
    """Kubetune submissions, grouped by spec (or matrix), newest first: the cluster's, and (without cluster flags)
    this machine's local jobs; --local: only those."""
    from launcher import views
    from launcher.exports import list_lines

    def cluster() -> tuple[dict[str, Any], list[str]]:
        kube = _cluster(context, kubeconfig, namespace)
        groups = views.groups(kube, all_namespaces)
        table = views.list_table(groups, all_namespaces, kube.namespace)
        if not exports:
            return {"groups": groups}, table
        exported, notes = views.registered_exports(kube, groups, mlflow_uri)
        for s in (s for g in groups for s in g["submissions"]):
            s["exported"] = exported.get(s["name"])
        return {"groups": groups}, [*table, *list_lines(exported), *notes]

    flags = {"--context": context, "--kubeconfig": kubeconfig, "-n": namespace, "-A": all_namespaces}
    if local_cli.is_local(None, local, flags) or not any(flags.values()):
        local_cli.list_jobs(output, None if local or not local_cli.cluster_configured() else cluster)
        return
    data, table = cluster()
    emit(data, output, table)


@click.command()
@click.argument("name")
@cluster_options
@namespace_option
@mlflow_option
@local_option
@output_option
def status(name: str, context: str | None, kubeconfig: str | None, namespace: str | None, mlflow_uri: str | None,
           local: bool, output: str) -> None:
    """Where submission NAME is: per-rank pods (phase, restarts, node, last termination), export, progress."""
    flags = {"--context": context, "--kubeconfig": kubeconfig, "-n": namespace, "--mlflow-uri": mlflow_uri}
    if local_cli.is_local(name, local, flags):
        local_cli.status(name, output)
        return
    local_cli.with_hint(name, lambda: _status(name, context, kubeconfig, namespace, mlflow_uri, output))


def _status(name: str, context: str | None, kubeconfig: str | None, namespace: str | None, mlflow_uri: str | None,
            output: str) -> None:
    from launcher import cluster, views
    from launcher.status import gather

    kube = _cluster(context, kubeconfig, namespace)
    snap = gather(kube, name)
    try:
        tracking = cluster.Tracking.of(cluster.spec_of(kube, name), mlflow_uri)
        found, note = tracking.progress(name)
    except UserError as e:
        found, note = None, e.message
    data = cluster.result(snap, kube.target, found, note)
    emit(data, output, views.status_table(snap, found, note))


@click.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the container ends (waits for it to start).")
@click.option("--rank", type=click.IntRange(min=0), default=None, help="The training pod of this rank (default 0).")
@click.option("--export", "export", is_flag=True, help="The export Job's pod instead of a training rank.")
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines.")
@cluster_options
@namespace_option
@local_option
def logs(name: str, follow: bool, rank: int | None, export: bool, tail: int | None, context: str | None,
         kubeconfig: str | None, namespace: str | None, local: bool) -> None:
    """The log of submission NAME's rank-0 pod (or --rank N, or --export)."""
    if export and rank is not None:
        raise UserError("--rank and --export: pick one (the export Job has a single pod)")
    if local_cli.is_local(name, local, {"--context": context, "--kubeconfig": kubeconfig, "-n": namespace}):
        local_cli.logs(name, follow, rank, export, tail)
        return
    local_cli.with_hint(name, lambda: _logs(name, follow, rank, export, tail, context, kubeconfig, namespace))


def _logs(name: str, follow: bool, rank: int | None, export: bool, tail: int | None, context: str | None,
          kubeconfig: str | None, namespace: str | None) -> None:
    from launcher.cluster import poll_seconds
    from launcher.status import main_container, pod, pod_for

    kube = _cluster(context, kubeconfig, namespace)
    obj = pod_for(kube, name, "export" if export else "training", rank or 0)
    waiting = False
    while obj["status"].get("phase") == "Pending":
        why = pod(obj).reason or "Pending"
        if not follow:
            flags = " --export" if export else f" --rank {rank}" if rank else ""
            raise UserError(f"pod {kube.namespace}/{obj['metadata']['name']} has not started ({why}): no log yet; "
                            f"`launch logs {name}{flags} -f` waits for it")
        if not waiting:
            click.echo(f"waiting for pod {obj['metadata']['name']} to start ({why}) ...", err=True)
            waiting = True
        time.sleep(poll_seconds())
        obj = kube.get("Pod", obj["metadata"]["name"]) or obj
    for chunk in kube.log(obj["metadata"]["name"], main_container(obj), follow=follow, tail=tail):
        click.echo(chunk, nl=False)


@click.command()
@click.argument("name")
@cluster_options
@namespace_option
@local_option
@output_option
def cancel(name: str, context: str | None, kubeconfig: str | None, namespace: str | None, local: bool,
           output: str) -> None:
    """Delete submission NAME: its Job(s), and with them their pods, ConfigMap, Service and Secret. A local job:
    stop its processes (SIGTERM, SIGKILL after a grace); its record stays, cancelled."""
    if local_cli.is_local(name, local, {"--context": context, "--kubeconfig": kubeconfig, "-n": namespace}):
        local_cli.cancel(name, output)
        return
    local_cli.with_hint(name, lambda: _cancel(name, context, kubeconfig, namespace, output))


def _cancel(name: str, context: str | None, kubeconfig: str | None, namespace: str | None, output: str) -> None:
    from launcher.status import workload

    kube = _cluster(context, kubeconfig, namespace)
    owner = workload(kube, name)
    deleted = []
    if kube.delete("Job", f"{name}-export", propagation="Foreground"):
        deleted.append({"kind": "Job", "name": f"{name}-export"})
    if kube.delete(owner["kind"], name, propagation="Foreground"):
        deleted.append({"kind": owner["kind"], "name": name})
    what = ", ".join(f"{d['kind']} {kube.namespace}/{d['name']}" for d in deleted)
    emit({"name": name, "namespace": kube.namespace, "status": "cancelled", "deleted": deleted}, output,
         [f"cancelled {name}: deleted {what}, with their pods and the objects they own"])


COMMANDS = (list_jobs, status, logs, cancel)
