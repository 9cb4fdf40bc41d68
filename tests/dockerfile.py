"""A small Dockerfile reader for the image tests: instructions (continuations joined, comments
dropped), build stages, ARG defaults substituted, and the few instruction forms we check; and
the build context as .dockerignore admits it, laid out the way a stage's COPYs see it.

No Docker engine runs here, so what the images contain is read from their Dockerfiles.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass
class Instruction:
    cmd: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the (joined) line
    line: int  # where it starts in the file, 1-based


@dataclass
class Stage:
    base: str  # the FROM image, ARGs substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]  # ARGs before the first FROM and their defaults
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"{self.path}: no stage named {name!r}")

    def expand(self, text: str, stage: Stage | None = None) -> str:
        """`${X}` / `$X` replaced by the ARG defaults in scope (global, then the stage's own)."""
        scope = dict(self.global_args)
        if stage is not None:
            scope |= stage_args(self, stage)
        return expand(text, scope)

    def env(self, stage: Stage) -> dict[str, str]:
        """The stage's ENV, later instructions winning (values not expanded)."""
        out: dict[str, str] = {}
        for ins in stage.all("ENV"):
            out |= parse_env(ins.args)
        return out


def expand(text: str, scope: dict[str, str]) -> str:
    """`${X}` / `$X` replaced from `scope`; unknown variables (e.g. `$PATH`) are left as they are."""
    return VAR.sub(lambda m: scope.get(m.group(1) or m.group(2), m.group(0)), text)


def instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions: `\\` continues a line; comment lines are dropped, inside continuations too."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # a blank or comment line inside a continuation does not end it
        if not pending:
            start = n
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined = " ".join(p for p in pending if p)
        pending = []
        cmd, _, args = joined.partition(" ")
        out.append(Instruction(cmd.upper(), args.strip(), start))
    if pending:
        raise ValueError(f"line {start}: the file ends inside a continued instruction")
    return out


def parse(path: Path) -> Dockerfile:
    items = instructions(path.read_text(encoding="utf-8"))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in items:
        if ins.cmd == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(expand(words[0], global_args), name))
        elif not stages:
            if ins.cmd != "ARG":
                raise ValueError(f"{path}:{ins.line}: only ARG may come before the first FROM, not {ins.cmd}")
            global_args |= parse_arg(ins.args)
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise ValueError(f"{path}: no FROM")
    return Dockerfile(path, global_args, stages)


def parse_arg(args: str) -> dict[str, str]:
    """`ARG NAME=default` -> {NAME: default}; `ARG NAME` -> {NAME: ""}."""
    out = {}
    for word in shlex.split(args):
        name, _, default = word.partition("=")
        out[name] = default
    return out


def stage_args(df: Dockerfile, stage: Stage) -> dict[str, str]:
    """ARGs declared in a stage: a bare `ARG X` re-imports the global default of X."""
    out: dict[str, str] = {}
    for ins in stage.all("ARG"):
        for word in shlex.split(ins.args):
            name, eq, default = word.partition("=")
            out[name] = default if eq else df.global_args.get(name, "")
    return out


def parse_env(args: str) -> dict[str, str]:
    """`ENV A=1 B="two words"` (or the legacy `ENV A 1`)."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def exec_form(args: str) -> list[str] | None:
    """The JSON array of `ENTRYPOINT [...]` / `CMD [...]`, or None for the shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


def commands(run_args: str) -> list[list[str]]:
    """A RUN's shell command split at `&&`, `||` and `;` into word lists (enough for our RUN lines)."""
    out: list[list[str]] = []
    current: list[str] = []
    lexer = shlex.shlex(run_args, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    for word in lexer:
        if word in ("&&", "||", ";", "|"):
            if current:
                out.append(current)
            current = []
        else:
            current.append(word)
    if current:
        out.append(current)
    return out


def pip_installs(df: Dockerfile, stage: Stage) -> list[list[str]]:
    """The arguments of every `pip install` in the stage's RUNs (options included), ARGs expanded."""
    found = []
    for ins in stage.all("RUN"):
        for words in commands(df.expand(ins.args, stage)):
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    found.append(words[i + 2 :])
                    break
    return found


def apt_packages(df: Dockerfile, stage: Stage) -> set[str]:
    """Packages the stage's RUNs `apt-get install`."""
    found: set[str] = set()
    for ins in stage.all("RUN"):
        for words in commands(df.expand(ins.args, stage)):
            if words[:1] == ["apt-get"] and "install" in words:
                found |= {w for w in words[words.index("install") + 1 :] if not w.startswith("-")}
    return found


# -- the build context (.dockerignore) -----------------------------------------------------------


def admitted(rel: str, patterns: list[str]) -> bool:
    """Whether .dockerignore lets `rel` into the build context (the last pattern matching it or a parent decides)."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    keep = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, p) for p in prefixes):
            keep = negate
    return keep


def ignore_patterns(root: Path) -> list[str]:
    lines = (root / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def context_files(root: Path) -> set[str]:
    """Files (relative paths) of the checkout that .dockerignore admits to the build context."""
    patterns = ignore_patterns(root)
    exceptions = [p.lstrip("!").strip("/") for p in patterns if p.startswith("!")]
    found = set()
    for folder, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(folder, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirs[:] = [d for d in dirs if admitted(rel_dir + d, patterns)
                   or any(e.startswith(rel_dir + d + "/") for e in exceptions)]
        found |= {rel_dir + f for f in files if admitted(rel_dir + f, patterns)}
    return found


def copy_sources(df: Dockerfile, stage: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not `--from`) in a stage."""
    out = []
    for ins in stage.all("COPY") + stage.all("ADD"):
        words = ins.args.split()
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        out.append((words[:-1], words[-1]))
    return out


def build_stage_context(root: Path, df: Dockerfile, stage: Stage, dest: Path) -> None:
    """Lay out what the stage COPYs into its WORKDIR (`dest` here), as the builder gets it through
    .dockerignore: a folder's contents go into the target; files into a target ending in `/`."""
    context = context_files(root)
    for sources, target in copy_sources(df, stage):
        for src in sources:
            src = src.rstrip("/")
            files = [f for f in context if f == src or f.startswith(src + "/")]
            assert files, f"{df.path}: COPY {src}: the build context (.dockerignore) admits no such file"
            for f in files:
                if (root / src).is_dir():
                    out = dest / target / f[len(src) + 1 :]
                elif target.endswith("/") or target == "." or len(sources) > 1:
                    out = dest / target / Path(src).name
                else:
                    out = dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / f, out)
