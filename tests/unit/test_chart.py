"""The kubetune chart, rendered by the real helm binary with values `launch` derives from specs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher import client, helm
from launcher.values import chart_values
from trainer.spec.io import dump_spec, spec_from_dict
from trainer.spec.strategy import accelerate_config_yaml
from trainer.train.preemption import EXIT_PREEMPTED, EXIT_USER_ERROR

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


pytestmark = pytest.mark.usefixtures("helm_binary")


def write_spec(folder: Path, nodes: int = 1, gpu: str = "none", **extra: Any) -> Path:
    raw: dict[str, Any] = {
        "name": "chart-test",
        "base_model": "Qwen/Qwen2.5-0.5B",
        "data": {"train": "s3://datasets/chart/train.jsonl"},
        "resources": {"gpu": gpu, "nodes": nodes, "gpus_per_node": 4, "memory": "64Gi", "shm_size": "8Gi"},
        "output": {"uri": "s3://runs/chart-test/"},
        **extra,
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def render(spec_path: Path, local: bool = False) -> tuple[client.Submission, dict[str, list[dict[str, Any]]]]:
    """What `launch render [--local]` renders (a dry run: GPU specs render on this CPU machine too)."""
    sub = client.prepare(spec_path, local=local, dry_run=True)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in helm.parse_manifests(client.render(sub)):
        by_kind.setdefault(doc["kind"], []).append(doc)
    return sub, by_kind


def lint(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm.find_helm(), "lint", "--strict", str(CHART), *args], capture_output=True, text=True)


def test_lint_strict_with_values_from_real_specs(tmp_path: Path) -> None:
    # the shipped quickstart (its model file comes from `make setup`: a hub id stands in) and a GPU spec
    quickstart = client.prepare(QUICKSTART, ["base_model=Qwen/Qwen2.5-0.5B"], local=True)
    gpu = client.prepare(write_spec(tmp_path, nodes=2, gpu="h100"))
    for sub in (quickstart, gpu):
        values = tmp_path / "values.yaml"
        values.write_text(yaml.safe_dump(sub.values))
        done = lint("-f", str(values))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


def test_lint_strict_with_the_ci_values() -> None:
    ci_values = CHART / "ci" / "cpu-values.yaml"
    done = lint("-f", str(ci_values))
    assert done.returncode == 0, done.stdout + done.stderr
    # the file is what the launcher derives from its spec (the spec is stored in short form)
    ci = yaml.safe_load(ci_values.read_text())
    expected = chart_values(spec_from_dict(yaml.safe_load(ci["spec"])), ci["job"]["name"])
    assert ci | {"spec": expected["spec"]} == expected


@pytest.mark.parametrize("nodes", [1, 3])
def test_render_indexed_job(nodes: int, tmp_path: Path) -> None:
    sub, objs = render(write_spec(tmp_path, nodes=nodes))
    name = sub.name
    assert re.fullmatch(r"chart-test-[a-z0-9]{5}", name)
    (job,) = objs["Job"]
    (svc,) = objs["Service"]
    (cm,) = objs["ConfigMap"]
    assert job["metadata"]["name"] == svc["metadata"]["name"] == cm["metadata"]["name"] == name

    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nodes
    # preemptions (DisruptionTarget, exit 75) are replaced without counting; crashes and lost peers (76) count per
    # index: one incident fails every index once, so job.backoffLimit (2) incidents pass and the next fails the Job
    assert spec["backoffLimitPerIndex"] == 2 and spec["maxFailedIndexes"] == 0
    assert spec["backoffLimit"] == 2 * nodes  # the same bound on clusters without per-index limits
    rules = spec["podFailurePolicy"]["rules"]
    assert [r["action"] for r in rules] == ["Ignore", "Ignore", "FailJob"]
    assert rules[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert rules[1]["onExitCodes"]["values"] == [EXIT_PREEMPTED] and rules[2]["onExitCodes"]["values"] == [EXIT_USER_ERROR]
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"]
    assert pod["restartPolicy"] == "Never"

    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    pod_labels = spec["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()

    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "trainer.train.supervise", "accelerate", "launch"]
    assert container["args"] == [
        "--config_file", "/etc/kubetune/accelerate.yaml",
        "--num_machines", str(nodes),
        "--num_processes", str(nodes),
        "--machine_rank", "$(JOB_COMPLETION_INDEX)",
        "--main_process_ip", "$(KUBETUNE_MASTER_ADDR)",
        "--main_process_port", "29500",
        "-m", "trainer.train",
        "--spec", "/etc/kubetune/spec.yaml",
    ]  # fmt: skip
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KUBETUNE_MASTER_ADDR"] == f"{name}-0.{name}"
    assert env["ACCELERATE_USE_CPU"] == "true"  # CPU ddp: see trainer/spec/strategy.py

    assert cm["data"]["spec.yaml"] == dump_spec(sub.spec)
    assert cm["data"]["accelerate.yaml"] == accelerate_config_yaml(sub.spec)
    assert yaml.safe_load(cm["data"]["accelerate.yaml"])["num_machines"] == nodes


@pytest.mark.parametrize("gpu", ["none", "h100"])
def test_manifests_match_the_kubernetes_openapi_schemas(gpu: str, tmp_path: Path) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is missing: run `make setup` (it is a dev dependency)")
    _, objs = render(write_spec(tmp_path, nodes=2, gpu=gpu, training={"strategy": "zero2"}))
    for doc in (d for docs in objs.values() for d in docs):
        # strict: an unknown or misspelt field is an error, as the API server's strict validation
        kubernetes_validate.validate(doc, "1.35.0", strict=True)


def test_standard_labels_on_every_object(tmp_path: Path) -> None:
    sub, objs = render(write_spec(tmp_path))
    assert set(objs) == {"ConfigMap", "Job", "Service", "ServiceAccount", "Role", "RoleBinding"}
    for doc in (d for docs in objs.values() for d in docs):
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "kubetune"
        assert labels["app.kubernetes.io/instance"] == sub.name
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"].startswith("kubetune-")


def test_pod_is_locked_down_with_writable_emptydirs(tmp_path: Path) -> None:
    _, objs = render(write_spec(tmp_path))
    pod = objs["Job"][0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts["/cache"]]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HF_HOME"].startswith("/cache/") and env["HOME"].startswith("/cache/")
    bounded = {"cpu": "4", "memory": "64Gi", "ephemeral-storage": "20Gi"}  # limits equal to the requests
    assert container["resources"] == {"requests": bounded, "limits": bounded}


def test_gpu_job(tmp_path: Path) -> None:
    _, objs = render(write_spec(tmp_path, nodes=2, gpu="h100", training={"strategy": "zero3"}))
    (container,) = objs["Job"][0]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    args = container["args"]
    assert args[args.index("--num_machines") + 1] == "2"
    assert args[args.index("--num_processes") + 1] == "8"
    env = {e["name"] for e in container["env"]}
    assert not env & {"ACCELERATE_USE_CPU", "DS_ACCELERATOR"}


def test_local_values_carry_absolute_paths(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.jsonl").touch()
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "loc", "base_model": "m", "data": {"train": "data/t.jsonl"}}))
    sub, objs = render(spec_path, local=True)
    shipped = yaml.safe_load(objs["ConfigMap"][0]["data"]["spec.yaml"])
    assert shipped["data"]["train"] == str(tmp_path / "data" / "t.jsonl")
    assert shipped["output"]["uri"] == str(tmp_path / "runs" / "loc")


def values_with(tmp_path: Path, extra: str) -> list[str]:
    base = tmp_path / "base.yaml"
    base.write_text((CHART / "ci" / "cpu-values.yaml").read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(extra)
    return ["-f", str(base), "-f", str(bad)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("job:\n  nodez: 2\n", "nodez"),  # a typo is an error, never a silent default
        ("gpu:\n  type: v100\n", "/gpu/type"),
        ("job:\n  nodes: 0\n", "/job/nodes"),
        ("gpu:\n  type: h100\n  perNode: 0\n", "gpu.perNode must be at least 1"),
    ],
)
def test_bad_values_are_rejected(extra: str, message: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [helm.find_helm(), "template", "x", str(CHART), *values_with(tmp_path, extra)], capture_output=True, text=True
    )
    assert done.returncode != 0
    assert message in done.stderr


def test_rendering_without_a_spec_says_how_to_render() -> None:
    done = subprocess.run([helm.find_helm(), "template", "x", str(CHART)], capture_output=True, text=True)
    assert done.returncode != 0
    assert "launch render" in done.stderr


def test_every_value_is_documented() -> None:
    """helm-docs style: a `# --` comment right above every value (a documented value's own keys,
    e.g. podSecurityContext's defaults, need none; a section such as `job:` is not a value)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented_parents: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z]\w*):(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1))
        documented_parents = [(n, d) for n, d in documented_parents if n < indent]
        documented = lines[i - 1].strip().startswith("# --")
        is_section = not m.group(3).strip() and not documented
        if not documented and not is_section and not any(d for _, d in documented_parents):
            undocumented.append(m.group(2))
        documented_parents.append((indent, documented))
    assert not undocumented, f"values without a `# --` comment: {undocumented}"


def test_launcher_values_match_the_schema_and_values_yaml(tmp_path: Path) -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    values = client.prepare(write_spec(tmp_path, nodes=2, gpu="a100")).values
    for key, value in values.items():
        assert key in defaults, f"launch sets {key!r}, which values.yaml does not declare"
        if isinstance(value, dict) and key not in ("env", "resources"):
            assert set(value) <= set(defaults[key]), key


def test_export_job_is_rendered_only_for_specs_with_export(tmp_path: Path) -> None:
    _, plain = render(write_spec(tmp_path))
    assert [j["metadata"]["labels"]["app.kubernetes.io/component"] for j in plain["Job"]] == ["training"]
    sub, objs = render(write_spec(tmp_path, export={"gguf": ["q8_0", "q4_k_m"]}))
    export = next(j for j in objs["Job"] if j["metadata"]["labels"]["app.kubernetes.io/component"] == "export")
    assert export["metadata"]["name"] == f"{sub.name}-export"
    pod = export["spec"]["template"]["spec"]
    assert "subdomain" not in pod and pod["automountServiceAccountToken"] is False  # no API access needed
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "trainer.export"]
    assert container["args"] == ["--spec", "/etc/kubetune/spec.yaml"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # it reads the same spec as training: the one ConfigMap
    assert pod["volumes"][0]["configMap"]["name"] == sub.name
