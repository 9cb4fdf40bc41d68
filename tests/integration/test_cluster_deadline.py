"""A job's deadline (`resources.deadline` -> `activeDeadlineSeconds`) and `launch submit --resume` on a cluster,
against the fake API server: its Job controller fails a Job past its deadline (DeadlineExceeded) and deletes its
running pods; `launch status` says why and how to go on; `--resume` deletes the failed Jobs and creates the same
objects again under the same name, with the chat-template date the job first trained with."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.cluster_cli import Kube, cluster_spec, submit
from tests.integration.fake_kube_workloads import PodState

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("helm_binary")]


def spec_in_cluster(kube: Kube, name: str) -> dict:
    return yaml.safe_load(kube.fake.get("configmaps", "ml", name)["data"]["spec.yaml"])


def test_a_job_past_its_deadline_fails_and_status_says_how_to_go_on(kube: Kube, tmp_path: Path) -> None:
    spec = cluster_spec(tmp_path)
    done = kube.run("submit", str(spec), "--set", "resources.deadline=1s")
    assert done.exit_code == 0, done.output
    assert "deadline: 0.0 h (resources.deadline: 1s)" in done.stderr
    name = kube.submitted()[-1]
    assert kube.fake.get("jobs", "ml", name)["spec"]["activeDeadlineSeconds"] == 1
    kube.fake.set_pods("ml", name, PodState("Running"))
    time.sleep(1.1)
    kube.fake.tick("ml", name)
    assert kube.fake.pods("ml", name) == []  # the Job controller deleted the running pods
    status = kube.run("status", name)
    assert status.exit_code == 0, status.output
    assert "training failed: DeadlineExceeded: Job was active longer than specified deadline" in status.stdout
    assert (f"resume it with more time: `launch submit SPEC --resume {name} --set resources.deadline=72h -n ml`"
            in status.stdout)
    doc = json.loads(kube.run("status", name, "-o", "json").stdout)
    assert doc["status"] == "failed" and doc["deadline_seconds"] == 1
    assert doc["failure"] == {"reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}


def test_resume_runs_a_failed_job_again_under_its_name_with_its_template_date(kube: Kube, tmp_path: Path) -> None:
    spec = cluster_spec(tmp_path, export={"gguf": ["q8_0"]})
    name = submit(kube, spec, "--set", "resources.deadline=1s")
    first = kube.fake.get("jobs", "ml", name)
    # the job was submitted on another day: its ConfigMap says which
    cm = kube.fake.bucket("v1", "configmaps", "ml")[name]
    old = yaml.safe_load(cm["data"]["spec.yaml"])
    old["data"]["template_date"] = "2026-11-30"
    cm["data"]["spec.yaml"] = yaml.safe_dump(old)
    kube.fake.set_pods("ml", name, PodState("Running"))
    time.sleep(1.1)
    kube.fake.tick("ml", name)

    done = kube.run("submit", str(spec), "--resume", name, "--set", "resources.deadline=3h")
    assert done.exit_code == 0, done.output
    assert f"deleted the failed job ml/{name} and its objects" in done.stdout + done.stderr
    assert "deadline: 3.0 h (resources.deadline: 3h)" in done.stderr
    assert kube.submitted() == [name]  # the same name, a new Job
    again = kube.fake.get("jobs", "ml", name)
    assert again["metadata"]["uid"] != first["metadata"]["uid"]
    assert again["spec"]["activeDeadlineSeconds"] == 3 * 3600
    assert kube.fake.get("jobs", "ml", f"{name}-export") is not None
    resumed = spec_in_cluster(kube, name)
    assert resumed["data"]["template_date"] == "2026-11-30"
    assert resumed["resources"]["deadline"] == "3h"
    deletes = [(r.method, r.path) for r in kube.fake.requests if r.method == "DELETE"]
    assert [p.rsplit("/", 1)[1] for _, p in deletes] == [f"{name}-export", name]


def test_resume_refuses_a_live_or_succeeded_job_and_takes_a_cancelled_one(kube: Kube, tmp_path: Path) -> None:
    spec = cluster_spec(tmp_path)
    name = submit(kube, spec)
    kube.fake.set_pods("ml", name, PodState("Running"))
    live = kube.run("submit", str(spec), "--resume", name)
    assert live.exit_code == 2
    assert f"job ml/{name} is running; Kubernetes restarts a preempted job's pods" in live.stderr
    assert f"`launch cancel {name} -n ml`, then --resume" in live.stderr

    assert kube.run("cancel", name).exit_code == 0
    back = kube.run("submit", str(spec), "--resume", name)
    assert back.exit_code == 0, back.output
    assert kube.submitted() == [name]

    kube.fake.set_pods("ml", name, PodState("Succeeded", exit_code=0))
    done = kube.run("submit", str(spec), "--resume", name)
    assert done.exit_code == 2 and "succeeded, there is nothing to resume" in done.stderr

    other = kube.run("submit", str(spec), "--resume", "chat-abcde")
    assert other.exit_code == 2 and "--resume chat-abcde: not a submission of" in other.stderr
