"""Run a rendered Indexed Job on this machine: one process per pod, started as Kubernetes would.

Pod i gets the container's command, args and env, with `JOB_COMPLETION_INDEX=i` (the Job
controller's variable) and `$(VAR)` references expanded the Kubernetes way. What only exists
in a cluster is mapped onto this machine:

- host names `<anything>.<service>` of the Job's headless Service -> 127.0.0.1;
- configMap volumes -> files in a temp folder, emptyDirs -> empty temp folders; their mount
  paths are rewritten wherever they appear in args and env values;
- this interpreter's bin folder goes first on PATH, so `accelerate` and `python` are the venv's.

Logs stream prefixed with the rank. The first pod that fails stops the others (SIGTERM to each
process group, SIGKILL after a grace period); SIGINT / SIGTERM are forwarded the same way.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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
# The chart points these at the pod's emptyDir, because a container's root fs is read-only. On this
# machine the user's own home and caches are better: credentials (~/.aws, the HF token) are found,
# a hub model is downloaded once, and DeepSpeed's compiled ops are reused across runs.
ERROR_MARK = re.compile(r"\[kubetune\] error:")  # the trainer's and the export's own diagnosis
USER_CACHES = ("HOME", "XDG_CACHE_HOME", "HF_HOME", "TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR")
VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


@dataclass
class PodProcess:
    """What the local backend starts for one pod."""

    rank: int
    argv: list[str]
    env: dict[str, str]  # the pod's own variables, already mapped onto this machine
    cwd: Path
    dirs: dict[str, Path] = field(default_factory=dict)  # volume name -> local folder


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


def _job(manifests: list[dict[str, Any]], component: str) -> dict[str, Any]:
    jobs = [m for m in manifests if m.get("kind") == "Job"]
    found = [j for j in jobs if j["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]
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
    if len(containers) != 1 or pod_spec.get("initContainers"):
        raise UserError("the local runner runs pods with exactly one container and no init containers")
    container = containers[0]
    subdomain = pod_spec.get("subdomain")  # pods reached by host name (training ranks); export has none
    service = _one(manifests, "Service", subdomain)["metadata"]["name"] if subdomain else None
    pods = []
    for rank in range(int(spec.get("completions", 1))):
        dirs = _volumes(pod_spec, manifests, workdir / f"pod-{rank}")
        mounts = {}
        tmpdir: Path | None = None
        for m in container.get("volumeMounts", []):
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
            if "value" not in var:
                raise UserError(f"env {var['name']}: only plain values run locally (valueFrom needs a cluster)")
            env[var["name"]] = rewrite(expand(str(var["value"]), env))
        if tmpdir is not None and env.get("TMPDIR", "/tmp").rstrip("/") == "/tmp":
            env["TMPDIR"] = str(tmpdir)
        env["JOB_COMPLETION_INDEX"] = str(rank)
        argv = [rewrite(expand(str(a), env)) for a in [*container.get("command", []), *container.get("args", [])]]
        if not argv:
            raise UserError("the training container has no command: the local runner cannot use the image's entrypoint")
        workdir_in_pod = container.get("workingDir")
        pods.append(
            PodProcess(rank, argv, env, Path(rewrite(workdir_in_pod)) if workdir_in_pod else cwd or Path.cwd(), dirs)
        )
    return pods


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


@dataclass
class Outcome:
    codes: list[int | None]
    first_failure: int | None  # rank of the first pod that exited non-zero
    signal: int | None  # the signal that stopped the run, if any
    stopped: list[int] = field(default_factory=list)  # ranks still running when the run was stopped
    errors: dict[int, str] = field(default_factory=dict)  # rank -> its last `[kubetune] error:` line
    label: str = "rank"  # how the pods are named in logs and messages: `rank 0`, or `export`

    def who(self, rank: int) -> str:
        return f"rank {rank}" if self.label == "rank" else self.label

    @property
    def ok(self) -> bool:
        return self.first_failure is None and self.signal is None and all(c == 0 for c in self.codes)


class LocalRun:
    """Starts the pods' processes, streams their logs, stops them all when one fails."""

    def __init__(
        self, pods: list[PodProcess], out: IO[str] | None = None, grace: float = 10.0, label: str = "rank"
    ):
        self.pods = pods
        self.label = label
        self.out = out or sys.stdout
        self.grace = grace
        self.procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._signal: int | None = None
        self.errors: dict[int, str] = {}

    def _start(self, pod: PodProcess) -> subprocess.Popen[bytes]:
        env = process_env(pod)
        exe = shutil.which(pod.argv[0], path=env["PATH"])
        if exe is None:
            raise UserError(
                f"pod {pod.rank}: `{pod.argv[0]}` is not installed here; install the trainer: pip install -e '.[trainer]'"
            )
        return subprocess.Popen(
            [exe, *pod.argv[1:]],
            env=env,
            cwd=pod.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _pump(self, rank: int, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if mark := ERROR_MARK.search(line):  # repeated at the end when the run fails
                self.errors[rank] = line[mark.end():].strip()
            with self._lock:
                prefix = f"rank {rank}" if self.label == "rank" else self.label
                self.out.write(f"[{prefix}] {line}\n")
                self.out.flush()
        stream.close()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signal = signum

    def _signal_all(self, signum: int) -> None:
        """Signal each pod's whole process group: accelerate's workers too, even if the launcher is gone."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signum)

    def _stop(self, signum: int) -> None:
        self._signal_all(signum)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
            time.sleep(0.05)
        self._signal_all(signal.SIGKILL)
        for proc in self.procs:
            proc.wait()

    def run(self) -> Outcome:
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        pumps: list[threading.Thread] = []
        first_failure: int | None = None
        stopped: list[int] = []
        try:
            for pod in self.pods:
                proc = self._start(pod)
                self.procs.append(proc)
                assert proc.stdout is not None
                pump = threading.Thread(target=self._pump, args=(pod.rank, proc.stdout), daemon=True)
                pump.start()
                pumps.append(pump)
            while True:
                codes = [p.poll() for p in self.procs]
                failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
                if failed and first_failure is None:
                    first_failure = self.pods[failed[0]].rank
                if failed or self._signal is not None:
                    stopped = [pod.rank for pod, c in zip(self.pods, codes, strict=True) if c is None]
                    self._stop(self._signal or signal.SIGTERM)
                    break
                if all(c == 0 for c in codes):
                    break
                time.sleep(0.1)
        finally:
            if any(p.poll() is None for p in self.procs):
                self._stop(signal.SIGTERM)
            for s, h in handlers.items():
                signal.signal(s, h)
        for pump in pumps:
            pump.join(timeout=5)
        codes = [p.returncode for p in self.procs]
        return Outcome(codes, first_failure, self._signal, stopped, dict(self.errors), self.label)
