"""Runs `launch submit --local SPEC` the way a user does: its own process, the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def submit_local(spec_path: Path, timeout: int = 900, args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """In the spec's folder, without KUBETUNE_DEBUG (tracebacks) and without the model hub; `args` are added
    to the command line (`--resume NAME`, `--set ...`), `env` to the environment."""
    full = {k: v for k, v in os.environ.items() if k != "KUBETUNE_DEBUG"} | {"HF_HUB_OFFLINE": "1"} | (env or {})
    return subprocess.run([sys.executable, "-m", "launcher.cli", "submit", "--local", str(spec_path), *args],
                          capture_output=True, text=True, env=full, timeout=timeout, cwd=spec_path.parent)
