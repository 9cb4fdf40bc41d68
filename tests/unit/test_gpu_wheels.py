"""scripts/gpu_wheels.py: what a GPU machine without network must be given for the trainer, and the check there.

The dependency walk must cover every third-party package the trainer and the GPU checks really import (else a
machine would fail mid-run on an import), and `check` must refuse a Python where a requirement does not hold."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_wheels as W  # noqa: E402

# What the trainer and both GPU checks import, in a fresh interpreter; the modules each package provides
IMPORTS = """
import json, sys, runpy
import trainer.train.loop, trainer.train.preference, trainer.train.supervise, trainer.train.trl_adapter
import trainer.tracking.tracker, trainer.model.load, trainer.data.builder, trainer.storage
import tests.strategy_contract
import launcher.plan.report, launcher.plan.source  # gpu_speed.py's `predicted`
runpy.run_path("scripts/gpu_speed.py", run_name="gpu_speed")
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def requirements_of(name: str) -> set[str]:
    """Every distribution `name` requires, at any depth, as installed here (markers and extras ignored: wider)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for line in md.requires(todo.pop()) or []:
            dep = W.canonicalize_name(Requirement(line).name)
            if dep not in seen and "extra ==" not in line:
                seen.add(dep)
                todo.append(dep)
    return seen


@pytest.fixture(scope="module")
def closure() -> W.Closure:
    return W.walk(W.ROOTS, W.target_env("3.12"))


def test_the_walk_covers_every_package_the_trainer_and_the_checks_import(closure: W.Closure) -> None:
    assert not closure.problems, closure.problems
    done = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    providers = md.packages_distributions()
    used = {W.canonicalize_name(d) for m in modules for d in providers.get(m, [])}
    assert {"torch", "transformers", "peft", "trl", "datasets"} <= used  # (DeepSpeed: imported by accelerate, under ZeRO)
    # Not carried: the machine's torch and what it brings; probes that libraries import where installed (PIL and
    # SciPy by transformers, bitsandbytes by PEFT: `--with bitsandbytes` carries it for QLoRA); mlflow, the full
    # package the tests' servers need here, whose `mlflow` module is mlflow-skinny's too
    machine = {n for n in used if W.MACHINE.match(n)} | requirements_of("torch")
    optional = {"pillow", "scipy", "bitsandbytes", "mlflow", "kubetune"}
    missing = sorted(used - set(closure.found) - machine - optional)
    assert not missing, f"imported but not in gpu_wheels.ROOTS' dependencies: {missing}"


def test_what_is_carried(closure: W.Closure) -> None:
    found = {"transformers": "5.23.0", "peft": "0.21.2", "numpy": "2.4.6", "pyarrow": "25.0.1", "torch": "2.13.0+cpu",
             "nvidia-nccl-cu13": "2.28.0", "sqlalchemy": "2.1.9", "tokenizers": "0.23.3"}
    wanted = {"pyarrow": [Requirement("pyarrow>=24.0.0")], "numpy": [Requirement("numpy>=1.17")],
              "tokenizers": [Requirement("tokenizers<0.24.0,>=0.23.1")]}
    have = {"transformers": "5.17.0", "peft": None, "numpy": "2.5.2", "pyarrow": "21.0.0", "torch": "2.11.0",
            "tokenizers": "0.23.2"}
    carried = {n.name: n.why for n in W.needs(W.Closure(found, wanted, []), have)}
    assert set(carried) == {"transformers", "peft", "pyarrow", "sqlalchemy"}, carried
    assert "5.17.0" in carried["transformers"] and "not known" in carried["peft"]  # the tested ML stack: exact
    assert carried["pyarrow"] == "the machine has 21.0.0; needed: pyarrow>=24.0.0"  # too old for a requirement
    assert carried["sqlalchemy"] == "not on the machine"  # numpy 2.5.2 fits; torch and NVIDIA's: the machine's own
    # the real walk: every version of this environment's, without a local label, for a machine with nothing
    everything = W.needs(closure, {})
    assert {n.name for n in everything} == {n for n in closure.found if not W.MACHINE.match(n)}
    assert all("+" not in n.version for n in everything)


def test_have_file(tmp_path: Path) -> None:
    path = tmp_path / "have.txt"
    path.write_text("# a comment\nTransformers==5.17.0\npyarrow\n\nPyYAML==6.0.2  # inline\n")
    assert W.read_have(path) == {"transformers": "5.17.0", "pyarrow": None, "pyyaml": "6.0.2"}
    machine = W.read_have(ROOT / "scripts" / "gpu_machine.txt")  # the recorded GPU machine's
    assert machine["torch"] == "2.11.0" and "pyarrow" in machine


def test_fetch_carries_nothing_to_a_machine_that_has_it_all(tmp_path: Path, closure: W.Closure,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    have = tmp_path / "have.txt"
    have.write_text("".join(f"{n}=={W.Version(v).public}\n" for n, v in closure.found.items()))
    assert W.main(["fetch", str(tmp_path / "wheels"), "--have", str(have)]) == 0
    assert "gpu_wheels: 0 wheels, 0.0 MiB" in capsys.readouterr().out
    assert not list((tmp_path / "wheels").iterdir())


def test_check_passes_here_and_refuses_a_version_that_breaks_a_requirement(tmp_path: Path) -> None:
    script = str(ROOT / "scripts" / "gpu_wheels.py")
    done = subprocess.run([sys.executable, script, "check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "every requirement between them holds" in done.stdout, done.stderr
    # a carried folder first on the path whose transformers is older than TRL's requirement
    old = tmp_path / "site" / "transformers-4.40.0.dist-info"
    old.mkdir(parents=True)
    (old / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 4.40.0\n")
    done = subprocess.run([sys.executable, script, "check"], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stdout
    assert "transformers 4.40.0 is installed, but trl 1.16.0 needs transformers>=4.56.2" in done.stderr
    assert "scripts/gpu_wheels.py fetch" in done.stderr


def test_a_wheels_own_requirements(tmp_path: Path) -> None:
    import zipfile

    wheel = tmp_path / "liger_kernel-0.8.5-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("liger_kernel-0.8.5.dist-info/METADATA", "Metadata-Version: 2.1\nName: liger_kernel\n"
                   "Version: 0.8.5\nRequires-Dist: torch>=2.1.2\nRequires-Dist: triton>=2.3.1\n"
                   "Requires-Dist: pytest; extra == \"dev\"\nRequires-Dist: colorama; sys_platform == \"win32\"\n")
    assert [str(r) for r in W.wheel_requires(wheel, W.target_env("3.12"))] == ["torch>=2.1.2", "triton>=2.3.1"]
