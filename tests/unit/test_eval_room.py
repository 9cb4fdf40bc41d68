"""Whether `eval.max_new_tokens` leaves room for the held-out reference replies (trainer/eval/room.py).

A reference's length is counted from the data with the family's real tokenizer; it must be a lower bound on the
tokens a model trained on that reply generates (the training rendering after the generation prompt), and a close
one, or the warning would say too little or too much.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from launcher.cli import main
from tests.resources import tokenizer_for
from trainer.eval.room import held_out_conversations, reference_of, reply_lengths, reply_tokens, too_short
from trainer.spec.io import spec_from_dict

QUESTION = [{"role": "user", "content": "Describe the store module."}]
ANSWER = "The store keeps pages in a dictionary keyed by slug, and writes each one to disk when it changes."
THOUGHT = "The module has one class with two methods; a short paragraph is enough."


@pytest.mark.parametrize(("family", "message"), [
    ("harmony", {"role": "assistant", "content": ANSWER, "thinking": THOUGHT}),  # gpt-oss
    ("qwen2", {"role": "assistant", "content": f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}"}),
    ("llama3", {"role": "assistant", "content": ANSWER}),
    ("gemma3", {"role": "assistant", "content": ANSWER}),
    ("phi3", {"role": "assistant", "content": ANSWER}),
])
def test_a_references_length_is_a_close_lower_bound_on_the_trained_reply(family: str, message: dict) -> None:
    tok = tokenizer_for(family)
    prompt = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template([*QUESTION, message], tokenize=False)
    assert full.startswith(prompt)
    generated = len(tok(full[len(prompt):], add_special_tokens=False).input_ids)
    counted = reply_tokens(tok, message)
    assert counted <= generated, (counted, generated)
    assert generated - counted <= 16, (counted, generated)  # only the template's markers are left out
    thinks = len(message) == 3 or "<think>" in message["content"]
    assert counted > len(tok(ANSWER, add_special_tokens=False).input_ids) if thinks else True


def test_the_reference_is_the_reply_to_the_last_user_turn() -> None:
    conv = [{"role": "system", "content": "Be brief."}, *QUESTION, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "More?"}, {"role": "assistant", "content": "b"}]
    assert reference_of(conv) == {"role": "assistant", "content": "b"}
    assert reference_of(conv[:-1]) is None  # ends on the user's turn: nothing to compare to
    assert reference_of([{"role": "assistant", "content": "a"}]) is None
    assert reply_lengths([conv, conv[:-1]], tokenizer_for("qwen2")) == [1]


def test_the_warning_names_the_setting_the_count_and_a_budget_that_fits() -> None:
    assert too_short([10, 64], 64, "data.eval") is None
    warning = too_short([10, 65, 212], 64, "the first 3 conversations of data.eval")
    assert warning is not None
    assert warning.startswith("eval.max_new_tokens (64) is shorter than 2 of the 3 reference replies of the first 3 "
                              "conversations of data.eval (the longest has 212 tokens, reasoning included)")
    assert warning.endswith("raise eval.max_new_tokens to at least 256")
    beyond = too_short([5000], 4096, "data.eval")
    assert beyond is not None and "at most 4096" in beyond and "raise" not in beyond


def spec(**eval_: object) -> object:
    return spec_from_dict({"name": "r", "base_model": "m", "data": {"train": "train.jsonl", "eval": "eval.jsonl"},
                           "eval": eval_})


def test_prompts_without_metrics_compare_to_no_reference(tmp_path: Path) -> None:
    rows = [{"messages": [*QUESTION, {"role": "assistant", "content": ANSWER}]}] * 4
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    convs, where = held_out_conversations(spec(num_samples=3), tmp_path)
    assert len(convs) == 3 and where == "the first 3 conversations of data.eval"
    assert held_out_conversations(spec(prompts=["Hi?"]), tmp_path)[0] == []
    # the metrics still answer the held-out conversations when the samples use eval.prompts
    assert len(held_out_conversations(spec(prompts=["Hi?"], metrics=["rouge_l"]), tmp_path)[0]) == 3


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qwen2-tokenizer")
    tokenizer_for("qwen2").save_pretrained(out)
    return out


def write_job(folder: Path, tokenizer_dir: Path, answer: str, **eval_: object) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": a}]}
            for i, a in enumerate([answer, "Short.", answer, "Short."])]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "r", "base_model": str(tokenizer_dir),
                                   "data": {"train": "train.jsonl", "eval": "eval.jsonl", "max_seq_len": 512},
                                   "eval": {"num_samples": 4, **eval_}}))
    return job


def test_data_validate_warns_under_the_eval_split_and_still_exits_0(tmp_path: Path, tokenizer_dir: Path) -> None:
    answer = " ".join([ANSWER] * 4)  # about 80 tokens: over the default budget of 64
    n = len(tokenizer_for("qwen2")(answer, add_special_tokens=False).input_ids)
    assert n > 64
    result = CliRunner().invoke(main, ["data", "validate", str(write_job(tmp_path, tokenizer_dir, answer))])
    assert result.exit_code == 0, result.output
    eval_part = result.output[result.output.index("data.eval:"):]
    assert (f"  warning: eval.max_new_tokens (64) is shorter than 2 of the 4 reference replies of the first 4 "
            f"conversations of data.eval (the longest has {n} tokens") in eval_part
    assert "warning:" not in result.output[: result.output.index("data.eval:")]
    doc = json.loads(CliRunner().invoke(main, ["data", "validate", str(tmp_path / "job.yaml"), "-o", "json"]).output)
    assert [len(s["warnings"]) for s in doc["splits"]] == [0, 1] and doc["ok"]
    roomy = CliRunner().invoke(main, ["data", "validate", str(tmp_path / "job.yaml"), "--set",
                                      f"eval.max_new_tokens={n}"])
    assert roomy.exit_code == 0 and "warning:" not in roomy.output


def chat_job(folder: Path, max_new_tokens: int, **eval_: object) -> object:
    from tests.models import tiny_model, write_chat_jsonl

    write_chat_jsonl(folder / "eval.jsonl", 2, seed=1)  # "The capital of Japan is Tokyo.": 7 tokens each in llama 3
    return spec_from_dict({"name": "r", "base_model": str(tiny_model("llama")), "model": {"dtype": "float32"},
                           "data": {"train": "eval.jsonl", "eval": "eval.jsonl", "max_seq_len": 64},
                           "resources": {"gpu": "none"},
                           "eval": {"num_samples": 2, "max_new_tokens": max_new_tokens, **eval_}})


@pytest.mark.parametrize(("max_new_tokens", "warned"), [(4, True), (7, False)])
def test_the_trainer_says_it_when_it_chooses_its_samples(tmp_path: Path, max_new_tokens: int, warned: bool) -> None:
    from transformers import AutoTokenizer

    from trainer.train.sampling import Samples

    class Job(Samples):
        def __init__(self) -> None:
            self.spec, self.base_dir = chat_job(tmp_path, max_new_tokens), tmp_path
            self.tokenizer = AutoTokenizer.from_pretrained(self.spec.base_model)
            self.said: list[str] = []

        def say(self, line: str) -> None:
            self.said.append(line)

    job = Job()
    job._choose_samples()
    assert len(job.samples) == 2 and job.said[0] == "samples: the first 2 conversations of data.eval"
    assert job.said[1:] == ([f"warning: eval.max_new_tokens ({max_new_tokens}) is shorter than 2 of the 2 reference "
                             f"replies of the first 2 conversations of data.eval (the longest has 7 tokens, reasoning "
                             "included): answers that long are cut off, so exact_match cannot match them, rouge_l "
                             "scores them low and a reasoning model may run out before its answer; raise "
                             "eval.max_new_tokens to at least 64"] if warned else [])


def test_an_evaluation_carries_the_warning_with_its_scores(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.eval.run import evaluate_hf

    short = chat_job(tmp_path, 4, metrics=["rouge_l"])
    tok = AutoTokenizer.from_pretrained(short.base_model)
    model = AutoModelForCausalLM.from_pretrained(short.base_model, dtype=torch.float32)
    result = evaluate_hf(model, tok, short, base_dir=tmp_path)
    assert result.too_short is not None and "shorter than 2 of the 2 reference replies" in result.too_short
    assert result.tags()["kubetune.eval.too_short"] == result.too_short  # on every registered version it scores
    roomy = evaluate_hf(model, tok, chat_job(tmp_path, 7, metrics=["rouge_l"]), base_dir=tmp_path)
    assert roomy.too_short is None and "kubetune.eval.too_short" not in roomy.tags()
