"""Ranks that start late, as on an autoscaled pool (a node provisioned, an image pulled): real
`python -m trainer.preflight` processes on loopback, reporting every second instead of every 30.

Rank 1 starts before rank 0 (rank 0's node is still coming), rank 2 starts seconds after rank 0:
each wait says what it waits for, rank 0 names the missing rank, and the late ranks still pass
within the timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration

LATE = 3.0  # seconds between starts: three report intervals


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def preflight(rank: int, nodes: int, port: int, timeout: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "trainer.preflight", "--job", "late-abc12", "--rank", str(rank),
            "--nodes", str(nodes), "--addr", "127.0.0.1", "--port", str(port), "--timeout", str(timeout),
            "--backend", "gloo", "--size-mib", "0", "--report-every", "1"]  # fmt: skip
    env = os.environ | {"CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


def test_late_ranks_are_named_while_waited_for_and_still_pass() -> None:
    port = free_port()
    early = preflight(1, 3, port, timeout=60)  # rank 0's node is not there yet
    time.sleep(LATE)
    rank0 = preflight(0, 3, port, timeout=60)
    time.sleep(LATE)
    late = preflight(2, 3, port, timeout=60)  # rank 2's node came last
    (code0, log0), (code1, log1), (code2, log2) = finish(rank0), finish(early), finish(late)
    assert (code0, code1, code2) == (0, 0, 0), log0 + log1 + log2

    # rank 1, before rank 0 listens: the port does not answer yet; then, once in: rank 0 waits for others
    assert f"rank 0 at 127.0.0.1:{port} does not answer yet (connection refused)" in log1, log1
    assert "joined rank 0, which still waits for other ranks" in log1, log1
    # rank 0 names the one rank still missing, with how long so far and how long left
    waiting = [line for line in log0.splitlines() if "rank 0 waiting for rank(s)" in line]
    assert waiting, log0
    assert all("rank 0 waiting for rank(s) 2 (2 of 3 ranks here)" in line for line in waiting), log0
    assert "s so far, giving up in " in waiting[0] and "`launch status late-abc12`" in waiting[0]
    assert "rank 2 joined from 127.0.0.1 (3 of 3)" in log0 and "3 ranks joined in" in log0, log0
    assert "rank 2 ok in" in log2, log2


def test_a_rank_later_than_the_timeout_is_named_in_the_failure() -> None:
    port = free_port()
    rank0 = preflight(0, 2, port, timeout=3)  # rank 1 never comes
    code, log = finish(rank0)
    assert code == 1, log
    assert "rank 0 waiting for rank(s) 1 (1 of 2 ranks here)" in log, log
    assert "[kubetune] error: preflight: rank(s) 1 never joined within 3 s" in log, log
