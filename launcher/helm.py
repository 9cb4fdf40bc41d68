"""The real `helm` binary: finding it, `helm template`, and reading what it rendered."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from launcher.errors import UserError

CHART = Path(__file__).resolve().parent / "chart"  # charts/kubetune, shipped inside the package
SETUP_HINT = "run `make setup` (it installs helm into the virtualenv with scripts/install_helm.py)"


def chart_dir() -> Path:
    if not (CHART / "Chart.yaml").is_file():
        raise UserError(f"the kubetune chart is not at {CHART}: reinstall kubetune (`pip install kubetune`, or "
                        "`pip install -e .` in a checkout; on Windows enable git symlinks: launcher/chart links "
                        "to charts/kubetune)")
    return CHART


def find_helm() -> str:
    """helm next to this interpreter (the venv's bin, even when the venv is not activated), else on PATH."""
    beside = Path(sys.executable).parent / "helm"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("helm")
    if found:
        return found
    raise UserError(f"helm is not installed: {SETUP_HINT}")


def run_helm(args: Sequence[str], timeout: float = 120) -> str:
    helm = find_helm()
    try:
        done = subprocess.run([helm, *args], capture_output=True, text=True, timeout=timeout)
    except OSError as e:
        raise UserError(f"cannot run {helm}: {e}; {SETUP_HINT}") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"`helm {args[0]}` did not finish within {timeout:.0f}s") from None
    if done.returncode != 0:
        stderr = done.stderr.strip() or done.stdout.strip() or "(no output)"
        raise UserError(f"`helm {args[0]}` failed (exit {done.returncode}):\n{textwrap.indent(stderr, '    ')}")
    return done.stdout


def template(
    release: str,
    values: dict[str, Any],
    extra_values: Sequence[Path] = (),
    namespace: str = "default",
) -> str:
    """`helm template` of the kubetune chart with `values` (then each extra values file on top)."""
    with tempfile.TemporaryDirectory(prefix="kubetune-values-") as tmp:
        values_file = Path(tmp) / "values.yaml"
        values_file.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
        args = ["template", release, str(chart_dir()), "--namespace", namespace, "-f", str(values_file)]
        for extra in extra_values:
            args += ["-f", str(extra)]
        return run_helm(args)


def parse_manifests(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML stream (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]
