"""The wheels a GPU machine without network needs to run the trainer (`scripts/gpu_check.sh --wheels DIR`), and the
check, there, that its Python then holds everything the trainer needs at versions that fit.

    python scripts/gpu_wheels.py fetch DIR --have machine.txt    # here (package index reachable): wheels into DIR
    python scripts/gpu_wheels.py check                           # there, after installing them (gpu_check.sh does)

`fetch` walks the dependencies of the trainer's packages (`ROOTS`, with the versions this environment has: the pins
of constraints.txt) for the target's Python (`--python`, default 3.12, Linux x86-64), and downloads a wheel of each
that the machine lacks or holds at another version. The machine's own CUDA build of torch, Triton and NVIDIA's
libraries is never carried. `--have FILE` says what the machine holds: `python3 -m pip list --format=freeze`
there, or one name per line where the version is not known (then it is not carried, unless the trainer pins it:
`check` reports there any that does not fit). `--with liger,cce,bitsandbytes` adds the GPU options' packages.
A package published without a binary wheel (DeepSpeed) is built here into a pure-Python wheel (its CUDA ops are
built at run time, `DS_BUILD_OPS=0`). The total size is printed, and `--budget-mb` refuses more.

`check` walks the same dependencies in the running Python: each must be installed, and each requirement between
them (markers evaluated) must hold. It prints what does not, with the wheel to carry, and exits 2.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# What `python -m trainer.train` (and gpu_check.sh's two checks) import, as distributions: the `train` extra of
# pyproject.toml with MLflow's client only (mlflow-skinny, plus SQLAlchemy and Alembic for the local run store).
ROOTS = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "deepspeed", "mlflow-skinny", "sqlalchemy",
         "alembic", "pydantic", "pyyaml", "fsspec", "s3fs", "boto3", "pyarrow", "sentencepiece", "psutil",
         "safetensors", "click", "rich")
# The ML stack whose versions the trainer is tested with (constraints.txt): carried unless the machine has the same.
EXACT = frozenset({"transformers", "peft", "trl", "accelerate", "datasets", "deepspeed", "mlflow-skinny",
                   "bitsandbytes", "liger-kernel", "cut-cross-entropy"})
OPTIONS = {"bitsandbytes": "bitsandbytes"}  # --with NAME -> distribution; liger / cce: trainer/model/kernels.py
MACHINE = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")  # the GPU machine's own CUDA build: never carried
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


@dataclass(frozen=True)
class Need:
    name: str  # canonical
    version: str  # here, without a local label (+cpu)
    why: str


def option_roots(options: list[str]) -> list[str]:
    """The distributions of `--with` options, as requirements (`name==version` where kubetune pins one)."""
    if not options:
        return []
    sys.path.insert(0, str(ROOT))
    from trainer.model.kernels import PACKAGES  # the pins of the Triton kernel options (one place)

    roots = []
    for option in options:
        if option in PACKAGES:
            roots.append(PACKAGES[option][1])
        elif option in OPTIONS:
            roots.append(OPTIONS[option])
        else:
            raise SystemExit(f"gpu_wheels: --with {option}: known are {', '.join([*PACKAGES, *OPTIONS])}")
    return roots


def installed(requirement: str) -> bool:
    try:
        md.distribution(Requirement(requirement).name)
    except md.PackageNotFoundError:
        return False
    return True


def wheel_requires(wheel: Path, env: dict[str, str]) -> list[Requirement]:
    """A wheel's own requirements (its METADATA), markers evaluated in `env`."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [Requirement(v.strip()) for k, _, v in (line.partition(":") for line in lines) if k == "Requires-Dist"]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env | {"extra": ""})]


@dataclass
class Closure:
    found: dict[str, str]  # canonical name -> installed version
    wanted: dict[str, list[Requirement]]  # canonical name -> what the others require of it
    problems: list[str]  # a requirement not installed, or installed at a version outside its specifier


def walk(roots: list[str] | tuple[str, ...], env: dict[str, str]) -> Closure:
    """`roots` and everything they require (markers evaluated in `env`), as installed in this Python."""
    found: dict[str, str] = {}
    wanted: dict[str, list[Requirement]] = {}
    problems: list[str] = []
    todo: list[tuple[str, str, tuple[str, ...]]] = [(r, "", ()) for r in roots]
    done: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        text, needed_by, extras = todo.pop()
        req = Requirement(text)
        key = (canonicalize_name(req.name), tuple(sorted(extras)))
        wanted.setdefault(key[0], []).append(req)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            problems.append(f"{req.name} is not installed (needed by {needed_by or 'the trainer'})")
            continue
        name = canonicalize_name(dist.metadata["Name"])
        version = dist.version
        if req.specifier and not req.specifier.contains(Version(version).public, prereleases=True):
            problems.append(f"{name} {version} is installed, but {needed_by or 'kubetune'} needs {req}")
        found[name] = version
        if key in done or MACHINE.match(name):  # the machine's CUDA build brings its own dependencies
            continue
        done.add(key)
        for line in dist.requires or []:
            dep = Requirement(line)
            if dep.marker is not None and not any(dep.marker.evaluate(env | {"extra": e}) for e in (*extras, "")):
                continue
            todo.append((line, f"{name} {version}", tuple(dep.extras)))
    return Closure(found, wanted, problems)


def target_env(python: str) -> dict[str, str]:
    major_minor = ".".join(python.split(".")[:2])
    return {**default_environment(), "python_version": major_minor, "python_full_version": f"{major_minor}.0",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def read_have(path: Path | None) -> dict[str, str | None]:
    """{canonical name: version or None (present, version unknown)} from a `pip list --format=freeze` file."""
    have: dict[str, str | None] = {}
    for raw in (path.read_text().splitlines() if path else []):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        have[canonicalize_name(name.strip())] = version.strip() or None
    return have


def needs(closure: Closure, have: dict[str, str | None]) -> list[Need]:
    """What to carry: what the machine lacks; the ML stack the trainer is tested with (`EXACT`) where the machine's
    version differs or is not known; anything else only where the machine's version breaks a requirement (one not
    known is left to `check` there)."""
    out = []
    for name, version in sorted(closure.found.items()):
        version = Version(version).public
        there = have.get(name, "absent")
        if MACHINE.match(name) or there == version:
            continue
        if there == "absent":
            out.append(Need(name, version, "not on the machine"))
        elif name in EXACT:
            out.append(Need(name, version, f"the trainer is tested with {version}; the machine has "
                                           f"{there or 'a version not known here'}"))
        elif there is not None:
            broken = sorted({str(r) for r in closure.wanted.get(name, [])
                             if not r.specifier.contains(there, prereleases=True)})
            if broken:
                out.append(Need(name, version, f"the machine has {there}; needed: {', '.join(broken)}"))
    return out


def download(need: Need, dest: Path, python: str) -> Path:
    """A binary wheel for the target; a package with none is built here into a pure-Python wheel."""
    platforms = [x for p in PLATFORMS for x in ("--platform", p)]
    tag = python.replace(".", "")[:3]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           python, "--implementation", "cp", "--abi", f"cp{tag}", "--abi", "abi3", "--abi", "none", *platforms,
           "--platform", "any", "-d", str(dest), f"{need.name}=={need.version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:  # no wheel on the index (DeepSpeed): build one, pure Python, without its CUDA ops
        build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest),
                 f"{need.name}=={need.version}"]
        built = subprocess.run(build, capture_output=True, text=True, env=os.environ | {"DS_BUILD_OPS": "0"})
        if built.returncode != 0:
            raise SystemExit(f"gpu_wheels: no wheel for {need.name}=={need.version} for Python {python}:\n"
                             f"{done.stderr[-1500:]}\n{built.stderr[-1500:]}")
    for wheel in sorted(dest.glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(wheel.name)
        if name == need.name and str(version) == need.version:
            if not any(t.platform == "any" or t.platform.startswith("manylinux") for t in tags):
                raise SystemExit(f"gpu_wheels: {wheel.name} runs on this machine only, not on a manylinux x86-64 "
                                 f"Python {python}")
            return wheel
    raise SystemExit(f"gpu_wheels: pip left no wheel of {need.name}=={need.version} in {dest}")


def fetch(args: argparse.Namespace) -> int:
    env = target_env(args.python)
    options = option_roots(args.with_)
    # an option not installed here (the Triton kernels: GPU only) is carried as its pinned wheel, its needs checked
    leaves = [Requirement(o) for o in options if not installed(o)]
    unpinned = [str(r) for r in leaves if len(r.specifier) != 1 or next(iter(r.specifier)).operator != "=="]
    if unpinned:
        print(f"gpu_wheels: {', '.join(unpinned)}: not installed here and not pinned (run `make setup`)", file=sys.stderr)
        return 2
    closure = walk([*ROOTS, *(o for o in options if installed(o))], env)
    if closure.problems:  # this environment is the reference: it must hold the whole closure
        print("gpu_wheels: this environment lacks part of the trainer's dependencies (run `make setup`):\n  "
              + "\n  ".join(closure.problems), file=sys.stderr)
        return 2
    todo = needs(closure, read_have(args.have))
    todo += [Need(canonicalize_name(r.name), str(next(iter(r.specifier)).version), "--with: a GPU option's")
             for r in leaves]
    args.dest.mkdir(parents=True, exist_ok=True)
    total = 0
    unmet = []
    print(f"{'package':<28} {'version':<16} {'MB':>6}  why")
    for need in todo:
        wheel = download(need, args.dest, args.python)
        size = wheel.stat().st_size
        total += size
        print(f"{need.name:<28} {need.version:<16} {size / 2**20:>6.1f}  {need.why}")
        if need.why.startswith("--with"):
            unmet += [f"{need.name} needs {r}" for r in wheel_requires(wheel, env)
                      if not MACHINE.match(canonicalize_name(r.name)) and canonicalize_name(r.name) not in closure.found]
    print(f"gpu_wheels: {len(todo)} wheels, {total / 2**20:.1f} MiB in {args.dest} (for Python {args.python}; "
          f"{len(closure.found)} packages in the trainer's dependencies)")
    if unmet:
        print("gpu_wheels: a --with package needs what is neither carried nor the machine's CUDA build:\n  "
              + "\n  ".join(unmet), file=sys.stderr)
        return 2
    if total > args.budget_mb * 2**20:
        print(f"gpu_wheels: over the budget of {args.budget_mb} MiB: pass a fuller --have, or fewer --with",
              file=sys.stderr)
        return 2
    return 0


def check(args: argparse.Namespace) -> int:
    roots = [*ROOTS, *option_roots(args.with_)]
    closure = walk(roots, default_environment())  # type: ignore[arg-type]
    found, problems = closure.found, closure.problems
    if problems:
        print("gpu_wheels check: the trainer's dependencies do not fit in this Python "
              f"({sys.executable}); carry wheels of these (scripts/gpu_wheels.py fetch):\n  " + "\n  ".join(problems),
              file=sys.stderr)
        return 2
    print(f"gpu_wheels check: {len(found)} packages, every requirement between them holds "
          f"(transformers {found.get('transformers')}, torch {found.get('torch')})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download the wheels the machine needs into DEST")
    f.add_argument("dest", type=Path)
    f.add_argument("--have", type=Path, help="the machine's `pip list --format=freeze` (or one name per line)")
    f.add_argument("--python", default="3.12", help="the machine's Python version (default 3.12)")
    f.add_argument("--budget-mb", type=float, default=56.0, help="refuse more than this many MiB (default 56)")
    c = sub.add_parser("check", help="check this Python holds the trainer's dependencies at versions that fit")
    for p in (f, c):
        p.add_argument("--with", dest="with_", type=lambda s: [x for x in s.split(",") if x], default=[],
                       help="also the packages of these GPU options: liger, cce, bitsandbytes")
    args = parser.parse_args(argv)
    return fetch(args) if args.command == "fetch" else check(args)


if __name__ == "__main__":
    sys.exit(main())
