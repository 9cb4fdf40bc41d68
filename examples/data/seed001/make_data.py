"""Writes seed 001's example dataset: wiki pages for the small repository in `repo/`, as Harmony chats.

Each row asks for the wiki page of one module of `repo/src/tinywiki/`. The assistant's `thinking`
(gpt-oss's analysis channel) plans the page in two or three sentences; its `content` (the final
channel) is a short Markdown page with a Mermaid diagram and source references such as
`src/tinywiki/store.py:5-15`, taken against `repo/` (seed 001's `eval.sources_root`). Everything
is read from the modules themselves (docstrings, functions, classes, imports, line numbers with
`ast`), so every cited path and line range exists. Deterministic: the same repo gives the same rows.
Run from the repo root: python examples/data/seed001/make_data.py
"""

from __future__ import annotations

import ast
import json
import random
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE / "repo"
PACKAGE = "tinywiki"
SYSTEM = ("You write architecture wiki pages for code repositories. Every page has a short summary, one Mermaid "
          "diagram and a Sources section citing files as path:first-last lines.")
ASKS = (
    "Document the module {path} for the wiki.",
    "Write the wiki page for {path}.",
    "Our wiki has no page for {path} yet. Please write one.",
    "Explain {path} in a wiki page for new contributors.",
)
TRAIN_ROWS, EVAL_ROWS = 48, 8


@dataclass
class Symbol:
    kind: str  # function | class
    name: str
    first: int
    last: int


@dataclass
class Module:
    path: str  # relative to REPO
    name: str
    summary: str
    symbols: list[Symbol]
    imports: list[str]  # sibling modules it uses
    lines: int


def read_module(file: Path) -> Module:
    text = file.read_text()
    tree = ast.parse(text)
    symbols = [Symbol("class" if isinstance(n, ast.ClassDef) else "function", n.name, n.lineno, n.end_lineno or n.lineno)
               for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    imports = sorted({n.module.split(".")[1] for n in tree.body
                      if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith(f"{PACKAGE}.")})
    return Module(str(file.relative_to(REPO)), file.stem, (ast.get_docstring(tree) or "").strip(), symbols, imports,
                  len(text.splitlines()))


def flowchart(m: Module) -> str:
    lines = ["flowchart LR", f'    M["{m.name}"]']
    lines += [f'    M --> D{i}["{dep}"]' for i, dep in enumerate(m.imports)]
    lines += [f'    M --> S{i}(["{s.name}"])' for i, s in enumerate(m.symbols)]
    return "\n".join(lines)


def sequence(m: Module) -> str:
    lines = ["sequenceDiagram", "    participant Caller", f"    participant {m.name.capitalize()}"]
    lines += [f"    participant {dep.capitalize()}" for dep in m.imports]
    for s in m.symbols:
        lines.append(f"    Caller->>{m.name.capitalize()}: {s.name}")
    for dep in m.imports:
        lines.append(f"    {m.name.capitalize()}->>{dep.capitalize()}: uses")
    return "\n".join(lines)


def class_diagram(m: Module) -> str:
    lines = ["classDiagram"]
    for s in m.symbols:
        lines.append(f"    class {s.name}" if s.kind == "class" else f"    {m.name.capitalize()} : {s.name}()")
    lines += [f"    {m.name.capitalize()} ..> {dep.capitalize()}" for dep in m.imports]
    return "\n".join(lines)


DIAGRAMS = {"flowchart": flowchart, "sequence": sequence, "class": class_diagram}


def page(m: Module, diagram: str) -> tuple[str, str]:
    """(thinking, content) of the wiki page for `m` drawn with `diagram`."""
    names = ", ".join(f"`{s.name}`" for s in m.symbols) or "no functions"
    uses = ", ".join(f"{d}.py" for d in m.imports) or "no other module"
    thinking = (f"{m.path} has {len(m.symbols)} top-level definitions ({names}) and uses {uses}. "
                f"A {diagram} diagram shows that best. I will summarise it from its docstring and cite each "
                "definition by its line range.")
    body = [f"# {m.name}", "", f"{m.summary} (see {m.path}:1-{m.lines})", "", "## Structure", "",
            "```mermaid", DIAGRAMS[diagram](m), "```", "", "## Contents", ""]
    body += [f"- `{s.name}` ({s.kind}): {m.path}:{s.first}-{s.last}" for s in m.symbols]
    if m.imports:
        body += ["", "## Depends on", ""]
        body += [f"- {d}: src/{PACKAGE}/{d}.py" for d in m.imports]
    body += ["", "## Sources", "", f"- {m.path}:1-{m.lines}"]
    return thinking, "\n".join(body)


def rows() -> list[dict]:
    modules = [read_module(f) for f in sorted((REPO / "src" / PACKAGE).glob("*.py")) if f.stem != "__init__"]
    out = []
    for m in modules:
        for diagram in DIAGRAMS:
            for ask in ASKS:
                thinking, content = page(m, diagram)
                out.append({"messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": ask.format(path=m.path) + f" Use a {diagram} diagram."},
                    {"role": "assistant", "thinking": thinking, "content": content},
                ]})
    random.Random(1).shuffle(out)
    return out


def main() -> None:
    data = rows()
    assert len(data) >= TRAIN_ROWS + EVAL_ROWS, len(data)
    for name, part in (("train", data[:TRAIN_ROWS]), ("eval", data[TRAIN_ROWS:TRAIN_ROWS + EVAL_ROWS])):
        path = HERE / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
        print(f"wrote {len(part)} rows to {path}")


if __name__ == "__main__":
    main()
