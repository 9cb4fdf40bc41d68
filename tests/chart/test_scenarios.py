"""Every scenario in charts/kubetune/ci: `helm lint --strict`, the launcher's own values, and the
rendered objects checked against the Kubernetes OpenAPI schemas (strict) of 1.33, 1.34 and 1.35."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from launcher.values import chart_values
from tests.chart.scenarios import CHART, SCENARIOS, by_kind, render, run_helm, scenario_file, scenario_values
from trainer.spec.io import spec_from_dict

KUBERNETES_VERSIONS = ["1.33.0", "1.34.0", "1.35.0"]
CRDS = {"JobSet"}  # not in the Kubernetes schemas: their structure is asserted in tests/chart/test_scheduling.py

pytestmark = pytest.mark.usefixtures("helm_binary")


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is missing: run `make setup` (it is a dev dependency)")
    return kubernetes_validate


def test_the_scenarios_cover_the_platform_features() -> None:
    assert {"cpu", "h100-zero3", "a100-fsdp", "any-ddp", "secrets-irsa", "chart-secret", "kueue", "volcano",
            "jobset", "h100-efa"} <= set(SCENARIOS)


def test_kubernetes_validate_ships_the_target_versions() -> None:
    shipped = kubernetes_validate().utils.all_versions()
    for version in KUBERNETES_VERSIONS:
        assert version.rsplit(".", 1)[0] in {v.rsplit(".", 1)[0] for v in shipped}, (version, shipped)


def test_the_chart_claims_the_versions_it_is_validated_against() -> None:
    # Chart.yaml's kubeVersion: the oldest minor validated here, and nothing older (helm refuses older clusters)
    claimed = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    assert claimed == f">={KUBERNETES_VERSIONS[0]}-0", claimed


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_strict(scenario: str) -> None:
    done = run_helm("lint", "--strict", str(CHART), "-f", str(scenario_file(scenario)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_launcher_part_is_what_launch_derives(scenario: str) -> None:
    """What launch sets is what launcher/values.py derives from the scenario's spec (the spec is
    stored in short form); a platform's values may only add to launch's maps."""
    ci = scenario_values(scenario)
    expected = chart_values(spec_from_dict(yaml.safe_load(ci["spec"])), ci["job"]["name"])
    for key, value in expected.items():
        if key == "spec":
            continue
        if isinstance(value, dict) and value:
            assert value.items() <= ci[key].items(), f"{scenario}: {key} differs from what launch derives"
        else:
            assert ci[key] == value, f"{scenario}: {key} differs from what launch derives"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_objects_match_the_kubernetes_openapi_schemas(scenario: str, version: str) -> None:
    kv = kubernetes_validate()
    docs = render(scenario)
    assert docs
    for doc in docs:
        if doc["kind"] in CRDS:
            # the Job template inside a JobSet is a batch/v1 JobTemplateSpec: validate it as a Job
            for rj in doc["spec"]["replicatedJobs"]:
                job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": rj["name"], **rj["template"]["metadata"]},
                       "spec": rj["template"]["spec"]}
                kv.validate(job, version, strict=True)
            continue
        # strict: an unknown or misspelt field is an error, as with the API server's strict validation
        kv.validate(doc, version, strict=True)


def test_the_validator_does_catch_a_misspelt_field() -> None:
    kv = kubernetes_validate()
    (job,) = by_kind(render("cpu"), "Job")
    job["spec"]["template"]["spec"]["restartPolicyy"] = "Never"
    with pytest.raises(kv.ValidationError):
        kv.validate(job, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    ("scenario", "distributed_type", "deepspeed_stage"),
    [
        ("cpu", "MULTI_GPU", None),
        ("any-ddp", "MULTI_GPU", None),
        ("secrets-irsa", "DEEPSPEED", 2),
        ("h100-zero3", "DEEPSPEED", 3),
        ("a100-fsdp", "FSDP", None),
    ],
)
def test_each_strategy_reaches_the_pods(scenario: str, distributed_type: str, deepspeed_stage: int | None) -> None:
    """ddp / zero2 / zero3 / fsdp: the accelerate config the pods launch with, from the ConfigMap."""
    docs = render(scenario)
    (cm,) = by_kind(docs, "ConfigMap")
    config = yaml.safe_load(cm["data"]["accelerate.yaml"])
    assert config["distributed_type"] == distributed_type
    assert config["num_machines"] * scenario_values(scenario)["job"]["processesPerNode"] == config["num_processes"]
    if deepspeed_stage is not None:
        assert config["deepspeed_config"]["zero_stage"] == deepspeed_stage
        assert config["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"  # no pdsh/ssh
    if distributed_type == "FSDP":
        assert config["fsdp_config"]["fsdp_version"] == 2  # FSDP1 + LoRA crashes in step 2 (trainer/spec/strategy.py)
        assert config["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # else no adapter is saved
    spec = yaml.safe_load(cm["data"]["spec.yaml"])
    assert spec["name"] == scenario_values(scenario)["job"]["specName"]
