"""PID 1 of the trainer container: runs `accelerate launch ...`, passes SIGTERM on to every rank, and exits
with the trainer's own exit code.

    python -m trainer.train.supervise accelerate launch --config_file ... -m trainer.train --spec ...

Why it exists: Kubernetes signals only the container's PID 1, and reads only its exit code. As PID 1,
`accelerate launch` ignores SIGTERM (a PID-1 process without a handler does), or, running torchrun,
gives the workers 30 s before SIGKILL; and both report any worker's exit as 1, so the chart's pod
failure policy could not tell a preemption (exit 75) from a crash. What it does instead:

- starts the command with SIGTERM ignored (launchers inherit that; the trainer ranks install their
  own handler) and torchrun told not to handle SIGTERM (`PET_SIGNALS_TO_HANDLE`, its
  `--signals-to-handle`), so the launchers keep waiting for their workers;
- on SIGTERM: sends SIGTERM once to every process under it (torchrun starts each worker in a
  session of its own, out of reach of a process-group signal), so every rank of the pod sees it
  and stops at the next step boundary with a checkpoint (trainer/train/preemption.py);
- exits with the code the ranks reported in `$KUBETUNE_EXIT_DIR` (a user error, 2, wins over a
  preemption, 75, which wins over a lost peer, 76), else with the command's own code; a pod that got
  SIGTERM and failed otherwise exits 75 too (it was told to stop: a restart resumes), one that did not
  never does (trainer/train/preemption.py);
- exits 0 when every rank of the pod reported 0 (the run, its outputs and its process group's teardown done) and
  the launcher still failed: a process crashed as its interpreter shut down (gloo's or a library's C++ thread,
  "terminate called without an active exception"). The rank count is accelerate's `--num_processes` over
  `--num_machines`, as the chart passes them; a rank that never reported keeps the failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from trainer import say
from trainer.train.preemption import EXIT_DIR, EXIT_PEER_LOST, EXIT_PREEMPTED, EXIT_USER_ERROR

TORCHRUN_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"  # torchrun's default minus SIGTERM


def reported(folder: Path) -> list[int]:
    codes = []
    for path in sorted(folder.glob("rank-*")):
        try:
            codes.append(int(path.read_text().strip()))
        except ValueError:
            continue
    return codes


def _flag(argv: list[str], flag: str) -> int | None:
    for i, arg in enumerate(argv):
        text = arg.split("=", 1)[1] if arg.startswith(flag + "=") else None
        if arg == flag and i + 1 < len(argv):
            text = argv[i + 1]
        if text is not None:
            return int(text) if text.isdigit() else None
    return None


def local_ranks(argv: list[str]) -> int | None:
    """How many ranks this pod runs: `accelerate launch`'s --num_processes over --num_machines; None if not given."""
    processes, machines = _flag(argv, "--num_processes"), _flag(argv, "--num_machines") or 1
    return processes // machines if processes and processes % machines == 0 else None


def exit_code(command_code: int, ranks: list[int], signalled: bool = False, expected: int | None = None) -> int:
    """The pod's exit code from the command's and the ranks' own; `signalled`: the pod got SIGTERM; `expected`: how
    many ranks the pod runs (`local_ranks`)."""
    if command_code == 0:
        return 0
    if expected and len(ranks) == expected and not any(ranks):
        say.warn(f"every rank of this pod finished and reported 0, but the launcher exited {command_code}: a process "
                 "crashed while its interpreter shut down, after the run and its outputs were complete; exiting 0")
        return 0
    if EXIT_USER_ERROR in ranks:
        return EXIT_USER_ERROR
    if signalled and EXIT_PREEMPTED not in ranks:  # told to stop (preemption, drain, cancel): a restart resumes
        say.warn(f"the ranks ended with code {command_code} after SIGTERM: exiting {EXIT_PREEMPTED} "
                 "(stopped; a restart resumes from the latest checkpoint)")
        return EXIT_PREEMPTED
    for code in (EXIT_PREEMPTED, EXIT_PEER_LOST):  # 75 unsignalled: another pod got SIGTERM, every rank checkpointed
        if code in ranks:
            return code
    return command_code if command_code > 0 else 128 - command_code  # killed by a signal: 128 + N, as a shell


class Supervisor:
    def __init__(self, argv: list[str]):
        self.argv = argv
        self.forwarded = False

    def _forward(self, signum: int, _frame: object) -> None:
        if self.forwarded:
            return
        self.forwarded = True
        say.say(f"{signal.Signals(signum).name}: asking every rank to checkpoint and stop")
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        env = dict(os.environ)
        env.setdefault("PET_SIGNALS_TO_HANDLE", TORCHRUN_SIGNALS)  # torchrun's --signals-to-handle
        folder = Path(env.get(EXIT_DIR) or tempfile.mkdtemp(prefix="kubetune-exit-"))
        env[EXIT_DIR] = str(folder)
        for stale in folder.glob("rank-*"):
            stale.unlink()
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a local Ctrl-C reaches the ranks directly
        try:
            proc = subprocess.Popen(self.argv, env=env, preexec_fn=_ignore_sigterm)  # single-threaded here
        except FileNotFoundError:
            say.error(f"{self.argv[0]} is not installed in this image")
            return 127
        code = proc.wait()
        return exit_code(code, reported(folder), self.forwarded, local_ranks(self.argv))


def _ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        say.text("usage: python -m trainer.train.supervise COMMAND [ARGS...]", err=True)
        return 2
    return Supervisor(argv).run()


if __name__ == "__main__":
    sys.exit(main())
