"""The cluster commands' pure parts: states and reasons read from API objects, error lines from Status
objects, progress lines, tables; flag mistakes caught before any cluster is contacted; and light imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from launcher.backends.kube_errors import Call, api_error
from launcher.cli import main
from launcher.cluster import poll_seconds, progress_line
from launcher.output import columns
from launcher.status import Snapshot, age, duration, pod, state
from launcher.tracking_rest import Progress


def job(conditions: tuple[str, ...] = (), suspend: bool = False, ready: int = 0, queue: str | None = None) -> dict:
    labels = {"kueue.x-k8s.io/queue-name": queue} if queue else {}
    return {"kind": "Job", "metadata": {"name": "j", "labels": labels}, "spec": {"suspend": suspend, "completions": 2},
            "status": {"ready": ready, "conditions": [{"type": c, "status": "True"} for c in conditions]}}


@pytest.mark.parametrize(("obj", "expected"), [
    (job(("SuccessCriteriaMet", "Complete")), "succeeded"),
    (job(("FailureTarget", "Failed")), "failed"),
    (job(suspend=True, queue="team-a"), "queued"),
    (job(suspend=True), "suspended"),
    (job(ready=1), "running"),
    (job(), "pending"),
    ({"kind": "JobSet", "spec": {}, "status": {"conditions": [{"type": "Completed", "status": "True"}]}}, "succeeded"),
    ({"kind": "JobSet", "spec": {}, "status": {"replicatedJobsStatus": [{"name": "node", "ready": 1}]}}, "running"),
])
def test_state_of_jobs_and_jobsets(obj: dict, expected: str) -> None:
    assert state(obj) == expected


def a_pod(status: dict, index: str = "1") -> dict:
    return {"metadata": {"name": "p", "labels": {"batch.kubernetes.io/job-completion-index": index},
                         "annotations": {"kubectl.kubernetes.io/default-container": "trainer"}},
            "spec": {"containers": [{"name": "sidecar"}, {"name": "trainer"}], "nodeName": "gpu-1"}, "status": status}


def container(**state_: dict) -> dict:
    return {"containerStatuses": [{"name": "trainer", "restartCount": 2, **state_}]}


@pytest.mark.parametrize(("status", "reason"), [
    ({"phase": "Failed", **container(state={"terminated": {"reason": "OOMKilled", "exitCode": 137}})},
     "OOMKilled (exit 137)"),
    ({"phase": "Running", **container(state={"running": {}}, lastState={"terminated": {"reason": "OOMKilled",
                                                                                        "exitCode": 137}})},
     "restarted after OOMKilled (exit 137)"),
    ({"phase": "Pending", **container(state={"waiting": {"reason": "ImagePullBackOff", "message": "no such tag"}})},
     "ImagePullBackOff: no such tag"),
    ({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                          "message": "0/3 nodes: Insufficient nvidia.com/gpu"}]},
     "Unschedulable: 0/3 nodes: Insufficient nvidia.com/gpu"),
    ({"phase": "Pending", "initContainerStatuses": [{"name": "preflight", "state": {"terminated": {
        "reason": "Error", "exitCode": 3}}}]}, "init container preflight: Error (exit 3)"),
    ({"phase": "Failed", "reason": "Evicted", "message": "low on memory"}, "Evicted: low on memory"),
])
def test_pod_reasons_say_why(status: dict, reason: str) -> None:
    p = pod(a_pod(status))
    assert (p.rank, p.node, p.reason) == (1, "gpu-1", reason)


def test_the_default_container_is_the_one_described() -> None:
    assert pod(a_pod({"phase": "Running", **container(state={"running": {}})})).restarts == 2


@pytest.mark.parametrize(("training", "export", "overall"), [
    ("succeeded", None, "succeeded"), ("succeeded", "running", "running"), ("succeeded", "succeeded", "succeeded"),
    ("succeeded", "failed", "failed"), ("failed", "pending", "failed"), ("queued", "pending", "queued"),
])
def test_a_submission_is_done_when_training_and_export_are(training: str, export: str | None, overall: str) -> None:
    snap = Snapshot("n", "ml", "s", "", training, "0/1", export)
    assert snap.status == overall and snap.done == (overall in ("succeeded", "failed"))


def test_durations_and_ages() -> None:
    assert [duration(s) for s in (5, 119, 300, 3599, 7300, 90000, 200000)] == [
        "5s", "119s", "5m00s", "59m", "2h01m", "25h00m", "2d7h"]
    assert age(None) == "-" and age("2020-01-01T00:00:00Z").endswith("h")


def test_columns_line_up() -> None:
    assert columns(["A", "LONGER"], [["x", None], ["long value", 3]]) == [
        "A            LONGER", "x            -", "long value   3"]


CALL = Call("create", "jobs.batch", "ml", "bot-x1y2z", "https://k8s.example:6443", "prod")


def status(code: int, reason: str, message: str, **details: object) -> str:
    import json

    return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                       "reason": reason, "code": code, "details": details})


def test_api_errors_are_one_line_naming_the_object_and_cause() -> None:
    forbidden = api_error(403, "Forbidden", status(403, "Forbidden", 'jobs.batch is forbidden: User "bob" cannot '
                                                  'create resource "jobs"'), CALL)
    assert forbidden.message.startswith("ml/bot-x1y2z: forbidden: you may not create jobs.batch in namespace ml;")
    assert "\n" not in forbidden.message
    invalid = api_error(422, "Unprocessable Entity", status(422, "Invalid", "Job.batch is invalid", causes=[
        {"field": "spec.completions", "message": "must be >= 0"}, {"field": "metadata.name", "message": "too long"}]),
        CALL)
    assert invalid.message == "jobs.batch ml/bot-x1y2z is invalid: spec.completions: must be >= 0; metadata.name: too long"
    assert api_error(404, "Not Found", status(404, "NotFound", 'jobs.batch "bot-x1y2z" not found'), CALL).message == (
        'jobs.batch ml/bot-x1y2z: not found (jobs.batch "bot-x1y2z" not found)')
    assert "https://k8s.example:6443 (context prod) rejected your credentials" in api_error(401, "", "", CALL).message
    other = api_error(500, "Internal Server Error", "<html>oops</html>", CALL)
    assert other.code == 500 and other.message == (
        "jobs.batch ml/bot-x1y2z: create failed with 500 Internal Server Error: Internal Server Error")


def progress_of(**kw: object) -> Progress:
    base = dict(run_id="r1", run_status="RUNNING", tracking_uri="http://m", metrics={"loss": 1.23456,
                "learning_rate": 0.0002, "tokens_per_second": 15300.4}, step=40, total=200.0, done=40.0,
                unit="steps", eta_seconds=4000.0)
    return Progress(**(base | kw))  # type: ignore[arg-type]


def test_progress_line() -> None:
    assert progress_line(progress_of()) == "step 40/200 (20%), loss 1.2346, lr 2.00e-04, tokens/s 15,300, ETA 66m"
    by_epoch = progress_of(unit="epochs", total=3.0, done=1.5, eta_seconds=None, metrics={})
    assert progress_line(by_epoch) == "epoch 1.50/3 (50%)"


def test_registered_model_prefers_the_alias() -> None:
    versions = [{"name": "bot", "version": "1", "aliases": []}, {"name": "bot", "version": "3", "aliases": []},
                {"name": "bot", "version": "2", "aliases": ["candidate"]}]
    assert progress_of(registered=versions).registered_model == "models:/bot@candidate"
    assert progress_of(registered=versions[:2]).registered_model == "models:/bot/3"
    assert progress_of().registered_model is None


def test_poll_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_POLL_SECONDS", "0.5")
    assert poll_seconds() == 0.5
    monkeypatch.setenv("KUBETUNE_POLL_SECONDS", "0")
    with pytest.raises(Exception, match="a number above 0"):
        poll_seconds()


def test_flag_mistakes_are_caught_before_any_cluster() -> None:
    done = CliRunner().invoke(main, ["logs", "bot-x1y2z", "--rank", "1", "--export", "--kubeconfig", "/nonexistent"])
    assert done.exit_code == 2 and "--rank and --export: pick one" in done.output
    helped = CliRunner().invoke(main, ["--help"])
    assert all(f"  {c} " in helped.output for c in ("list", "status", "logs", "cancel", "submit"))


def test_the_cluster_commands_import_nothing_heavy() -> None:
    code = textwrap.dedent("""
        import sys
        import launcher.cli, launcher.cli.cluster, launcher.cluster, launcher.status, launcher.views
        import launcher.tracking_rest, launcher.output, launcher.backends.kubernetes, launcher.backends.kube_submit
        print(sorted(m for m in ("kubernetes", "mlflow", "torch", "urllib3") if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # the kubernetes client loads when a command talks to a cluster
