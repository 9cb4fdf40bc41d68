"""The launcher stays light: no torch or ML stack on import or while validating/rendering, and an instant --help."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml

HEAVY = ("torch", "transformers", "accelerate", "deepspeed", "peft", "trl", "datasets", "numpy", "kubernetes")


def heavy_modules_after(code: str) -> list[str]:
    """Run `code` in a fresh interpreter; the heavy modules it imported."""
    probe = textwrap.dedent(code) + textwrap.dedent(f"""
        import sys
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_importing_the_launcher_imports_no_ml_stack() -> None:
    code = """
        import launcher.cli, launcher.client, launcher.helm, launcher.values, launcher.resolve
        import launcher.backends.local, trainer.strategy, trainer.spec_io
    """
    assert heavy_modules_after(code) == []


def test_validate_and_render_import_no_ml_stack(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").touch()
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "light", "base_model": "org/m", "data": {"train": "t.jsonl"}}))
    code = f"""
        from launcher.cli import main
        for args in (["validate", {str(spec)!r}], ["render", "--local", {str(spec)!r}]):
            try:
                main(args, standalone_mode=False)
            except SystemExit as e:
                assert not e.code, e.code
    """
    assert heavy_modules_after(code) == []


def test_import_time_of_the_cli_has_no_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import launcher.cli"], capture_output=True, text=True, timeout=60
    )
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert "click" in imported  # the report is what we think it is
    assert not imported & set(HEAVY)


def test_help_starts_well_under_a_second() -> None:
    launch = Path(sys.executable).parent / "launch"
    cmd = [str(launch)] if launch.exists() else [sys.executable, "-m", "launcher.cli"]
    times = []
    for _ in range(5):
        started = time.perf_counter()
        done = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=30)
        times.append(time.perf_counter() - started)
        assert done.returncode == 0 and "validate" in done.stdout
    assert min(times) < 0.5, f"launch --help took {min(times):.2f}s at best"
