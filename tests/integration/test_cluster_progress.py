"""Live progress on a cluster without MLflow, at the HTTP boundary: the trainer's rank 0 and the export pod annotate
their own Job through the real publisher (trainer/tracking/progress.py), with the ServiceAccount token the chart's
Role binds (the fake API server enforces that Role for it), and `launch status`, `status -o json` and `launch list`
read it back (launcher/progress.py). No tracking server anywhere."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerState

from tests.integration.cluster_cli import Kube, cluster_spec, fake_cluster, submit
from tests.integration.fake_kube_workloads import PodState
from trainer.tracking.progress import ANNOTATION, Publisher, payload
from trainer.tracking.progress_callback import ProgressCallback

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("helm_binary")]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pod_of(kube: Kube, job: str, ns: str = "ml") -> tuple[dict[str, str], str]:
    """(env, ServiceAccount) of the main container of a pod of `job`, as the chart rendered it."""
    found = kube.fake.get("jobs", ns, job)
    assert found is not None, job
    spec = found["spec"]["template"]["spec"]
    [main] = [c for c in spec["containers"] if c["name"] in ("trainer", "export")]
    return {e["name"]: e.get("value", "") for e in main.get("env", [])}, spec["serviceAccountName"]


def publisher(kube: Kube, tmp_path: Path, job: str, ns: str = "ml", **kw: Any) -> tuple[Publisher, list[str]]:
    """The publisher a pod of `job` makes: its env, its ServiceAccount's projected token (here a file), the API
    server's address; its warnings collected."""
    env, account = pod_of(kube, job, ns)
    tokens = tmp_path / f"token-{job}"
    tokens.mkdir()
    (tokens / "token").write_text(kube.fake.service_account_token(ns, account))
    (tokens / "namespace").write_text(ns)
    warnings: list[str] = []
    return Publisher(env, token_dir=tokens, server=kube.fake.url, warn=warnings.append, **kw), warnings


def train_logs(callback: ProgressCallback, clock: Clock, steps: list[int], max_steps: int = 2000) -> None:
    """What the Trainer calls on rank 0: one log line every 10 steps, 4 s apart (2.5 steps/s)."""
    for step in steps:
        clock.now += 4.0 if step > steps[0] else 0.0
        state = TrainerState(global_step=step, max_steps=max_steps, epoch=step / 300, is_world_process_zero=True)
        logs = {"loss": 1.234, "learning_rate": 2e-4, "tokens_per_second": 3200.0, "tokens_trained": 32.0 * step,
                "mfu": 0.41}
        callback.on_log(None, state, None, logs=logs)


def annotation_of(kube: Kube, job: str) -> dict[str, Any]:
    found = kube.fake.get("jobs", "ml", job)
    assert found is not None
    return json.loads(found["metadata"]["annotations"][ANNOTATION])


def test_rank_0_annotates_its_job_and_status_list_and_json_show_it(kube: Kube, tmp_path: Path) -> None:
    name = submit(kube, cluster_spec(tmp_path, export={"gguf": ["q8_0"]}))
    kube.fake.set_pods("ml", name, PodState("Running"))
    pub, warnings = publisher(kube, tmp_path, name, every=0.0)
    clock = Clock()
    callback = ProgressCallback(pub, clock=clock)
    train_logs(callback, clock, [110, 120])
    pub.close()
    assert warnings == [] and pub.sent[-1]["step"] == 120  # the latest; an earlier one may have been coalesced
    doc = annotation_of(kube, name)
    assert doc | {"updated": 0} == {"phase": "training", "step": 120, "total_steps": 2000, "epoch": 0.4,
                                    "trained_tokens": 3840, "tokens_per_second": 3200.0, "eta_seconds": 752.0,
                                    "loss": 1.234, "learning_rate": 2e-4, "mfu": 0.41, "detail": None, "updated": 0}

    done = kube.run("status", name)
    assert done.exit_code == 0, done.output
    assert "training:   step 120/2000 (6%) · epoch 0.4 · 3.2k tokens/s · MFU 41% · loss 1.23 · ETA 12m" \
        in done.stdout.splitlines()
    data = json.loads(kube.run("status", name, "-o", "json").stdout)
    assert data["progress"] == {"training": doc | {"fraction": 0.06}}

    listed = kube.run("list")
    row = next(line for line in listed.stdout.splitlines() if name in line)
    assert "step 120/2000 (6%) ETA 12m" in row, listed.stdout
    [group] = json.loads(kube.run("list", "-o", "json").stdout)["groups"]
    assert group["submissions"][0]["progress"]["training"]["step"] == 120


def test_the_export_pod_annotates_the_export_job_with_its_phase(kube: Kube, tmp_path: Path) -> None:
    name = submit(kube, cluster_spec(tmp_path, export={"gguf": ["q4_k_m"]}))
    kube.fake.set_pods("ml", name, PodState("Succeeded", exit_code=0))  # rank 0 starts the export
    kube.fake.set_pods("ml", f"{name}-export", PodState("Running"))
    trainer, _ = publisher(kube, tmp_path, name, every=0.0)
    trainer.publish(payload("training", step=2000, total_steps=2000, eta_seconds=0.0, loss=0.9))
    trainer.close()
    export, warnings = publisher(kube, tmp_path, f"{name}-export", every=0.0)
    for detail in ("merging the adapter", "converting q4_k_m"):
        export.publish(payload("export", detail=detail))
        time.sleep(0.2)
    export.close()
    assert warnings == [] and annotation_of(kube, f"{name}-export")["detail"] == "converting q4_k_m"

    lines = kube.run("status", name).stdout.splitlines()
    assert "export:     converting q4_k_m" in lines and "training:   step 2000/2000 (100%) · loss 0.9 · ETA 0s" in lines
    data = json.loads(kube.run("status", name, "-o", "json").stdout)
    assert data["progress"]["export"]["detail"] == "converting q4_k_m" and data["progress"]["export"]["step"] is None
    row = next(line for line in kube.run("list").stdout.splitlines() if name in line)
    assert "converting q4_k_m" in row


def test_the_token_may_patch_only_its_own_submissions_jobs(kube: Kube, tmp_path: Path) -> None:
    mine = submit(kube, cluster_spec(tmp_path, name="mine"))
    other = submit(kube, cluster_spec(tmp_path, name="other"))
    pub, warnings = publisher(kube, tmp_path, mine, every=0.0)
    pub.job = other  # as if its env named another submission's Job
    for step in (1, 2):
        pub.publish(payload("training", step=step))
        time.sleep(0.2)
    pub.close()
    assert pub.sent == [] and len(warnings) == 1  # said once; training goes on
    assert f'HTTP 403 Forbidden: jobs.batch "{other}" is forbidden: User "system:serviceaccount:ml:{mine}" cannot ' \
        'patch resource "jobs"' in warnings[0], warnings
    found = kube.fake.get("jobs", "ml", other)
    assert found is not None and ANNOTATION not in (found["metadata"].get("annotations") or {})
    # the same token cannot even read its own Job: patch is all it may do
    token = (tmp_path / f"token-{mine}" / "token").read_text()
    request = urllib.request.Request(f"{kube.fake.url}/apis/batch/v1/namespaces/ml/jobs/{mine}",
                                     headers={"Authorization": f"Bearer {token}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403


def test_patches_are_rate_limited_and_the_last_one_is_always_sent(kube: Kube, tmp_path: Path) -> None:
    name = submit(kube, cluster_spec(tmp_path))
    pub, warnings = publisher(kube, tmp_path, name, every=15.0)
    pub.publish(payload("training", step=1, total_steps=50))
    until = time.monotonic() + 10
    while not pub.sent and time.monotonic() < until:
        time.sleep(0.02)
    started = time.perf_counter()
    for step in range(2, 51):
        pub.publish(payload("training", step=step, total_steps=50))
    assert time.perf_counter() - started < 1.0  # publishing never waits for the API server
    time.sleep(0.3)
    assert [d["step"] for d in pub.sent] == [1]  # the first at once, then nothing for 15 s
    pub.close()
    assert [d["step"] for d in pub.sent] == [1, 50] and warnings == []
    patches = [r for r in kube.fake.requests if r.method == "PATCH" and r.path.endswith(f"/jobs/{name}")
               and ANNOTATION in json.dumps(r.body)]
    assert len(patches) == 2 and annotation_of(kube, name)["step"] == 50


def test_a_jobset_submission_is_annotated_on_the_job_it_made(tmp_path: Path) -> None:
    with fake_cluster(tmp_path, jobset=True) as kube:
        done = kube.run("submit", str(cluster_spec(tmp_path)), "-f", str(jobset_values(tmp_path)))
        assert done.exit_code == 0, done.output
        [jobset] = kube.fake.items("jobsets", "ml")
        name = jobset["metadata"]["name"]
        child = f"{name}-node-0"
        assert kube.fake.get("jobs", "ml", child) is not None
        pub, warnings = publisher(kube, tmp_path, child, every=0.0)
        pub.publish(payload("training", step=5, total_steps=10, eta_seconds=30.0))
        pub.close()
        assert warnings == [] and pub.sent
        lines = kube.run("status", name).stdout.splitlines()
        assert "training:   step 5/10 (50%) · ETA 30s" in lines
        assert "step 5/10 (50%) ETA 30s" in next(line for line in kube.run("list").stdout.splitlines() if name in line)


def jobset_values(folder: Path) -> Path:
    path = folder / "jobset.yaml"
    path.write_text("jobset:\n  enabled: true\n")
    return path


def test_wait_says_the_published_progress_without_mlflow(kube: Kube, tmp_path: Path) -> None:
    kube.fake.every_job = [PodState("Running")]
    published: dict[str, Any] = {}

    def trainer() -> None:  # rank 0 publishes, then training ends a few polls later
        until = time.monotonic() + 60
        while not kube.submitted() and time.monotonic() < until:
            time.sleep(0.05)
        name = kube.submitted()[0]
        while not kube.fake.pods("ml", name) and time.monotonic() < until:  # the pods start once all is created
            time.sleep(0.05)
        pub, _ = publisher(kube, tmp_path, name, every=0.0)
        pub.publish(payload("training", step=40, total_steps=100, tokens_per_second=1500.0, eta_seconds=90.0))
        pub.close()
        published["sent"] = list(pub.sent)
        seen = len(kube.fake.requests)
        while sum(r.path.endswith("/pods") for r in kube.fake.requests[seen:]) < 8 and time.monotonic() < until:
            time.sleep(0.05)
        kube.fake.script(name, [PodState("Succeeded", exit_code=0)])

    thread = threading.Thread(target=trainer, daemon=True)
    thread.start()
    done = kube.process("submit", str(cluster_spec(tmp_path)), "--wait", "-o", "json")
    thread.join(timeout=60)
    assert done.returncode == 0, done.stderr
    assert published["sent"] and "training step 40/100 (40%) · 1.5k tokens/s · ETA 90s" in done.stderr
    assert json.loads(done.stdout)["progress"]["training"]["step"] == 40
