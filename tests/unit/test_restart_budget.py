"""Restarts are bounded: a lost peer without SIGTERM is a counted failure (exit 76), only a pod that got
SIGTERM exits 75, and the trainer fails the job (exit 2) past `resources.max_restarts` starts.

The pods are real processes under `trainer.train.supervise` (tests/unit/test_preemption.py's fake launcher
and ranks); what the Job controller then does with their exit codes is played by `job_controller`
below from the chart's rendered Job (its podFailurePolicy, backoffLimitPerIndex, maxFailedIndexes),
as Kubernetes documents those rules, since the local runner stops at the first failure.
"""

from __future__ import annotations

import json
import signal
import types
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_preemption import supervise, wait_ready
from trainer.train import checkpoint
from trainer.train.preemption import EXIT_PEER_LOST, EXIT_PREEMPTED, EXIT_USER_ERROR, peer_lost_diagnosis
from trainer.train.supervise import exit_code


def pod_exit(tmp_path: Path, mode: str, sigterm: bool = False) -> int:
    """The exit code of one real pod (supervisor, launcher, two ranks) whose ranks end with `mode`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = supervise(tmp_path, mode)
    if sigterm:
        wait_ready(tmp_path)
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def test_a_lost_peer_without_sigterm_exits_76_and_a_sigterm_exits_75(tmp_path: Path) -> None:
    assert pod_exit(tmp_path / "a", "76") == EXIT_PEER_LOST  # accelerate launch said 1; the ranks said 76
    assert pod_exit(tmp_path / "b", "wait", sigterm=True) == EXIT_PREEMPTED


@pytest.mark.parametrize(("ranks", "signalled", "code"), [
    ([76, 76], False, EXIT_PEER_LOST),  # nobody told this pod to stop: counted
    ([], False, 1),  # a crash: counted
    ([76, 76], True, EXIT_PREEMPTED),  # its peer vanished while the pod was being stopped anyway
    ([], True, EXIT_PREEMPTED),  # told to stop, the ranks died without a word
    ([75, 75], False, EXIT_PREEMPTED),  # another pod got SIGTERM: every rank checkpointed at the same step
    ([2, 75], True, EXIT_USER_ERROR),
])
def test_exit_code_with_and_without_sigterm(ranks: list[int], signalled: bool, code: int) -> None:
    assert exit_code(1, ranks, signalled) == code


def test_the_diagnosis_names_the_rank_the_error_and_where_to_look() -> None:
    line = peer_lost_diagnosis(RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1\nmore"), 3, "tune-ab12c")
    assert line.startswith("rank 3 lost its peers: RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1;")
    assert "Exiting 76" in line and "job.backoffLimit" in line and "launch logs tune-ab12c --rank N" in line


# --- the Job controller's part, from the rendered chart ------------------------------------------
def job_controller(job: dict[str, Any], attempts: list[list[int | str]]) -> tuple[str, int]:
    """Feed the Job one attempt at a time (each index's exit code, or "disrupted"); ("Failed"|"Running", attempts
    used). Kubernetes' rules: the first matching podFailurePolicy rule decides; Ignore does not count, FailJob
    fails the Job; otherwise the index counts one failure, and an index past backoffLimitPerIndex is failed, which
    fails the Job when the failed indexes exceed maxFailedIndexes; backoffLimit bounds the total."""
    spec = job["spec"]
    rules = spec["podFailurePolicy"]["rules"]
    per_index = [0] * spec["completions"]
    total = 0
    for n, attempt in enumerate(attempts, 1):
        for index, code in enumerate(attempt):
            action = "Count"
            for rule in rules:
                if code == "disrupted" and any(c["type"] == "DisruptionTarget" for c in rule.get("onPodConditions", [])):
                    action = rule["action"]
                    break
                if code != "disrupted" and code in rule.get("onExitCodes", {}).get("values", []):
                    action = rule["action"]
                    break
            if action == "FailJob":
                return "Failed", n
            if action == "Count":
                per_index[index] += 1
                total += 1
        failed_indexes = sum(f > spec["backoffLimitPerIndex"] for f in per_index)
        if failed_indexes > spec["maxFailedIndexes"] or total > spec["backoffLimit"]:
            return "Failed", n
    return "Running", len(attempts)


@pytest.fixture
def rendered_job(helm_binary: Any, tmp_path: Path) -> dict[str, Any]:
    """The training Job `launch submit` renders for a 4-node spec, chart defaults otherwise."""
    from tests.unit.test_chart import render, write_spec

    _, objs = render(write_spec(tmp_path, nodes=4))
    (job,) = objs["Job"]
    return job


def test_a_deterministic_distributed_failure_ends_the_job_after_the_budget(rendered_job: dict[str, Any]) -> None:
    """Every start: rank 0's NCCL call fails (exit 1), its peers lose it (76): job.backoffLimit (2) retries."""
    budget = rendered_job["spec"]["backoffLimitPerIndex"]
    assert budget == 2
    forever = [[1, EXIT_PEER_LOST, EXIT_PEER_LOST, EXIT_PEER_LOST]] * 50
    assert job_controller(rendered_job, forever) == ("Failed", budget + 1)
    # the same with every rank seeing the NCCL error itself
    assert job_controller(rendered_job, [[EXIT_PEER_LOST] * 4] * 50) == ("Failed", budget + 1)


def test_preemptions_are_not_counted_and_a_node_loss_costs_each_peer_one(rendered_job: dict[str, Any]) -> None:
    preempted = [[EXIT_PREEMPTED] * 4] * 50  # the trainer's resources.max_restarts bounds these
    assert job_controller(rendered_job, preempted) == ("Running", 50)
    node_lost = ["disrupted", EXIT_PEER_LOST, EXIT_PEER_LOST, EXIT_PEER_LOST]
    assert job_controller(rendered_job, [node_lost, node_lost]) == ("Running", 2)
    assert job_controller(rendered_job, [node_lost] * 3) == ("Failed", 3)
    assert job_controller(rendered_job, [[EXIT_USER_ERROR, EXIT_PEER_LOST, EXIT_PEER_LOST, 76]]) == ("Failed", 1)


# --- the trainer's restart budget ----------------------------------------------------------------
def test_starts_are_counted_per_job_next_to_the_checkpoints(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    assert [checkpoint.count_start(out, "tune-aaaaa") for _ in range(3)] == [1, 2, 3]
    record = json.loads((tmp_path / "out" / "checkpoints" / checkpoint.RESTARTS).read_text())
    assert record["job_name"] == "tune-aaaaa" and record["starts"] == 3
    assert checkpoint.count_start(out, "tune-bbbbb") == 1  # another submission to the same output starts afresh


def test_past_max_restarts_every_rank_stops_with_exit_2(tmp_path: Path) -> None:
    from trainer.train import resume
    from trainer.train.loop import USER_ERRORS, FineTune

    job = FineTune.__new__(FineTune)
    job.output, job.name, job.main, job.rank = str(tmp_path / "out"), "tune-ccccc", True, 0
    job.spec = types.SimpleNamespace(resources=types.SimpleNamespace(max_restarts=2))
    said: list[str] = []
    job.say = said.append
    for _ in range(3):  # the first start and two restarts
        job._count_start()
    assert said == ["restart 1 of at most 2 (resources.max_restarts)", "restart 2 of at most 2 (resources.max_restarts)"]
    with pytest.raises(resume.ResumeError, match=r"restarted 3 times .* resources.max_restarts = 2; exiting 2") as e:
        job._count_start()
    assert isinstance(e.value, USER_ERRORS)  # main() exits EXIT_USER_ERROR: the podFailurePolicy's FailJob
    assert "launch submit SPEC --resume tune-ccccc --set resources.max_restarts=N" in str(e.value)
