"""The exported GGUF tokenizes like the training tokenizer where Gemma 3 relies on user-defined pieces.

Gemma 3's vocabulary has whole pieces for runs of spaces, tabs and newlines, marked user-defined; llama.cpp
matches them before its merges only when the converter is told which they are (`added_tokens_decoder` in
tokenizer_config.json). transformers 5.23 no longer writes that, so the export does (merge.py). Without it
indented code tokenizes differently in llama.cpp than in training: this test shows both."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.models import copy_model
from trainer.export import gguf
from trainer.export.merge import _declare_added_tokens

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CODE = ["CREATE TABLE users (\n  id INTEGER PRIMARY KEY,\n    name TEXT\n);", "def f(x):\n\treturn x  # two spaces",
        "a  b   c    d", "<b>bold</b>\n\n\nend"]


def llama_cpp_pieces(model: Path, texts: list[str]) -> list[list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(t.encode(), add_bos=False, special=False) for t in texts]
    finally:
        llm.close()


def test_user_defined_pieces_survive_the_conversion(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = copy_model("gemma3", tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.save_pretrained(folder)  # as the export saves the training tokenizer (transformers 5.23)
    expected = [tok(t, add_special_tokens=False).input_ids for t in CODE]

    plain = tmp_path / "plain"
    shutil.copytree(folder, plain)
    assert not json.loads((plain / "tokenizer_config.json").read_text()).get("added_tokens_decoder")
    before = llama_cpp_pieces(gguf.convert(plain, tmp_path / "plain.gguf", "f16", tmp_path / "plain.log").path, CODE)
    assert before != expected  # the trap: the user-defined marks are lost

    _declare_added_tokens(tok, folder / "tokenizer_config.json")
    declared = json.loads((folder / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert declared["138"]["content"] == "▁▁" and declared["138"]["special"] is False
    after = llama_cpp_pieces(gguf.convert(folder, tmp_path / "fixed.gguf", "f16", tmp_path / "fixed.log").path, CODE)
    assert after == expected
