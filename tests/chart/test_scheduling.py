"""Namespace, labels and lifetimes on every object; Kueue, Volcano, priority, and the JobSet rendering."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from launcher import client, helm
from tests.chart.scenarios import (
    NAMESPACE,
    SCENARIOS,
    by_kind,
    component,
    env_of,
    job_templates,
    pod_templates,
    render,
    render_error,
    scenario_values,
    training_pod,
    values_file,
)

pytestmark = pytest.mark.usefixtures("helm_binary")

NAMESPACED = {"ConfigMap", "Service", "Job", "ServiceAccount", "Secret", "JobSet", "NetworkPolicy", "Role",
              "RoleBinding"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_and_pod_is_labelled_and_namespaced(scenario: str, tmp_path: Path) -> None:
    ci = scenario_values(scenario)
    export = values_file(tmp_path, {"export": {"enabled": True}})
    docs = render(scenario, export, namespace="team-x")
    expected = {
        "app.kubernetes.io/name": "kubetune",
        "app.kubernetes.io/instance": "kubetune-ci",
        "app.kubernetes.io/managed-by": "Helm",
        "app.kubernetes.io/part-of": "kubetune",
        "kubetune.dev/job": ci["job"]["specName"],
        "kubetune.dev/submission": ci["job"]["name"],
    }
    for doc in docs:
        assert doc["kind"] in NAMESPACED
        assert doc["metadata"]["namespace"] == "team-x", doc["kind"]
        assert expected.items() <= doc["metadata"]["labels"].items(), doc["kind"]
        assert doc["metadata"]["labels"]["helm.sh/chart"].startswith("kubetune-")
    for where, pod in pod_templates(docs):
        assert expected.items() <= pod["metadata"]["labels"].items(), where
        assert component(pod) in ("training", "export")


def test_launch_render_passes_the_namespace(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "ns-test", "base_model": "org/model",
                                    "data": {"train": "s3://d/train.jsonl"}, "output": {"uri": "s3://r/"},
                                    "export": {"gguf": ["q8_0"]}}))
    sub = client.prepare(spec, dry_run=True)
    docs = helm.parse_manifests(client.render(sub, namespace="research"))
    assert {d["kind"] for d in docs} == {"ConfigMap", "Service", "Job", "ServiceAccount", "Role", "RoleBinding"}
    assert {d["metadata"]["namespace"] for d in docs} == {"research"}
    assert {d["metadata"]["labels"]["kubetune.dev/job"] for d in docs} == {"ns-test"}
    assert {d["metadata"]["labels"]["kubetune.dev/submission"] for d in docs} == {sub.name}


def test_the_spec_name_label_comes_from_the_spec_without_launch(tmp_path: Path) -> None:
    """`helm install` with only `spec` and `accelerateConfig` set still labels by the spec's name."""
    extra = values_file(tmp_path, {"job": {"specName": "", "name": ""}})
    docs = render("cpu", extra)
    assert {d["metadata"]["labels"]["kubetune.dev/job"] for d in docs} == {"tiny-cpu"}
    assert {d["metadata"]["labels"]["kubetune.dev/submission"] for d in docs} == {"kubetune-ci"}  # the release name


def test_lifetimes_and_grace_period(tmp_path: Path) -> None:
    for where, _, spec in job_templates(render("cpu")):
        assert spec["ttlSecondsAfterFinished"] == 604800, where
        assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == 300, where
        assert "activeDeadlineSeconds" not in spec and "suspend" not in spec
    # TTL 0 (delete at once) renders as 0; null keeps them. The export Job has its own (export.ttlSecondsAfterFinished):
    # the training Job's never deletes a running export
    jobs = {component({"metadata": meta}): spec for _, meta, spec in job_templates(render("kueue"))}
    assert jobs["training"]["ttlSecondsAfterFinished"] == 0
    assert jobs["export"]["ttlSecondsAfterFinished"] == 604800
    keep = values_file(tmp_path, {"job": {"ttlSecondsAfterFinished": None, "terminationGracePeriodSeconds": 900,
                                          "activeDeadlineSeconds": 86400}})
    for where, _, spec in job_templates(render("cpu", keep)):
        assert "ttlSecondsAfterFinished" not in spec, where
        assert spec["activeDeadlineSeconds"] == 86400
        assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == 900


def test_kueue_queue_label_and_suspended_jobs() -> None:
    docs = render("kueue")
    jobs = by_kind(docs, "Job")
    assert sorted(component(j) for j in jobs) == ["export", "training"]
    for job in jobs:
        assert job["spec"]["suspend"] is True  # Kueue unsuspends it on admission
        assert job["spec"]["template"]["spec"]["priorityClassName"] == "ml-high"
        assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]
    training = next(j for j in jobs if component(j) == "training")
    export = next(j for j in jobs if component(j) == "export")
    assert training["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    # the export Job enters the queue only once training succeeded: rank 0 adds the label (trainer/train/start_export.py)
    assert "kueue.x-k8s.io/queue-name" not in export["metadata"]["labels"]
    [trainer] = training["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert env["KUBETUNE_EXPORT_JOB"] == export["metadata"]["name"] and env["KUBETUNE_EXPORT_QUEUE"] == "team-a"
    for doc in by_kind(docs, "ConfigMap") + by_kind(docs, "Service"):
        assert "kueue.x-k8s.io/queue-name" not in doc["metadata"]["labels"]


def test_volcano_gang_and_queue(tmp_path: Path) -> None:
    export = values_file(tmp_path, {"export": {"enabled": True}})
    docs = render("volcano", export)
    training = next(j for j in by_kind(docs, "Job") if component(j) == "training")
    assert training["metadata"]["annotations"] == {"scheduling.volcano.sh/group-min-member": "3"}  # all ranks at once
    for where, pod in pod_templates(docs):
        assert pod["spec"]["schedulerName"] == "volcano", where
        assert pod["metadata"]["annotations"]["scheduling.volcano.sh/queue-name"] == "research", where
    for job in by_kind(docs, "Job"):
        assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
        # the export waits, suspended, for training's rank 0 to start it
        assert job["spec"].get("suspend", False) is (component(job) == "export")


def test_other_schedulers_get_no_volcano_annotations(tmp_path: Path) -> None:
    extra = values_file(tmp_path, {"scheduling": {"schedulerName": "scheduler-plugins-scheduler"}})
    docs = render("a100-fsdp", extra)
    (job,) = by_kind(docs, "Job")
    assert "annotations" not in job["metadata"]
    assert training_pod(docs)["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
    bad = values_file(tmp_path, {"scheduling": {"volcano": {"queue": "research"}}}, "bad.yaml")
    assert "scheduling.volcano.queue is \"research\" but scheduling.schedulerName is \"\"" in render_error("cpu", bad)


def test_jobset_rendering() -> None:
    docs = render("jobset")
    assert {d["kind"] for d in docs} == {"ServiceAccount", "ConfigMap", "JobSet", "NetworkPolicy", "Role",
                                         "RoleBinding"}  # JobSet: the Service; Role: the progress annotation
    (js,) = by_kind(docs, "JobSet")
    name = scenario_values("jobset")["job"]["name"]
    assert js["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    assert js["metadata"]["name"] == name and js["metadata"]["namespace"] == NAMESPACE
    assert js["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-b"
    spec = js["spec"]
    assert spec["suspend"] is True and spec["ttlSecondsAfterFinished"] == 604800
    assert spec["failurePolicy"] == {"maxRestarts": 2}  # job.backoffLimit: incidents survived, each restarts all
    assert spec["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True, "subdomain": name}
    (rj,) = spec["replicatedJobs"]
    assert rj["name"] == "node" and rj["replicas"] == 1
    job = rj["template"]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == 2
    assert job["backoffLimit"] == 0 and "backoffLimitPerIndex" not in job  # a counted failure: the JobSet restarts
    assert not {"suspend", "ttlSecondsAfterFinished"} & set(job)  # the JobSet's, not its Jobs'
    pod = job["template"]["spec"]
    assert "subdomain" not in pod  # JobSet sets hostname and subdomain
    (trainer,) = pod["containers"]
    # JobSet names pod i `<jobset>-<replicatedJob>-<job index>-<i>` in the subdomain `<jobset>`
    assert env_of(trainer)["KUBETUNE_MASTER_ADDR"] == f"{name}-node-0-0.{name}"
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert len(f"{name}-node-0-511") <= 63  # the longest pod host name of a 512-node job is a DNS label


def test_jobset_carries_the_volcano_gang_on_its_job_template(tmp_path: Path) -> None:
    extra = values_file(tmp_path, {"scheduling": {"schedulerName": "volcano"}})
    (js,) = by_kind(render("jobset", extra), "JobSet")
    (rj,) = js["spec"]["replicatedJobs"]
    assert rj["template"]["metadata"]["annotations"] == {"scheduling.volcano.sh/group-min-member": "2"}


def test_a_deadline_fails_the_jobset_instead_of_restarting_it(tmp_path: Path) -> None:
    extra = values_file(tmp_path, {"job": {"activeDeadlineSeconds": 7200}})
    (js,) = by_kind(render("jobset", extra), "JobSet")
    assert js["spec"]["failurePolicy"] == {
        "maxRestarts": 2,
        "rules": [{"name": "deadline", "action": "FailJobSet", "onJobFailureReasons": ["DeadlineExceeded"]}]}
    (rj,) = js["spec"]["replicatedJobs"]
    assert rj["template"]["spec"]["activeDeadlineSeconds"] == 7200
