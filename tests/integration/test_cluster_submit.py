"""`launch submit` against a cluster (the fake API server): what it creates, in which order, owned by
what, in which namespace; `--wait` to success and to failure; Kueue and JobSet submissions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.cluster_cli import FAST_POLL, Kube, cluster_spec, fake_cluster
from tests.integration.fake_kube_workloads import PodState

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("helm_binary")]


def owners(obj: dict) -> list[tuple[str, str, str]]:
    return [(o["kind"], o["name"], o["uid"]) for o in obj["metadata"].get("ownerReferences", [])]


def test_submit_prints_the_plan_then_creates_every_object_owned_by_the_job(kube: Kube, tmp_path: Path) -> None:
    spec = cluster_spec(tmp_path, export={"gguf": ["q8_0"]})
    done = kube.run("submit", str(spec))
    assert done.exit_code == 0, done.output
    [name] = kube.submitted()
    plan = done.stdout.split("created ")[0]
    for line in ("GPUs:       none (CPU only)", "strategy:   ddp", "nodes:      2 pod(s) of Job", "queue:      none",
                 "namespace:  ml (context fake", "image:      ghcr.io/kubetune/trainer:", f"Job {name}-export"):
        assert line in plan, plan
    job = kube.fake.get("jobs", "ml", name)
    export = kube.fake.get("jobs", "ml", f"{name}-export")
    assert job is not None and not job["spec"].get("suspend")  # let go once everything it needs exists
    assert export is not None and export["spec"]["suspend"]  # left suspended: training's rank 0 starts it
    ref = ("Job", name, job["metadata"]["uid"])
    assert owners(export) == [ref]  # goes with a training that never succeeds; the trainer drops it on start
    for plural, obj_name in (("configmaps", name), ("services", name), ("serviceaccounts", name),
                             ("roles", name), ("rolebindings", name)):
        obj = kube.fake.get(plural, "ml", obj_name)  # owned by both Jobs: they live as long as either
        assert obj is not None and owners(obj) == [ref, ("Job", f"{name}-export", export["metadata"]["uid"])], obj
    assert owners(job) == []
    # the Job first (suspended: no pod may start before its ConfigMap exists), the rest, then unsuspended
    writes = [(r.method, r.path.rsplit("/", 1)[-1], (r.body or {}).get("spec", {}).get("suspend"))
              for r in kube.fake.requests if r.method in ("POST", "PATCH")]
    assert writes[0] == ("POST", "jobs", True)
    assert [w[1] for w in writes[1:7]] == ["jobs", "serviceaccounts", "configmaps", "services", "roles",
                                           "rolebindings"]
    assert writes[7:] == [("PATCH", name, False)]  # the training Job only: the export waits
    assert len(kube.fake.pods("ml", name)) == 2 and kube.fake.pods("ml", f"{name}-export") == []
    assert f"waiting Job ml/{name}-export (suspended until training succeeds" in done.stdout
    assert f"launch status {name} -n ml" in done.stdout


def test_each_submission_is_a_new_uniquely_named_job(kube: Kube, tmp_path: Path) -> None:
    spec = cluster_spec(tmp_path)
    for _ in range(3):
        assert kube.run("submit", str(spec)).exit_code == 0
    names = kube.submitted()
    assert len(set(names)) == 3 and all(n.startswith("bot-") and len(n) == len("bot-") + 5 for n in names)


def test_namespace_from_the_flag_and_from_the_context(kube: Kube, tmp_path: Path) -> None:
    spec = str(cluster_spec(tmp_path))
    assert kube.run("submit", spec, "-n", "team-a").exit_code == 0
    assert kube.run("submit", spec, "--context", "other").exit_code == 0  # the context's namespace: team-b
    for ns in ("team-a", "team-b"):
        [name] = kube.submitted(ns)
        cm = kube.fake.get("configmaps", ns, name)
        assert cm is not None and cm["metadata"]["namespace"] == ns
    assert kube.submitted("ml") == []


def test_an_existing_service_account_is_reused_not_owned(kube: Kube, tmp_path: Path) -> None:
    kube.fake.store("v1", "serviceaccounts", "ml", {"apiVersion": "v1", "kind": "ServiceAccount",
                                                    "metadata": {"name": "trainer"}})
    values = tmp_path / "platform.yaml"
    values.write_text(yaml.safe_dump({"serviceAccount": {"create": True, "name": "trainer"}}))
    for _ in range(2):
        done = kube.run("submit", str(cluster_spec(tmp_path)), "-f", str(values))
        assert done.exit_code == 0, done.output
        assert "reused ServiceAccount ml/trainer" in done.stdout
    sa = kube.fake.get("serviceaccounts", "ml", "trainer")
    assert sa is not None and "ownerReferences" not in sa["metadata"]  # shared: never garbage-collected with a job
    for name in kube.submitted():
        job = kube.fake.get("jobs", "ml", name)
        assert job is not None and job["spec"]["template"]["spec"]["serviceAccountName"] == "trainer"


def wait_json(kube: Kube, spec: Path) -> tuple[int, dict, str]:
    done = kube.run("submit", str(spec), "--wait", "-o", "json")
    return done.exit_code, json.loads(done.stdout), done.stderr


def test_wait_follows_the_job_to_success(kube: Kube, tmp_path: Path) -> None:
    spec = cluster_spec(tmp_path, export={"gguf": ["q8_0"]})
    # every poll reads the pods once, and each read moves every Job's pods one step
    kube.fake.every_job = [PodState("Pending", node=None), PodState("Running"), PodState("Running"),
                           PodState("Succeeded", exit_code=0)]
    code, result, progress = wait_json(kube, spec)
    assert code == 0, progress
    [name] = kube.submitted()
    assert {k: result[k] for k in ("name", "namespace", "status")} == {"name": name, "namespace": "ml",
                                                                       "status": "succeeded"}
    assert result["mlflow_run_id"] is None and result["registered_model"] is None  # no tracking server in this spec
    assert result["training"] == "succeeded" and result["export"] == "succeeded"
    assert f"rank 1 ({name}-1-" in progress and ": Running on node-1" in progress
    assert "Succeeded" in progress and f"job ml/{name} succeeded" in progress
    assert progress.index(f"job {name}: pending") < progress.index(f"job {name}: running") < progress.index(
        f"job {name}: succeeded")


OOM_LOG = "[train] step 3 loss 2.1\n[kubetune] error: CUDA out of memory on rank 1: lower training.per_device_batch_size\n"


def test_wait_reports_a_failed_rank_and_exits_1(kube: Kube, tmp_path: Path) -> None:
    # rank 1 runs out of memory on every attempt: the Job retries it job.backoffLimit (2) times, then fails
    oom = {1: PodState("Failed", exit_code=137, reason="OOMKilled", log=OOM_LOG)}
    kube.fake.every_job = [PodState("Running"), {0: PodState("Running"), **oom}, oom, oom]
    code, result, progress = wait_json(kube, cluster_spec(tmp_path))
    [name] = kube.submitted()
    assert code == 1
    assert result["name"] == name and result["status"] == "failed" and result["training"] == "failed"
    assert f"rank 1 ({name}-1-" in progress and "failed: OOMKilled (exit 137)" in progress
    assert "CUDA out of memory on rank 1: lower training.per_device_batch_size" in progress  # the rank's own words
    assert f"launch logs {name} --rank 1 -n ml" in progress
    assert f"error: job ml/{name} failed" in progress and "Traceback" not in progress


def test_a_queued_job_is_left_for_kueue_to_start(kube: Kube, tmp_path: Path) -> None:
    done = kube.run("submit", str(cluster_spec(tmp_path, resources={"gpu": "none", "queue": "team-a"})), "-o", "yaml")
    assert done.exit_code == 0, done.output
    [name] = kube.submitted()
    job = kube.fake.get("jobs", "ml", name)
    assert job is not None and job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert not [r for r in kube.fake.requests if r.method == "PATCH"] and kube.fake.pods("ml", name) == []
    result = yaml.safe_load(done.stdout)
    assert result["status"] == "queued" and {"kind": "Job", "name": name, "note": "queued"} in result["objects"]
    assert "queue:      team-a (Kueue LocalQueue)" in done.stderr and f"queued Job ml/{name}" in done.stderr


def test_a_failure_midway_leaves_nothing_behind(kube: Kube, tmp_path: Path) -> None:
    kube.fake.deny("create", "services")
    done = kube.process("submit", str(cluster_spec(tmp_path)))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith("error: ml/bot-") and "you may not create services in namespace ml" in first
    assert "deleted Job ml/bot-" in done.stderr
    assert kube.fake.items("jobs", "ml") == [] and kube.fake.items("configmaps", "ml") == []
    assert kube.fake.items("pods", "ml") == []


def test_the_export_starts_when_training_succeeded_and_outlives_the_training_job(kube: Kube, tmp_path: Path) -> None:
    assert kube.run("submit", str(cluster_spec(tmp_path, export={"gguf": ["q8_0"]}))).exit_code == 0
    [name] = kube.submitted()
    status = json.loads(kube.run("status", name, "-o", "json").stdout)
    assert status["export"] == "waiting" and kube.fake.pods("ml", f"{name}-export") == []  # nothing reserved
    shown = kube.run("status", name).stdout
    assert "export waiting" in shown, shown
    kube.fake.set_pods("ml", name, PodState("Succeeded", exit_code=0))  # rank 0 then starts it (fake: as the trainer)
    export = kube.fake.get("jobs", "ml", f"{name}-export")
    assert export is not None and not export["spec"]["suspend"] and owners(export) == []
    assert len(kube.fake.pods("ml", f"{name}-export")) == 1
    with kube.fake.lock:  # the training Job's TTL runs out (the TTL controller deletes it in the background)
        kube.fake.remove("batch/v1", "jobs", "ml", name)
    assert kube.fake.get("jobs", "ml", f"{name}-export") is not None  # the export runs on
    for plural in ("configmaps", "serviceaccounts", "roles", "rolebindings"):  # what its pod mounts stays with it
        obj = kube.fake.get(plural, "ml", name)
        assert obj is not None and [o[1] for o in owners(obj)] == [f"{name}-export"], plural
    with kube.fake.lock:  # then its own TTL
        kube.fake.remove("batch/v1", "jobs", "ml", f"{name}-export")
    assert kube.fake.items("configmaps", "ml") == [] and kube.fake.items("roles", "ml") == []


def test_a_training_that_never_succeeds_takes_its_waiting_export_along(kube: Kube, tmp_path: Path) -> None:
    assert kube.run("submit", str(cluster_spec(tmp_path, export={"gguf": ["q8_0"]}))).exit_code == 0
    [name] = kube.submitted()
    with kube.fake.lock:  # a failed training Job past its TTL
        kube.fake.remove("batch/v1", "jobs", "ml", name)
    for plural in ("jobs", "configmaps", "serviceaccounts", "roles", "rolebindings", "pods"):
        assert kube.fake.items(plural, "ml") == [], plural


def test_an_export_training_could_not_start_is_shown_with_the_command_that_starts_it(kube: Kube,
                                                                                     tmp_path: Path) -> None:
    kube.fake.trainer_starts_export = False  # e.g. the trainer's PATCH was refused
    assert kube.run("submit", str(cluster_spec(tmp_path, export={"gguf": ["q8_0"]}))).exit_code == 0
    [name] = kube.submitted()
    kube.fake.set_pods("ml", name, PodState("Succeeded", exit_code=0))
    status = json.loads(kube.run("status", name, "-o", "json").stdout)
    assert (status["training"], status["export"], status["status"]) == ("succeeded", "not started", "running")
    [blocked] = status["blocked"]
    assert blocked["where"] == f"Job ml/{name}-export" and f"launch logs {name}" in blocked["message"]
    assert blocked["fix"] == (f"start it: kubectl patch job {name}-export -n ml --type merge "
                              """-p '{"metadata":{"ownerReferences":null},"spec":{"suspend":false}}'""")


def test_a_failed_submit_with_an_export_deletes_both_jobs(kube: Kube, tmp_path: Path) -> None:
    kube.fake.deny("create", "rolebindings.rbac.authorization.k8s.io")  # the last object created
    done = kube.process("submit", str(cluster_spec(tmp_path, export={"gguf": ["q8_0"]})))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "deleted Job ml/bot-" in done.stderr and "-export and Job ml/bot-" in done.stderr
    for plural in ("jobs", "configmaps", "serviceaccounts", "services", "roles", "pods"):
        assert kube.fake.items(plural, "ml") == [], plural


def test_a_jobset_owns_the_rest_and_starts_after_them(tmp_path: Path) -> None:
    values = tmp_path / "jobset.yaml"
    values.write_text(yaml.safe_dump({"jobset": {"enabled": True}}))
    with fake_cluster(tmp_path, jobset=True) as kube:
        done = kube.run("submit", str(cluster_spec(tmp_path)), "-f", str(values))
        assert done.exit_code == 0, done.output
        [jobset] = kube.fake.items("jobsets", "ml")
        name = jobset["metadata"]["name"]
        assert "nodes:      2 pod(s) of JobSet" in done.stdout and not jobset["spec"].get("suspend")
        patch = next(r for r in kube.fake.requests if r.method == "PATCH")
        assert patch.path.endswith(f"/jobsets/{name}") and patch.body == {"spec": {"suspend": False}}
        assert patch.query.get("fieldValidation") == "Strict"  # a custom object's patch too
        posted = next(r for r in kube.fake.requests if r.method == "POST" and r.path.endswith("/jobsets"))
        assert posted.query.get("fieldValidation") == "Strict"
        cm = kube.fake.get("configmaps", "ml", name)
        assert cm is not None and owners(cm) == [("JobSet", name, jobset["metadata"]["uid"])]
        assert kube.fake.get("services", "ml", name) is None  # JobSet makes its own headless Service
        child = kube.fake.get("jobs", "ml", f"{name}-node-0")
        assert child is not None and len(kube.fake.pods("ml", f"{name}-node-0")) == 2
        listed = kube.run("list", "-o", "json")
        [group] = json.loads(listed.stdout)["groups"]
        assert [s["name"] for s in group["submissions"]] == [name]  # the JobSet, not its child Job
        assert kube.run("cancel", name).exit_code == 0
        assert kube.fake.items("jobsets", "ml") == [] and kube.fake.items("pods", "ml") == []


def test_ctrl_c_stops_waiting_not_the_job(kube: Kube, tmp_path: Path) -> None:
    kube.fake.every_job = [PodState("Running")]
    env = {k: v for k, v in os.environ.items() if k != "KUBETUNE_DEBUG"} | FAST_POLL | {"PYTHONFAULTHANDLER": "1"}
    # As from a terminal: Ctrl-C delivered. A test run started in the background (`make test &`) inherits SIGINT
    # ignored, as the shell sets it for background jobs, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "submit", str(cluster_spec(tmp_path)), "--wait",
                             "--kubeconfig", str(kube.config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while sum(r.path.endswith("/pods") for r in kube.fake.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # until it is following the job
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # say where it hangs: faulthandler prints every thread's stack on SIGABRT
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=20)
            pytest.fail(f"launch did not stop within 60 s of Ctrl-C; its threads then:\n{err[-6000:]}")
    finally:
        proc.kill()
    [name] = kube.submitted()
    assert proc.returncode == 130, err
    assert f"stopped waiting; job ml/{name} keeps running: `launch status {name} -n ml`" in err
    job = kube.fake.get("jobs", "ml", name)
    assert job is not None and job["status"]["active"] == 2


def test_a_network_policy_is_created_before_any_pod_and_owned_like_the_rest(kube: Kube, tmp_path: Path) -> None:
    values = tmp_path / "np.yaml"
    values.write_text(yaml.safe_dump({"networkPolicy": {"enabled": True}}))
    done = kube.run("submit", str(cluster_spec(tmp_path, export={"gguf": ["q8_0"]})), "-f", str(values))
    assert done.exit_code == 0, done.output
    [name] = kube.submitted()
    policy = kube.fake.get("networkpolicies", "ml", name)
    assert policy is not None, [r.path for r in kube.fake.requests if r.method == "POST"]
    job, export = kube.fake.get("jobs", "ml", name), kube.fake.get("jobs", "ml", f"{name}-export")
    assert {o[2] for o in owners(policy)} == {job["metadata"]["uid"], export["metadata"]["uid"]}
    assert policy["spec"]["podSelector"] == {"matchLabels": {"kubetune.dev/submission": name}}
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert {53, 443, 6443} <= ports  # DNS, HTTPS (S3, MLflow), the API server (the export's start)
    posts = [r.path.rsplit("/", 1)[-1] for r in kube.fake.requests if r.method == "POST"]
    assert posts.index("networkpolicies") < posts.index("configmaps")  # in place before the Job is let go
