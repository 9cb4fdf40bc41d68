"""Run a rendered Indexed Job on this machine: one process per pod, started as Kubernetes would.

Pod i gets the container's command, args and env, with `JOB_COMPLETION_INDEX=i` (the Job
controller's variable) and `$(VAR)` references expanded the Kubernetes way. What only exists
in a cluster is mapped onto this machine:

- host names `<anything>.<service>` of the Job's headless Service -> 127.0.0.1;
- configMap volumes -> files in a temp folder, emptyDirs -> empty temp folders; their mount
  paths are rewritten wherever they appear in args and env values;
- this interpreter's bin folder goes first on PATH, so `accelerate` and `python` are the venv's;
- the ServiceAccount token (a projected volume) and `KUBETUNE_EXPORT_JOB`, with which rank 0
  starts the suspended export Job on a cluster, are left out: there is no API server here, and
  the runner itself starts the export once training has succeeded (launcher/local_job.py run_local).

Init containers (the rendezvous `preflight`) run before the pods' containers: the i-th init
container of every pod at once, since they rendezvous with each other, and a pod's container only
once every pod's init containers succeeded (on a cluster each pod goes on as soon as its own are
done; for a rendezvous that is the same moment). A failing init container fails the run.

`launcher.backends.local_run.LocalRun` starts and watches the processes planned here.
"""

from __future__ import annotations

import base64
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import UserError

LOOPBACK = "127.0.0.1"
# A parent's distributed settings must not leak into the pods (e.g. when launch runs under torchrun).
INHERITED_BLOCKLIST = {
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
}
INHERITED_PREFIXES = ("ACCELERATE_", "TORCHELASTIC_")
# No API server here: the trainer starts no export Job and annotates no Job with its progress (the local runner
# gives the pods KUBETUNE_PROGRESS_FILE instead: launcher/local_jobs.py).
CLUSTER_ONLY_ENV = ("KUBETUNE_EXPORT_JOB", "KUBETUNE_EXPORT_QUEUE", "KUBETUNE_PROGRESS_JOB")
# The chart points these at the pod's emptyDir, because a container's root fs is read-only. On this
# machine the user's own home and caches are better: credentials (~/.aws, the HF token) are found,
# a hub model is downloaded once, and DeepSpeed's compiled ops are reused across runs.
ERROR_MARK = re.compile(r"\[kubetune\] error:")  # the trainer's and the export's own diagnosis
USER_CACHES = ("HOME", "XDG_CACHE_HOME", "HF_HOME", "TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR")
VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


# Seconds the preflight waits for the other ranks in a local run (chart value preflight.timeoutSeconds):
# local pods start together, so a longer wait would only delay the diagnosis of a missing rank.
PREFLIGHT_TIMEOUT = 30


@dataclass
class PodProcess:
    """What the local backend starts for one pod: its container, after its init containers."""

    rank: int
    argv: list[str]
    env: dict[str, str]  # the pod's own variables, already mapped onto this machine
    cwd: Path
    dirs: dict[str, Path] = field(default_factory=dict)  # volume name -> local folder
    init: list[PodProcess] = field(default_factory=list)  # the pod's init containers, in order
    container: str = ""  # an init container's name (the pod's container has none: it is the pod)


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`, others stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return VAR_REF.sub(sub, value)


def _one(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m for m in manifests if m.get("kind") == kind and (name is None or m["metadata"]["name"] == name)]
    if len(found) != 1:
        what = f"{kind} {name}" if name else kind
        raise UserError(f"the rendered chart has {len(found)} {what} object(s); the local runner needs exactly one")
    return found[0]


class PathMap:
    """Rewrites cluster host names and mount paths inside strings, in one pass."""

    def __init__(self, service: str | None, mounts: dict[str, Path]):
        self.host = re.compile(
            rf"(?<![\w.-])[a-z0-9]([-a-z0-9]*[a-z0-9])?\.{re.escape(service)}(\.[a-z0-9.-]*[a-z0-9])?(?![\w.-])"
        ) if service else None
        self.local = {mp.rstrip("/"): str(folder) for mp, folder in mounts.items()}
        alternatives = "|".join(re.escape(mp) for mp in sorted(self.local, key=len, reverse=True))
        self.mount = re.compile(rf"(?<![^\s=:,])({alternatives})(?=$|[/\s:,])") if self.local else None

    def __call__(self, value: str) -> str:
        if self.host is not None:
            value = self.host.sub(LOOPBACK, value)
        if self.mount is not None:
            value = self.mount.sub(lambda m: self.local[m.group(1)], value)
        return value


def _volumes(pod_spec: dict[str, Any], manifests: list[dict[str, Any]], root: Path) -> dict[str, Path]:
    """Materialise the pod's volumes under `root`; returns volume name -> folder."""
    dirs: dict[str, Path] = {}
    for vol in pod_spec.get("volumes", []):
        name = vol["name"]
        if _api_token(vol):  # the Kubernetes API's token: nothing to talk to here (its mount is left out)
            continue
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        if "configMap" in vol:
            cm = _one(manifests, "ConfigMap", vol["configMap"]["name"])
            data: dict[str, str] = cm.get("data", {})
            items = vol["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                target = folder / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[item["key"]], encoding="utf-8")
        elif "emptyDir" not in vol:
            kinds = sorted(k for k in vol if k != "name")
            raise UserError(
                f"volume {name!r} is {kinds}: the local runner supports configMap and emptyDir volumes only"
            )
        dirs[name] = folder
    return dirs


def _api_token(vol: dict[str, Any]) -> bool:
    """A projected volume with a ServiceAccount token (the chart's `kube-api-token`)."""
    return any("serviceAccountToken" in source for source in (vol.get("projected") or {}).get("sources") or [])


def _secret_value(var: dict[str, Any], manifests: Sequence[dict[str, Any]]) -> str | None:
    """An env entry's `valueFrom.secretKeyRef`, read from a Secret the chart rendered; None for a missing
    optional key. A Secret that only exists in a cluster (an `existingSecret`) cannot be read here."""
    name = var["name"]
    ref = (var.get("valueFrom") or {}).get("secretKeyRef")
    if not ref:
        kinds = ", ".join(sorted(var.get("valueFrom") or {})) or "an entry without a value"
        raise UserError(
            f"env {name}: {kinds} needs a cluster; the local runner runs plain values and secretKeyRefs "
            "to a Secret the chart renders"
        )
    found = [m for m in manifests if m.get("kind") == "Secret" and m["metadata"]["name"] == ref["name"]]
    if not found:
        raise UserError(
            f"env {name}: Secret {ref['name']!r} is not rendered by the chart (an existingSecret lives in a cluster), "
            "so the local runner cannot read it; for --local, leave s3.existingSecret / mlflow.existingSecret empty "
            "and give the credentials as chart values (s3.accessKeyId, mlflow.token, ...) or in your environment"
        )
    key, secret = ref["key"], found[0]
    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    if key in (secret.get("data") or {}):
        return base64.b64decode(secret["data"][key]).decode("utf-8")
    if ref.get("optional"):
        return None
    raise UserError(f"env {name}: Secret {ref['name']!r} has no key {key!r} (and the reference is not optional)")


def _job(manifests: list[dict[str, Any]], component: str) -> dict[str, Any]:
    jobs = [m for m in manifests if m.get("kind") == "Job"]
    found = [j for j in jobs if j["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]
    if not found and any(m.get("kind") == "JobSet" for m in manifests):
        raise UserError("the chart rendered a JobSet (values jobset.enabled): only a cluster with the JobSet "
                        "controller runs it; the local runner runs plain Jobs (drop jobset.enabled for --local)")
    if len(found) != 1:
        raise UserError(
            f"the rendered chart has {len(found)} Job(s) with app.kubernetes.io/component={component} "
            f"(of {len(jobs)} Job(s)); the local runner needs exactly one"
        )
    return found[0]


def plan(
    manifests: list[dict[str, Any]], workdir: Path, cwd: Path | None = None, component: str = "training"
) -> list[PodProcess]:
    """One PodProcess per pod of the rendered Indexed Job of `component` (training or export);
    volumes are created under `workdir`."""
    job = _job(manifests, component)
    spec = job["spec"]
    if spec.get("completionMode") != "Indexed":
        raise UserError(
            f"Job {job['metadata']['name']} is not an Indexed Job: the local runner needs completionMode Indexed"
        )
    pod_spec = spec["template"]["spec"]
    containers = pod_spec["containers"]
    if len(containers) != 1:
        raise UserError("the local runner runs pods with exactly one container (init containers aside)")
    for init in pod_spec.get("initContainers", []):
        if init.get("restartPolicy") == "Always":
            raise UserError(f"init container {init['name']!r} is a sidecar (restartPolicy: Always): not run locally")
    subdomain = pod_spec.get("subdomain")  # pods reached by host name (training ranks); export has none
    service = _one(manifests, "Service", subdomain)["metadata"]["name"] if subdomain else None
    pods = []
    for rank in range(int(spec.get("completions", 1))):
        dirs = _volumes(pod_spec, manifests, workdir / f"pod-{rank}")
        pod = _process(containers[0], rank, dirs, service, cwd, manifests)
        for c in pod_spec.get("initContainers", []):
            init = _process(c, rank, dirs, service, cwd, manifests)
            init.container = c["name"]
            pod.init.append(init)
        pods.append(pod)
    return pods


def _process(
    container: dict[str, Any],
    rank: int,
    dirs: dict[str, Path],
    service: str | None,
    cwd: Path | None,
    manifests: Sequence[dict[str, Any]] = (),
) -> PodProcess:
    """One container of pod `rank` as a process: its mounts mapped to the pod's folders, its env and args expanded."""
    mounts = {}
    tmpdir: Path | None = None
    for m in container.get("volumeMounts", []):
        if m["name"] not in dirs:  # a volume only a cluster has (the API token): see _volumes
            continue
        if m.get("subPath"):
            raise UserError(f"volumeMount {m['mountPath']}: subPath is not supported by the local runner")
        if m["mountPath"].rstrip("/") == "/tmp":
            # Paths under this machine's /tmp are real here (pytest folders, the user's files):
            # never rewrite them. The pod still gets a /tmp of its own, through TMPDIR.
            tmpdir = dirs[m["name"]]
            continue
        mounts[m["mountPath"]] = dirs[m["name"]]
    rewrite = PathMap(service, mounts)
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if var["name"] in CLUSTER_ONLY_ENV:
            continue
        if "value" in var:
            env[var["name"]] = rewrite(expand(str(var["value"]), env))
        elif (value := _secret_value(var, manifests)) is not None:
            env[var["name"]] = value
    if tmpdir is not None and env.get("TMPDIR", "/tmp").rstrip("/") == "/tmp":
        env["TMPDIR"] = str(tmpdir)
    env["JOB_COMPLETION_INDEX"] = str(rank)
    argv = [rewrite(expand(str(a), env)) for a in [*container.get("command", []), *container.get("args", [])]]
    if not argv:
        raise UserError(
            f"container {container['name']!r} has no command: the local runner cannot use the image's entrypoint"
        )
    workdir_in_pod = container.get("workingDir")
    return PodProcess(rank, argv, env, Path(rewrite(workdir_in_pod)) if workdir_in_pod else cwd or Path.cwd(), dirs)


def process_env(pod: PodProcess, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """This machine's environment (minus distributed settings) + the venv's bin first on PATH + the pod's env,
    except for the home and cache folders, which stay the user's (USER_CACHES)."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if k not in INHERITED_BLOCKLIST and not k.startswith(INHERITED_PREFIXES)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    env.update(pod.env)
    for var in USER_CACHES:  # the user's value, or the library's default under the user's home
        if var in base:
            env[var] = base[var]
        else:
            env.pop(var, None)
    return env

