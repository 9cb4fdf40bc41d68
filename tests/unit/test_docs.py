"""The docs cannot drift from the code.

- docs/chart.md's values table lists every value of charts/kubetune/values.yaml, in order, with
  its default and its `# --` description;
- every `launch ...` command line in README.md and docs/*.md uses a subcommand and options
  that exist (parsed with click against `launcher.cli.main`): commands in code blocks must
  parse completely, commands in inline code must name a real subcommand and real options;
- every relative link in README.md and docs/*.md points to an existing file (and, for a
  `#fragment` into a Markdown file, to an existing heading or anchor).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from launcher.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
VALUES = ROOT / "charts" / "kubetune" / "values.yaml"
CHART_DOC = ROOT / "docs" / "chart.md"
TABLE_HEADER = re.compile(r"^\|\s*value\s*\|\s*default\s*\|")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ";;", "(", ")"}
REDIRECTS = {">", ">>", "<", "<<", ">&", "<&", "&>", ">|", "<<<"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# -- Markdown ---------------------------------------------------------------------------------


def split_markdown(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(lines inside fenced code blocks, lines outside them), each with its 1-based number."""
    code: list[tuple[int, str]] = []
    prose: list[tuple[int, str]] = []
    fence: str | None = None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
            fence = None
        elif fence is not None:
            code.append((n, line))
        else:
            prose.append((n, line))
    return code, prose


def table_cells(row: str) -> list[str]:
    """Cells of a Markdown table row; a `|` inside inline code does not split."""
    cells, cell, in_code = [], "", False
    for ch in row.strip().removeprefix("|").removesuffix("|"):
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
    cells.append(cell.strip())
    return cells


def unquote_code(cell: str) -> str:
    m = re.fullmatch(r"(`+)\s?(.*?)\s?\1", cell)
    return m.group(2) if m else cell


# -- chart values -------------------------------------------------------------------------------


@dataclass
class ChartValue:
    key: str  # dotted path
    default: Any
    description: str | None  # the `# --` comment, None when there is none


def chart_values() -> list[ChartValue]:
    """Every value of values.yaml in file order: each key with a `# --` comment right above it,
    and each key with an inline value that no documented key encloses (a documented value's own
    keys, such as podSecurityContext's defaults, are part of its default)."""
    text = VALUES.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    lines = text.splitlines()
    parents: list[tuple[int, str, bool]] = []  # (indent, key, documented) of the enclosing keys
    out: list[ChartValue] = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z]\w*):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).split(" #", 1)[0].strip()
        parents = [p for p in parents if p[0] < indent]
        above = lines[i - 1].strip() if i else ""
        documented = above.startswith("# --")
        path = [k for _, k, _ in parents] + [key]
        if not any(d for _, _, d in parents) and (documented or rest):
            node = data
            for part in path:
                node = node[part]
            description = above.removeprefix("# --").strip() if documented else None
            out.append(ChartValue(".".join(path), node, description))
        parents.append((indent, key, documented))
    return out


def documented_rows() -> list[list[str]]:
    """The rows of docs/chart.md's values table (`| value | default | ... | description |`)."""
    lines = CHART_DOC.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if TABLE_HEADER.match(line)), None)
    assert start is not None, "docs/chart.md has no values table (a header row starting `| value | default |`)"
    header = [c.lower() for c in table_cells(lines[start])]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, table_cells(line), strict=False)))
    return rows


def test_values_parser_sees_the_chart() -> None:
    keys = [v.key for v in chart_values()]
    assert {"job.nodes", "image.repository", "podSecurityContext", "affinity"} <= set(keys)
    assert "podSecurityContext.runAsNonRoot" not in keys  # part of podSecurityContext's default


def test_every_chart_value_is_in_the_docs() -> None:
    documented = {unquote_code(r["value"]) for r in documented_rows()}
    missing = [v.key for v in chart_values() if v.key not in documented]
    assert not missing, f"values in charts/kubetune/values.yaml missing from docs/chart.md's table: {missing}"


def test_chart_values_table_matches_values_yaml() -> None:
    """Same values, same order, same defaults, same `# --` descriptions."""
    values = chart_values()
    rows = documented_rows()
    doc_keys = [unquote_code(r["value"]) for r in rows]
    assert doc_keys == [v.key for v in values], "docs/chart.md's values table: not the values of values.yaml in order"
    for value, row in zip(values, rows, strict=True):
        shown = yaml.safe_load(unquote_code(row["default"]))
        assert shown == value.default, (
            f"{value.key}: docs/chart.md shows default {row['default']}, values.yaml has {value.default!r}"
        )
        assert value.description is not None, f"{value.key}: values.yaml has no `# --` description"
        assert row["description"] == value.description, (
            f"{value.key}: description differs from values.yaml's `# --` comment"
        )


# -- launch command lines -----------------------------------------------------------------------


@dataclass
class Command:
    where: str  # file:line
    argv: list[str]  # after `launch`
    complete: bool  # from a code block: must parse as a whole


def split_commands(line: str) -> list[list[str]]:
    """Simple commands of a shell line: env assignments and redirections dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    skip_next = False
    for token in lexer:
        if skip_next:
            skip_next = False
        elif token in REDIRECTS:
            skip_next = True
            if commands[-1] and commands[-1][-1].isdigit():  # `2>file`: the 2 is not an argument
                commands[-1].pop()
        elif token in SHELL_OPERATORS:
            commands.append([])
        elif not commands[-1] and ENV_ASSIGNMENT.match(token):
            continue
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def shell_lines(code: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Code lines with `\\` continuations joined and a leading `$ ` prompt removed."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for n, line in code:
        text = line.strip()
        if pending is not None:
            n, text = pending[0], f"{pending[1]} {text}"
        if text.endswith("\\"):
            pending = (n, text[:-1].rstrip())
            continue
        pending = None
        out.append((n, text.removeprefix("$ ")))
    if pending is not None:
        out.append(pending)
    return out


def launch_commands() -> list[Command]:
    found: list[Command] = []
    for path in DOCS:
        code, prose = split_markdown(path)
        for n, text in shell_lines(code):
            if not re.search(r"\blaunch\b", text):
                continue
            try:
                commands = split_commands(text)
            except ValueError:  # not shell (Python, output); a `launch` line must parse, though
                if text.startswith("launch "):
                    found.append(Command(f"{rel(path)}:{n}", ["<unparsable shell line>", text], True))
                continue
            found += [Command(f"{rel(path)}:{n}", c[1:], True) for c in commands if c[0] == "launch"]
        for n, line in prose:
            for m in INLINE_CODE.finditer(line):
                span = m.group(2).strip()
                if span.startswith("launch "):
                    found.append(Command(f"{rel(path)}:{n}", shlex.split(span)[1:], False))
    return found


def option_names(cmd: click.Command) -> set[str]:
    return {name for p in cmd.params if isinstance(p, click.Option) for name in (*p.opts, *p.secondary_opts)}


def launch_problem(argv: list[str], complete: bool) -> str | None:
    """Why `launch *argv` would not parse (None when it does)."""
    if not argv:
        return "no subcommand"
    head, *rest = argv
    if head.startswith("-"):
        known = option_names(main) | {"-h", "--help"}
        return None if head in known else f"`launch` has no option {head} (it has {', '.join(sorted(known))})"
    cmd = main.commands.get(head)
    if cmd is None:
        return f"no subcommand {head!r}; `launch` has: {', '.join(sorted(main.commands))}"
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):  # `launch data validate ...`
        sub, *rest = rest
        if sub not in cmd.commands:
            return f"`launch {head}` has no subcommand {sub!r}; it has: {', '.join(sorted(cmd.commands))}"
        head, cmd = f"{head} {sub}", cmd.commands[sub]
    known = option_names(cmd) | {"-h", "--help"}
    unknown = [a.split("=", 1)[0] for a in rest if a.startswith("-") and a != "-" and a.split("=", 1)[0] not in known]
    if unknown:
        return f"`launch {head}` has no option {', '.join(unknown)} (it has {', '.join(sorted(known))})"
    if complete:
        try:
            cmd.make_context(f"launch {head}", list(rest)).close()
        except click.exceptions.Exit:  # --help
            return None
        except click.ClickException as e:
            return f"`launch {head}` rejects it: {e.format_message()}"
    return None


COMMANDS = launch_commands()


def test_the_docs_show_launch_commands() -> None:
    where = {c.where.split(":")[0] for c in COMMANDS}
    assert {"README.md", "docs/local.md"} <= where, f"launch commands found only in {sorted(where)}"
    assert sum(c.complete for c in COMMANDS) >= 10


@pytest.mark.parametrize(
    ("argv", "complete", "ok"),
    [
        (["submit", "--local", "job.yaml", "--set", "training.max_steps=2"], True, True),
        (["render", "-n", "ml", "job.yaml"], True, True),
        (["--version"], True, True),
        (["validate", "--local", "job.yaml"], True, False),  # validate has no --local
        (["deploy", "job.yaml"], True, False),
        (["submit", "--local"], True, False),  # SPEC is missing
        (["submit", "--local"], False, True),  # inline code may leave SPEC out
        (["render", "job.yaml", "extra.yaml"], True, False),
    ],
)
def test_the_checker_itself(argv: list[str], complete: bool, ok: bool) -> None:
    assert (launch_problem(argv, complete) is None) == ok


def test_shell_lines_are_split_into_commands() -> None:
    line = "KUBETUNE_DEBUG=1 launch render job.yaml 2>/dev/null | kubectl apply -f - && launch validate x.yaml # c"
    assert split_commands(line) == [
        ["launch", "render", "job.yaml"],
        ["kubectl", "apply", "-f", "-"],
        ["launch", "validate", "x.yaml"],
    ]


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.where} launch {' '.join(c.argv)}" for c in COMMANDS])
def test_launch_command_in_docs_exists(command: Command) -> None:
    problem = launch_problem(command.argv, command.complete)
    assert problem is None, f"{command.where}: `launch {' '.join(command.argv)}`: {problem}"


# -- links ----------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link outside code."""
    _, prose = split_markdown(path)
    out = []
    for n, line in prose:
        text = INLINE_CODE.sub("", line)
        out += [(n, m.group(1)) for m in LINK.finditer(text)]
        if m := REFERENCE.match(text):
            out.append((n, m.group(1)))
    return out


def slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, prose = split_markdown(path)
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in prose:
        if m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
        out.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", line))
    return out


RELATIVE_LINKS = [
    (path, n, target)
    for path in DOCS
    for n, target in links(path)
    if not SCHEME.match(target) and not target.startswith("//")
]


def test_the_docs_have_relative_links() -> None:
    assert len(RELATIVE_LINKS) >= 5


@pytest.mark.parametrize(
    ("path", "line", "target"), RELATIVE_LINKS, ids=[f"{rel(p)}:{n} {t}" for p, n, t in RELATIVE_LINKS]
)
def test_relative_link_points_to_a_file(path: Path, line: int, target: str) -> None:
    file_part, _, fragment = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    assert dest.exists(), f"{rel(path)}:{line}: link to {target!r}, but {file_part} does not exist"
    if fragment and dest.suffix == ".md":
        assert fragment in anchors(dest), f"{rel(path)}:{line}: link to {target!r}: no heading or anchor #{fragment}"
