"""Row -> conversation for each `data.format`, and every bad-row reason with its message."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chat import A, S, U
from trainer.data.errors import REASONS, BadRow
from trainer.data.formats import to_messages
from trainer.spec.data import DataSpec


def data(**kw: Any) -> DataSpec:
    return DataSpec.model_validate({"train": "t.jsonl", **kw})


def test_messages() -> None:
    row = {"messages": [S("sys"), U("hi"), A("hello")], "id": 7}
    assert to_messages(row, data()) == [S("sys"), U("hi"), A("hello")]


def test_messages_content_parts_are_joined() -> None:
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, A("c")]}
    assert to_messages(row, data()) == [U("ab"), A("c")]


def test_sharegpt() -> None:
    row = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert to_messages(row, data(format="sharegpt")) == [S("s"), U("q"), A("a")]


def test_instruction_with_and_without_input() -> None:
    spec = data(format="instruction")
    assert to_messages({"instruction": "Add", "input": "2 and 3", "output": "5"}, spec) == [U("Add\n\n2 and 3"), A("5")]
    assert to_messages({"instruction": "Add", "input": "  ", "output": "5"}, spec) == [U("Add"), A("5")]
    assert to_messages({"instruction": "Add", "output": "5"}, spec) == [U("Add"), A("5")]


def test_instruction_custom_columns() -> None:
    spec = data(format="instruction", columns={"instruction": "q", "input": "ctx", "output": "a"})
    assert to_messages({"q": "Q", "ctx": "C", "a": "X"}, spec) == [U("Q\n\nC"), A("X")]


def test_template_with_nested_fields_and_literal_braces() -> None:
    spec = data(
        format="template",
        template={"system": "You are {persona}.", "user": "{q} {{json}}", "assistant": "<think>{meta.why}</think>{a}"},
    )
    row = {"persona": "terse", "q": "2+2?", "a": 4, "meta": {"why": "sum"}}
    assert to_messages(row, spec) == [S("You are terse."), U("2+2? {json}"), A("<think>sum</think>4")]


def test_system_prompt_added_only_where_missing() -> None:
    spec = data(system_prompt="Be kind.")
    assert to_messages({"messages": [U("q"), A("a")]}, spec) == [S("Be kind."), U("q"), A("a")]
    assert to_messages({"messages": [S("own"), U("q"), A("a")]}, spec) == [S("own"), U("q"), A("a")]
    inst = data(format="instruction", system_prompt="Be kind.")
    assert to_messages({"instruction": "q", "output": "a"}, inst)[0] == S("Be kind.")


def test_blank_system_message_is_dropped() -> None:
    assert to_messages({"messages": [S(" "), U("q"), A("a")]}, data()) == [U("q"), A("a")]


BAD = [
    ("messages", {"text": "hi"}, "missing_field", "no `messages` field (found: text)"),
    ("messages", {"messages": "hi"}, "bad_type", "`messages` must be a list"),
    ("messages", {"messages": []}, "empty_conversation", "`messages` is empty"),
    ("messages", {"messages": [U("q"), {"role": "bot", "content": "a"}]}, "bad_role", "messages[1].role is 'bot'"),
    ("messages", {"messages": [U("q"), {"role": "assistant"}]}, "missing_field", "messages[1].content is missing"),
    ("messages", {"messages": [U("q"), {"content": "a"}]}, "missing_field", "messages[1].role is missing"),
    ("messages", {"messages": [U("q"), A(3)]}, "bad_type", "messages[1].content must be a string, got int"),
    ("messages", {"messages": [U("q"), A("  ")]}, "empty_content", "the assistant turn #2 is empty"),
    ("messages", {"messages": [S("s"), U("q")]}, "no_assistant_turn", "no assistant turn"),
    ("messages", {"messages": [S(" ")]}, "empty_conversation", "no messages with text"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "tool", "value": "x"}]}, "bad_role",
     "conversations[1].from is 'tool'"),
    ("instruction", {"instruction": "q"}, "missing_field", "no `output` column"),
    ("instruction", {"instruction": "q", "output": None}, "missing_field", "no `output` column"),
    ("instruction", {"instruction": ["q"], "output": "a"}, "bad_type", "`instruction` must be text, got list"),
    ("template", {"q": "x"}, "missing_field", "the template needs `a`, which the row lacks (found: q)"),
    ("template", {"q": "x", "a": None}, "missing_field", "the template needs `a`, which is null"),
]


@pytest.mark.parametrize(("fmt", "row", "reason", "message"), BAD, ids=[f"{b[0]}-{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_rows_have_a_reason_and_a_message(fmt: str, row: dict[str, Any], reason: str, message: str) -> None:
    extra = {"template": {"user": "{q}", "assistant": "{a}"}} if fmt == "template" else {}
    with pytest.raises(BadRow) as e:
        to_messages(row, data(format=fmt, **extra))
    assert e.value.reason == reason
    assert message in e.value.message


def test_template_nested_field_missing_names_the_path() -> None:
    spec = data(format="template", template={"user": "{q}", "assistant": "{meta.why}"})
    with pytest.raises(BadRow, match=r"needs `meta\.why`"):
        to_messages({"q": "x", "meta": {"other": 1}}, spec)


def test_template_refuses_a_list_where_text_belongs() -> None:
    """`{agent_responses}` holding a list would otherwise be trained as Python's list syntax."""
    spec = data(format="template", template={"user": "{q}", "assistant": "{agent_responses}"})
    with pytest.raises(BadRow, match=r"`\{agent_responses\}` is a list in the row, not text") as e:
        to_messages({"q": "x", "agent_responses": ["a", "b"]}, spec)
    assert e.value.reason == "bad_type"
    with pytest.raises(BadRow, match="is an object"):
        to_messages({"q": {"text": "x"}, "agent_responses": "a"}, spec)
    item = data(format="template", template={"user": "{q}", "assistant": "{agent_responses[1]}"})
    assert to_messages({"q": "x", "agent_responses": ["a", "b"]}, item)[-1]["content"] == "b"


def test_every_reason_is_known() -> None:
    with pytest.raises(ValueError):
        BadRow("whatever", "x")
    assert {"invalid_json", "missing_field", "empty_conversation", "bad_role", "no_assistant_turn", "too_long"} <= set(
        REASONS
    )
