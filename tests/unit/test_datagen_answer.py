"""Reading a helper model's answer (`launcher.datagen.answer`): JSON in fences or among text, bad items counted,
no usable example is a BadAnswer; the schema asked for; the deduplication key; the stored outcome per chunk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.datagen import answer, store
from launcher.datagen.chunk import split

GOOD = {"examples": [{"instruction": "What is a numerator?", "output": "The top number."}]}


@pytest.mark.parametrize("text", [
    json.dumps(GOOD),
    f"Sure, here you go:\n```json\n{json.dumps(GOOD, indent=2)}\n```\nAnything else?",
    f"{json.dumps(GOOD)} trailing words {{not json",
    json.dumps(GOOD["examples"]),  # a bare list
    "Thinking {about it}... " + json.dumps({"question": "What is a numerator?", "answer": "The top number."}),
])
def test_the_examples_are_found_wherever_the_json_is(text: str) -> None:
    assert answer.parse(text).examples == [("What is a numerator?", "The top number.")]


def test_unusable_items_are_counted_and_an_answer_without_examples_is_bad() -> None:
    parsed = answer.parse(json.dumps({"examples": [*GOOD["examples"], {"instruction": " ", "output": "x"}, "text"]}))
    assert (len(parsed.examples), parsed.invalid) == (1, 2)
    for text in ("", "No JSON here.", '{"examples": []}', '{"examples": [{"instruction": "", "output": ""}]}',
                 '{"examples": [{"instruction": "cut off'):
        with pytest.raises(answer.BadAnswer):
            answer.parse(text)


def test_the_schema_asks_for_exactly_k_examples() -> None:
    schema = answer.schema(3, 40)["properties"]["examples"]
    assert (schema["minItems"], schema["maxItems"]) == (3, 3)
    assert schema["items"]["properties"]["output"] == {"type": "string", "minLength": 1, "maxLength": 40}
    assert answer.response_format("json_object", 2, None)["schema"]["properties"]["examples"]["maxItems"] == 2
    assert answer.response_format("json_schema", 2, None)["json_schema"]["schema"] == answer.schema(2, None)
    assert answer.response_format("none", 2, None) is None


def test_normalised_instructions_ignore_case_spacing_and_punctuation() -> None:
    assert answer.normalize("What is  a Numerator?") == answer.normalize("what is a numerator!") == "what is a numerator"
    assert answer.normalize("What is a denominator?") != answer.normalize("What is a numerator?")


def test_rechunking_a_changed_file_removes_what_was_generated_from_it(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "c.sqlite")
    store.replace_document(conn, "a.md", "v1", {}, split("One fact. Another fact.", 10, 2))
    (chunk,) = store.chunks(conn)
    assert store.record(conn, chunk.id, "m", 1, [("Q?", "A.", "q")]) == 0
    assert store.record(conn, chunk.id, "m", 1, [("Q?", "A.", "q"), ("Q!", "B.", "q")]) == 1  # redone: replaced
    assert store.status(conn, chunk.id) == "done" and len(list(store.examples(conn))) == 1
    store.replace_document(conn, "a.md", "v2", {}, split("A new fact.", 10, 2))
    (new,) = store.chunks(conn)
    assert store.status(conn, new.id) is None and list(store.examples(conn)) == []
