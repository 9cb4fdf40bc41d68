"""The local backend: rendered pods -> processes, and real multi-process runs of the chart's command line.

The runs use tests/fixtures/allreduce_probe.py in place of `trainer.train`, chosen by a test-only
values file given to helm on top of the launcher's values: the command line is the chart's own.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher import client, helm
from launcher.backends.local import PREFLIGHT_TIMEOUT, PathMap, PodProcess, expand, plan, process_env
from launcher.backends.local_run import LocalRun
from launcher.errors import UserError
from tests.chat import ONE_ROW
from trainer.spec import strategy

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PROBE_LINE = re.compile(r"^\[rank (\d+)\] PROBE rank=(\d+) world_size=(\d+) sum=(\S+) type=(\S+)", re.M)


pytestmark = pytest.mark.usefixtures("helm_binary")


def local_submission(folder: Path, nodes: int, strat: str = "ddp") -> client.Submission:
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "train.jsonl").write_text(ONE_ROW)
    spec = {
        "name": "probe",
        "base_model": "org/model",
        "data": {"train": "data/train.jsonl"},
        "training": {"strategy": strat},
        "resources": {"gpu": "none", "nodes": nodes},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return client.prepare(path, local=True)


def rendered_pods(sub: client.Submission, folder: Path, **values: Any) -> list[PodProcess]:
    """The submission's chart rendered with test-only values on top, planned as local pods."""
    extra = folder / "test-values.yaml"
    extra.write_text(yaml.safe_dump(values))
    manifests = helm.parse_manifests(client.render(sub, [extra]))
    return plan(manifests, folder / "pods", cwd=folder)


def probe_values(env: dict[str, str] | None = None, **values: Any) -> dict[str, Any]:
    return {
        "job": {"module": "allreduce_probe", **values.pop("job", {})},
        "env": {"PYTHONPATH": str(FIXTURES), **(env or {})},
        **values,
    }


def run(pods: list[PodProcess], grace: float = 5.0) -> tuple[Any, str]:
    out = io.StringIO()
    outcome = LocalRun(pods, out=out, grace=grace).run()
    return outcome, out.getvalue()


def probes(log: str) -> list[tuple[int, int, int, str, str]]:
    return sorted((int(a), int(b), int(c), d, e) for a, b, c, d, e in PROBE_LINE.findall(log))


# --- pure translation -----------------------------------------------------------------------


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A)", env) == "$(A)"
    assert expand("cost $5", env) == "cost $5"


def test_path_map_rewrites_hosts_and_mounts_once() -> None:
    rewrite = PathMap("job-abc12", {"/etc/kubetune": Path("/tmp/x/pod-0/config"), "/tmp": Path("/tmp/x/pod-0/tmp")})
    assert rewrite("job-abc12-0.job-abc12") == "127.0.0.1"
    assert rewrite("job-abc12-1.job-abc12.ns.svc.cluster.local:29500") == "127.0.0.1:29500"
    assert rewrite("other-0.elsewhere") == "other-0.elsewhere"
    # the local folder lives under /tmp: it must not be rewritten again by the pod's /tmp mount
    assert rewrite("/etc/kubetune/spec.yaml") == "/tmp/x/pod-0/config/spec.yaml"
    assert rewrite("--spec=/etc/kubetune/spec.yaml") == "--spec=/tmp/x/pod-0/config/spec.yaml"
    assert rewrite("/tmp") == "/tmp/x/pod-0/tmp"
    assert rewrite("/tmpfoo") == "/tmpfoo"


def test_plan_translates_each_rendered_pod(tmp_path: Path) -> None:
    sub = local_submission(tmp_path, nodes=2)
    pods = plan(helm.parse_manifests(client.render(sub)), tmp_path / "pods", cwd=tmp_path)
    assert [p.rank for p in pods] == [0, 1]
    port = str(sub.values["job"]["port"])
    for pod in pods:
        config = pod.dirs["config"]
        assert pod.argv == [
            "python", "-m", "trainer.train.supervise", "accelerate", "launch",
            "--config_file", f"{config}/accelerate.yaml",
            "--num_machines", "2", "--num_processes", "2",
            "--machine_rank", str(pod.rank),
            "--main_process_ip", "127.0.0.1",
            "--main_process_port", port,
            "-m", "trainer.train",
            "--spec", f"{config}/spec.yaml",
        ]  # fmt: skip
        assert (config / "spec.yaml").read_text() == sub.values["spec"]
        assert (config / "accelerate.yaml").read_text() == sub.values["accelerateConfig"]
        assert pod.env["JOB_COMPLETION_INDEX"] == str(pod.rank)
        assert pod.env["KUBETUNE_MASTER_ADDR"] == "127.0.0.1"
        assert pod.env["HF_HOME"] == f"{pod.dirs['cache']}/huggingface"
        assert pod.env["TMPDIR"] == str(pod.dirs["tmp"])
        assert all(pod.dirs[v].is_dir() for v in ("tmp", "cache", "dshm"))
        (preflight,) = pod.init  # the rendezvous preflight, at the same address and port, a shorter wait
        assert preflight.container == "preflight" and preflight.rank == pod.rank
        assert preflight.argv == [
            "python", "-m", "trainer.preflight", "--job", sub.name, "--rank", str(pod.rank), "--nodes", "2",
            "--addr", "127.0.0.1", "--port", port, "--timeout", str(PREFLIGHT_TIMEOUT), "--backend", "auto",
            "--size-mib", "64",
        ]  # fmt: skip
        assert preflight.env == pod.env and preflight.dirs == pod.dirs
    assert pods[0].dirs["tmp"] != pods[1].dirs["tmp"]  # every pod has its own emptyDirs


def test_host_paths_under_tmp_are_left_alone(tmp_path: Path) -> None:
    """This machine's /tmp is real: a pod's /tmp emptyDir reaches it through TMPDIR, not by rewriting."""
    sub = local_submission(tmp_path, nodes=1)
    sub.values["env"]["PYTHONPATH"] = "/tmp/somewhere/tests/fixtures"
    (pod,) = plan(helm.parse_manifests(client.render(sub)), tmp_path / "pods", cwd=tmp_path)
    assert pod.env["PYTHONPATH"] == "/tmp/somewhere/tests/fixtures"
    assert pod.env["TMPDIR"] == str(pod.dirs["tmp"])


def test_process_env_puts_this_venv_first_and_drops_inherited_rank_settings(tmp_path: Path) -> None:
    pod = PodProcess(0, ["python"], {"JOB_COMPLETION_INDEX": "0"}, tmp_path)
    env = process_env(pod, {"PATH": "/usr/bin", "RANK": "3", "ACCELERATE_USE_CPU": "1", "HOME": "/root"})
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert "RANK" not in env and "ACCELERATE_USE_CPU" not in env
    assert env["HOME"] == "/root" and env["JOB_COMPLETION_INDEX"] == "0"


def test_process_env_keeps_the_users_home_and_caches(tmp_path: Path) -> None:
    pod_env = {"HOME": "/tmp/pod/cache/home", "HF_HOME": "/tmp/pod/cache/hf", "TORCH_EXTENSIONS_DIR": "/tmp/pod/x",
               "KUBETUNE_MASTER_ADDR": "127.0.0.1"}
    env = process_env(PodProcess(0, ["python"], pod_env, tmp_path), {"HOME": "/home/me", "HF_HOME": "/data/hf"})
    assert env["HOME"] == "/home/me" and env["HF_HOME"] == "/data/hf"
    assert "TORCH_EXTENSIONS_DIR" not in env  # the library's default under the user's home
    assert env["KUBETUNE_MASTER_ADDR"] == "127.0.0.1"


def test_a_gpu_spec_is_refused_before_anything_starts_on_a_machine_without_gpus(tmp_path: Path) -> None:
    from launcher import resolve

    if resolve.has_nvidia_gpu():
        pytest.skip("this machine has an NVIDIA GPU")
    path = tmp_path / "gpu.yaml"
    (tmp_path / "train.jsonl").write_text(ONE_ROW)
    path.write_text("name: gpu-job\nbase_model: org/model\ndata: {train: train.jsonl}\nresources: {gpu: a100}\n")
    with pytest.raises(UserError) as e:
        client.prepare(path, local=True)
    assert any(p.startswith("resources.gpu: `a100` asks for GPUs") and "resources.gpu=none" in p for p in e.value.problems)


def test_the_api_token_and_the_export_starter_are_left_out_locally(tmp_path: Path) -> None:
    # on a cluster rank 0 starts the suspended export Job through the API; here the runner starts it after training
    sub = local_submission(tmp_path, nodes=1)
    [pod] = rendered_pods(sub, tmp_path, export={"enabled": True})
    assert "kube-api-token" not in pod.dirs and not {"KUBETUNE_EXPORT_JOB", "KUBETUNE_EXPORT_QUEUE"} & set(pod.env)
    assert not any("serviceaccount" in a for a in pod.argv)
    manifests = helm.parse_manifests(client.render(sub, [tmp_path / "test-values.yaml"]))  # the same values
    [export] = plan(manifests, tmp_path / "export", cwd=tmp_path, component="export")  # rendered suspended: planned
    assert "trainer.export" in export.argv


def test_unsupported_volumes_are_refused(tmp_path: Path) -> None:
    sub = local_submission(tmp_path, nodes=1)
    manifests = helm.parse_manifests(client.render(sub))
    job = next(m for m in manifests if m["kind"] == "Job")
    job["spec"]["template"]["spec"]["volumes"].append({"name": "data", "persistentVolumeClaim": {"claimName": "x"}})
    with pytest.raises(UserError, match="configMap and emptyDir"):
        plan(manifests, tmp_path / "pods")


def test_sidecar_init_containers_are_refused(tmp_path: Path) -> None:
    sub = local_submission(tmp_path, nodes=2)
    manifests = helm.parse_manifests(client.render(sub))
    job = next(m for m in manifests if m["kind"] == "Job")
    job["spec"]["template"]["spec"]["initContainers"][0]["restartPolicy"] = "Always"
    with pytest.raises(UserError, match="init container .preflight. is a sidecar .restartPolicy: Always.: not run locally"):
        plan(manifests, tmp_path / "pods")


# --- real processes -------------------------------------------------------------------------


def test_two_nodes_rendezvous(tmp_path: Path) -> None:
    sub = local_submission(tmp_path, nodes=2)
    outcome, log = run(rendered_pods(sub, tmp_path, **probe_values()))
    assert outcome.ok, log
    assert probes(log) == [(0, 0, 2, "3", "MULTI_CPU"), (1, 1, 2, "3", "MULTI_CPU")], log
    # the preflight ran first in both pods, and accelerate could bind the port it had just released
    for rank in (0, 1):
        joined = re.search(rf"^\[rank {rank} preflight\] \[kubetune\] preflight: 2 ranks joined in .* \(gloo\)$", log, re.M)
        assert joined is not None and joined.start() < log.index(f"[rank {rank}] PROBE"), log


def step(tmp_path: Path, rank: int, name: str, code: str) -> PodProcess:
    """A process that logs its name, runs `code` (with `folder`), and leaves a file named after it."""
    script = f"import pathlib, sys, time; folder = pathlib.Path({str(tmp_path)!r}); print({name!r}, flush=True)\n{code}\n"
    script += f"(folder / {name!r}).touch()"
    return PodProcess(rank, ["python", "-c", script], {}, tmp_path, container="" if name.startswith("main") else "init")


def test_init_containers_of_all_pods_run_together_before_any_container(tmp_path: Path) -> None:
    pods = []
    for rank in (0, 1):
        # each init container waits until the other pod's has started: together, or never
        init = step(tmp_path, rank, f"init-{rank}", f"""
(folder / 'started-{rank}').touch()
while not (folder / 'started-{1 - rank}').exists(): time.sleep(0.05)""")
        main = step(tmp_path, rank, f"main-{rank}", "assert (folder / 'init-0').exists() and (folder / 'init-1').exists()")
        main.init = [init]
        pods.append(main)
    outcome, log = run(pods)
    assert outcome.ok and outcome.container == "", log
    assert "[rank 0 init] init-0" in log and "[rank 1] main-1" in log
    assert log.index("[rank 1 init] init-1") < log.index("[rank 0] main-0")


def test_a_failing_init_container_fails_the_run_with_its_diagnosis(tmp_path: Path) -> None:
    pods = []
    for rank, code in ((0, "time.sleep(120)"), (1, "print('[kubetune] error: preflight: rank 0 refused'); sys.exit(1)")):
        main = step(tmp_path, rank, f"main-{rank}", "")
        main.init = [step(tmp_path, rank, f"init-{rank}", code)]
        pods.append(main)
    outcome, log = run(pods, grace=2)
    assert not outcome.ok and outcome.first_failure == 1 and outcome.stopped == [0]
    assert outcome.container == "init" and outcome.who(1) == "rank 1 (init container init)"
    assert outcome.errors == {1: "preflight: rank 0 refused"}
    assert not list(tmp_path.glob("main-*")), "a pod's container started although an init container failed"


def one_node_two_processes(tmp_path: Path, env: dict[str, str] | None = None) -> tuple[Any, str]:
    """The CPU spec has one process per pod, so 1 x 2 is set through the chart values."""
    sub = local_submission(tmp_path, nodes=1)
    config = strategy.accelerate_config(local_submission(tmp_path, nodes=2).spec) | {"num_machines": 1}
    values = probe_values(env, job={"processesPerNode": 2}, accelerateConfig=yaml.safe_dump(config))
    pods = rendered_pods(sub, tmp_path, **values)
    assert len(pods) == 1 and pods[0].argv[pods[0].argv.index("--num_processes") + 1] == "2"
    return run(pods)


def test_one_node_two_processes(tmp_path: Path) -> None:
    outcome, log = one_node_two_processes(tmp_path)
    assert outcome.ok, log
    assert probes(log) == [(0, 0, 2, "3", "MULTI_CPU"), (0, 1, 2, "3", "MULTI_CPU")], log


def test_without_accelerate_use_cpu_each_process_would_run_alone(tmp_path: Path) -> None:
    """Why trainer.spec.strategy.process_env exists: when this fails, accelerate fixed it and it can go."""
    outcome, log = one_node_two_processes(tmp_path, env={"ACCELERATE_USE_CPU": "false"})
    assert outcome.ok, log
    assert [p[2] for p in probes(log)] == [1, 1], log


@pytest.mark.slow
def test_zero2_on_cpu(tmp_path: Path) -> None:
    sub = local_submission(tmp_path, nodes=2, strat="zero2")
    # DeepSpeed JIT-builds its CPU collective op; a shared extensions folder builds it once
    cache = Path.home() / ".cache" / "kubetune-tests" / "torch_extensions"
    outcome, log = run(rendered_pods(sub, tmp_path, **probe_values({"TORCH_EXTENSIONS_DIR": str(cache)})))
    assert outcome.ok, log
    assert probes(log) == [(0, 0, 2, "3", "DEEPSPEED"), (1, 1, 2, "3", "DEEPSPEED")], log
    assert log.count("zero_stage=2 loss=") == 2


def test_a_failing_rank_fails_the_run(tmp_path: Path) -> None:
    sub = local_submission(tmp_path, nodes=2)
    started = time.monotonic()
    outcome, log = run(rendered_pods(sub, tmp_path, **probe_values({"PROBE_FAIL_RANK": "1"})))
    assert not outcome.ok and outcome.first_failure is not None
    assert all(code not in (0, None) for code in outcome.codes), (outcome, log)
    assert "[rank 1] PROBE rank=1 failing on purpose" in log
    assert time.monotonic() - started < 60


def sleeper(tmp_path: Path, rank: int, code: str) -> PodProcess:
    return PodProcess(rank, ["python", "-c", code], {}, tmp_path)


def test_first_failure_stops_the_other_pods(tmp_path: Path) -> None:
    pods = [
        sleeper(tmp_path, 0, "import time; print('waiting', flush=True); time.sleep(120)"),
        sleeper(tmp_path, 1, "import sys, time; time.sleep(1); print('giving up'); sys.exit(7)"),
    ]
    started = time.monotonic()
    outcome, log = run(pods, grace=2)
    assert time.monotonic() - started < 30
    assert outcome.first_failure == 1 and outcome.codes[1] == 7
    assert outcome.codes[0] == -signal.SIGTERM and outcome.stopped == [0]
    assert "[rank 0] waiting" in log and "[rank 1] giving up" in log


CHILD = """
import pathlib, signal, sys, time
def stop(signum, _):
    pathlib.Path(sys.argv[1]).write_text(signal.Signals(signum).name)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
print("ready", flush=True)
time.sleep(120)
"""

PARENT = """
import json, sys
from pathlib import Path
from launcher.backends.local import PodProcess
from launcher.backends.local_run import LocalRun
folder = Path(sys.argv[1])
pods = [PodProcess(r, ["python", "-c", sys.argv[2], str(folder / f"got-{r}")], {}, folder) for r in (0, 1)]
outcome = LocalRun(pods, grace=10).run()
print(json.dumps({"codes": outcome.codes, "signal": outcome.signal}), flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_are_forwarded_to_every_pod(signum: int, tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PARENT), str(tmp_path), textwrap.dedent(CHILD)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    ready = 0
    while ready < 2:
        line = parent.stdout.readline()
        assert line, "the runner ended before its pods were ready"
        ready += line.strip().endswith("ready")
    parent.send_signal(signum)
    result = json.loads(parent.stdout.readlines()[-1])
    assert parent.wait(timeout=30) == 0
    name = signal.Signals(signum).name
    assert result["signal"] == signum
    assert [(tmp_path / f"got-{r}").read_text() for r in (0, 1)] == [name, name]
