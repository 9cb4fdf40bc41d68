"""`launch status | list | logs | cancel` against the fake API server, with a real `mlflow server`
holding the submission's run (metrics with steps and timestamps, a registered version)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from tests.integration.cluster_cli import Kube, cluster_spec, submit
from tests.integration.fake_kube_workloads import PodState
from tests.integration.servers import mlflow_server

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("helm_binary")]
T0 = 1_700_000_000_000  # ms


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def log_run(url: str, experiment: str, name: str, finish: bool = False) -> str:
    """What the trainer logs: a run named after the submission, loss every step from 10 to 20, 10 s apart."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(url)
    exp = client.get_experiment_by_name(experiment)
    run = client.create_run(exp.experiment_id if exp else client.create_experiment(experiment), run_name=name)
    rid = run.info.run_id
    metrics = [Metric("loss", 3.0 - step / 10, T0 + step * 10_000, step) for step in range(10, 21)]
    metrics += [Metric("learning_rate", 2e-4, T0 + 200_000, 20), Metric("tokens_per_second", 15300.0, T0 + 200_000, 20)]
    client.log_batch(rid, metrics=metrics)
    if finish:
        client.set_terminated(rid, "FINISHED")
        client.create_registered_model(name)
        version = client.create_model_version(name, source=f"{run.info.artifact_uri}/export/q8_0", run_id=rid)
        client.set_registered_model_alias(name, "candidate", version.version)
    return rid


def test_status_shows_ranks_and_mlflow_progress_with_an_eta(kube: Kube, tmp_path: Path, mlflow_url: str) -> None:
    spec = cluster_spec(tmp_path, tracking={"mlflow_uri": mlflow_url, "experiment": "bots"})
    name = submit(kube, spec)
    kube.fake.set_pods("ml", name, {0: PodState("Running", node="gpu-a-1", restarts=1, last_reason="OOMKilled"),
                                    1: PodState("Pending", node=None, unschedulable="0/4 nodes are available: "
                                                "4 Insufficient nvidia.com/gpu")})
    rid = log_run(mlflow_url, "bots", name)
    done = kube.run("status", name)
    assert done.exit_code == 0, done.output
    out = done.stdout
    assert "status:     running (training running 0/2)" in out
    rank0 = next(line for line in out.splitlines() if line.startswith("0 "))
    assert "Running" in rank0 and "gpu-a-1" in rank0 and "restarted after OOMKilled (exit 137)" in rank0
    rank1 = next(line for line in out.splitlines() if line.startswith("1 "))
    assert "Pending" in rank1 and "Unschedulable: 0/4 nodes are available" in rank1
    # 10 steps in 100 s: 80 steps to go at 0.1 step/s
    assert f"MLflow run {rid} (RUNNING) at {mlflow_url}" in out
    assert "step 20/100 (20%), loss 1.0000, lr 2.00e-04, tokens/s 15,300, ETA 13m" in out

    data = json.loads(kube.run("status", name, "-o", "json").stdout)
    assert data["name"] == name and data["status"] == "running" and data["mlflow_run_id"] == rid
    assert data["mlflow"]["eta_seconds"] == pytest.approx(800) and data["mlflow"]["progress"] == pytest.approx(0.2)
    assert [(p["rank"], p["phase"]) for p in data["pods"]] == [(0, "Running"), (1, "Pending")]
    assert yaml.safe_load(kube.run("status", name, "-o", "yaml").stdout) == data


def test_status_without_a_reachable_tracking_server_still_shows_the_pods(kube: Kube, tmp_path: Path) -> None:
    name = submit(kube, cluster_spec(tmp_path, tracking={"mlflow_uri": "http://127.0.0.1:9"}))
    done = kube.run("status", name)
    assert done.exit_code == 0, done.output
    [line] = [line for line in done.stdout.splitlines() if line.startswith("MLflow")]
    assert "http://127.0.0.1:9 is unreachable from here" in line and "--mlflow-uri" in line
    assert f"{name}-0-" in done.stdout and f"{name}-1-" in done.stdout


def test_wait_reports_the_run_and_the_registered_model(kube: Kube, tmp_path: Path, mlflow_url: str) -> None:
    spec = cluster_spec(tmp_path, name="reg", tracking={"mlflow_uri": mlflow_url, "experiment": "reg"})
    kube.fake.every_job = [PodState("Running")]  # running until the trainer below has logged its run
    logged: dict[str, str] = {}

    def trainer() -> None:
        while not kube.submitted():
            time.sleep(0.05)
        name = kube.submitted()[0]
        logged["run_id"] = log_run(mlflow_url, "reg", name, finish=True)
        seen = len(kube.fake.requests)
        while sum(r.path.endswith("/pods") for r in kube.fake.requests[seen:]) < 8:  # > PROGRESS_EVERY polls
            time.sleep(0.05)
        kube.fake.script(name, [PodState("Succeeded", exit_code=0)])

    thread = threading.Thread(target=trainer, daemon=True)
    thread.start()
    done = kube.process("submit", str(spec), "--wait", "-o", "json")  # its own stdout: only the document
    thread.join(timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    name = kube.submitted()[0]
    assert result["mlflow_run_id"] == logged["run_id"] and result["registered_model"] == f"models:/{name}@candidate"
    assert "training: step 20/100 (20%), loss 1.0000" in done.stderr
    assert f"registered: models:/{name}@candidate" in done.stderr


def test_list_groups_submissions_by_spec_and_matrix(kube: Kube, tmp_path: Path) -> None:
    first = submit(kube, cluster_spec(tmp_path, name="alpha"))
    second = submit(kube, cluster_spec(tmp_path, name="alpha"))
    beta = submit(kube, cluster_spec(tmp_path, name="beta", export={"gguf": ["q8_0"]}))
    other = submit(kube, cluster_spec(tmp_path, name="alpha"), "-n", "team-a", ns="team-a")
    kube.fake.set_pods("ml", first, PodState("Succeeded", exit_code=0))
    with kube.fake.lock:
        jobs = kube.fake.bucket("batch/v1", "jobs", "ml")
        jobs[first]["metadata"]["creationTimestamp"] = (datetime.now(UTC) - timedelta(hours=1)).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        jobs[beta]["metadata"]["labels"]["kubetune.dev/matrix"] = "dims"  # what matrix jobs will share

    listed = kube.run("list")
    assert listed.exit_code == 0, listed.output
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[0] == ["GROUP", "NAME", "STATUS", "COMPLETIONS", "EXPORT", "PROGRESS", "AGE"]
    assert [r[:2] for r in rows[1:]] == [["alpha", second], ["alpha", first], ["dims", "(matrix)"]]
    assert rows[2][2:] == ["succeeded", "2/2", "none", "-", "60m"] and rows[3][3:6] == ["pending", "0/2", "waiting"]

    everywhere = json.loads(kube.run("list", "-A", "-o", "json").stdout)["groups"]
    alpha = next(g for g in everywhere if g["group"] == "alpha")
    assert {(s["namespace"], s["name"]) for s in alpha["submissions"]} == {("ml", first), ("ml", second),
                                                                           ("team-a", other)}
    assert next(g for g in everywhere if g["group"] == "dims")["by"] == "matrix"
    assert kube.run("list", "-n", "empty").stdout.strip() == "no kubetune jobs in namespace empty"


def test_logs_of_a_rank_and_following_to_the_end(kube: Kube, tmp_path: Path) -> None:
    name = submit(kube, cluster_spec(tmp_path, export={"gguf": ["q8_0"]}))
    kube.fake.set_pods("ml", name, {0: PodState("Running", log="[train] step 1 loss 2.0\n"),
                                    1: PodState("Running", log="rank one here\n")})
    assert kube.run("logs", name).stdout == "[train] step 1 loss 2.0\n"
    assert kube.run("logs", name, "--rank", "1").stdout == "rank one here\n"
    pending = kube.run("logs", name, "--export")  # suspended until training succeeded: no pod at all
    assert pending.exit_code == 2 and "has not started: it waits, suspended, until training has succeeded" \
        in pending.stderr
    assert "ranks 0 to 1" in kube.run("logs", name, "--rank", "5").stderr

    [rank0] = [p["metadata"]["name"] for p in kube.fake.pods("ml", name) if p["metadata"]["name"].startswith(f"{name}-0-")]

    def training() -> None:
        kube.fake.follow_started.wait(30)
        kube.fake.append_log("ml", rank0, "[train] step 2 loss 1.5\n")
        time.sleep(0.2)
        kube.fake.set_pods("ml", name, {0: PodState("Succeeded", exit_code=0, log="[kubetune] done\n")})

    threading.Thread(target=training, daemon=True).start()
    followed = kube.run("logs", name, "-f")
    assert followed.exit_code == 0, followed.output
    assert followed.stdout == "[train] step 1 loss 2.0\n[train] step 2 loss 1.5\n[kubetune] done\n"
    log_request = next(r for r in kube.fake.requests if r.path.endswith("/log") and r.query.get("follow") == "true")
    assert log_request.query["container"] == "trainer"


def test_logs_follow_waits_for_a_pending_pod(kube: Kube, tmp_path: Path) -> None:
    name = submit(kube, cluster_spec(tmp_path))
    kube.fake.script(name, [PodState("Pending", node=None), PodState("Running", log="started\n"),
                            PodState("Succeeded", exit_code=0)])
    done = kube.run("logs", name, "-f")
    assert done.exit_code == 0, done.output
    assert done.stdout == "started\n" and "waiting for pod" in done.stderr


def test_cancel_deletes_the_jobs_and_what_they_own(kube: Kube, tmp_path: Path) -> None:
    name = submit(kube, cluster_spec(tmp_path, export={"gguf": ["q8_0"]}))
    keep = submit(kube, cluster_spec(tmp_path))
    done = kube.run("cancel", name, "-o", "json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["deleted"] == [{"kind": "Job", "name": f"{name}-export"},
                                                  {"kind": "Job", "name": name}]
    deletes = [r for r in kube.fake.requests if r.method == "DELETE"]
    assert {r.query.get("propagationPolicy") for r in deletes} == {"Foreground"}
    for plural in ("jobs", "configmaps", "services", "serviceaccounts", "pods"):
        assert all(keep in o["metadata"]["name"] for o in kube.fake.items(plural, "ml")), plural
    again = kube.run("cancel", name)
    assert again.exit_code == 2 and f"no kubetune job {name} in namespace ml" in again.stderr
    spec_name = kube.run("status", "bot")
    assert spec_name.exit_code == 2 and f"bot is a spec name; its submissions there: {keep}" in spec_name.stderr
