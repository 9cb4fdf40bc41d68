"""Ollama Modelfiles from the real chat templates of four families; the LM Studio layout."""

from __future__ import annotations

import pytest

from tests.models import chat_rows
from tests.resources import tokenizer_for
from trainer.data.render import end_of_turn
from trainer.export import runtimes
from trainer.spec.data import DataSpec

FAMILIES = {"llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "phi3": "<|end|>", "gemma": "<turn|>"}


@pytest.mark.parametrize("family", FAMILIES)
def test_end_of_turn_is_read_from_the_template(family):
    assert end_of_turn(tokenizer_for(family)) == FAMILIES[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_turn_markers_rebuild_the_template_exactly(family):
    tok = tokenizer_for(family)
    turns = runtimes.read_turns(tok, FAMILIES[family])
    assert turns is not None
    two_turns = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."},
                 {"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "Lima."}]
    for conv in [r["messages"] for r in chat_rows(3, seed=7)] + [two_turns]:
        assert turns.render(conv) == tok.apply_chat_template(conv, tokenize=False)
        prompt = conv[:-1]
        assert turns.render(prompt, True) == tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def test_modelfile_has_template_system_and_stop_tokens():
    tok = tokenizer_for("qwen2")
    eos = [tok.eos_token, "<|im_end|>"]
    text, why = runtimes.modelfile("m-q4_k_m.gguf", tok, eos, [r["messages"] for r in chat_rows(2)], "Be brief.")
    assert why is None
    lines = text.splitlines()
    assert lines[0] == "FROM ./m-q4_k_m.gguf"
    assert lines[1].startswith('TEMPLATE """') and '{{ "<|im_start|>assistant\\n" }}"""' in lines[1]
    assert 'SYSTEM """Be brief."""' in lines and 'PARAMETER stop "<|im_end|>"' in lines


@pytest.mark.parametrize(("data", "system"), [
    ({"system_prompt": "Be brief."}, "Be brief."),
    ({"format": "template", "template": {"system": "You are a human-like AI assistant. {{sic}}", "user": "{q}",
                                         "assistant": "{a}"}}, "You are a human-like AI assistant. {sic}"),
    ({"format": "template", "template": {"system": "You speak for {team}.", "user": "{q}", "assistant": "{a}"}}, None),
    ({"format": "template", "template": {"user": "{q}", "assistant": "{a}"}}, None),
    ({}, None),
])
def test_modelfile_system_is_the_one_every_training_conversation_had(data, system):
    # seed 002: `format: template` forbids data.system_prompt; its fixed template.system is the default
    assert runtimes.default_system(DataSpec(train="t.jsonl", **data)) == system


def test_template_that_markers_cannot_express_gets_no_template_line():
    tok = tokenizer_for("qwen2")
    # a template that numbers the turns: no fixed marker reproduces it
    tok.chat_template = "{% for m in messages %}[{{ loop.index }}:{{ m.role }}]{{ m.content }}<|im_end|>{% endfor %}"
    text, why = runtimes.modelfile("m.gguf", tok, ["<|im_end|>"], [r["messages"] for r in chat_rows(2)], None)
    assert why is not None
    assert not [line for line in text.splitlines() if line.startswith("TEMPLATE")]  # comments only
    assert f"# no TEMPLATE: {why}." in text and "ollama show" in text


def test_lmstudio_layout_puts_files_under_publisher_and_model(tmp_path):
    gguf = tmp_path / "m-q4_k_m.gguf"
    gguf.write_bytes(b"GGUF")
    out = runtimes.lmstudio_layout([gguf], tmp_path / "lmstudio", "kubetune", "support-bot")
    assert out == [tmp_path / "lmstudio" / "kubetune" / "support-bot" / "m-q4_k_m.gguf"]
    assert out[0].read_bytes() == b"GGUF"
