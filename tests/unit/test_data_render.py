"""Chat template rendering and the label mask, on real tokenizers and real chat templates."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chat import A, S, U
from tests.resources import FAMILIES, chat_template, end_of_turn, tokenizer_for
from trainer.data.errors import BadRow, DataError
from trainer.data.render import IGNORE, ChatRenderer, stop_tokens

MULTI = [S("S"), U("2+2?"), A("4"), U("Thanks"), A("Bye.")]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[str, Any]:
    return request.param, tokenizer_for(request.param)


def trained_segments(tok: Any, ids: list[int], labels: list[int]) -> list[str]:
    """Decoded runs of consecutive trained labels (what the model learns to write)."""
    stops = tok.convert_tokens_to_ids(stop_tokens(tok))
    runs: list[list[int]] = []
    prev = -2
    for i, (t, lab) in enumerate(zip(ids, labels, strict=True)):
        if lab == IGNORE:
            continue
        # a trained label is the token itself, or a stop token where the template rewrote a turn's ending
        assert lab == t or lab in stops, "a trained label must be the token itself"
        if i != prev + 1:
            runs.append([])
        runs[-1].append(lab)
        prev = i
    return [tok.decode(r) for r in runs]


def multi(name: str) -> list[dict[str, str]]:
    """MULTI, without its system message for a template that refuses one (Gemma 3)."""
    return MULTI if FAMILIES[name].system_role else MULTI[1:]


def test_every_family_trains_exactly_the_assistant_turns(family: tuple[str, Any]) -> None:
    name, tok = family
    sample = ChatRenderer(tok, max_seq_len=512).encode(multi(name))
    eot = end_of_turn(name)
    expected = [f"4{eot}", f"Bye.{eot}"]
    if name == "harmony":  # gpt-oss: the final channel; an earlier turn, rendered ending in <|end|>, is trained
        # ending in the <|return|> the model wrote there (the template rewrites it for history)
        expected = [f"<|channel|>final<|message|>4{eot}", f"<|channel|>final<|message|>Bye.{eot}"]
    assert trained_segments(tok, sample.input_ids, sample.labels) == expected
    # the rest is the template's own text, untrained
    text = tok.decode(sample.input_ids)
    assert "2+2?" in text and "Thanks" in text
    if name == "harmony":
        assert "<|channel|>final<|message|>4<|end|><|start|>user" in text  # the input stays as the template wrote it


def test_exactly_one_bos(family: tuple[str, Any]) -> None:
    name, tok = family
    ids = ChatRenderer(tok, max_seq_len=512).encode(multi(name)).input_ids
    if name in ("qwen2", "harmony"):  # Qwen's and gpt-oss's templates write no BOS and their tokenizers add none
        assert tok.bos_token_id not in ids
    else:  # Llama 3 / Gemma templates write it; Phi-3's tokenizer adds it
        assert ids[0] == tok.bos_token_id
        assert ids.count(tok.bos_token_id) == 1


def test_train_on_all_trains_every_token_but_the_first() -> None:
    tok = tokenizer_for("llama3")
    s = ChatRenderer(tok, max_seq_len=512, train_on="all").encode(MULTI)
    assert s.labels == [IGNORE, *s.input_ids[1:]]


def test_qwen2_positions_by_hand() -> None:
    tok = tokenizer_for("qwen2")
    s = ChatRenderer(tok, max_seq_len=512).encode([S("S"), U("Hi"), A("Hello there.")])
    # <|im_start|> system \n S <|im_end|> \n <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n  = 15
    # Hello ' there' . <|im_end|> = 15..18, then the template's trailing \n (19) is not trained
    assert len(s.input_ids) == 20
    assert [i for i, lab in enumerate(s.labels) if lab != IGNORE] == [15, 16, 17, 18]
    prompt = tok.apply_chat_template([S("S"), U("Hi")], tokenize=False, add_generation_prompt=True)
    assert s.input_ids[:15] == tok(prompt, add_special_tokens=False).input_ids


def test_too_long_is_a_bad_row_or_truncated() -> None:
    tok = tokenizer_for("qwen2")
    conv = [U("Hi"), A("word " * 40)]
    with pytest.raises(BadRow) as e:
        ChatRenderer(tok, max_seq_len=32).encode(conv)
    assert e.value.reason == "too_long"
    assert "more than data.max_seq_len = 32" in e.value.message and "data.too_long: truncate" in e.value.message
    s = ChatRenderer(tok, max_seq_len=32, too_long="truncate").encode(conv)
    assert len(s.input_ids) == len(s.labels) == 32 and s.trained > 0 and s.truncated
    assert not ChatRenderer(tok, max_seq_len=256, too_long="truncate").encode(conv).truncated
    with pytest.raises(BadRow, match="no assistant token within the first 32"):
        ChatRenderer(tok, max_seq_len=32, too_long="truncate").encode([U("word " * 40), A("x")])


def test_template_that_refuses_a_conversation_is_a_bad_row() -> None:
    tok = tokenizer_for("gemma3")  # the Gemma 2/3 template raises on system messages
    assert not FAMILIES["gemma3"].system_role
    with pytest.raises(BadRow) as e:
        ChatRenderer(tok, max_seq_len=512).encode(MULTI)
    assert e.value.reason == "template_error"
    assert "System role not supported" in e.value.message


def test_qwen3_last_turn_think_block_is_handled() -> None:
    tok = tokenizer_for("qwen2")
    tok.chat_template = chat_template("Qwen-Qwen3-0.6B.jinja")
    s = ChatRenderer(tok, max_seq_len=512).encode(MULTI)
    # Qwen3 writes an (empty) think block into the last assistant turn only: the model produces it
    assert trained_segments(tok, s.input_ids, s.labels) == ["4<|im_end|>", "<think>\n\n</think>\n\nBye.<|im_end|>"]


def test_tokenizer_without_chat_template_is_a_data_error() -> None:
    tok = tokenizer_for("llama3")
    tok.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        ChatRenderer(tok, max_seq_len=512)
