"""Reasoning in assistant turns (`thinking`, `reasoning_content`, `<think>`) and `data.reasoning: train | mask`,
on real vocabularies and the real gpt-oss, Qwen3 and DeepSeek-R1-Distill-Qwen chat templates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError
from tokenizers import AddedToken

from launcher.cli import main
from tests.chat import A, S, U
from tests.resources import FAMILIES, chat_template, tokenizer_for
from tests.unit.test_data_render import trained_segments
from trainer.data import build_dataset
from trainer.data.errors import BadRow, DataError
from trainer.data.formats import to_messages
from trainer.data.render import ChatRenderer
from trainer.spec.data import DataSpec
from trainer.spec.job import JobSpec

ROOT = Path(__file__).resolve().parents[2]
SEED001 = ROOT / "examples" / "data" / "seed001"
HARMONY = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>")
DEEPSEEK = {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}
EOS = DEEPSEEK["eos_token"]


def R(text: str, reasoning: str) -> dict[str, str]:
    """An assistant turn with reasoning, as `formats.to_messages` hands it to the template."""
    return {**A(text), "thinking": reasoning, "reasoning_content": reasoning}


@pytest.fixture(scope="module")
def harmony() -> Any:
    """gpt-oss stand-in: Llama 3's real vocabulary plus the Harmony special tokens, gpt-oss's real template."""
    tok = tokenizer_for("llama3")
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in HARMONY], special_tokens=True)
    tok.chat_template = chat_template("openai-gpt-oss-120b.jinja")
    return tok


@pytest.fixture(scope="module")
def qwen3() -> Any:
    tok = tokenizer_for("qwen2")
    tok.chat_template = chat_template("Qwen-Qwen3-0.6B.jinja")
    return tok


@pytest.fixture(scope="module")
def deepseek() -> Any:
    """DeepSeek-R1-Distill-Qwen: Qwen2.5's vocabulary with DeepSeek's added tokens, and its real template."""
    tok = tokenizer_for("qwen2")
    tok.add_tokens([AddedToken(t, special=True, normalized=False)
                    for t in (*DEEPSEEK.values(), "<｜User｜>", "<｜Assistant｜>")], special_tokens=True)
    tok.add_tokens(["<think>", "</think>"])
    for role, token in DEEPSEEK.items():
        setattr(tok, role, token)
    tok.chat_template = chat_template("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja")
    return tok


def encode(tok: Any, conv: list[dict[str, str]], reasoning: str = "train") -> tuple[list[str], int, str]:
    """(trained segments, turns whose reasoning was dropped, the whole decoded text)."""
    s = ChatRenderer(tok, max_seq_len=1024, reasoning=reasoning).encode(conv)
    return trained_segments(tok, s.input_ids, s.labels), s.reasoning_dropped, tok.decode(s.input_ids)


# -- gpt-oss (Harmony) ------------------------------------------------------------------------------
def test_harmony_single_turn_train_and_mask(harmony: Any) -> None:
    conv = [S("Be brief."), U("2+2?"), R("4", "Add the numbers.")]
    trained, dropped, text = encode(harmony, conv)
    assert trained == ["<|channel|>analysis<|message|>Add the numbers.<|end|>"
                       "<|start|>assistant<|channel|>final<|message|>4<|return|>"]
    assert dropped == 0
    trained, dropped, masked_text = encode(harmony, conv, "mask")
    assert trained == ["4<|return|>"]  # the answer and <|return|>; the analysis channel is context
    assert masked_text == text and "Add the numbers." in text


def test_harmony_multi_turn_drops_earlier_analysis(harmony: Any) -> None:
    conv = [U("2+2?"), R("4", "Add them."), U("Thanks"), R("Bye.", "Be polite.")]
    trained, dropped, text = encode(harmony, conv)
    # turn 1 as the full conversation renders it: final channel only, its analysis gone; rendered closed by <|end|>,
    # trained closed by the <|return|> the model wrote there (the template rewrites it for history)
    assert trained == ["4<|return|>", "<|channel|>analysis<|message|>Be polite.<|end|>"
                                      "<|start|>assistant<|channel|>final<|message|>Bye.<|return|>"]
    assert dropped == 1
    assert "Add them." not in text and "<|channel|>final<|message|>4<|end|>" in text
    trained, dropped, _ = encode(harmony, conv, "mask")
    assert (trained, dropped) == (["4<|return|>", "Bye.<|return|>"], 1)


def test_harmony_reasoning_field_spelled_either_way(harmony: Any) -> None:
    spec = DataSpec(train="x.jsonl")
    for key in ("thinking", "reasoning_content"):
        conv = to_messages({"messages": [U("2+2?"), {**A("4"), key: "Add."}]}, spec)
        assert encode(harmony, conv)[0][0].startswith("<|channel|>analysis<|message|>Add.<|end|>")


# -- <think> templates --------------------------------------------------------------------------------
def test_qwen3_multi_turn(qwen3: Any) -> None:
    conv = [U("2+2?"), R("4", "Add them."), U("Thanks"), R("Bye.", "Be polite.")]
    trained, dropped, text = encode(qwen3, conv)
    assert trained == ["4<|im_end|>", "<think>\nBe polite.\n</think>\n\nBye.<|im_end|>"]
    assert dropped == 1 and "Add them." not in text
    assert encode(qwen3, conv, "mask")[:2] == (["4<|im_end|>", "Bye.<|im_end|>"], 1)


def test_qwen3_think_block_in_content(qwen3: Any) -> None:
    # Qwen3's template reads <think> out of the content (any spacing) and drops it from earlier turns
    conv = [U("2+2?"), A("<think>add</think>4"), U("Thanks"), A("<think>  be nice </think>Bye.")]
    trained, dropped, _ = encode(qwen3, conv)
    assert (trained, dropped) == (["4<|im_end|>", "<think>\n  be nice \n</think>\n\nBye.<|im_end|>"], 1)
    assert encode(qwen3, conv, "mask")[0] == ["4<|im_end|>", "Bye.<|im_end|>"]


def test_deepseek_r1_distill_drops_reasoning_from_every_turn(deepseek: Any) -> None:
    trained, dropped, text = encode(deepseek, [U("2+2?"), A("4")])
    assert (trained, dropped) == ([f"4{EOS}"], 0) and text.startswith(DEEPSEEK["bos_token"])
    conv = [U("2+2?"), {**A("4"), "reasoning_content": "Add them."}, U("Thanks"), A("Bye.")]
    trained, dropped, text = encode(deepseek, conv)
    assert (trained, dropped) == ([f"4{EOS}", f"Bye.{EOS}"], 1) and "Add them." not in text
    # the last turn's reasoning would never be seen: stop, and say how to fix it
    for last in ({**A("Bye."), "reasoning_content": "Be polite."}, A("<think>Be polite.</think>Bye.")):
        with pytest.raises(DataError, match=r"does not render the reasoning of assistant turn #4.*model\.chat_template"):
            encode(deepseek, [*conv[:3], last])


def test_reasoning_in_a_template_that_ignores_it_is_an_error() -> None:
    tok = tokenizer_for("qwen2")  # Qwen2.5 reads neither `thinking` nor `reasoning_content`
    with pytest.raises(DataError, match="does not render the reasoning of assistant turn #2"):
        encode(tok, [U("2+2?"), R("4", "Add.")])


def test_mask_without_reasoning_changes_nothing(qwen3: Any, harmony: Any) -> None:
    # Gemma 3's vocabulary takes long to load and its template is Gemma 4's turn format without the thought channel
    tokenizers = {name: tokenizer_for(name) for name in FAMILIES if name != "gemma3"} | {"qwen3": qwen3,
                                                                                         "gpt-oss": harmony}
    for name, tok in tokenizers.items():
        conv = [U("2+2?"), A("4"), U("Thanks"), A("Bye.")]
        if name == "qwen2":
            conv.insert(0, S("Be brief."))
        train = ChatRenderer(tok, max_seq_len=1024).encode(conv)
        mask = ChatRenderer(tok, max_seq_len=1024, reasoning="mask").encode(conv)
        assert (mask.input_ids, mask.labels) == (train.input_ids, train.labels), name
        assert mask.trained > 0 and mask.reasoning_dropped == 0


def test_template_that_rewrites_earlier_answers_is_a_clear_error() -> None:
    tok = tokenizer_for("qwen2")
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.role == 'assistant' and not loop.last %}(earlier answer){% else %}{{ m.content }}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(DataError, match=r"renders assistant turn #2 differently once later turns follow"):
        encode(tok, [U("2+2?"), A("4"), U("Thanks"), A("Bye.")])


def test_dropped_reasoning_is_counted_in_the_data_stats(tmp_path: Path, qwen3: Any) -> None:
    rows = [{"messages": [U(f"q{i}"), {**A("a"), "thinking": "t"}, U("more"), {**A("b"), "thinking": "u"}]}
            for i in range(3)] + [{"messages": [U("q"), A("a")]}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = JobSpec.model_validate({"name": "r", "base_model": "x", "data": {"train": str(tmp_path / "train.jsonl")}})
    _, stats = build_dataset(spec, qwen3)
    assert stats.reasoning_dropped_turns == 3 and stats.as_metrics()["data/reasoning_dropped_turns"] == 3.0
    assert "reasoning dropped by the chat template: 3 earlier assistant turn(s)" in stats.report()


# -- formats and spec ---------------------------------------------------------------------------------
def test_reasoning_fields_pass_through_messages_and_sharegpt() -> None:
    row = {"messages": [U("q"), {**A("a"), "thinking": "t"}]}
    assert to_messages(row, DataSpec(train="x"))[-1] == R("a", "t")
    share = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a", "reasoning_content": "t"}]}
    assert to_messages(share, DataSpec(train="x", format="sharegpt"))[-1] == R("a", "t")
    same = {"messages": [U("q"), {**A("a"), "thinking": "t", "reasoning_content": "t"}]}
    assert to_messages(same, DataSpec(train="x"))[-1] == R("a", "t")


@pytest.mark.parametrize(("turn", "reason", "message"), [
    ({**U("q"), "thinking": "t"}, "bad_role", "messages[0].thinking: only assistant turns carry reasoning"),
    ({**A("a"), "reasoning_content": 3}, "bad_type", "messages[1].reasoning_content must be a string"),
    ({**A("a"), "thinking": "x", "reasoning_content": "y"}, "bad_type", "both `thinking` and `reasoning_content`"),
])
def test_misplaced_or_mistyped_reasoning_is_a_bad_row(turn: dict[str, Any], reason: str, message: str) -> None:
    row = {"messages": [turn, A("a")] if turn["role"] == "user" else [U("q"), turn]}
    with pytest.raises(BadRow) as e:
        to_messages(row, DataSpec(train="x"))
    assert e.value.reason == reason and message in e.value.message


def test_mask_needs_train_on_completions() -> None:
    assert DataSpec(train="x").reasoning == "train"
    with pytest.raises(ValidationError, match="reasoning: mask.*train_on: completions"):
        DataSpec(train="x", reasoning="mask", train_on="all")


# -- launch data validate on the seed 001 dataset -------------------------------------------------------
def test_validate_reports_the_trained_share_of_a_harmony_dataset(tmp_path: Path, harmony: Any) -> None:
    harmony.save_pretrained(tmp_path / "tok")
    shares = {}
    for mode in ("train", "mask"):
        spec = tmp_path / f"{mode}.yaml"
        spec.write_text(yaml.safe_dump({"name": "wiki", "base_model": str(tmp_path / "tok"), "data": {
            "train": str(SEED001 / "train.jsonl"), "max_seq_len": 2048, "reasoning": mode}}))
        result = CliRunner().invoke(main, ["data", "validate", str(spec), "-o", "json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)["splits"][0]
        assert (report["rows_read"], report["rows_used"], report["bad_rows"]) == (48, 48, {})
        shares[mode] = report["trained_share"]
    text = CliRunner().invoke(main, ["data", "validate", str(spec)]).output  # the table shows it too
    assert f"trained tokens: {report['tokens_trained']} of {report['tokens_total']} ({shares['mask']:.1%})" in text
    assert 0 < shares["mask"] < shares["train"] < 1
