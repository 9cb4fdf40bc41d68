"""Rendezvous faults injected into real local runs: each fails in seconds, with the preflight's diagnosis.

Faults a user can make through chart values (`launch submit --local -f values.yaml`, the real CLI
in its own process): a rendezvous port another process holds, a rank-0 address that is not rank 0,
a rank-0 name that never resolves. Faults only a cluster makes (a pod that never starts, a pod
told another port) are injected into the local runner's plan of the really rendered pods.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher import client, helm
from launcher.backends.local import PodProcess, plan
from launcher.backends.local_run import LocalRun, Outcome
from tests.chat import ONE_ROW

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("helm_binary")]


def two_node_spec(folder: Path) -> Path:
    (folder / "train.jsonl").write_text(ONE_ROW)
    spec = folder / "job.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "preflight", "base_model": "org/model", "data": {"train": "train.jsonl"},
        "resources": {"gpu": "none", "nodes": 2},
    }))  # fmt: skip
    return spec


def submit(folder: Path, values: dict[str, Any]) -> tuple[subprocess.CompletedProcess[str], float]:
    """`launch submit --local job.yaml -f values.yaml` as a user runs it; (result, seconds it took)."""
    spec = two_node_spec(folder)
    values_file = folder / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    env = {k: v for k, v in os.environ.items() if k != "KUBETUNE_DEBUG"} | {"HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "submit", "--local", str(spec), "-f", str(values_file)],
        capture_output=True, text=True, env=env, cwd=folder, timeout=300,
    )  # fmt: skip
    return done, time.monotonic() - started


def failed_in_preflight(done: subprocess.CompletedProcess[str], rank: int) -> str:
    """The diagnosis the CLI printed for `rank`'s preflight; the trainer never started."""
    assert done.returncode == 1, done.stdout + done.stderr
    m = re.search(rf"^error: job preflight-\w+: rank {rank} \(init container preflight\) exited with code 1.*\n  (.+)$",
                  done.stderr, re.M)  # fmt: skip
    assert m is not None, done.stdout + done.stderr
    assert not re.search(r"^\[rank \d\] ", done.stdout, re.M), "a trainer container started"
    return m.group(1)


def test_a_rendezvous_port_another_process_holds_fails_within_a_minute(tmp_path: Path) -> None:
    """Issue 4's done-when: a 2-node spec with a wrong rendezvous port fails within 60 s, with a diagnosis."""
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        done, seconds = submit(tmp_path, {"job": {"port": port}})
    diagnosis = failed_in_preflight(done, rank=0)
    assert diagnosis.startswith(f"preflight: port {port} is already in use on rank 0's pod"), diagnosis
    assert f"ss -ltnp 'sport = :{port}'" in diagnosis and "job.port" in diagnosis
    assert seconds < 60, f"took {seconds:.0f}s"  # the acceptance bound, against a 30-minute c10d timeout


def test_a_rank0_address_that_is_not_rank_0(tmp_path: Path) -> None:
    done, _ = submit(tmp_path, {"env": {"KUBETUNE_MASTER_ADDR": "192.0.2.1"}})  # TEST-NET-1
    diagnosis = failed_in_preflight(done, rank=0)
    assert diagnosis.startswith("preflight: rank 0's address 192.0.2.1 is 192.0.2.1, which is not an address of"), diagnosis
    assert "remove any override of it in the chart's `env`" in diagnosis


def test_a_rank0_name_that_never_resolves(tmp_path: Path) -> None:
    values = {"env": {"KUBETUNE_MASTER_ADDR": "trainer-0.nowhere.invalid"}, "preflight": {"timeoutSeconds": 3}}
    done, _ = submit(tmp_path, values)
    assert "did not resolve within 3 s" in done.stderr, done.stdout + done.stderr
    assert "headless Service 'nowhere'" in done.stderr and "publishNotReadyAddresses: true" in done.stderr
    assert not re.search(r"^\[rank \d\] ", done.stdout, re.M), "a trainer container started"


def test_a_healthy_two_node_run_passes_the_preflight_then_rendezvous_again(tmp_path: Path) -> None:
    """After the preflight released the port, accelerate binds it (the probe all-reduces through it)."""
    values = {"job": {"module": "allreduce_probe"}, "env": {"PYTHONPATH": str(FIXTURES)}}
    done, _ = submit(tmp_path, values)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr
    for rank in (0, 1):
        assert re.search(rf"^\[rank {rank} preflight\] \[kubetune\] preflight: 2 ranks joined in [\d.]+s; "
                         r"all-reduce 64 MiB: [\d.]+ GB/s, \d+ ms each \(gloo\)$", done.stdout, re.M), done.stdout
        assert f"[rank {rank}] PROBE rank={rank} world_size=2 sum=3" in done.stdout
    assert re.search(r"^\[rank 0 preflight\] .*port \d+ is free again for accelerate$", done.stdout, re.M)


# --- faults only a cluster makes, injected into the plan of the rendered pods -------------------


def planned(folder: Path, timeout: int) -> list[PodProcess]:
    sub = client.prepare(two_node_spec(folder), local=True)
    sub.values["preflight"] = {"timeoutSeconds": timeout}
    return plan(helm.parse_manifests(client.render(sub)), folder / "pods", cwd=folder)


def run(pods: list[PodProcess]) -> tuple[Outcome, str]:
    out = io.StringIO()
    outcome = LocalRun(pods, out=out, grace=5).run()
    return outcome, out.getvalue()


def test_a_rank_whose_pod_never_starts(tmp_path: Path) -> None:
    pod0, _ = planned(tmp_path, timeout=3)  # pod 1 stays Pending forever
    outcome, log = run([pod0])
    assert outcome.first_failure == 0 and outcome.container == "preflight", log
    assert outcome.errors[0].startswith("preflight: rank(s) 1 never joined within 3 s (1 of 2 ranks here"), log
    assert "is pod 1 Pending or failing?" in outcome.errors[0]
    assert "[rank 0] " not in log


def test_a_rank_told_another_port_reports_first(tmp_path: Path) -> None:
    pod0, pod1 = planned(tmp_path, timeout=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    argv = pod1.init[0].argv
    argv[argv.index("--port") + 1] = str(closed)
    outcome, log = run([pod0, pod1])
    # rank 1 gives up on its port before rank 0 gives up on rank 1 (rank 0 waits a grace period longer)
    assert outcome.first_failure == 1 and outcome.stopped == [0], log
    assert outcome.errors[1].startswith(f"preflight: rank 0 at 127.0.0.1:{closed} refused connections for 3 s"), log
    assert "Did rank 0 start" in outcome.errors[1]
