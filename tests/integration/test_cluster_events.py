"""Why a job does not start, from the Job's and the pods' Events (the fake API server records them as the
Job controller, the scheduler, the kubelet and the cluster autoscaler would): `launch status` prints each
cause with its fix, and `launch submit --wait` ends (exit 1) once one has lasted `--stuck-grace` with
nothing progressing, instead of waiting on "pending" forever."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.integration.cluster_cli import Kube, cluster_spec, submit
from tests.integration.fake_kube_workloads import PodState

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("helm_binary")]

QUOTA = ("exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=8, used: requests.nvidia.com/gpu=8, "
         "limited: requests.nvidia.com/gpu=8")
LIMITS = "failed quota: compute: must specify limits.cpu for: trainer; limits.memory for: trainer"
SCHEDULER = ("0/12 nodes are available: 4 Insufficient nvidia.com/gpu, 8 node(s) didn't match Pod's node "
             "affinity/selector. preemption: 0/12 nodes are available: 4 No preemption victims found for incoming "
             "pod, 8 Preemption is not helpful for scheduling.")
NO_SCALE_UP = ("Normal", "NotTriggerScaleUp", "pod didn't trigger scale-up: 2 max node group size reached",
               "cluster-autoscaler")
SCALE_UP = ("Normal", "TriggeredScaleUp", "pod triggered scale-up: [{gpu-h100 1->3 (max: 8)}]", "cluster-autoscaler")
NOT_FOUND = ('rpc error: code = NotFound desc = failed to pull and unpack image "ghcr.io/kubetune/trainer:0.1.0": '
             'failed to resolve reference "ghcr.io/kubetune/trainer:0.1.0": not found')
UNAUTHORIZED = ('rpc error: code = Unknown desc = failed to pull and unpack image "ghcr.io/kubetune/trainer:0.1.0": '
                "failed to authorize: failed to fetch anonymous token: 401 Unauthorized")
GRACE = "0.5s"


def block(out: str, where: str) -> tuple[str, str]:
    """The `not starting: WHERE: ...` line and its `  fix: ...` line."""
    lines = out.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(f"not starting: {where}"))
    assert lines[i + 1].startswith("  fix: "), lines[i:i + 2]
    return lines[i], lines[i + 1]


def wait(kube: Kube, spec: Path, *args: str) -> tuple[int, str, str]:
    """`launch submit --wait` as its own process (a hang fails the test: cluster_cli's timeout): the exit code,
    stdout, and what it said (stdout and stderr: progress goes to stdout unless `-o json`)."""
    done = kube.process("submit", str(spec), "--wait", "--stuck-grace", GRACE, *args)
    assert "Traceback" not in done.stderr, done.stderr
    said = done.stderr if "-o" in args else done.stdout + done.stderr
    return done.returncode, done.stdout, said


# -- a ResourceQuota refuses the pods: the Job has none, only FailedCreate events ----------------------------


def test_status_names_the_full_quota_and_the_fix(kube: Kube, tmp_path: Path) -> None:
    kube.fake.refuse_pods = QUOTA
    name = submit(kube, cluster_spec(tmp_path))
    assert kube.fake.pods("ml", name) == [] and kube.fake.events("ml", name)  # no pod, only the Job's events

    done = kube.run("status", name)
    assert done.exit_code == 0, done.output
    assert "status:     pending (training pending 0/2)" in done.stdout and "no pods" in done.stdout
    what, fix = block(done.stdout, f"Job ml/{name}")
    assert "cannot create its pods: ResourceQuota gpu-quota in namespace ml is full" in what
    assert "a pod requests requests.nvidia.com/gpu=8, 0 left (8 of 8 in use)" in what
    for words in ("fewer GPUs per pod (resources.gpus_per_node)", "resources.nodes", "another namespace (-n)",
                  "Kueue queue (resources.queue)", "platform team", "kubectl describe resourcequota gpu-quota -n ml"):
        assert words in fix, fix
    selectors = [r.query.get("fieldSelector") for r in kube.fake.requests if r.path.endswith("/events")]
    assert f"involvedObject.kind=Job,involvedObject.name={name}" in selectors

    data = json.loads(kube.run("status", name, "-o", "json").stdout)
    [blocked] = data["blocked"]
    assert blocked["kind"] == "quota" and blocked["where"] == f"Job ml/{name}" and not blocked["progressing"]
    assert data["status"] == "pending"


def test_status_says_which_limits_a_quota_requires(kube: Kube, tmp_path: Path) -> None:
    kube.fake.refuse_pods = LIMITS
    name = submit(kube, cluster_spec(tmp_path))
    what, fix = block(kube.run("status", name).stdout, f"Job ml/{name}")
    assert "ResourceQuota compute in namespace ml requires limits" in what
    assert "must specify limits.cpu for: trainer; limits.memory for: trainer" in what
    assert "`resources` value in a values file" in fix and "LimitRange" in fix


def test_wait_ends_on_a_full_quota_after_the_grace(kube: Kube, tmp_path: Path) -> None:
    kube.fake.refuse_pods = QUOTA
    code, out, err = wait(kube, cluster_spec(tmp_path), "-o", "json")
    [name] = kube.submitted()
    assert code == 1, err
    what, fix = block(err, f"Job ml/{name}")
    assert "ResourceQuota gpu-quota in namespace ml is full" in what and "resources.gpus_per_node" in fix
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: job ml/{name} cannot start (Job ml/{name}: ResourceQuota gpu-quota is full for ")
    assert "the job stays" in last and f"launch cancel {name} -n ml" in last
    result = json.loads(out)  # stdout: still only the document
    assert result["status"] == "pending" and result["gave_up"].startswith(f"Job ml/{name}: ResourceQuota gpu-quota")
    assert [b["kind"] for b in result["blocked"]] == ["quota"]
    assert kube.fake.get("jobs", "ml", name) is not None  # left for the user to fix or cancel


# -- no node can take a pod ---------------------------------------------------------------------------------


def test_status_explains_an_unschedulable_pod(kube: Kube, tmp_path: Path) -> None:
    values = tmp_path / "pool.yaml"
    values.write_text(yaml.safe_dump({"nodeSelector": {"pool": "gpu-h100"}}))
    name = submit(kube, cluster_spec(tmp_path), "-f", str(values))
    kube.fake.set_pods("ml", name, {0: PodState("Running"),
                                    1: PodState("Pending", node=None, unschedulable=SCHEDULER, events=(NO_SCALE_UP,))})
    done = kube.run("status", name)
    assert done.exit_code == 0, done.output
    [pod1] = [p["metadata"]["name"] for p in kube.fake.pods("ml", name) if p["metadata"]["name"].startswith(f"{name}-1-")]
    what, fix = block(done.stdout, f"rank 1 ({pod1})")
    assert "no node can take it: 0/12 nodes are available: 4 Insufficient nvidia.com/gpu" in what
    assert "the cluster autoscaler will not add a node: pod didn't trigger scale-up: 2 max node group size" in what
    assert "no node has free GPUs" in fix and "resources.gpus_per_node" in fix
    assert "the pod needs nodes with pool=gpu-h100: compare `kubectl get nodes -L pool`" in fix
    assert "resources.gpu" in fix and "no node group the autoscaler may grow fits the pod" in fix
    assert not any(line.startswith("not starting: rank 0") for line in done.stdout.splitlines())


def test_events_are_optional_the_pod_condition_still_tells(kube: Kube, tmp_path: Path) -> None:
    kube.fake.deny("list", "events")
    name = submit(kube, cluster_spec(tmp_path))
    kube.fake.set_pods("ml", name, {1: PodState("Pending", node=None, unschedulable="0/3 nodes are available: "
                                                "3 node(s) had untolerated taint {dedicated: training}.")})
    done = kube.run("status", name)
    assert done.exit_code == 0, done.output
    what, fix = block(done.stdout, "rank 1 (")
    assert "3 node(s) had untolerated taint {dedicated: training}" in what
    assert "tolerate the taint {dedicated: training} with `tolerations`" in fix and "`gpu.tolerations`" in fix


def test_wait_ends_on_an_unschedulable_pod_with_no_scale_up(kube: Kube, tmp_path: Path) -> None:
    kube.fake.every_job = [PodState("Pending", node=None, unschedulable=SCHEDULER, events=(NO_SCALE_UP,))]
    code, _, err = wait(kube, cluster_spec(tmp_path))
    [name] = kube.submitted()
    assert code == 1, err
    what, fix = block(err, "rank 0 (")
    assert "0/12 nodes are available" in what and "will not add a node" in what and "resources.gpus_per_node" in fix
    assert err.strip().splitlines()[-1].startswith(f"error: job ml/{name} cannot start (rank 0 ({name}-0-")
    assert "unschedulable for " in err.strip().splitlines()[-1]


def test_wait_keeps_waiting_while_a_node_is_being_added(kube: Kube, tmp_path: Path) -> None:
    # each poll moves the pods a step: 15 polls of 0.05 s or more while the autoscaler adds a node, longer than
    # the grace; then the node is there and the job runs to its end
    scaling = PodState("Pending", node=None, unschedulable=SCHEDULER, events=(SCALE_UP,))
    kube.fake.every_job = [scaling] * 15 + [PodState("Running"), PodState("Succeeded", exit_code=0)]
    code, _, err = wait(kube, cluster_spec(tmp_path))
    [name] = kube.submitted()
    assert code == 0, err
    assert f"waiting: rank 0 ({name}-0-" in err and "a node is being added for it (TriggeredScaleUp" in err
    assert "not starting:" not in err and f"job ml/{name} succeeded" in err


# -- the image cannot be pulled -----------------------------------------------------------------------------


def test_status_and_wait_on_an_image_that_does_not_exist(kube: Kube, tmp_path: Path) -> None:
    name = submit(kube, cluster_spec(tmp_path))
    kube.fake.set_pods("ml", name, PodState("Pending", reason="ImagePullBackOff", message=NOT_FOUND))
    done = kube.run("status", name)
    what, fix = block(done.stdout, "rank 0 (")
    assert "cannot pull image ghcr.io/kubetune/trainer:0.1.0: ImagePullBackOff: rpc error: code = NotFound" in what
    assert "no such image or tag in the registry: check `image.repository` and `image.tag`" in fix
    assert "imagePullSecrets" not in fix

    kube.fake.every_job = [PodState("Pending", reason="ErrImagePull", message=UNAUTHORIZED)]
    code, _, err = wait(kube, cluster_spec(tmp_path))
    assert code == 1, err
    what, fix = block(err, "rank 0 (")
    assert "ErrImagePull" in what and "401 Unauthorized" in what
    assert "the registry refuses the nodes: name a pull secret in `imagePullSecrets`" in fix
    assert "cannot pull image ghcr.io/kubetune/trainer:0.1.0 for " in err.strip().splitlines()[-1]


# -- a Secret the pods read is missing ----------------------------------------------------------------------


def test_status_and_wait_on_a_missing_secret(kube: Kube, tmp_path: Path) -> None:
    values = tmp_path / "creds.yaml"
    values.write_text(yaml.safe_dump({"s3": {"existingSecret": "s3-creds"}}))
    name = submit(kube, cluster_spec(tmp_path), "-f", str(values))
    kube.fake.set_pods("ml", name, PodState("Pending", reason="CreateContainerConfigError",
                                            message='secret "s3-creds" not found'))
    what, fix = block(kube.run("status", name).stdout, "rank 0 (")
    assert "Secret ml/s3-creds does not exist (the pod reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in what
    assert "kubectl create secret generic s3-creds -n ml --from-literal=AWS_ACCESS_KEY_ID=..." in fix
    assert "or set s3.existingSecret in your values file to the Secret that holds them" in fix

    kube.fake.every_job = [PodState("Pending", reason="CreateContainerConfigError",
                                    message="couldn't find key AWS_SECRET_ACCESS_KEY in Secret ml/s3-creds")]
    code, _, err = wait(kube, cluster_spec(tmp_path), "-f", str(values))
    assert code == 1, err
    what, fix = block(err, "rank 0 (")
    assert "Secret ml/s3-creds has no key AWS_SECRET_ACCESS_KEY (the pod reads AWS_SECRET_ACCESS_KEY from it)" in what
    assert "add key AWS_SECRET_ACCESS_KEY to Secret s3-creds" in fix and "s3.secretKeys.secretAccessKey" in fix
    assert "Secret s3-creds has no key AWS_SECRET_ACCESS_KEY for " in err.strip().splitlines()[-1]


def test_stuck_grace_is_a_duration_and_only_for_wait(kube: Kube, tmp_path: Path) -> None:
    spec = str(cluster_spec(tmp_path))
    bad = kube.run("submit", spec, "--wait", "--stuck-grace", "soon")
    assert bad.exit_code == 2 and "'soon' is not a duration" in bad.output
    alone = kube.run("submit", spec, "--stuck-grace", "5m")
    assert alone.exit_code == 2 and "--stuck-grace: for --wait" in alone.output
    assert kube.submitted() == []


def test_the_fake_refuses_a_field_it_cannot_select_on(kube: Kube) -> None:
    from launcher.backends.kubeconfig import connect
    from launcher.backends.kubernetes import Cluster
    from launcher.errors import UserError

    cluster = Cluster(connect("fake", str(kube.config), None))
    with pytest.raises(UserError, match="field label not supported: spec.nope"):
        cluster.list("Event", fields="spec.nope=1")
    assert cluster.list("Event", fields="involvedObject.name=none,type=Warning") == []
