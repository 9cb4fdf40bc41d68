"""Local jobs' records (`launch submit --local`): one folder per submission, so `launch list | status | logs | cancel`
find a local job from any terminal while it runs and after it ended.

The folder is `$KUBETUNE_HOME/local/<name>/` (KUBETUNE_HOME defaults to `~/.kubetune`):

    job.json                  the record: spec, runner pid, times, status and exit code, each pod's phase and exit
                              code; rewritten atomically (a temporary file, then a rename) as the run moves on
    manifests.yaml            what `helm template` rendered for the submission: what the runner runs
    runner.log                everything the runner showed, all pods prefixed (the output of a `--detach` run)
    logs/rank-N.log           pod N's own lines, unprefixed; logs/rank-N-preflight.log its init container's;
                              logs/export.log the export pod's
    progress.json             the trainer's live progress (the pods' KUBETUNE_PROGRESS_FILE, trainer/tracking/
                              progress.py); export-progress.json the export's
    cancel                    written by `launch cancel` before it signals the runner

Status words: queued (a later job of a detached matrix), running, succeeded, failed, cancelled. A record still
`queued` or `running` whose runner process is gone reads as failed, "lost" (`current`). Running them is
launcher/local_job.py; what `launch` shows of them, launcher/local_view.py; stopping one, launcher/local_cancel.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from launcher.errors import UserError

RECORD, MANIFESTS, RUNNER_LOG, CANCEL = "job.json", "manifests.yaml", "runner.log", "cancel"
PROGRESS = {"training": "progress.json", "export": "export-progress.json"}
LIVE = ("queued", "running")


def root() -> Path:
    """Where local jobs' folders are: `$KUBETUNE_HOME/local`, by default `~/.kubetune/local`."""
    home = os.environ.get("KUBETUNE_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".kubetune") / "local"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stat(pid: int) -> list[str] | None:
    """Linux's /proc/PID/stat from its third field on (state, ...); None elsewhere or when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()  # after the command's parenthesis
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (field 22); None where unknown. With the pid, it
    tells the runner from a later process that reuses its pid."""
    stat = _stat(pid)
    return stat[19] if stat else None


def alive(pid: int | None, started: str | None = None) -> bool:
    """Whether process `pid` (started at `started`, when known) still runs: not gone, not a zombie."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: ours would not be
    stat = _stat(pid)
    return stat is None or stat[0] != "Z" and (started is None or stat[19] == started)


@dataclass
class Record:
    name: str
    spec_name: str
    spec_path: str
    output_uri: str
    nodes: int
    export: bool  # the spec has an export section: an export pod runs after training
    folder: Path = field(default=Path(), compare=False)
    host: str = ""
    pid: int | None = None  # the runner: `launch submit --local` itself, or the background runner of --detach
    pid_start: str | None = None
    detached: bool = False
    created: str = ""
    started: str | None = None
    ended: str | None = None
    status: str = "queued"
    phase: str = "training"  # training | export: the one under way, or the last one run
    exit_code: int | None = None  # what `launch submit --local` exits (would exit) with: 0, 1, 2, 75, 130
    message: str | None = None  # why it failed or stopped, in a line or two
    pods: list[dict[str, Any]] = field(default_factory=list)  # {rank, component, phase, reason, pid, exit_code, log}

    def path(self, name: str) -> Path:
        return self.folder / name

    def progress_file(self, phase: str) -> Path:
        return self.folder / PROGRESS[phase]

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "folder"}
        tmp = self.folder / f".{RECORD}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp, self.folder / RECORD)


def load(name: str) -> Record | None:
    """The record of local job `name` as written; None when there is none (`current` says what it is now)."""
    folder = root() / name
    try:
        raw = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    known = {f.name for f in fields(Record)}
    if not isinstance(raw, dict) or "name" not in raw:
        return None
    return Record(**{k: v for k, v in raw.items() if k in known}, folder=folder)


def current(rec: Record) -> Record:
    """The record as it is now: a live one whose runner is gone reads as cancelled (when `launch cancel` asked for
    it) or failed, lost; and so do its pods that had not ended."""
    if rec.status not in LIVE or alive(rec.pid, rec.pid_start) or not rec.pid and not rec.started:
        return rec
    cancelled = rec.path(CANCEL).exists()
    status = "cancelled" if cancelled else "failed"
    why = ("stopped by `launch cancel`" if cancelled else
           f"lost: its runner (pid {rec.pid} on {rec.host or 'this machine'}) is gone without an outcome "
           "(killed, or the machine restarted)")
    pods = [p | {"phase": "Failed", "reason": "lost with the runner"} if p["phase"] in ("Pending", "Running") else p
            for p in rec.pods]
    return replace(rec, status=status, message=rec.message or why, pods=pods)


def records() -> list[Record]:
    """Every local job's record as it is now, newest first."""
    if not root().is_dir():
        return []
    found = [r for d in root().iterdir() if d.is_dir() and (r := load(d.name)) is not None]
    return sorted((current(r) for r in found), key=lambda r: r.created, reverse=True)


def find(name: str) -> Record:
    """Local job `name` as it is now; a UserError naming what there is otherwise."""
    rec = load(name)
    if rec is None:
        raise UserError(f"no local job {name} on this machine (records in {root()}): `launch list --local` shows "
                        "them; for a cluster job, give -n/--context/--kubeconfig")
    return current(rec)


def create(sub: Any, manifests: str, detached: bool = False) -> Record:
    """A new record (status queued) for submission `sub`, with its rendered manifests. A `--resume` runs under the
    earlier submission's name: its old record is replaced, unless that run is still going."""
    folder = root() / sub.name
    old = load(sub.name)
    if old is not None and current(old).status in LIVE:
        raise UserError(f"local job {sub.name} is still {old.status} here (runner pid {old.pid}): wait for it, or "
                        f"`launch cancel {sub.name}` first")
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "logs").mkdir(parents=True)
    (folder / MANIFESTS).write_text(manifests, encoding="utf-8")
    spec = sub.spec
    rec = Record(sub.name, spec.name, str(sub.spec_path), spec.output.uri or "", spec.resources.nodes,
                 spec.export is not None, folder=folder, host=socket.gethostname(), detached=detached, created=now())
    rec.pods = [{"rank": r, "component": "training", "phase": "Pending", "reason": "", "pid": None,
                 "exit_code": None, "log": f"logs/rank-{r}.log"} for r in range(rec.nodes)]
    if rec.export:
        rec.pods.append({"rank": None, "component": "export", "phase": "Pending", "reason": "waiting for training",
                         "pid": None, "exit_code": None, "log": "logs/export.log"})
    rec.save()
    return rec


def runner(rec: Record, pid: int) -> None:
    """Records `pid` as the process that runs (or will run) the job."""
    rec.pid, rec.pid_start = pid, process_start(pid)
    rec.save()


class Journal:
    """Keeps a running job's record (the local runner's Journal, launcher/backends/local_run.py): pods' phases,
    pids and exit codes, each pod's log file, the phase under way and the outcome."""

    def __init__(self, rec: Record):
        self.rec = rec
        self._lock = threading.Lock()

    def _pod(self, pod: Any, label: str) -> dict[str, Any]:
        component = "training" if label == "rank" else "export"
        return next(p for p in self.rec.pods if p["component"] == component
                    and (component == "export" or p["rank"] == pod.rank))

    @property
    def cancelled(self) -> bool:
        """`launch cancel` asked for it."""
        return self.rec.path(CANCEL).exists()

    def begin(self, phase: str) -> None:
        with self._lock:
            self.rec.status, self.rec.phase = "running", phase
            self.rec.started = self.rec.started or now()
            if phase == "export":
                next(p for p in self.rec.pods if p["component"] == "export")["reason"] = ""
            self.rec.save()

    def log(self, pod: Any, label: str) -> IO[str] | None:
        name = self._pod(pod, label)["log"]
        if pod.container:
            name = name.replace(".log", f"-{pod.container}.log")
        return self.rec.path(name).open("a", encoding="utf-8")

    def started(self, pod: Any, label: str, pid: int) -> None:
        with self._lock:
            entry = self._pod(pod, label)
            entry["pid"] = pid
            entry["phase"], entry["reason"] = ("Pending", f"init container {pod.container}: running") \
                if pod.container else ("Running", "")
            self.rec.save()

    def ended(self, pod: Any, label: str, code: int) -> None:
        with self._lock:
            entry = self._pod(pod, label)
            what = "Completed" if code == 0 else "Error" if code > 0 else "Killed"
            if pod.container:  # an init container: the pod goes on (Pending) when it succeeded
                entry["phase"] = "Pending" if code == 0 else "Failed"
                entry["reason"] = f"init container {pod.container}: {what} (exit {code})"
            else:
                entry["phase"], entry["reason"] = "Succeeded" if code == 0 else "Failed", f"{what} (exit {code})"
            entry["exit_code"] = code
            self.rec.save()

    def finish(self, status: str, exit_code: int, message: str | None = None) -> None:
        with self._lock:
            if status != "succeeded" and self.cancelled:
                status, message = "cancelled", "stopped by `launch cancel`" + (f" ({message})" if message else "")
            self.rec.status, self.rec.exit_code, self.rec.message, self.rec.ended = status, exit_code, message, now()
            for p in self.rec.pods:
                if p["phase"] in ("Pending", "Running"):
                    p["phase"] = "Failed" if p["pid"] else "Pending"
                    p["reason"] = "stopped" if p["pid"] else "not started"
            self.rec.save()
