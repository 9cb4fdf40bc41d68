"""Every trained assistant turn ends in a token generation stops on, through every chat template we ship or fetch.

What sampling and the export stop on (EOS and the template's end-of-turn token, `render.stop_tokens`, which
the export's merge writes into generation_config.json and the Modelfile) must be the last trained label of
every assistant turn, or the model learns to go on after an answer. gpt-oss's template rewrites the
`<|return|>` that ends a final answer into `<|end|>` once later turns follow: those turns keep `<|end|>` as
input and are trained to end in `<|return|>`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from launcher.cli import main
from tests.chat import A, S, U
from tests.resources import FAMILIES, chat_template, tokenizer_for
from trainer.data.errors import DataError
from trainer.data.render import IGNORE, ChatRenderer
from trainer.export import merge
from trainer.tracking.samples import stop_ids

ROOT = Path(__file__).resolve().parents[2]
# The tokenizer family each template we ship (examples/**/*.jinja) is written for.
SHIPPED = {"data/seed002/deepseek-r1-think.jinja": "deepseek_r1_qwen"}
# llama.cpp templates of the families' models beyond each family's own (FAMILIES[...].template).
MORE = {"meta-llama-Llama-3.2-3B-Instruct.jinja": "llama3", "meta-llama-Llama-3.3-70B-Instruct.jinja": "llama3",
        "Qwen-Qwen3-0.6B.jinja": "qwen2", "Qwen-Qwen2.5-7B-Instruct.jinja": "qwen2",
        "google-gemma-4-31B-it-interleaved.jinja": "gemma"}
# Templates that render the reasoning of the conversation's last assistant turn.
REASONING = {"openai-gpt-oss-120b.jinja", "Qwen-Qwen3-0.6B.jinja", "data/seed002/deepseek-r1-think.jinja"}


def templates() -> list[tuple[str, str]]:
    """(template name, tokenizer family) of every template the test covers."""
    shipped = sorted(p.relative_to(ROOT / "examples").as_posix() for p in (ROOT / "examples").rglob("*.jinja")
                     if "runs" not in p.relative_to(ROOT / "examples").parts)  # not a job's output (make quickstart)
    missing = [name for name in shipped if name not in SHIPPED]
    assert not missing, f"examples/{missing}: add the template's tokenizer family to SHIPPED"
    own = {f.template: family for family, f in FAMILIES.items()}
    return sorted({**own, **MORE, **SHIPPED}.items())


def tokenizer(template: str, family: str) -> Any:
    tok = tokenizer_for(family)
    tok.chat_template = (ROOT / "examples" / template).read_text() if template in SHIPPED else chat_template(template)
    return tok


def conversation(family: str, reasoning: str | None) -> list[dict[str, str]]:
    """Three assistant turns, with reasoning on each: `field` (`thinking` / `reasoning_content`, as the formats
    hand it to templates) or `think` (`<think>...</think>` before the answer in the content); a system message
    where the template takes one."""
    def turn(answer: str, why: str) -> dict[str, str]:
        if reasoning == "field":
            return {**A(answer), "thinking": why, "reasoning_content": why}
        return A(f"<think>{why}</think>{answer}" if reasoning == "think" else answer)

    conv = [U("2+2?"), turn("4", "Add them."), U("And 3+3?"), turn("6", "Same again."), U("Thanks"),
            turn("Bye.", "Be polite.")]
    return [S("Be brief."), *conv] if FAMILIES[family].system_role else conv


def trained_runs(labels: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    prev = -2
    for i, label in enumerate(labels):
        if label != IGNORE:
            if i != prev + 1:
                runs.append([])
            runs[-1].append(label)
            prev = i
    return runs


@pytest.mark.parametrize(("template", "family"), templates())
def test_every_trained_turn_ends_in_a_stop_token_of_the_export(template: str, family: str) -> None:
    tok = tokenizer(template, family)
    stops = merge.stop_tokens(tok)  # what the export writes as the model's stop tokens
    stop = set(tok.convert_tokens_to_ids(stops))
    assert stop == set(stop_ids(tok)), "sample answers stop on the tokens the export writes"
    with_reasoning: set[str] = set()
    for reasoning in (None, "field", "think"):
        for mode in ("train", "mask"):
            try:
                sample = ChatRenderer(tok, max_seq_len=2048, reasoning=mode).encode(conversation(family, reasoning))
            except DataError as e:  # a template that does not show this spelling of reasoning in the last turn
                assert reasoning and "does not render the reasoning of assistant turn" in str(e), e
                continue
            runs = trained_runs(sample.labels)
            assert len(runs) == 3, (template, reasoning, mode, [tok.decode(r) for r in runs])
            ends = [tok.convert_ids_to_tokens(r[-1]) for r in runs]
            assert all(r[-1] in stop for r in runs), f"{template}: trained turn endings {ends}, stop tokens {stops}"
            # right after the answer
            assert all(tok.decode(r[:-1]).endswith(a) for r, a in zip(runs, ("4", "6", "Bye."), strict=True)), ends
            with_reasoning |= {mode} if reasoning else set()
    if template in REASONING:
        assert with_reasoning == {"train", "mask"}


def test_harmony_history_turns_keep_end_as_input_and_learn_return() -> None:
    tok = tokenizer_for("harmony")
    conv = [U("2+2?"), A("4"), U("Thanks"), A("Bye.")]
    sample = ChatRenderer(tok, max_seq_len=1024).encode(conv)
    end, ret = tok.convert_tokens_to_ids(["<|end|>", "<|return|>"])
    relabelled = [i for i, (t, lab) in enumerate(zip(sample.input_ids, sample.labels, strict=True))
                  if lab != IGNORE and lab != t]
    assert len(relabelled) == 1  # the first answer's <|end|>: the template rewrote the <|return|> the model wrote
    (i,) = relabelled
    assert (sample.input_ids[i], sample.labels[i]) == (end, ret)
    assert tok.decode(sample.input_ids[i - 1:i + 3]) == "4<|end|><|start|>user"
    assert sample.labels[-1] == sample.input_ids[-1] == ret  # the last turn ends in <|return|> as written


def test_a_template_ending_turns_in_plain_text_is_a_data_error() -> None:
    tok = tokenizer_for("qwen2")
    tok.chat_template = ("{% for m in messages %}### {{ m.role }}:\n{{ m.content }}\n\n{% endfor %}"
                         "{% if add_generation_prompt %}### assistant:\n{% endif %}")
    with pytest.raises(DataError, match=r"closes assistant turn #2 with plain text .*would not stop after its answers"):
        ChatRenderer(tok, max_seq_len=512).encode([U("2+2?"), A("4")])


def test_a_turn_ending_in_a_token_that_stops_nothing_is_a_data_error() -> None:
    """A special token that generation does not stop on (`<|im_start|>`) closing a turn: fine where the template
    writes it only for history and closes the turn with a stop token when it is the last (a rewritten ending,
    trained as that stop token), a data error where the turn ends in it even then."""
    tok = tokenizer_for("qwen2")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                         "{% if m.role == 'assistant' and not loop.last %}<|im_start|>{% else %}<|im_end|>{% endif %}"
                         "\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert ChatRenderer(tok, max_seq_len=512).encode([U("2+2?"), A("4")]).trained  # the last turn: <|im_end|>
    # an earlier turn ends in <|im_start|>, but as the last message in <|im_end|>: rewritten history, trained as such
    sample = ChatRenderer(tok, max_seq_len=512).encode([U("2+2?"), A("4"), U("ok"), A("5")])
    assert [r[-1] for r in trained_runs(sample.labels)] == [tok.convert_tokens_to_ids("<|im_end|>")] * 2
    # the second answer ends in <|im_start|> even as the last message (the probe, one answer, sees <|im_end|>)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                         "{% if m.role == 'assistant' and loop.index > 2 %}<|im_start|>{% else %}<|im_end|>{% endif %}"
                         "\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(DataError, match=r"ends assistant turn #4 with <\|im_start\|>, a token generation does not "
                                        r"stop on \(sampling and the export stop on <\|endoftext\|>, <\|im_end\|>\)"):
        ChatRenderer(tok, max_seq_len=512).encode([U("2+2?"), A("4"), U("ok"), A("5")])


def test_the_data_check_refuses_a_template_whose_turns_do_not_stop(tmp_path: Path) -> None:
    """`launch data validate` renders as training does: the same error, exit 2, before any GPU time."""
    tokenizer_for("qwen2").save_pretrained(tmp_path / "model")
    (tmp_path / "plain.jinja").write_text("{% for m in messages %}### {{ m.role }}:\n{{ m.content }}\n\n{% endfor %}")
    (tmp_path / "train.jsonl").write_text(json.dumps({"messages": [U("2+2?"), A("4")]}) + "\n")

    def validate(**model: str) -> Any:
        spec = tmp_path / "job.yaml"
        spec.write_text(yaml.safe_dump({"name": "v", "base_model": str(tmp_path / "model"), "model": model,
                                        "data": {"train": "train.jsonl"}}))
        return CliRunner().invoke(main, ["data", "validate", str(spec)])

    done = validate(chat_template="plain.jinja")
    assert done.exit_code == 2, done.output
    assert "closes assistant turn #2 with plain text" in done.output
    done = validate()  # Qwen2.5's own template: turns end in <|im_end|>
    assert done.exit_code == 0, done.output
