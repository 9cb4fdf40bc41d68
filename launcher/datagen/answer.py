"""What we ask the helper model for, and how its answer is read.

The model is asked for `{"examples": [{"instruction": ..., "output": ...}, ...]}`. Its answer is read robustly:
the JSON object may sit in a ```json fence or among other text (the first decodable object or array that has the
expected shape wins); a bare list of examples, a single example, and `question` / `answer` for
`instruction` / `output` are accepted too. An answer with no usable example is a
`BadAnswer` (the caller asks again). Examples with an empty instruction or output are left out and counted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from launcher.datagen.store import StoredChunk

SYSTEM = (
    "You write training data for fine-tuning a language model. From the passage the user gives you, write "
    "{k} different question-and-answer example(s) that a student of this material would ask. Every answer must "
    "be grounded only in the passage: no facts from elsewhere. Each instruction must stand on its own (do not say "
    "'the passage' or 'the text'). Reply with JSON only, in this form: "
    '{{"examples": [{{"instruction": "...", "output": "..."}}]}}'
)
FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)


class BadAnswer(Exception):
    """The model's answer holds no usable example."""


@dataclass
class Parsed:
    examples: list[tuple[str, str]] = field(default_factory=list)
    invalid: int = 0  # items in the answer that were not an example with a non-empty instruction and output


def schema(k: int, max_chars: int | None) -> dict[str, Any]:
    """The JSON schema of an answer with exactly `k` examples (servers that support structured output constrain
    the model's sampling to it)."""
    text: dict[str, Any] = {"type": "string", "minLength": 1}
    if max_chars:
        text["maxLength"] = max_chars
    item = {"type": "object", "properties": {"instruction": text, "output": text},
            "required": ["instruction", "output"], "additionalProperties": False}
    return {"type": "object", "properties": {"examples": {"type": "array", "items": item, "minItems": k,
                                                          "maxItems": k}},
            "required": ["examples"], "additionalProperties": False}


def response_format(kind: str, k: int, max_chars: int | None) -> dict[str, Any] | None:
    """`json_schema`: OpenAI's structured outputs (OpenAI, vLLM, Ollama, OpenRouter); `json_object`: JSON mode with
    the schema alongside (llama-cpp-python's server reads it as a grammar); `none`: the prompt alone."""
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "examples", "strict": True, "schema": schema(k, max_chars)}}
    if kind == "json_object":
        return {"type": "json_object", "schema": schema(k, max_chars)}
    return None


def messages(chunk: StoredChunk, k: int) -> list[dict[str, str]]:
    where = f"Source: {chunk.source}"
    if chunk.headings:
        where += f" (section: {' > '.join(chunk.headings)})"
    return [{"role": "system", "content": SYSTEM.format(k=k)},
            {"role": "user", "content": f"{where}\n\n{chunk.text}"}]


def _candidates(text: str) -> list[Any]:
    """Every JSON value that starts at a `{` or `[` in `text` (fenced blocks first), in order."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    for block in [*FENCE.findall(text), text]:
        for m in re.finditer(r"[\[{]", block):
            try:
                value, _ = decoder.raw_decode(block, m.start())
            except json.JSONDecodeError:
                continue
            found.append(value)
    return found


def _items(value: Any) -> list[Any] | None:
    if isinstance(value, dict) and isinstance(value.get("examples"), list):
        return value["examples"]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return value
    if isinstance(value, dict) and ("instruction" in value or "question" in value):
        return [value]
    return None


def parse(text: str) -> Parsed:
    for value in _candidates(text):
        items = _items(value)
        if items is None:
            continue
        parsed = Parsed()
        for item in items:
            instruction = item.get("instruction", item.get("question")) if isinstance(item, dict) else None
            output = item.get("output", item.get("answer")) if isinstance(item, dict) else None
            if isinstance(instruction, str) and isinstance(output, str) and instruction.strip() and output.strip():
                parsed.examples.append((instruction.strip(), output.strip()))
            else:
                parsed.invalid += 1
        if parsed.examples:
            return parsed
    snippet = " ".join(text.split())[:160]
    raise BadAnswer(f"no JSON with examples in the answer: {snippet!r}" if snippet else "an empty answer")


def normalize(instruction: str) -> str:
    """The deduplication key: lower case words, punctuation and spacing ignored."""
    return " ".join(re.findall(r"\w+", instruction.lower()))
