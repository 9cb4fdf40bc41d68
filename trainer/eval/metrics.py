"""Task metrics, chosen by name in `eval.metrics` from a closed set.

Each metric scores one generated answer: `score(name, prediction, reference, context)` returns a
`Score` with a value in [0, 1] and, below 1, a short `why`. Metrics that compare with the held-out
answer (`exact_match`, `rouge_l`) need a reference; the others judge the answer alone.

- `exact_match`: 1 when the answer equals the reference; with `eval.exact_match: normalized`
  (the default) case and runs of whitespace are ignored, and so is whitespace at either end.
- `rouge_l`: ROUGE-L F1 (Lin, 2004): the longest common subsequence of the two token sequences,
  P = LCS / len(prediction), R = LCS / len(reference), F = 2PR / (P + R). Tokens are the
  lowercased runs of letters and digits (as Google's `rouge-score` tokenizes, but Unicode-aware).
- `json_valid`: the answer's fenced ```json blocks all parse, or, with none, the whole answer does
  (strict JSON: `NaN` and `Infinity` are refused).
- `mermaid_valid`: the share of the answer's Mermaid diagrams that pass `trainer.eval.mermaid`'s
  syntax check (0 when it has none).
- `cites_existing_source`: the answer cites at least one source path (`src/foo.py`,
  `docs/x.md:12`, `a/b.ts#L3-L9`) and every one exists under `eval.sources_root`, with the cited
  lines inside the file.

Standard library only: the spec and the launcher may import it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from trainer.eval import mermaid
from trainer.spec.errors import UsageError
from trainer.spec.training import MetricName


@dataclass(frozen=True)
class Context:
    """What a metric may need besides the two texts."""

    sources_root: Path | None = None  # `cites_existing_source`: where cited paths must exist
    normalize: bool = True  # `exact_match`: ignore case and whitespace differences


@dataclass(frozen=True)
class Score:
    value: float
    why: str = ""  # empty for a full score


class MetricError(UsageError, ValueError):
    """A metric that cannot be computed as asked (no reference, no sources root)."""


NEEDS_REFERENCE = frozenset({"exact_match", "rouge_l"})


def _need(reference: str | None, name: str) -> str:
    if reference is None:
        raise MetricError(f"{name} compares with the held-out answer, and this prompt has none")
    return reference


# -- exact match ------------------------------------------------------------------------------
def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def exact_match(prediction: str, reference: str | None, ctx: Context) -> Score:
    ref = _need(reference, "exact_match")
    a, b = (_norm(prediction), _norm(ref)) if ctx.normalize else (prediction, ref)
    if a == b:
        return Score(1.0)
    return Score(0.0, f"differs from the reference at character {_first_difference(a, b) + 1}")


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


# -- ROUGE-L ----------------------------------------------------------------------------------
_WORD = re.compile(r"[^\W_]+")


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row of memory)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str | None, ctx: Context) -> Score:
    pred, ref = tokens(prediction), tokens(_need(reference, "rouge_l"))
    if not pred or not ref:
        return Score(0.0, "the answer has no words" if not pred else "the reference has no words")
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return Score(0.0, "no word in common with the reference")
    p, r = lcs / len(pred), lcs / len(ref)
    f = 2 * p * r / (p + r)
    return Score(f, "" if f == 1.0 else f"longest common subsequence {lcs} words; precision {p:.2f}, recall {r:.2f}")


# -- JSON -------------------------------------------------------------------------------------
_JSON_FENCE = re.compile(r"^```[ \t]*json[ \t]*\n(.*?)^```", re.DOTALL | re.MULTILINE | re.IGNORECASE)


def _strict(value: str) -> None:
    raise ValueError(f"{value} is not JSON")


def json_valid(prediction: str, reference: str | None, ctx: Context) -> Score:
    blocks = _JSON_FENCE.findall(prediction)
    texts = blocks or [prediction.strip()]
    for i, text in enumerate(texts):
        try:
            json.loads(text, parse_constant=_strict)
        except ValueError as e:
            where = f"```json block #{i + 1}" if blocks else "the answer"
            return Score(0.0, f"{where} is not JSON: {e}")
    return Score(1.0)


# -- Mermaid ----------------------------------------------------------------------------------
def mermaid_valid(prediction: str, reference: str | None, ctx: Context) -> Score:
    diagrams = mermaid.diagrams(prediction)
    if not diagrams:
        return Score(0.0, "no Mermaid diagram (a ```mermaid block, or an answer that is one)")
    problems = [(i, p) for i, d in enumerate(diagrams) if (p := mermaid.check(d))]
    if not problems:
        return Score(1.0)
    i, p = problems[0]
    return Score(1 - len(problems) / len(diagrams), f"diagram #{i + 1} of {len(diagrams)}: {p}")


# -- cited sources ----------------------------------------------------------------------------
_EXTENSIONS = (
    "py|pyi|md|mdx|rst|txt|js|jsx|mjs|cjs|ts|tsx|go|rs|java|kt|kts|scala|c|h|cc|cpp|cxx|hpp|hh|cs|rb|php|swift|"
    "m|mm|sh|bash|zsh|ps1|sql|json|jsonl|yaml|yml|toml|ini|cfg|conf|xml|html|htm|css|scss|vue|svelte|proto|"
    "graphql|gradle|tf|lua|r|jl|ex|exs|erl|hs|ml|clj|dart|zig|nim|sol|ipynb|csv|tpl|j2|jinja|dockerfile|mk|cmake"
)
CITATION = re.compile(
    r"(?<![\w/.:-])"  # not the middle of a word, path or URL
    r"(?P<path>(?:\.{0,2}/)?(?:[\w.@+-]+/)*[\w@+-][\w.@+-]*\.(?:" + _EXTENSIONS + r"))"
    r"(?:(?::|#L)(?P<start>\d+)(?:-L?(?P<end>\d+))?)?"
    r"(?![\w/-])",
    re.IGNORECASE,
)


def citations(text: str) -> list[tuple[str, int | None, int | None]]:
    """(path, first line, last line) of every cited source path, in order, without repeats."""
    out: list[tuple[str, int | None, int | None]] = []
    for m in CITATION.finditer(text):
        if text[max(0, m.start() - 3) : m.start()].endswith("://"):
            continue
        start = int(m["start"]) if m["start"] else None
        item = (m["path"], start, int(m["end"]) if m["end"] else start)
        if item not in out:
            out.append(item)
    return out


def _missing(root: Path, path: str, first: int | None, last: int | None) -> str | None:
    target = (root / path.lstrip("/")).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return f"{path} does not exist"
    if first is None:
        return None
    with target.open("rb") as f:
        lines = sum(1 for _ in f)
    if first < 1 or (last or first) > lines or (last or first) < first:
        return f"{path}:{first}{f'-{last}' if last != first else ''} is outside its {lines} line(s)"
    return None


def cites_existing_source(prediction: str, reference: str | None, ctx: Context) -> Score:
    if ctx.sources_root is None:
        raise MetricError("cites_existing_source needs eval.sources_root: the folder cited paths are taken against")
    root = ctx.sources_root.resolve()
    cited = citations(prediction)
    if not cited:
        return Score(0.0, "cites no source path (like src/app.py or docs/guide.md:12)")
    missing = [m for c in cited if (m := _missing(root, *c))]
    if missing:
        return Score(0.0, f"{len(missing)} of {len(cited)} cited: {'; '.join(missing[:3])}")
    return Score(1.0)


Metric = Callable[[str, str | None, Context], Score]
METRICS: dict[str, Metric] = {
    "exact_match": exact_match,
    "rouge_l": rouge_l,
    "json_valid": json_valid,
    "mermaid_valid": mermaid_valid,
    "cites_existing_source": cites_existing_source,
}
assert set(METRICS) == set(get_args(MetricName)), "trainer.spec.training.MetricName and METRICS must name the same metrics"


def score(name: str, prediction: str, reference: str | None, ctx: Context | None = None) -> Score:
    if name not in METRICS:
        raise MetricError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    result = METRICS[name](prediction, reference, ctx or Context())
    assert 0.0 <= result.value <= 1.0, (name, result)
    return result
