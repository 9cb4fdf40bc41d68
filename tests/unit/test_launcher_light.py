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
        import launcher.backends.local, trainer.spec.strategy, trainer.spec.io
        import launcher.cli.plan, launcher.plan.arch, launcher.plan.catalog, launcher.plan.fit, launcher.plan.gate
        import launcher.plan.gguf, launcher.plan.ladder, launcher.plan.memory, launcher.plan.report
        import launcher.plan.source
    """
    assert heavy_modules_after(code) == []


def test_planning_imports_no_ml_stack(tmp_path: Path) -> None:
    """`launch plan` with a GGUF base model (its header read here, not by numpy-based `gguf`), the ladder included,
    and the fit check of a dry-run cluster submission."""
    from tests.resources import gemma3_gguf

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "light", "base_model": str(gemma3_gguf()), "data": {"train": "s3://b/t.jsonl", "max_seq_len": 4096},
        "output": {"uri": "s3://b/out/"}, "training": {"per_device_batch_size": 2}, "resources": {"gpu": "a100"}}))
    code = f"""
        from launcher.cli import main
        for args in (["plan", {str(spec)!r}, "--auto-fit"], ["plan", "-o", "json", {str(spec)!r}],
                     ["submit", "--dry-run", {str(spec)!r}]):  # it does not fit: the ladder runs in all three
            assert not main(args, standalone_mode=False), args
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
