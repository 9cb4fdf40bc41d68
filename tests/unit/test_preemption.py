"""How a pod ends, with real processes: trainer.train.supervise (the trainer container's PID 1) gets SIGTERM
to every rank while the launcher keeps waiting, and exits with the code the ranks reported; a rank
whose peer is gone recognises it (and exits 75, so that the job restarts rather than fails)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from trainer.train.preemption import EXIT_PREEMPTED, EXIT_USER_ERROR, peer_lost
from trainer.train.supervise import exit_code, local_ranks

# A "rank": reports its code like trainer.train does, on SIGTERM after a short "checkpoint".
RANK = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    def report(code):
        Path(os.environ["KUBETUNE_EXIT_DIR"], "rank-" + os.environ["RANK"]).write_text(str(code))
        sys.exit(code)
    signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.5), report(75)))
    Path(sys.argv[1]).write_text("ready")
    mode = sys.argv[2]
    if mode == "wait":
        time.sleep(60)
    if mode.startswith("abort-after-"):  # reports, then dies as gloo's teardown killed ranks: SIGABRT at exit
        Path(os.environ["KUBETUNE_EXIT_DIR"], "rank-" + os.environ["RANK"]).write_text(mode.removeprefix("abort-after-"))
        os.abort()
    if mode == "abort" and os.environ["RANK"] == "1":  # dies before reporting
        os.abort()
    report(0 if mode == "abort" else int(mode))
""")
# A "launcher" like torchrun under `accelerate launch`: starts two ranks, each in a session of its own
# (out of reach of a process-group signal), waits, and turns any failure into 1.
LAUNCHER = textwrap.dedent("""
    import os, subprocess, sys
    procs = [subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2] + str(r), sys.argv[3]],
                              env={**os.environ, "RANK": str(r)}, start_new_session=True) for r in range(2)]
    sys.exit(1 if any([p.wait() for p in procs]) else 0)
""")


def supervise(tmp_path: Path, mode: str) -> subprocess.Popen[bytes]:
    (tmp_path / "rank.py").write_text(RANK)
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    cmd = [sys.executable, "-m", "trainer.train.supervise", sys.executable, str(tmp_path / "launcher.py"),
           str(tmp_path / "rank.py"), str(tmp_path / "ready-"), mode,
           "--num_machines", "1", "--num_processes", "2"]  # as the chart passes them (the launcher ignores them)
    env = {k: v for k, v in os.environ.items() if k != "KUBETUNE_EXIT_DIR"} | {"TMPDIR": str(tmp_path)}
    return subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parents[2], start_new_session=True)


def wait_ready(tmp_path: Path) -> None:
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"ready-{r}").exists() for r in range(2)):
        assert time.monotonic() < deadline, "the ranks did not start"
        time.sleep(0.05)


def test_sigterm_to_pid_1_stops_every_rank_and_the_pod_exits_75(tmp_path: Path) -> None:
    proc = supervise(tmp_path, "wait")
    wait_ready(tmp_path)
    proc.send_signal(signal.SIGTERM)  # kubelet signals the container's PID 1 only
    assert proc.wait(timeout=30) == EXIT_PREEMPTED
    assert sorted(p.name for p in tmp_path.glob("kubetune-exit-*/rank-*")) == ["rank-0", "rank-1"]


@pytest.mark.parametrize(("mode", "code"), [("0", 0), ("2", EXIT_USER_ERROR), ("75", EXIT_PREEMPTED), ("1", 1),
                                           ("abort-after-0", 0), ("abort-after-75", EXIT_PREEMPTED), ("abort", 1)])
def test_the_pod_exits_with_the_ranks_own_code(tmp_path: Path, mode: str, code: int) -> None:
    """accelerate launch reports every failure as 1; the ranks' reports say which it was. Ranks that all reported 0
    and then aborted at exit (gloo's teardown, "terminate called without an active exception") finished the run:
    the pod succeeds. A rank that aborted without reporting fails it."""
    proc = supervise(tmp_path, mode)
    assert proc.wait(timeout=30) == code


def test_exit_code_rules() -> None:
    assert exit_code(0, [75]) == 0
    assert exit_code(1, [75, 2]) == EXIT_USER_ERROR  # a user error wins: retrying cannot help
    assert exit_code(1, [75, 75]) == EXIT_PREEMPTED
    assert exit_code(1, []) == 1
    assert exit_code(1, [0, 0], expected=2) == 0  # every rank done: a crash at interpreter exit
    assert exit_code(-signal.SIGABRT, [0], expected=2) == 128 + signal.SIGABRT  # a rank never reported
    assert exit_code(1, [0, 0]) == 1  # the rank count unknown
    assert local_ranks(["accelerate", "launch", "--num_machines", "2", "--num_processes", "8", "-m", "x"]) == 4
    assert local_ranks(["launch", "--num_processes=4"]) == 4 and local_ranks(["launch", "-m", "x"]) is None
    assert exit_code(-signal.SIGKILL, []) == 128 + signal.SIGKILL


PEER = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=rank, world_size=2)
    dist.all_reduce(torch.ones(1))
    if rank == 1:
        os._exit(9)  # its node is gone
    try:
        dist.all_reduce(torch.ones(1))
    except Exception as e:
        print(repr(e))
""")


def test_a_collective_with_a_lost_peer_is_recognised(tmp_path: Path) -> None:
    from tests.integration.servers import free_port

    (tmp_path / "peer.py").write_text(PEER)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "peer.py"), str(r), port], stdout=subprocess.PIPE,
                              text=True) for r in range(2)]
    survivor, _ = procs[0].communicate(timeout=120)
    procs[1].wait(timeout=30)
    assert survivor.strip(), "the collective did not fail"
    assert peer_lost(RuntimeError(survivor))
    assert not peer_lost(RuntimeError("CUDA out of memory")) and not peer_lost(ValueError("bad row"))


RELEASE = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from trainer.train import preemption
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=rank, world_size=2)
    held = dist.group.WORLD  # as ZeRO-3's parameters hold it: destroy_process_group does not free it
    for _ in range(3):
        out = [None, None]
        dist.all_gather_object(out, {"rank": rank})
    preemption.release_process_group()
    work = preemption._HELD[-1]
    print("released", not dist.is_initialized(), work.is_completed(), out, flush=True)
""")


def test_two_gloo_ranks_release_their_group_and_exit_cleanly(tmp_path: Path) -> None:
    """The end of every multi-rank run: the ranks meet, the group is destroyed, the process exits 0 without the
    abort a gloo thread caused when it freed the final collective's tensors as the interpreter exited (rare
    here: trainer/train/preemption.py; a 2-rank ZeRO-3 run pinned to one core aborted 3 times in 40 with a
    final barrier, 0 in 60 now). The final work is Python's, completed; a group still held elsewhere is no
    obstacle."""
    from tests.integration.servers import free_port

    (tmp_path / "release.py").write_text(RELEASE)
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "release.py"), str(r), port], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for r in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for p, text in zip(procs, outs, strict=True):
        assert p.returncode == 0 and "terminate called" not in text, text
        assert "released True True [{'rank': 0}, {'rank': 1}]" in text, text


POD = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: (print("checkpoint written", flush=True), sys.exit(75)))
    for step in range(1, 100):
        print(f"[train] step {step}/99", flush=True)
        time.sleep(0.05)
""")


def test_the_local_runner_plays_kubelet_and_sends_sigterm_when_the_log_says_so(tmp_path: Path) -> None:
    import io
    import re

    from launcher.backends.local import PodProcess
    from launcher.backends.local_run import LocalRun

    pods = [PodProcess(r, ["python", "-c", POD], {"JOB_COMPLETION_INDEX": str(r)}, tmp_path) for r in range(2)]
    out = io.StringIO()
    run = LocalRun(pods, out=out, grace=5, preempt=(1, re.compile(r"\[train\] step 5/")))
    outcome = run.run()
    log = out.getvalue()
    assert run.preempted == 1 and outcome.codes[1] == EXIT_PREEMPTED and outcome.first_failure == 1, log
    assert "[local runner] SIGTERM to rank 1 (a simulated preemption)" in log
    assert "[rank 1] checkpoint written" in log and "[rank 1] [train] step 99/99" not in log
