"""Fixtures of the integration tests: `kube`, the fake Kubernetes API server with a kubeconfig for it
(tests/integration/cluster_cli.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster_cli import Kube, fake_cluster


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[Kube]:
    with fake_cluster(tmp_path) as k:
        yield k
