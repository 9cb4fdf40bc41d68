"""values.schema.json: bad enum values and unknown keys are refused by helm itself, with a message
naming the value's path. (kubernetes-validate does not check enums: a bad imagePullPolicy or
toleration operator would pass it, so the schema is where they are caught.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.scenarios import render_error, values_file

pytestmark = pytest.mark.usefixtures("helm_binary")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gpu": {"type": "v100"}}, "at '/gpu/type': value must be one of 'h100', 'h200', 'b200', 'a100', 'l40s', 'a10g', 'any', 'none'"),
        ({"gpu": {"placement": "aks"}}, "at '/gpu/placement': value must be one of 'nvidia-gfd', 'gke', 'eks'"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"),
        ({"export": {"image": {"pullPolicy": "always"}}}, "at '/export/image/pullPolicy': value must be one of"),
        ({"tolerations": [{"key": "a", "operator": "Matches"}]}, "at '/tolerations/0/operator': value must be one of 'Exists', 'Equal'"),
        ({"tolerations": [{"key": "a", "operator": "Exists", "effect": "NoSchedul"}]}, "at '/tolerations/0/effect'"),
        ({"gpu": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exist"}]}}, "at '/gpu/tolerations/0/operator'"),
        ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "Within", "values": ["a"]}]}]}}}},
         "at '/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions/0/operator'"),
        ({"podSecurityContext": {"fsGroupChangePolicy": "Never"}}, "at '/podSecurityContext/fsGroupChangePolicy'"),
        ({"shmSize": "lots"}, "at '/shmSize'"),
        ({"job": {"ttlSecondsAfterFinished": -1}}, "at '/job/ttlSecondsAfterFinished'"),
        ({"scheduling": {"queueName": "Team A"}}, "at '/scheduling/queueName'"),
    ],
)
def test_bad_values_are_refused_with_their_path(values: dict, message: str, tmp_path: Path) -> None:
    assert message in render_error("cpu", values_file(tmp_path, values))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gpuType": "h100"}, "at '': additional properties 'gpuType' not allowed"),
        ({"job": {"nodez": 2}}, "at '/job': additional properties 'nodez' not allowed"),
        ({"scheduling": {"queue": "team-a"}}, "at '/scheduling': additional properties 'queue' not allowed"),
        ({"jobset": {"enable": True}}, "at '/jobset': additional properties 'enable' not allowed"),
        ({"gpu": {"products": {"v100": ["Tesla-V100"]}}}, "at '/gpu/products': additional properties 'v100' not allowed"),
        ({"nccl": {"DEBUG": "INFO"}}, "at '/nccl': additional properties 'DEBUG' not allowed"),
        ({"env": {"my-var": "1"}}, "at '/env': additional properties 'my-var' not allowed"),
        ({"podLabels": {"kubetune.dev/job": "other"}}, "at '/podLabels/kubetune.dev~1job'"),
        ({"affinity": {"nodeAfinity": {}}}, "at '/affinity': additional properties 'nodeAfinity' not allowed"),
        ({"tolerations": [{"key": "a", "operater": "Exists"}]}, "additional properties 'operater' not allowed"),
        ({"mlflow": {"secretKeys": {"user": "u"}}}, "at '/mlflow/secretKeys': additional properties 'user' not allowed"),
    ],
)
def test_unknown_keys_are_refused(values: dict, message: str, tmp_path: Path) -> None:
    assert message in render_error("cpu", values_file(tmp_path, values))


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    bad = values_file(tmp_path, {"gpu": {"type": "v100"}, "image": {"pullPolicy": "Sometimes"}, "job": {"nodez": 1}})
    error = render_error("cpu", bad)
    assert "/gpu/type" in error and "/image/pullPolicy" in error and "nodez" in error
