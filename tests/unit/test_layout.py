"""The house rules a newcomer can rely on (docs/design-notes.md): small modules, short functions, one output
layer, public APIs of our dependencies, and every package saying what lives in it. Each test lists the
offenders, so a breach says where."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE = [p for top in ("launcher", "trainer") for p in sorted((ROOT / top).rglob("*.py"))
        if "chart" not in p.relative_to(ROOT).parts]
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 50
# where output to the user's terminal is written: the CLI's own layer, and the pods' one logging module
OUTPUT_LAYER = {"launcher/output.py", "launcher/cli/app.py", "trainer/say.py"}
# private APIs of our dependencies, each allowed only in its one adapter module (none today)
PRIVATE = re.compile(r"\._save_checkpoint\b|\b_train_batch_size\b|\bget_batch_samples\b|\._model\b")
ADAPTERS: set[str] = set()


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None]


def test_no_module_is_over_300_lines() -> None:
    long = {rel(p): n for p in CODE if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"split these by what they hold (at most {MAX_MODULE_LINES} lines)"


def test_no_function_is_over_50_lines() -> None:
    long = [f"{rel(p)}: {name} ({n} lines)" for p in CODE for name, n in functions(p) if n > MAX_FUNCTION_LINES]
    assert long == [], f"split these into named steps (at most {MAX_FUNCTION_LINES} lines)"


def test_only_the_output_layer_prints() -> None:
    found = [f"{rel(p)}:{i}" for p in CODE if rel(p) not in OUTPUT_LAYER
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"(?<![\w.])print\(", line)]
    assert found == [], "write through trainer/say.py (pods) or the CLI's output (launcher/output.py)"


def test_no_private_api_of_a_dependency() -> None:
    found = [f"{rel(p)}:{i}: {line.strip()}" for p in CODE if rel(p) not in ADAPTERS
             for i, line in enumerate(p.read_text().splitlines(), 1) if PRIVATE.search(line)]
    assert found == []


@pytest.mark.parametrize("package", sorted({rel(p.parent) for p in CODE if p.name == "__init__.py"}))
def test_every_package_says_what_lives_there(package: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert doc and len(doc) > 40, f"{package}/__init__.py: two lines on what lives here and what it may import"
