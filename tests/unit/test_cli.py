"""`launch`: exit codes (0 ok, 1 a pod failed, 2 the user can fix it) and messages without tracebacks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from launcher import client, helm
from launcher.cli import main
from launcher.errors import UserError
from tests.chat import ONE_ROW

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOOD = {
    "name": "cli-test",
    "base_model": "org/model",
    "data": {"train": "data/train.jsonl"},
    "resources": {"gpu": "none"},
}
THREE_MISTAKES = {
    "name": "Bad_Name",
    "base_model": "org/model",
    "data": {"train": "data/train.jsonl", "formatt": "messages"},
    "training": {"learning_rate": 5},
}


pytestmark = pytest.mark.usefixtures("helm_binary")


def spec_file(folder: Path, raw: dict[str, Any], name: str = "spec.yaml") -> Path:
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "train.jsonl").write_text(ONE_ROW)
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path


def launch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command in its own process, as a user runs it."""
    full_env = {k: v for k, v in os.environ.items() if k != "KUBETUNE_DEBUG"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True, env=full_env, timeout=120
    )


def test_validate_prints_one_line(tmp_path: Path) -> None:
    done = launch("validate", str(spec_file(tmp_path, GOOD)))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 1
    assert "cli-test" in done.stdout and "ok" in done.stdout


def test_three_mistakes_are_all_reported_without_a_traceback(tmp_path: Path) -> None:
    done = launch("validate", str(spec_file(tmp_path, THREE_MISTAKES)))
    assert done.returncode == 2
    for field in ("name:", "data.formatt:", "training.learning_rate:"):
        assert field in done.stderr, done.stderr
    assert "3 problems" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_kubetune_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = launch("validate", str(spec_file(tmp_path, THREE_MISTAKES)), env={"KUBETUNE_DEBUG": "1"})
    assert done.returncode != 0
    assert "Traceback" in done.stderr


def test_overrides_are_validated_too(tmp_path: Path) -> None:
    path = str(spec_file(tmp_path, GOOD))
    done = launch("validate", path, "--set", "training.strategy=fsdp", "--set", "nonsense")
    assert done.returncode == 2
    assert "--set 'nonsense'" in done.stderr and "Traceback" not in done.stderr
    done = launch("validate", path, "--set", "training.strategy=fsdp")
    assert done.returncode == 2 and "training.strategy: `fsdp` needs GPUs" in done.stderr
    assert launch("validate", path, "--set", "training.strategy=zero2").returncode == 0


def test_validate_refuses_an_unproven_strategy_combination(tmp_path: Path) -> None:
    path = str(spec_file(tmp_path, GOOD))
    done = launch("validate", path, "--set", "resources.gpu=h100", "--set", "training.strategy=fsdp",
                  "--set", "model.quantization=4bit")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "model.quantization: `4bit` (QLoRA) under `training.strategy: fsdp` is not proven" in done.stderr
    assert "use strategy `ddp`" in done.stderr
    done = launch("validate", path, "--set", "resources.gpu=h100", "--set", "training.strategy=fsdp")
    assert done.returncode == 0, done.stderr


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    done = launch("validate", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2 and "file not found" in done.stderr


def normalise(manifests: str) -> str:
    return re.sub(r"cli-test-[a-z0-9]{5}", "cli-test-XXXXX", manifests)


def test_render_is_submit_dry_run(tmp_path: Path) -> None:
    path = str(spec_file(tmp_path, GOOD))
    rendered = launch("render", "--local", path)
    dry_run = launch("submit", "--dry-run", "--local", path)
    assert rendered.returncode == dry_run.returncode == 0, rendered.stderr + dry_run.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d]
    assert sorted(kinds) == ["ConfigMap", "Job", "Role", "RoleBinding", "Service", "ServiceAccount"]
    # the free local port differs between two runs; everything else is the same
    port = re.compile(r"(?<=main_process_port\n            - \")\d+|(?<=port: )\d+|(?<=containerPort: )\d+")
    assert port.sub("P", normalise(rendered.stdout)) == port.sub("P", normalise(dry_run.stdout))


def test_each_submission_gets_a_unique_name(tmp_path: Path) -> None:
    path = spec_file(tmp_path, GOOD)
    names = {client.prepare(path, local=True).name for _ in range(5)}
    assert len(names) == 5 and all(re.fullmatch(r"cli-test-[a-z0-9]{5}", n) for n in names)


def test_local_inputs_must_exist(tmp_path: Path) -> None:
    raw = GOOD | {"base_model": "../models/tiny.gguf", "data": {"train": "data/missing-*.jsonl"}}
    done = launch("submit", "--local", str(spec_file(tmp_path, raw)))
    assert done.returncode == 2
    assert "data.train: nothing matches" in done.stderr and "base_model:" in done.stderr
    assert "make setup" in done.stderr


def test_local_paths_are_resolved_against_the_spec_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model").mkdir()
    raw = GOOD | {
        "base_model": "model",
        "data": {"train": ["data/train.jsonl", "s3://b/more.jsonl"], "eval": "data/train.jsonl"},
        "output": {"uri": "out/here"},
        "eval": {"metrics": ["cites_existing_source"], "sources_root": "model"},
    }
    path = spec_file(tmp_path, raw)
    monkeypatch.chdir("/")  # not the spec's folder
    spec = client.prepare(path, local=True).spec
    assert spec.base_model == str(tmp_path / "model")
    assert spec.data.train == [str(tmp_path / "data" / "train.jsonl"), "s3://b/more.jsonl"]
    assert spec.data.eval == str(tmp_path / "data" / "train.jsonl")
    assert spec.output.uri == str(tmp_path / "out" / "here")
    assert spec.eval.sources_root == str(tmp_path / "model")
    # a hub id is left alone
    assert client.prepare(spec_file(tmp_path, GOOD, "hub.yaml"), local=True).spec.base_model == "org/model"
    # ...and for a cluster the local model folder is an error naming the field
    with pytest.raises(UserError) as e:
        client.prepare(path)
    assert any(p.startswith("base_model:") for p in e.value.problems)
    assert sum(p.startswith("data.") for p in e.value.problems) == 2  # data.train[0] and data.eval
    assert any(p.startswith("eval.sources_root:") and "s3://" in p for p in e.value.problems)
    raw["eval"]["sources_root"] = "no/such/folder"  # locally, it must exist
    with pytest.raises(UserError, match="eval.sources_root"):
        client.prepare(spec_file(tmp_path, raw, "missing.yaml"), local=True)


def test_set_paths_are_read_from_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative path given with --set is read from where launch runs, as helm and kubectl read paths; one
    written in the spec file from the file's folder. From another folder, both land where they were meant."""
    specs, here = tmp_path / "specs", tmp_path / "here"
    specs.mkdir()
    (here / "mine").mkdir(parents=True)
    (here / "mine" / "train.jsonl").write_text(ONE_ROW)
    (here / "model").mkdir()
    path = spec_file(specs, GOOD)
    monkeypatch.chdir(here)

    def rendered(*args: str) -> dict[str, Any]:
        """The resolved spec the pods would read (the ConfigMap's spec.yaml)."""
        done = CliRunner().invoke(main, [*args, str(path)])
        assert done.exit_code == 0, done.output
        cm = next(d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "ConfigMap")
        return yaml.safe_load(cm["data"]["spec.yaml"])

    spec = rendered("render", "--local")
    assert spec["data"]["train"] == str(specs / "data" / "train.jsonl")  # the file's own: from its folder
    assert spec["output"]["uri"] == str(specs / "runs" / "cli-test")
    spec = rendered("render", "--local", "--set", "data.train=mine/train.jsonl", "--set", "output.uri=out",
                    "--set", "base_model=model")
    assert spec["data"]["train"] == str(here / "mine" / "train.jsonl")
    assert spec["output"]["uri"] == str(here / "out") and spec["base_model"] == str(here / "model")
    spec = rendered("submit", "--dry-run", "--local", "--set", "data={train: [mine/train.jsonl, s3://b/x.jsonl]}",
                    "--set", "base_model=org/other")  # a section set whole; a URI and a hub id stay as they are
    assert spec["data"]["train"] == [str(here / "mine" / "train.jsonl"), "s3://b/x.jsonl"]
    assert spec["base_model"] == "org/other"
    done = CliRunner().invoke(main, ["render", "--local", str(path), "--set", "data.train=data/train.jsonl"])
    assert done.exit_code == 2  # data/ is the spec folder's, not this one's
    assert f"data.train: nothing matches {str(here / 'data' / 'train.jsonl')!r}" in done.stderr


def test_cluster_render_warns_about_local_paths(tmp_path: Path) -> None:
    """A dry run shows the manifests anyway; what a cluster would refuse comes as warnings."""
    done = launch("render", str(spec_file(tmp_path, GOOD)))
    assert done.returncode == 0, done.stderr
    assert "kind: Job" in done.stdout
    assert "warning: a cluster would refuse" in done.stderr
    assert "data.train:" in done.stderr and "output.uri:" in done.stderr and "s3://" in done.stderr


def test_cluster_submit_refuses_local_paths(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        client.prepare(spec_file(tmp_path, GOOD))
    assert [p.split(":")[0] for p in e.value.problems] == ["data.train", "output.uri"]


def test_quickstart_dry_run_prints_manifests() -> None:
    quickstart = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
    done = launch("submit", "--dry-run", str(quickstart))
    assert done.returncode == 0, done.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(done.stdout) if d]
    assert "Job" in kinds and "ConfigMap" in kinds


def test_cluster_submit_without_a_kubeconfig_says_how_to_get_one(tmp_path: Path) -> None:
    raw = GOOD | {"data": {"train": "s3://b/train.jsonl"}, "output": {"uri": "s3://runs/x/"}}
    done = launch("submit", str(spec_file(tmp_path, raw)), env={"HOME": str(tmp_path), "KUBECONFIG": "", "KUBERNETES_SERVICE_HOST": ""})  # not in a pod
    assert done.returncode == 2 and "no kubeconfig at ~/.kube/config: pass --kubeconfig FILE" in done.stderr


def test_helm_missing_says_make_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # nothing beside this "interpreter"
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(main, ["render", "--local", str(spec_file(tmp_path, GOOD))])
    assert result.exit_code == 2
    assert "helm is not installed" in result.output and "make setup" in result.output


def test_helm_failure_shows_its_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "chart"
    shutil.copytree(helm.CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("{{ .Values.nope.nested }}\n")
    monkeypatch.setattr(helm, "CHART", broken)
    result = CliRunner().invoke(main, ["render", "--local", str(spec_file(tmp_path, GOOD))])
    assert result.exit_code == 2
    assert "`helm template` failed" in result.output and "broken.yaml" in result.output


def with_probe(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """Run tests/fixtures/allreduce_probe.py instead of trainer.train, through the chart's command."""
    real = client.chart_values

    def probe_values(*args: Any, **kwargs: Any) -> dict[str, Any]:
        values = real(*args, **kwargs)
        values["job"]["module"] = "allreduce_probe"
        values["env"] |= {"PYTHONPATH": str(FIXTURES), **env}
        return values

    monkeypatch.setattr(client, "chart_values", probe_values)


def test_submit_local_runs_every_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_probe(monkeypatch)
    path = spec_file(tmp_path, GOOD | {"resources": {"gpu": "none", "nodes": 2}})
    result = CliRunner().invoke(main, ["submit", "--local", str(path)])
    assert result.exit_code == 0, result.output
    assert "[rank 0] PROBE rank=0 world_size=2" in result.output
    assert "[rank 1] PROBE rank=1 world_size=2" in result.output
    assert f"results in {tmp_path / 'runs' / 'cli-test'}" in result.output


def test_a_failing_pod_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_probe(monkeypatch, PROBE_FAIL_RANK="1")
    path = spec_file(tmp_path, GOOD | {"resources": {"gpu": "none", "nodes": 2}})
    result = CliRunner().invoke(main, ["submit", "--local", str(path)])
    assert result.exit_code == 1, result.output
    # the rank's own diagnosis is repeated at the end, not left under the launchers' tracebacks
    assert result.output.rstrip().endswith("the probe was told to fail on this rank (PROBE_FAIL_RANK)"), result.output
    assert (
        "exited with code" in result.output
        and "Traceback (most recent call last)" not in result.output.split("error:")[-1]
    )


def test_submit_local_refuses_an_empty_dataset_before_any_pod_starts(tmp_path: Path) -> None:
    """Seed 004's "dataset is empty", caught by `launch` instead of a pod after the model loaded."""
    spec = spec_file(tmp_path, GOOD)
    (tmp_path / "data" / "train.jsonl").write_text("")
    done = launch("submit", "--local", str(spec))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "data.train" in done.stderr and "launch data validate" in done.stderr
    assert "Traceback" not in done.stderr and "pod" not in done.stdout


def test_a_file_uri_is_a_path_on_this_machine(tmp_path: Path) -> None:
    """`file://` names this machine's disk: run locally it is read as a path, and a cluster job refuses it like any
    local path (pods cannot read a laptop's files)."""
    (tmp_path / "train.jsonl").write_text(ONE_ROW)
    path = spec_file(tmp_path, GOOD)
    done = CliRunner().invoke(main, ["render", "--local", str(path), "--set",
                                     f"data.train=file://{tmp_path / 'train.jsonl'}"])
    assert done.exit_code == 0, done.output
    cm = next(d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "ConfigMap")
    assert yaml.safe_load(cm["data"]["spec.yaml"])["data"]["train"] == str(tmp_path / "train.jsonl")
    refused = CliRunner().invoke(main, ["submit", str(path), "--set", "data.train=file:///data/train.jsonl",
                                        "--set", "output.uri=s3://runs/x/", "--set", "resources.gpu=none",
                                        "--kubeconfig", str(tmp_path / "none")])
    assert refused.exit_code == 2
    assert "data.train: '/data/train.jsonl' is a local path, which pods on the cluster cannot read" in refused.output
