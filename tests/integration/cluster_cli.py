"""`launch` against the fake API server: a spec a cluster accepts, and the CLI run as a user runs it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

from launcher.cli import main
from tests.integration.fake_kube import FakeKube

FAST_POLL = {"KUBETUNE_POLL_SECONDS": "0.05"}
FAST_RETRY = {"KUBETUNE_K8S_BACKOFF": "0.01"}  # seconds before the first retry of a failed API call


def cluster_spec(folder: Path, name: str = "bot", **sections: Any) -> Path:
    """A CPU spec with remote data and output (what a cluster accepts); `sections` replace the defaults."""
    raw: dict[str, Any] = {
        "name": name, "base_model": "org/model", "data": {"train": "s3://datasets/bot/train.jsonl"},
        "output": {"uri": f"s3://runs/{name}/"}, "resources": {"gpu": "none", "nodes": 2},
        "training": {"max_steps": 100},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw | sections))
    return path


@dataclass
class Kube:
    fake: FakeKube
    config: Path

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """`launch ARGS --kubeconfig <the fake's>` in-process (stdout and stderr kept apart)."""
        return CliRunner().invoke(main, [*args, "--kubeconfig", str(self.config)],
                                  env=FAST_POLL | FAST_RETRY | (env or {}))

    def process(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`launch ARGS --kubeconfig <the fake's>` in its own process, as a user runs it."""
        full = {k: v for k, v in os.environ.items() if k != "KUBETUNE_DEBUG"} | FAST_POLL | FAST_RETRY | (env or {})
        return subprocess.run([sys.executable, "-m", "launcher.cli", *args, "--kubeconfig", str(self.config)],
                              capture_output=True, text=True, env=full, timeout=120)

    def submitted(self, ns: str = "ml") -> list[str]:
        """Names of the training Jobs in `ns`, oldest first."""
        jobs = [j for j in self.fake.items("jobs", ns) if j["metadata"]["labels"].get("app.kubernetes.io/component")
                == "training"]
        return [j["metadata"]["name"] for j in sorted(jobs, key=lambda j: int(j["metadata"]["resourceVersion"]))]


@contextlib.contextmanager
def fake_cluster(folder: Path, jobset: bool = False) -> Iterator[Kube]:
    with FakeKube(jobset=jobset) as fake:
        yield Kube(fake, fake.kubeconfig(folder / "kubeconfig"))


def submit(kube: Kube, spec: Path, *args: str, ns: str = "ml") -> str:
    """`launch submit SPEC ARGS` that must succeed; the name of the training Job it made."""
    done = kube.run("submit", str(spec), *args)
    assert done.exit_code == 0, done.output
    return kube.submitted(ns)[-1]
