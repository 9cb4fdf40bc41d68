"""A syntax check of Mermaid diagrams: the header and the line grammar of the common diagram types.

Checked, line by line (`%%` comments and blank lines skipped, `;` separating statements):
- `flowchart` / `graph` [TB|TD|BT|RL|LR]: nodes with their shapes (`A[..]`, `A(..)`, `A([..])`,
  `A[[..]]`, `A[(..)]`, `A((..))`, `A(((..)))`, `A>..]`, `A{..}`, `A{{..}}`, `A[/../]` ...),
  chains of links (`-->`, `---`, `-.->`, `==>`, `--o`, `--x`, `<-->`, `~~~`, longer forms) with
  `|label|` or inline `-- label -->` text, `A & B`, `:::class`, `subgraph` ... `end` balanced,
  `direction`, `classDef`, `class`, `style`, `linkStyle`, `click`. Node text holding brackets or
  quotes must be quoted (`A["f(x)"]`): Mermaid refuses `A[f(x)]`.
- `sequenceDiagram`: `participant` / `actor` [as ...], messages `A->>B: text` with every arrow
  type and `+`/`-` activation, `note left of|right of|over`, `activate` / `deactivate`,
  `autonumber`, `title`, blocks `loop`, `alt`/`else`, `opt`, `par`/`and`, `critical`/`option`,
  `break`, `rect`, `box` closed by `end` (`else` only in `alt`, `and` only in `par` ...).
- `classDiagram`: `class X`, `class X { members }`, generics `X~T~`, relations (`<|--`, `*--`,
  `o--`, `-->`, `--`, `..>`, `..|>`, `..`, both directions) with cardinalities and `: label`,
  `X : member`, `<<interface>> X`, `note`, `direction`.
- `stateDiagram` / `stateDiagram-v2`: transitions `A --> B : label` with `[*]`, `state "d" as A`,
  `state A { ... }` balanced, `state A <<fork>>`, `A : description`, `note ... end note`, `--`.
- `erDiagram`: relations `A ||--o{ B : label` (every cardinality pair, `--` or `..`), entity
  blocks `A { type name PK,FK "comment" }`, `A["alias"]`.
Other known types (pie, gantt, journey, gitGraph, mindmap, timeline, ...) are accepted on their
header alone; their bodies are not checked. Not checked for any type: semantics (an edge to a
node never declared is valid Mermaid anyway), styles' CSS, `click` targets, front matter
(`---` blocks) and Markdown strings. Passing means "these lines parse", not "Mermaid renders
exactly this".
"""

from __future__ import annotations

import re
from collections.abc import Callable

_FENCE = re.compile(r"^```[ \t]*mermaid[ \t]*\n(.*?)^```", re.DOTALL | re.MULTILINE | re.IGNORECASE)
UNCHECKED = ("pie", "gantt", "journey", "gitGraph", "mindmap", "timeline", "quadrantChart", "sankey-beta",
             "xychart-beta", "block-beta", "requirementDiagram", "C4Context", "C4Container", "C4Component",
             "C4Dynamic", "C4Deployment", "packet-beta", "architecture-beta", "kanban", "zenuml")
CHECKED = ("flowchart", "graph", "sequenceDiagram", "classDiagram", "stateDiagram", "stateDiagram-v2", "erDiagram")


def diagrams(text: str) -> list[str]:
    """The ```mermaid blocks of an answer, or the answer itself when it starts with a diagram header."""
    blocks = _FENCE.findall(text)
    if blocks:
        return blocks
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("%%")), "")
    return [text] if first.split(" ")[0] in CHECKED + UNCHECKED else []


def _lines(text: str) -> list[tuple[int, str]]:
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("%%"):
            out.append((n, line))
    return out


def check(text: str) -> str | None:
    """None when the diagram parses; otherwise what is wrong, with its line number."""
    lines = _lines(text)
    if not lines:
        return "the diagram is empty"
    n, header = lines[0]
    kind = header.split()[0].rstrip(";")
    if kind in UNCHECKED:
        return None
    checker = CHECKERS.get(kind)
    if checker is None:
        return f"line {n}: unknown diagram type {kind!r}; expected one of {', '.join(CHECKED + UNCHECKED)}"
    try:
        checker(header, lines[1:])
    except SyntaxError as e:
        return str(e)
    return None


def _fail(n: int, line: str, what: str) -> SyntaxError:
    return SyntaxError(f"line {n}: {what}: {line!r}")


# -- flowchart --------------------------------------------------------------------------------
_ID = r"[A-Za-z0-9_][\w]*"
_TEXT = r'(?:"[^"]*"|[^"\[\](){}|<>]*)'  # quoted, or plain text without brackets / quotes
_SHAPES = [
    (r"\(\(\(", r"\)\)\)"), (r"\(\[", r"\]\)"), (r"\[\[", r"\]\]"), (r"\[\(", r"\)\]"), (r"\(\(", r"\)\)"),
    (r"\{\{", r"\}\}"), (r"\[/", r"/\]"), (r"\[\\", r"\\\]"), (r"\[/", r"\\\]"), (r"\[\\", r"/\]"),
    (r"\[", r"\]"), (r"\(", r"\)"), (r"\{", r"\}"), (r">", r"\]"),
]
_SHAPE = "|".join(f"{o}{_TEXT}{c}" for o, c in _SHAPES)
_NODE = rf"{_ID}(?:{_SHAPE})?(?::::{_ID})?"
_GROUP = rf"{_NODE}(?:\s*&\s*{_NODE})*"
_ARROW = r"(?:<|o|x)?(?:-{2,}|-\.+-|={2,}|~{3,})(?:>|o|x)?"
_INLINE = r"(?:--|-\.|==)\s*[^-.=|>\s][^|>]*?\s*(?:-{2,}>|-{2,}-|\.-+>|\.-+|={2,}>|={3,})"
_LINK = rf"(?:{_INLINE}|{_ARROW})(?:\s*\|{_TEXT}\|)?"
_EDGE_LINE = re.compile(rf"{_GROUP}(?:\s*{_LINK}\s*{_GROUP})*")
_FLOW_HEADER = re.compile(r"(?:flowchart|graph)(?:\s+(?:TB|TD|BT|RL|LR))?\s*;?")
_FLOW_KEYWORD = re.compile(r"(classDef|class|style|linkStyle|click|direction)\b(.*)")


def _flowchart(header: str, lines: list[tuple[int, str]]) -> None:
    if not _FLOW_HEADER.fullmatch(header):
        raise _fail(1, header, "a flowchart header is `flowchart` or `graph`, then one of TB, TD, BT, RL, LR")
    depth = 0
    for n, line in lines:
        for stmt in (s.strip() for s in line.split(";")):
            if not stmt:
                continue
            if stmt == "end":
                depth -= 1
                if depth < 0:
                    raise _fail(n, line, "`end` without a `subgraph`")
            elif stmt.startswith("subgraph"):
                rest = stmt[len("subgraph"):].strip()
                if rest and not re.fullmatch(rf"{_ID}(?:\s*\[{_TEXT}\])?|[^\[\]{{}}]+", rest):
                    raise _fail(n, line, "a subgraph is `subgraph ID`, `subgraph ID [title]` or `subgraph title`")
                depth += 1
            elif m := _FLOW_KEYWORD.match(stmt):
                if m[1] == "direction" and m[2].strip() not in ("TB", "TD", "BT", "RL", "LR"):
                    raise _fail(n, line, "`direction` takes TB, TD, BT, RL or LR")
                if m[1] != "direction" and not m[2].strip():
                    raise _fail(n, line, f"`{m[1]}` needs arguments")
            elif not _EDGE_LINE.fullmatch(stmt):
                raise _fail(n, line, "not a node or link statement (node text with brackets or quotes must be "
                            'quoted: A["f(x)"]; links are -->, ---, -.->, ==>, with |label|)')
    if depth:
        raise SyntaxError(f"{depth} `subgraph` block(s) never closed with `end`")


# -- sequence diagram -------------------------------------------------------------------------
_ACTOR = r'(?:[\w.@-]+|"[^"]+")'
_SEQ_ARROW = r"(?:<<-->>|<<->>|-->>|->>|-->|->|--x|-x|--\)|-\))"
_MESSAGE = re.compile(rf"{_ACTOR}\s*{_SEQ_ARROW}\s*[+-]?\s*{_ACTOR}\s*:.*")
_PARTICIPANT = re.compile(rf"(?:participant|actor)\s+{_ACTOR}(?:\s+as\s+.+)?")
_NOTE = re.compile(rf"[Nn]ote\s+(?:left of|right of|over)\s+{_ACTOR}(?:\s*,\s*{_ACTOR})?\s*:.*")
_OPENERS = {"loop": None, "alt": "else", "opt": None, "par": "and", "critical": "option", "break": None,
            "rect": None, "box": None}


def _sequence(header: str, lines: list[tuple[int, str]]) -> None:
    if header != "sequenceDiagram":
        raise _fail(1, header, "the header is `sequenceDiagram` alone")
    stack: list[str] = []
    for n, line in lines:
        word = line.split()[0]
        if word in _OPENERS:
            stack.append(word)
        elif word in ("else", "and", "option"):
            if not stack or _OPENERS[stack[-1]] != word:
                raise _fail(n, line, f"`{word}` outside its block (`else` in alt, `and` in par, `option` in critical)")
        elif line == "end":
            if not stack:
                raise _fail(n, line, "`end` without an open block")
            stack.pop()
        elif word in ("activate", "deactivate", "destroy", "create"):
            if not re.fullmatch(rf"\w+\s+(?:(?:participant|actor)\s+)?{_ACTOR}", line):
                raise _fail(n, line, f"`{word}` takes one participant")
        elif word in ("autonumber", "title") or word.startswith(("title:", "accTitle", "accDescr")):
            continue
        elif not (_PARTICIPANT.fullmatch(line) or _NOTE.fullmatch(line) or _MESSAGE.fullmatch(line)):
            raise _fail(n, line, "not a message (`A->>B: text`), participant, note or block")
    if stack:
        raise SyntaxError(f"block(s) {', '.join(stack)} never closed with `end`")


# -- class diagram ----------------------------------------------------------------------------
_CLASS = r"[\w.-]+(?:~[\w<>, ~]+~)?"
_CARD = r'(?:"[^"]*"\s*)?'
_REL = r"(?:<\|--|\*--|o--|<--|--\|>|--\*|--o|-->|--|<\|\.\.|<\.\.|\.\.\|>|\.\.>|\.\.)"
_RELATION = re.compile(rf"{_CLASS}\s*{_CARD}{_REL}\s*{_CARD}{_CLASS}(?:\s*:\s*.*)?")
_CLASS_DECL = re.compile(rf'class\s+{_CLASS}(?:\s*\["[^"]*"\])?(?:\s*:::\w+)?\s*(\{{)?\s*(\}})?')


def _class(header: str, lines: list[tuple[int, str]]) -> None:
    if header != "classDiagram" and header != "classDiagram-v2":
        raise _fail(1, header, "the header is `classDiagram` alone")
    in_body = False
    for n, line in lines:
        if in_body:
            if line == "}":
                in_body = False
            elif "{" in line or "}" in line:
                raise _fail(n, line, "a member line inside a class body holds no braces")
            continue
        if m := _CLASS_DECL.fullmatch(line):
            in_body = bool(m[1]) and not m[2]
        elif (_RELATION.fullmatch(line) or re.fullmatch(rf"{_CLASS}\s*:\s*.+", line)
              or re.fullmatch(rf"<<[\w ]+>>\s*{_CLASS}", line) or re.fullmatch(r'note(?: for \S+)?\s+"[^"]*"', line)
              or re.fullmatch(r"direction\s+(TB|BT|RL|LR)", line)
              or re.match(r"(classDef|cssClass|style|click|callback|link)\b", line)):
            continue
        else:
            raise _fail(n, line, "not a class, member (`A : +name`) or relation (`A <|-- B`, `A --> B : label`)")
    if in_body:
        raise SyntaxError("a class body `{` is never closed with `}`")


# -- state diagram ----------------------------------------------------------------------------
_STATE = r"(?:\[\*\]|[\w.-]+)"
_TRANSITION = re.compile(rf"{_STATE}\s*-->\s*{_STATE}(?:\s*:.*)?")


def _state(header: str, lines: list[tuple[int, str]]) -> None:
    if header not in ("stateDiagram", "stateDiagram-v2"):
        raise _fail(1, header, "the header is `stateDiagram` or `stateDiagram-v2`")
    depth, in_note = 0, False
    for n, line in lines:
        if in_note:
            in_note = line != "end note"
            continue
        if line == "}":
            depth -= 1
            if depth < 0:
                raise _fail(n, line, "`}` without a `state X {`")
        elif m := re.fullmatch(r'state\s+(?:"[^"]*"\s+as\s+)?[\w.-]+(?:\s*<<(fork|join|choice)>>)?\s*(\{)?', line):
            depth += bool(m[2])
        elif re.fullmatch(r"note\s+(?:left|right)\s+of\s+[\w.-]+", line):
            in_note = True
        elif (_TRANSITION.fullmatch(line) or re.fullmatch(r"note\s+(?:left|right)\s+of\s+[\w.-]+\s*:.+", line)
              or re.fullmatch(r"[\w.-]+\s*:.*", line) or line == "--" or re.fullmatch(r"direction\s+(TB|BT|RL|LR)", line)
              or re.match(r"(classDef|class|style)\b\s*\S", line) or re.fullmatch(r"[\w.-]+(?::::\w+)?", line)):
            continue
        else:
            raise _fail(n, line, "not a transition (`A --> B : label`, `[*] --> A`), state or note")
    if in_note:
        raise SyntaxError("a `note` is never closed with `end note`")
    if depth:
        raise SyntaxError(f"{depth} `state X {{` block(s) never closed with `}}`")


# -- entity relationship ----------------------------------------------------------------------
_ENTITY = r'(?:[\w-]+|"[^"]+")(?:\["[^"]*"\])?'
_ER_REL = re.compile(rf'{_ENTITY}\s+(?:\|o|\|\||\}}o|\}}\|)(?:--|\.\.)(?:o\||\|\||o\{{|\|\{{)\s+{_ENTITY}\s*:\s*(?:"[^"]*"|[\w-]+)')
_ATTRIBUTE = re.compile(r'[\w()\[\],.-]+\s+[\w-]+(?:\s+(?:PK|FK|UK)(?:\s*,\s*(?:PK|FK|UK))*)?(?:\s+"[^"]*")?')


def _er(header: str, lines: list[tuple[int, str]]) -> None:
    if header != "erDiagram":
        raise _fail(1, header, "the header is `erDiagram` alone")
    in_body = False
    for n, line in lines:
        if in_body:
            if line == "}":
                in_body = False
            elif not _ATTRIBUTE.fullmatch(line):
                raise _fail(n, line, 'an attribute is `type name [PK|FK|UK] ["comment"]`')
        elif re.fullmatch(rf"{_ENTITY}\s*\{{", line):
            in_body = True
        elif not (_ER_REL.fullmatch(line) or re.fullmatch(_ENTITY, line) or re.fullmatch(r"direction\s+\w+", line)):
            raise _fail(n, line, "not a relationship (`A ||--o{ B : places`) or entity block (`A {`)")
    if in_body:
        raise SyntaxError("an entity block `{` is never closed with `}`")


CHECKERS: dict[str, Callable[[str, list[tuple[int, str]]], None]] = {
    "flowchart": _flowchart, "graph": _flowchart, "sequenceDiagram": _sequence, "classDiagram": _class,
    "classDiagram-v2": _class, "stateDiagram": _state, "stateDiagram-v2": _state, "erDiagram": _er,
}
