"""The chart's scenarios (charts/kubetune/ci/*-values.yaml) rendered by the real helm binary, and
ways to walk what they render: objects by kind, and every pod template (a Job's, a JobSet's)."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from launcher import helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
CI = CHART / "ci"
SCENARIOS = sorted(p.name.removesuffix("-values.yaml") for p in CI.glob("*-values.yaml"))
NAMESPACE = "ml-team"


def scenario_file(name: str) -> Path:
    return CI / f"{name}-values.yaml"


def scenario_values(name: str) -> dict[str, Any]:
    return yaml.safe_load(scenario_file(name).read_text(encoding="utf-8"))


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm.find_helm(), *args], capture_output=True, text=True, timeout=120)


def values_file(folder: Path, values: dict[str, Any], name: str = "extra.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


@functools.cache
def _template(files: tuple[Path, ...], namespace: str) -> str:
    args = ["template", "kubetune-ci", str(CHART), "--namespace", namespace]
    for f in files:
        args += ["-f", str(f)]
    done = run_helm(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def render(scenario: str, *extra: Path, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """`helm template` of a scenario (extra values files on top): the objects, in order."""
    return helm.parse_manifests(_template((scenario_file(scenario), *extra), namespace))


def render_error(scenario: str, *extra: Path) -> str:
    """What helm says when it refuses to render (fails the test if it renders)."""
    args = ["template", "kubetune-ci", str(CHART), "-f", str(scenario_file(scenario))]
    for f in extra:
        args += ["-f", str(f)]
    done = run_helm(*args)
    assert done.returncode != 0, f"helm rendered what it should refuse:\n{done.stdout[:2000]}"
    return done.stderr


def by_kind(docs: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def component(doc: dict[str, Any]) -> str | None:
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def job_templates(docs: Sequence[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, Job metadata, Job spec) of every Job the objects create: plain Jobs and the Job
    templates of a JobSet's replicated Jobs."""
    for doc in docs:
        if doc["kind"] == "Job":
            yield f"Job {doc['metadata']['name']}", doc["metadata"], doc["spec"]
        elif doc["kind"] == "JobSet":
            for rj in doc["spec"]["replicatedJobs"]:
                where = f"JobSet {doc['metadata']['name']} replicatedJob {rj['name']}"
                yield where, rj["template"].get("metadata", {}), rj["template"]["spec"]


def pod_templates(docs: Sequence[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every pod the objects create."""
    for where, _, spec in job_templates(docs):
        yield where, spec["template"]


def training_pod(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    (pod,) = [t for _, t in pod_templates(docs) if t["metadata"]["labels"]["app.kubernetes.io/component"] == "training"]
    return pod


def all_containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or -> the valueFrom mapping for an entry without a plain value."""
    return {e["name"]: e["value"] if "value" in e else e["valueFrom"] for e in container.get("env", [])}
