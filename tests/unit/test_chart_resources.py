"""Requests and limits on every container, and the export Job's own placement (issue 14).

A GPU pod with only `nvidia.com/gpu` is BestEffort: a namespace ResourceQuota on cpu or memory
refuses it. Rendered through `launch render` (the CLI's own code path) for every shipped example
at 2 nodes x 8 H100, and by `helm template` with the chart's own defaults.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from launcher import helm
from launcher.cli import main
from launcher.plan import catalog
from launcher.plan.arch import from_hf_config
from trainer.spec.io import spec_from_dict
from trainer.spec.resources import ResourcesSpec

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if "values" not in p.name)
GPU = ["--set", "resources.nodes=2", "--set", "resources.gpus_per_node=8", "--set", "resources.gpu=h100"]
KINDS = ("cpu", "memory", "ephemeral-storage")

pytestmark = pytest.mark.usefixtures("helm_binary")


def pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod spec per component (training, export) of the rendered Jobs."""
    return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["template"]["spec"]
            for d in docs if d["kind"] == "Job"}


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def assert_bounded(container: dict[str, Any]) -> None:
    res = container.get("resources", {})
    for kind in KINDS:
        assert kind in res.get("requests", {}), (container["name"], kind, res)
        assert res["limits"][kind] == res["requests"][kind], (container["name"], kind, res)


def launch_render(spec: Path, *args: str) -> list[dict[str, Any]]:
    done = CliRunner().invoke(main, ["render", str(spec), *args])
    assert done.exit_code == 0, done.output
    return helm.parse_manifests(done.stdout)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_container_of_every_example_has_requests_and_limits(example: Path) -> None:
    model = ["--set", "base_model=Qwen/Qwen2.5-7B-Instruct"] if example.name.endswith("quickstart.yaml") else []  # a local file (the DPO quickstart's too)
    docs = launch_render(example, *model, *GPU)
    instances = {d["metadata"]["labels"]["app.kubernetes.io/instance"] for d in docs}  # a matrix: several jobs
    assert instances
    for instance in sorted(instances):
        check_submission([d for d in docs if d["metadata"]["labels"]["app.kubernetes.io/instance"] == instance])


def check_submission(docs: list[dict[str, Any]]) -> None:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    spec = spec_from_dict(yaml.safe_load(cm["data"]["spec.yaml"]))
    by_component = pods(docs)
    training = by_component["training"]
    assert [c["name"] for c in training["initContainers"]] == ["preflight"]  # 2 nodes: the preflight runs
    for c in containers(training):
        assert_bounded(c)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert training["containers"][0]["resources"]["requests"] == spec.resources.requests()
    gpu_tolerations = [t for t in training.get("tolerations", []) if t.get("key") == "nvidia.com/gpu"]
    assert gpu_tolerations  # what the export must not carry
    export = by_component.get("export")
    if spec.export is None:
        assert export is None
        return
    assert export is not None
    for c in containers(export):
        assert_bounded(c)
        assert "nvidia.com/gpu" not in str(c["resources"])
    assert not [t for t in export.get("tolerations", []) if t in gpu_tolerations]
    assert "nvidia.com/gpu" not in yaml.safe_dump(export.get("affinity", {}))
    # sized from the base model when its size is known here (a catalogued hub id): two copies in memory, every
    # file on disk
    known = catalog.lookup(spec.base_model)
    params = from_hf_config(known, "test").total_params if known else None
    requests = export["containers"][0]["resources"]["requests"]
    assert requests == spec.export.requests(params, spec.model.dtype)
    if known:
        assert requests != spec.export.requests(None, spec.model.dtype)


def test_the_export_gets_its_own_placement_ttl_and_requests(tmp_path: Path) -> None:
    example = next(p for p in EXAMPLES if yaml.safe_load(p.read_text()).get("export") is not None)
    platform = tmp_path / "platform.yaml"
    cpu_pool = {"key": "pool", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}
    platform.write_text(yaml.safe_dump({
        "nodeSelector": {"team": "ml"},
        "job": {"ttlSecondsAfterFinished": 60},
        "export": {"nodeSelector": {"pool": "cpu"}, "tolerations": [cpu_pool], "ttlSecondsAfterFinished": 86400,
                   "resources": {"requests": {"memory": "300Gi"}, "limits": {"cpu": "32"}}},
    }))
    docs = launch_render(example, *GPU, "-f", str(platform))
    jobs = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "Job"}
    assert jobs["training"]["spec"]["ttlSecondsAfterFinished"] == 60
    assert jobs["export"]["spec"]["ttlSecondsAfterFinished"] == 86400  # the training Job's TTL never reaches it
    export = jobs["export"]["spec"]["template"]["spec"]
    assert export["nodeSelector"] == {"pool": "cpu"}  # instead of the platform's every-pod selector
    assert export["tolerations"] == [cpu_pool]
    assert jobs["training"]["spec"]["template"]["spec"]["nodeSelector"] == {"team": "ml"}
    res = export["containers"][0]["resources"]
    assert res["requests"]["memory"] == res["limits"]["memory"] == "300Gi"  # a values file wins over launch's
    assert res["limits"]["cpu"] == "32"  # a limit given is kept


def test_the_spec_sizes_the_export(tmp_path: Path) -> None:
    example = next(p for p in EXAMPLES if yaml.safe_load(p.read_text()).get("export") is not None)
    docs = launch_render(example, "--set", "export.resources.memory=123Gi", "--set", "export.resources.cpu=3")
    (export,) = [d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].endswith("-export")]
    requests = export["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert requests["memory"] == "123Gi" and requests["cpu"] == "3"


def test_the_chart_alone_renders_requests_and_limits(tmp_path: Path) -> None:
    """`helm install` without launch: the chart's own defaults bound every container too."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"spec": "name: alone\n", "accelerateConfig": "num_machines: 2\n",
                                      "export": {"enabled": True}, "job": {"nodes": 2}}))
    done = subprocess.run([helm.find_helm(), "template", "alone", str(CHART), "-f", str(values)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    by_component = pods(helm.parse_manifests(done.stdout))
    assert set(by_component) == {"training", "export"}
    for pod in by_component.values():
        for c in containers(pod):
            assert_bounded(c)
    # the chart's defaults are the spec's for a CPU job with the chart's shmSize (one rule, in the spec)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    cpu_job = ResourcesSpec(gpu="none", shm_size=defaults["shmSize"]).requests()
    assert defaults["resources"]["requests"] == cpu_job


@pytest.mark.parametrize(("value", "where"), [("lots", "/resources/requests/cpu"), ("12 GB", "/export/resources")])
def test_quantities_are_checked_by_the_schema(value: str, where: str, tmp_path: Path) -> None:
    path = where.strip("/").split("/")
    tree: dict[str, Any] = {}
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value if path[-1] == "cpu" else {"requests": {"memory": value}}
    values = tmp_path / "bad.yaml"
    values.write_text(yaml.safe_dump({"spec": "name: bad\n", "accelerateConfig": "num_machines: 1\n", **tree}))
    done = subprocess.run([helm.find_helm(), "template", "bad", str(CHART), "-f", str(values)],
                          capture_output=True, text=True)
    assert done.returncode != 0 and where in done.stderr, done.stderr


def test_memory_must_hold_shm() -> None:
    with pytest.raises(ValueError, match=r"resources.memory \(8Gi\) is not more than resources.shm_size"):
        ResourcesSpec(memory="8Gi", shm_size="16Gi")
