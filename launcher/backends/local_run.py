r"""Running a planned local Job: the pods' processes (init containers first), their logs, and stopping them.

Logs stream prefixed with the rank (`[rank 1]`, `[rank 1 preflight]` for an init container), split on
both line ends and carriage returns (launcher/backends/local_lines.py: a progress bar is one updating
line on a terminal, a few plain lines elsewhere). The first process that fails stops the others
(SIGTERM to each process group, SIGKILL after a grace period); SIGINT / SIGTERM are forwarded the same
way. `launcher.backends.local.plan` makes the pods. A `Journal` (launcher/local_jobs.py) is told when
each process starts and ends, and gets each pod's lines in a log file of its own.

A simulated preemption (`preempt`, or `KUBETUNE_LOCAL_SIGTERM=RANK:REGEX` through `launch submit
--local`): when a log line of pod RANK's container matches REGEX, that pod's first process gets
SIGTERM, as kubelet sends it to a container's PID 1; the trainer then checkpoints and exits 75.
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
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from launcher.backends.local import ERROR_MARK, PodProcess, process_env
from launcher.backends.local_lines import CLEAR, PodLines, Screen
from launcher.errors import UserError

__all__ = ["CLEAR", "Journal", "LocalRun", "Outcome", "PodLines", "Screen"]


class Journal(Protocol):
    """Told what the runner does (launcher/local_jobs.py keeps a local job's record with it). `label` is `rank` or
    `export`; `pod.container` names an init container, empty for the pod's own."""

    def log(self, pod: PodProcess, label: str) -> IO[str] | None:
        """A file for the pod's lines (unprefixed, progress bars as a few plain lines); None: none."""

    def started(self, pod: PodProcess, label: str, pid: int) -> None: ...

    def ended(self, pod: PodProcess, label: str, code: int) -> None: ...


@dataclass
class Outcome:
    codes: list[int | None]
    first_failure: int | None  # rank of the first pod that exited non-zero
    signal: int | None  # the signal that stopped the run, if any
    stopped: list[int] = field(default_factory=list)  # ranks still running when the run was stopped
    errors: dict[int, str] = field(default_factory=dict)  # rank -> its last `[kubetune] error:` line
    label: str = "rank"  # how the pods are named in logs and messages: `rank 0`, or `export`
    container: str = ""  # the init container the outcome is about; empty: the pods' own container

    def who(self, rank: int) -> str:
        pod = f"rank {rank}" if self.label == "rank" else self.label
        return f"{pod} (init container {self.container})" if self.container else pod

    @property
    def ok(self) -> bool:
        return self.first_failure is None and self.signal is None and all(c == 0 for c in self.codes)


class LocalRun:
    """Starts the pods' processes (init containers first), streams their logs, stops them all when one fails."""

    def __init__(
        self, pods: list[PodProcess], out: IO[str] | None = None, grace: float = 10.0, label: str = "rank",
        preempt: tuple[int, re.Pattern[str]] | None = None, journal: Journal | None = None,
    ):
        self.pods = pods
        self.label = label
        self.out = out or sys.stdout
        self.screen = Screen(self.out)
        self.grace = grace
        self.preempt = preempt  # (rank, pattern): SIGTERM to that pod once its log matches (see the docstring)
        self.preempted: int | None = None  # the rank that got it
        self.journal = journal
        self.procs: list[subprocess.Popen[bytes]] = []  # those of the current phase
        self._by_rank: dict[int, subprocess.Popen[bytes]] = {}
        self._signal: int | None = None
        self.errors: dict[int, str] = {}
        self._reported: set[int] = set()  # processes whose end the journal was told of

    def _start(self, pod: PodProcess) -> subprocess.Popen[bytes]:
        env = process_env(pod)
        if self.screen.tty:  # the trainer slows tqdm down without a terminal (trainer/quiet.py); here is one
            env.setdefault("TQDM_MININTERVAL", "0.5")
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

    def _pump(self, pod: PodProcess, stream: IO[bytes]) -> None:
        prefix = f"rank {pod.rank}" if self.label == "rank" else self.label
        lines = PodLines(f"{prefix} {pod.container}" if pod.container else prefix, self.screen,
                         lambda line: self._seen(pod, line))
        file = self.journal.log(pod, self.label) if self.journal else None
        copy = PodLines("", Screen(file)) if file else None  # the pod's own log: no prefix, like `kubectl logs`
        try:
            while chunk := os.read(stream.fileno(), 65536):  # what there is, not waiting for a line's end
                lines.feed(chunk)
                if copy:
                    copy.feed(chunk)
            lines.close()
            if copy:
                copy.close()
        finally:
            stream.close()
            if file:
                file.close()

    def _seen(self, pod: PodProcess, line: str) -> None:
        if mark := ERROR_MARK.search(line):  # repeated at the end when the run fails
            self.errors[pod.rank] = line[mark.end():].strip()
        if self.preempt and not pod.container and self.preempted is None and pod.rank == self.preempt[0] \
                and self.preempt[1].search(line):
            self._preempt(pod.rank)

    def _preempt(self, rank: int) -> None:
        """SIGTERM to the pod's first process only, as kubelet sends it to a container's PID 1."""
        self.preempted = rank
        self.screen.line(f"[local runner] SIGTERM to rank {rank} (a simulated preemption)")
        with contextlib.suppress(ProcessLookupError, KeyError):
            self._by_rank[rank].send_signal(signal.SIGTERM)

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

    def _report(self, processes: list[PodProcess], codes: list[int | None]) -> None:
        """Tells the journal of each process that has ended, once."""
        for pod, code in zip(processes, codes, strict=False):
            if self.journal and code is not None and id(pod) not in self._reported:
                self._reported.add(id(pod))
                self.journal.ended(pod, self.label, code)

    def phases(self) -> list[list[PodProcess]]:
        """The i-th init container of every pod, for each i, then the pods' containers."""
        depth = max((len(pod.init) for pod in self.pods), default=0)
        return [[pod.init[i] for pod in self.pods if i < len(pod.init)] for i in range(depth)] + [self.pods]

    def run(self) -> Outcome:
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for phase in self.phases():
                outcome = self._run_phase(phase)
                if not outcome.ok:
                    break
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
        return outcome

    def _run_phase(self, processes: list[PodProcess]) -> Outcome:
        """Runs one process per pod until all succeed, one fails (the others are stopped) or a signal comes."""
        self.procs, self.errors = [], {}
        pumps: list[threading.Thread] = []
        first_failure: int | None = None
        stopped: list[int] = []
        try:
            for pod in processes:
                if self._signal is not None:
                    break
                proc = self._start(pod)
                self.procs.append(proc)
                self._by_rank[pod.rank] = proc
                if self.journal:
                    self.journal.started(pod, self.label, proc.pid)
                assert proc.stdout is not None
                pump = threading.Thread(target=self._pump, args=(pod, proc.stdout), daemon=True)
                pump.start()
                pumps.append(pump)
            while True:
                codes = [p.poll() for p in self.procs]
                self._report(processes, codes)
                failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
                if failed and first_failure is None:
                    first_failure = processes[failed[0]].rank
                if failed or self._signal is not None:
                    stopped = [pod.rank for pod, c in zip(processes, codes, strict=False) if c is None]
                    self._stop(self._signal or signal.SIGTERM)
                    break
                if all(c == 0 for c in codes):
                    break
                time.sleep(0.1)
        finally:
            if any(p.poll() is None for p in self.procs):
                self._stop(signal.SIGTERM)
        for pump in pumps:
            pump.join(timeout=5)
        self.screen.end()
        codes = [p.returncode for p in self.procs]
        self._report(processes, codes)
        container = processes[0].container if processes else ""
        return Outcome(codes, first_failure, self._signal, stopped, dict(self.errors), self.label, container)
