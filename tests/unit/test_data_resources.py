"""The test-resource helper: real tokenizers with real templates, and a loud failure when missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import resources

ROOT = Path(__file__).resolve().parents[2]


def test_missing_resources_fail_and_say_make_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(resources.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(resources.MissingResource, match="make setup"):
        resources.models_dir()
    (tmp_path / "nowhere" / "models").mkdir(parents=True)
    with pytest.raises(resources.MissingResource, match=r"ggml-vocab-qwen2\.gguf is missing: run `make setup`"):
        resources.vocab_path("qwen2")
    with pytest.raises(resources.MissingResource, match=r"Qwen-Qwen2\.5-7B-Instruct\.jinja is missing"):
        resources.chat_template("qwen2")
    with pytest.raises(resources.MissingResource, match=r"is missing: run `make setup`"):
        resources.tokenizer_for("qwen2")  # also when this process already converted the vocabulary
    monkeypatch.setenv(resources.CACHE_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(resources.MissingResource, match=r"gemma-3-270m-q4_k_m\.gguf is missing: run `make setup`"):
        resources.gemma3_gguf()
    with pytest.raises(resources.MissingResource, match="run `make setup`"):
        resources.tokenizer_for("gemma3")


def test_unknown_family() -> None:
    with pytest.raises(ValueError, match="known: llama3, qwen2, phi3, gemma, gemma3"):
        resources.tokenizer_for("gpt9")


@pytest.mark.parametrize("family", sorted(resources.FAMILIES))
def test_tokenizer_has_the_family_template_and_is_a_fresh_copy(family: str) -> None:
    tok = resources.tokenizer_for(family)
    assert tok.is_fast and tok.pad_token is not None
    assert tok.chat_template == resources.chat_template(family)
    assert resources.end_of_turn(family) in tok.get_vocab()
    tok.chat_template = "changed"
    assert resources.tokenizer_for(family).chat_template == resources.chat_template(family)


def test_deepseek_r1_qwen_standin_has_deepseeks_tokens_in_qwens_ids_and_trains_the_think_block() -> None:
    """DeepSeek-R1-Distill-Qwen: `<|im_end|>` is plain text there; its turns end with the special EOS; seed 002's
    template (examples/data/seed002/deepseek-r1-think.jinja) trains the `<think>` block and the answer."""
    from tests.resources import DEEPSEEK_R1_QWEN, tokenizer_for
    from trainer.data.render import IGNORE, ChatRenderer

    tok = tokenizer_for("deepseek_r1_qwen")
    assert len(tok) == len(tokenizer_for("qwen2"))
    for token_id, (content, special) in DEEPSEEK_R1_QWEN.items():
        assert tok.convert_ids_to_tokens(token_id) == content
        assert (content in tok.all_special_tokens) == special
    assert len(tok("<|im_end|>", add_special_tokens=False).input_ids) > 1  # not a token of this vocabulary
    tok.chat_template = (ROOT / "examples" / "data" / "seed002" / "deepseek-r1-think.jinja").read_text()
    conv = [{"role": "system", "content": "Be frank."}, {"role": "user", "content": "Quit my job?"},
            {"role": "assistant", "content": "<think>\nRisky.\n</think>\nNot yet."}]
    [sample] = ChatRenderer(tok, max_seq_len=256).encode_many([conv])
    trained = tok.decode([t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label != IGNORE])
    assert trained == "<think>\nRisky.\n</think>\nNot yet.<｜end▁of▁sentence｜>"
    assert tok.decode(sample.input_ids).startswith("<｜begin▁of▁sentence｜>Be frank.<｜User｜>Quit my job?<｜Assistant｜>")
