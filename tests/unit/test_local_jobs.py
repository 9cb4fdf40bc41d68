"""Local jobs' records and the verbs on them (launcher/local_jobs.py, launcher/cli/local.py): `launch status | logs |
list | cancel` of a job run by `launch submit --local` (here and detached), with the chart's real command line running
a probe (tests/fixtures/sleep_probe.py, allreduce_probe.py) instead of the trainer; a stale record; cancel's SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from launcher import client, local_jobs
from launcher.cli import main
from launcher.local_cancel import cancel
from tests.chat import ONE_ROW

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SPEC = {"name": "local-rec", "base_model": "org/model", "data": {"train": "data/train.jsonl"},
        "resources": {"gpu": "none"}}

pytestmark = pytest.mark.usefixtures("helm_binary")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own records folder, and no cluster: a job name is this machine's or nothing."""
    monkeypatch.setenv("KUBETUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    return tmp_path / "home"


def probe(monkeypatch: pytest.MonkeyPatch, module: str, **env: str) -> None:
    """The chart runs tests/fixtures/<module>.py instead of trainer.train."""
    real = client.chart_values

    def values(*args: Any, **kwargs: Any) -> dict[str, Any]:
        found = real(*args, **kwargs)
        found["job"]["module"] = module
        found["env"] |= {"PYTHONPATH": f"{FIXTURES}{os.pathsep}{Path.cwd()}", **env}
        return found

    monkeypatch.setattr(client, "chart_values", values)


def spec(folder: Path, **sections: Any) -> Path:
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "train.jsonl").write_text(ONE_ROW)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(SPEC | sections))
    return path


def launch(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def status(name: str) -> dict[str, Any]:
    done = launch("status", name, "-o", "json")
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def wait_for(name: str, ok: Any, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = status(name)
        if ok(found):
            return found
        time.sleep(0.2)
    raise AssertionError(f"local job {name} never got there: {found}")


def test_a_local_run_leaves_a_record_that_status_logs_and_list_read(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    probe(monkeypatch, "allreduce_probe")
    done = launch("submit", "--local", str(spec(tmp_path, resources={"gpu": "none", "nodes": 2})))
    assert done.exit_code == 0, done.output
    name = re.search(r"job (local-rec-[a-z0-9]{5}):", done.output).group(1)  # type: ignore[union-attr]
    assert f"`launch status {name}`" in done.output

    found = status(name)  # no --local: found by its name, with no cluster configured
    assert (found["name"], found["status"], found["training"], found["completions"]) == (name, "succeeded",
                                                                                         "succeeded", "2/2")
    assert [(p["rank"], p["phase"], p["reason"]) for p in found["pods"]] == [
        (0, "Succeeded", "Completed (exit 0)"), (1, "Succeeded", "Completed (exit 0)")]
    assert (found["local"]["exit_code"], found["local"]["pid"]) == (0, os.getpid())  # `launch` ran it itself
    assert found["failure"] is None and found["export"] is None and found["namespace"] is None
    table = launch("status", name, "--local").output
    assert "status:     succeeded (training succeeded 2/2)" in table and "outcome:    succeeded (exit 0)" in table

    # each pod's own lines, unprefixed, as `kubectl logs` shows them; the init container's apart
    rank1 = launch("logs", name, "--rank", "1")
    assert rank1.exit_code == 0 and re.search(r"^PROBE rank=1 world_size=2", rank1.stdout, re.M), rank1.output
    assert "[rank" not in rank1.stdout
    assert "preflight" in (local_jobs.root() / name / "logs" / "rank-1-preflight.log").read_text()
    assert launch("logs", name, "--tail", "1").stdout.count("\n") == 1
    assert "ranks 0 to 1" in launch("logs", name, "--rank", "2").output

    listed = json.loads(launch("list", "-o", "json").stdout)
    assert listed["local"][0]["group"] == "local-rec"
    assert [(s["name"], s["status"]) for s in listed["local"][0]["submissions"]] == [(name, "succeeded")]
    assert "groups" not in listed  # no cluster to list


def test_a_failed_pod_is_the_recorded_outcome(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe(monkeypatch, "allreduce_probe", PROBE_FAIL_RANK="0")
    done = launch("submit", "--local", str(spec(tmp_path)))
    assert done.exit_code == 1, done.output
    (rec,) = local_jobs.records()
    found = status(rec.name)
    assert (found["status"], found["local"]["exit_code"]) == ("failed", 1)
    assert "the probe was told to fail" in found["failure"]["message"]
    assert found["pods"][0]["phase"] == "Failed" and found["pods"][0]["reason"] == "Error (exit 1)"


def test_detach_returns_at_once_and_cancel_stops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe(monkeypatch, "sleep_probe")
    started = time.monotonic()
    done = launch("submit", "--local", "--detach", str(spec(tmp_path)))
    assert done.exit_code == 0, done.output
    assert time.monotonic() - started < 30  # rendered and recorded, not run
    name = re.search(r"job (local-rec-[a-z0-9]{5}): started in the background", done.output).group(1)  # type: ignore[union-attr]
    assert f"launch logs {name} -f" in done.output

    found = wait_for(name, lambda s: s["progress"].get("training"))
    assert found["status"] == "running" and found["pods"][0]["phase"] == "Running" and found["local"]["detached"]
    p = found["progress"]["training"]
    assert (p["step"], p["total_steps"], p["tokens_per_second"], p["eta_seconds"]) == (3, 10, 123.0, 42.0)
    assert "training:   step 3/10 (30%) · epoch 0.3 · 123 tokens/s · loss 2.5 · ETA 42s" in launch("status", name).output
    listed = json.loads(launch("list", "--local", "-o", "json").stdout)["local"][0]["submissions"][0]
    assert listed["progress"]["training"] == p and listed["status"] == "running"
    assert re.search(rf"^local-rec +{name} +running +0/1 +none +step 3/10 \(30%\) ETA 42s ", launch("list").output,
                     re.M), launch("list").output
    assert "SLEEP_PROBE rank=0 started" in launch("logs", name).stdout

    following = subprocess.Popen([sys.executable, "-m", "launcher.cli", "logs", name, "-f"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)  # from another terminal, until the pod ends
    stopped = launch("cancel", name)
    assert stopped.exit_code == 0 and f"cancelled local job {name}" in stopped.output, stopped.output
    followed, _ = following.communicate(timeout=30)
    assert following.returncode == 0, followed
    assert followed.startswith("SLEEP_PROBE rank=0 started\n") and "SLEEP_PROBE got SIGTERM" in followed, followed
    found = status(name)
    assert (found["status"], found["local"]["exit_code"]) == ("cancelled", 130)
    assert found["pods"][0]["phase"] == "Failed" and found["failure"]["reason"] == "cancelled"
    deadline = time.monotonic() + 10
    while local_jobs.alive(found["local"]["pid"]) and time.monotonic() < deadline:  # it ends once it wrote that
        time.sleep(0.1)
    assert not local_jobs.alive(found["local"]["pid"])
    assert not any(local_jobs.alive(p["pid"]) for p in local_jobs.find(name).pods)
    assert "SLEEP_PROBE got SIGTERM" in launch("logs", name).stdout
    again = launch("cancel", name)
    assert again.exit_code == 0 and "already ended (cancelled): nothing to stop" in again.output


def test_a_record_whose_runner_is_gone_reads_as_lost(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    rec = record("lost-abcde", gone.pid)
    found = status(rec.name)
    assert found["status"] == "failed" and found["failure"]["message"].startswith("lost: its runner")
    assert found["pods"][0] == found["pods"][0] | {"phase": "Failed", "reason": "lost with the runner"}
    rec.path(local_jobs.CANCEL).write_text("now")  # `launch cancel` had asked for it: then it reads as cancelled
    assert status(rec.name)["status"] == "cancelled"


def test_cancel_kills_a_runner_that_does_not_stop(tmp_path: Path) -> None:
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
    rec = record("stubborn-abcde", stubborn.pid)
    started = time.monotonic()
    found, stopped = cancel(rec.name, grace=1.0)
    assert stopped and found.status == "cancelled" and "had not stopped within 1s" in (found.message or "")
    assert stubborn.wait(timeout=10) == -signal.SIGKILL and time.monotonic() - started < 10


def test_local_and_cluster_flags_are_one_or_the_other() -> None:
    done = launch("status", "x", "--local", "-n", "ml")
    assert done.exit_code == 2 and "--local and -n: a local job or a cluster's, not both" in done.output
    nowhere = launch("status", "nowhere-abcde")
    assert nowhere.exit_code == 2 and "no local job nowhere-abcde on this machine either" in nowhere.output
    assert "no local job nowhere-abcde on this machine" in launch("logs", "nowhere-abcde", "--local").output


def record(name: str, pid: int) -> local_jobs.Record:
    """A running job's record, as the runner writes it, with `pid` as its runner."""
    folder = local_jobs.root() / name
    (folder / "logs").mkdir(parents=True)
    rec = local_jobs.Record(name, "spec", "job.yaml", "/tmp/out", 1, False, folder=folder, pid=pid,
                            pid_start=local_jobs.process_start(pid), created=local_jobs.now(),
                            started=local_jobs.now(), status="running",
                            pods=[{"rank": 0, "component": "training", "phase": "Running", "reason": "",
                                   "pid": None, "exit_code": None, "log": "logs/rank-0.log"}])
    rec.save()
    return rec


def test_a_local_name_is_said_to_be_the_local_job_when_a_cluster_is_configured(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    rec = record("both-abcde", gone.pid)
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    done = launch("status", rec.name, "-o", "json")
    assert done.exit_code == 0 and json.loads(done.stdout)["name"] == rec.name
    assert "both-abcde: the local job on this machine (for a cluster job of that name, give -n" in done.stderr
