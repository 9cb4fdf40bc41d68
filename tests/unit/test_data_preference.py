"""Preference data (`training.objective: dpo | orpo | kto`): rows -> TRL's items through the SFT renderer, on real
vocabularies and real chat templates (Llama 3, Qwen2.5, Qwen3 `<think>`, gpt-oss Harmony, Gemma 3). Proven by
comparison with the SFT renderer's ids and labels of the same conversation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.chat import A, S, U
from tests.resources import FAMILIES, chat_template, tokenizer_for
from trainer.data import DataError, build_preference, conversations
from trainer.data.preference_stats import PreferenceStats
from trainer.data.render import IGNORE, ChatRenderer
from trainer.spec.job import JobSpec


def R(text: str, reasoning: str) -> dict[str, str]:
    return {**A(text), "reasoning_content": reasoning}


def job(train: Any, objective: str = "dpo", **data: Any) -> JobSpec:
    return JobSpec.model_validate({"name": "p", "base_model": "m", "training": {"objective": objective},
                                   "data": {"train": str(train), "format": "preference", "max_seq_len": 512, **data}})


def write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def build(tmp_path: Path, tok: Any, rows: list[Any], objective: str = "dpo", **data: Any) -> tuple[list[Any], Any]:
    return build_preference(job(write(tmp_path / "train.jsonl", rows), objective, **data), tok)


@pytest.fixture(scope="module", params=["llama3", "qwen2", "qwen3", "harmony", "gemma3", "gemma"])
def family(request: pytest.FixtureRequest) -> tuple[str, Any]:
    tok = tokenizer_for("qwen2" if request.param == "qwen3" else request.param)
    if request.param == "qwen3":
        tok.chat_template = chat_template("Qwen-Qwen3-0.6B.jinja")
    return request.param, tok


def sft_last_turn(tok: Any, conv: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """The SFT renderer's input ids up to the end of the last trained run, and that run's labels."""
    sample = ChatRenderer(tok, max_seq_len=4096).encode(conv)
    trained = [t for t, label in enumerate(sample.labels) if label != IGNORE]
    end = trained[-1] + 1
    start = end - 1
    while sample.labels[start - 1] != IGNORE:
        start -= 1
    return sample.input_ids[:end], sample.labels[start:end]


def test_a_pair_is_the_sft_conversation_split_at_its_last_turn(tmp_path: Path, family: tuple[str, Any]) -> None:
    name, tok = family
    system = [S("Be brief.")] if FAMILIES.get(name, FAMILIES["qwen2"]).system_role else []
    prompt = [*system, U("Hi"), A("Hello."), U("What is 2+3?")]  # multi-turn: the earlier answer is context
    chosen, rejected = A("ANSWER: 5\nBECAUSE: 2+3=5"), A("five, i guess")
    items, stats = build(tmp_path, tok, [{"prompt": prompt, "chosen": [chosen], "rejected": [rejected]}])
    assert (stats.rows_used, stats.pairs) == (1, 1) and set(items[0]) == {"prompt_ids", "chosen_ids", "rejected_ids"}
    for answer, key in ((chosen, "chosen_ids"), (rejected, "rejected_ids")):
        ids, labels = sft_last_turn(tok, [*prompt, answer])
        assert items[0]["prompt_ids"] + items[0][key] == ids  # BOS included, nothing after the stop token
        assert items[0][key] == labels  # exactly the last turn's SFT labels: the earlier answer is not trained
    assert tok.decode(items[0]["chosen_ids"][:-1]).strip().endswith("2+3=5")  # then the stop token alone
    # the prompt is what the model is given at inference: the conversation with the generation prompt
    gen = ChatRenderer(tok, max_seq_len=4096).render(prompt, generation_prompt=True)
    if name == "gemma":  # Gemma 4's generation prompt also opens an empty thought channel, which SFT's
        gen = gen.removesuffix("<|channel>thought\n<channel|>")  # rendered history (and so the pair) lacks
    assert tok.decode(items[0]["prompt_ids"]) == gen


def test_text_messages_and_implicit_prompt_forms_give_the_same_ids(tmp_path: Path) -> None:
    tok = tokenizer_for("llama3")
    rows = [{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
            {"prompt": [U("What is 2+2?")], "chosen": [A("4")], "rejected": [A("5")]},
            {"chosen": [U("What is 2+2?"), A("4")], "rejected": [U("What is 2+2?"), A("5")]}]  # TRL's implicit prompt
    items, stats = build(tmp_path, tok, rows)
    assert stats.pairs == 3 and items[0] == items[1] == items[2]
    multi = [S("Be brief."), U("Hi"), A("Hello."), U("2+2?")]
    explicit = {"prompt": multi, "chosen": [A("4")], "rejected": [A("5")]}
    implicit = {"chosen": [*multi, A("4")], "rejected": [*multi, A("5")]}
    items, _ = build(tmp_path, tok, [explicit, implicit])
    assert items[0] == items[1]


def test_system_prompt_is_added_to_prompts_without_one(tmp_path: Path) -> None:
    tok = tokenizer_for("qwen2")
    rows = [{"prompt": "Q?", "chosen": "a", "rejected": "b"},
            {"prompt": [S("Own system."), U("Q?")], "chosen": "a", "rejected": "b"}]
    items, _ = build(tmp_path, tok, rows, system_prompt="Answer as ANSWER: / BECAUSE:.")
    assert "Answer as ANSWER: / BECAUSE:." in tok.decode(items[0]["prompt_ids"])
    assert "Own system." in tok.decode(items[1]["prompt_ids"]) and "ANSWER" not in tok.decode(items[1]["prompt_ids"])
    f = write(tmp_path / "train.jsonl", [{"oops": 1}, *rows])
    prompts = conversations(job(f, system_prompt="Sys."), "train", 5)
    # each prompt with its chosen answer (the samples' reference); bad rows skipped
    assert [p[:-1] for p in prompts] == [[S("Sys."), U("Q?")], [S("Own system."), U("Q?")]]
    assert [(p[-1]["role"], p[-1]["content"]) for p in prompts] == [("assistant", "a")] * 2


def test_reasoning_is_part_of_the_completion(tmp_path: Path) -> None:
    qwen3 = tokenizer_for("qwen2")
    qwen3.chat_template = chat_template("Qwen-Qwen3-0.6B.jinja")
    field = {"prompt": "2+2?", "chosen": [R("4", "Two and two.")], "rejected": [R("5", "Guess.")]}
    inline = {"prompt": "2+2?", "chosen": "<think>Two and two.</think>4", "rejected": "<think>Guess.</think>5"}
    items, _ = build(tmp_path, qwen3, [field, inline])
    assert items[0] == items[1]
    assert qwen3.decode(items[0]["chosen_ids"]) == "<think>\nTwo and two.\n</think>\n\n4<|im_end|>"
    harmony = tokenizer_for("harmony")
    earlier = {**R("Hello.", "Greet back."), "thinking": "Greet back."}  # the template drops it: context only
    row = {"prompt": [U("Hi"), earlier, U("2+2?")], "chosen": [R("4", "Add.")], "rejected": [R("5", "Guess.")]}
    items, _ = build(tmp_path, harmony, [row])
    assert harmony.decode(items[0]["chosen_ids"]) == ("<|channel|>analysis<|message|>Add.<|end|><|start|>assistant"
                                                      "<|channel|>final<|message|>4<|return|>")
    ids, labels = sft_last_turn(harmony, [*row["prompt"], {**row["chosen"][0], "thinking": "Add."}])
    assert items[0]["prompt_ids"] + items[0]["chosen_ids"] == ids and items[0]["chosen_ids"] == labels


def test_kto_unpairs_each_pair_and_reads_unpaired_rows(tmp_path: Path) -> None:
    tok = tokenizer_for("llama3")
    pairs = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}, {"prompt": "3+3?", "chosen": "6", "rejected": "7"}]
    dpo, _ = build(tmp_path, tok, pairs)
    kto, stats = build(tmp_path, tok, pairs, objective="kto")
    assert len(kto) == 2 * len(dpo) and (stats.desirable, stats.undesirable, stats.rows_used) == (2, 2, 2)
    for pair, (good, bad) in zip(dpo, zip(kto[::2], kto[1::2], strict=True), strict=True):
        assert good == {"prompt_ids": pair["prompt_ids"], "completion_ids": pair["chosen_ids"], "label": True}
        assert bad == {"prompt_ids": pair["prompt_ids"], "completion_ids": pair["rejected_ids"], "label": False}
    unpaired = [{"prompt": "2+2?", "completion": "4", "label": True}, {"prompt": "2+2?", "completion": [A("5")],
                                                                       "label": False}]
    items, stats = build(tmp_path, tok, unpaired, objective="kto", format="unpaired")
    assert items == kto[:2] and (stats.desirable, stats.undesirable) == (1, 1)


BAD = [
    ({"chosen": "a", "rejected": "b"}, "missing_field"),
    ({"prompt": " ", "chosen": "a", "rejected": "b"}, "empty_content"),
    ({"prompt": "Q", "chosen": "", "rejected": "b"}, "empty_content"),
    ({"prompt": "Q", "chosen": "same", "rejected": " same "}, "same_answers"),
    ({"prompt": "Q", "chosen": [U("a")], "rejected": "b"}, "bad_role"),
    ({"prompt": [U("Q"), A("x")], "chosen": "a", "rejected": "b"}, "bad_role"),
    ({"prompt": [{"role": "robot", "content": "Q"}], "chosen": "a", "rejected": "b"}, "bad_role"),
    ({"chosen": [U("Q"), A("a")], "rejected": [U("Other"), A("b")]}, "prompt_mismatch"),
    ({"prompt": "Q", "chosen": "word " * 200, "rejected": "b"}, "too_long"),
    ("{not json", "invalid_json"),
]


def test_each_bad_row_is_reported_with_its_reason_and_line(tmp_path: Path) -> None:
    tok = tokenizer_for("qwen2")
    good = {"prompt": "Q", "chosen": "a", "rejected": "b"}
    rows = [good, *(r for r, _ in BAD), good]
    items, stats = build(tmp_path, tok, rows, max_seq_len=128, bad_rows={"max_bad_fraction": 1.0})
    f = tmp_path / "train.jsonl"
    assert [e.split(" — ")[0] for e in stats.bad_examples] == [f"{f}:{i}: {reason}" for i, (_, reason) in
                                                              enumerate(BAD, start=2)]
    assert (len(items), stats.rows_read, stats.rows_used, stats.bad_total) == (2, 12, 2, 10)
    unpaired = [{"prompt": "Q", "completion": "a", "label": "yes"}, {"prompt": "Q", "completion": "a"}]
    _, stats = build(tmp_path, tok, [*unpaired, {"prompt": "Q", "completion": "a", "label": False}],
                     objective="kto", format="unpaired", bad_rows={"max_bad_fraction": 1.0})
    assert [e.split(" — ")[0] for e in stats.bad_examples] == [f"{f}:1: bad_type", f"{f}:2: missing_field"]


def test_prompts_that_tokenize_differently_before_the_answers_are_bad_rows(tmp_path: Path) -> None:
    tok = tokenizer_for("llama3")  # Llama 3's vocabulary merges `.H` (the prompt's `.` with the answer's `H`)
    tok.chat_template = ("{% for m in messages %}{{ m.role }}.{{ m.content }}{% if m.role == 'assistant' %}<|eot_id|>"
                         "{% endif %}{% endfor %}{% if add_generation_prompt %}assistant.{% endif %}")
    items, stats = build(tmp_path, tok, [{"prompt": "Q", "chosen": "Hello", "rejected": " no"},
                                         {"prompt": "Q", "chosen": " yes", "rejected": " no"}],
                         bad_rows={"max_bad_fraction": 1.0})
    assert stats.bad_rows == {"prompt_mismatch": 1}
    assert stats.bad_examples[0].split(" — ")[0] == f"{tmp_path / 'train.jsonl'}:1: prompt_mismatch"
    assert tok.decode(items[0]["prompt_ids"]) == "user.Qassistant."
    assert tok.decode(items[0]["chosen_ids"]) == " yes<|eot_id|>"


def test_too_long_answers_are_cut_to_fit_with_truncate(tmp_path: Path) -> None:
    tok = tokenizer_for("qwen2")
    row = {"prompt": "Q", "chosen": "word " * 100, "rejected": "short"}
    whole, _ = build(tmp_path, tok, [row], max_seq_len=1024)
    n = len(whole[0]["prompt_ids"]) + 20
    items, stats = build(tmp_path, tok, [row], max_seq_len=n, too_long="truncate")
    assert stats.truncated == 1 and len(items[0]["prompt_ids"]) + len(items[0]["chosen_ids"]) == n
    assert items[0]["chosen_ids"] == whole[0]["chosen_ids"][:20] and items[0]["rejected_ids"] == whole[0]["rejected_ids"]
    assert stats.lengths["sequence"]["max"] == n
    with pytest.raises(DataError, match=r"train.jsonl:1: too_long — the prompt alone is \d+ tokens"):
        build(tmp_path, tok, [{**row, "prompt": "word " * 100}], max_seq_len=n, too_long="truncate",
              bad_rows={"policy": "fail"})
    with pytest.raises(DataError, match=r"train.jsonl:1: too_long — the prompt \(\d+ tokens\) with its longer answer"):
        build(tmp_path, tok, [row], max_seq_len=n, bad_rows={"policy": "fail"})


def test_policy_fraction_and_empty_data(tmp_path: Path) -> None:
    tok = tokenizer_for("qwen2")
    good = {"prompt": "Q", "chosen": "a", "rejected": "b"}
    rows = [good, good, {"prompt": "Q", "chosen": "a", "rejected": "a"}, good, {"prompt": "Q"}]
    with pytest.raises(DataError, match=r"bad row in data.train at \S+train.jsonl:3: same_answers"):
        build(tmp_path, tok, rows, bad_rows={"policy": "fail"})
    with pytest.raises(DataError, match=r"2 of 5 rows are bad \(40.00%\)"):
        build(tmp_path, tok, rows)
    with pytest.raises(DataError, match="no rows at all in"):
        build(tmp_path, tok, [])
    with pytest.raises(DataError, match=r"none of the 2 rows in \S+train.jsonl is usable"):
        build(tmp_path, tok, rows[2:3] * 2, bad_rows={"max_bad_fraction": 1.0})


def test_parquet_rows_and_their_locations(tmp_path: Path) -> None:
    tok = tokenizer_for("llama3")
    table = pa.table({"prompt": ["2+2?", "3+3?"], "chosen": ["4", "6"], "rejected": ["5", "6"]})
    pq.write_table(table, tmp_path / "train.parquet")
    items, stats = build_preference(job(tmp_path / "train.parquet", bad_rows={"max_bad_fraction": 1.0}), tok)
    jsonl, _ = build(tmp_path, tok, [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}])
    assert items == jsonl and stats.bad_examples[0].startswith(f"{tmp_path / 'train.parquet'}:row 1: same_answers")


def test_stats_metrics_and_report() -> None:
    stats = PreferenceStats(objective="dpo", rows_read=5, rows_used=4, bad_rows={"same_answers": 1},
                            bad_examples=["f.jsonl:3: same_answers — x"], pairs=4, truncated=1,
                            lengths={k: {"mean": 3.5, "p50": 3, "p90": 5, "max": 6}
                                     for k in ("prompt", "chosen", "rejected", "sequence")},
                            max_seq_len=64, files=["f.jsonl"])
    metrics = stats.as_metrics("data/")
    assert metrics["data/pairs"] == 4 and metrics["data/bad_rows/same_answers"] == 1
    assert metrics["data/tokens/sequence_max"] == 6 and metrics["data/tokens/chosen_mean"] == 3.5
    assert "data/desirable" not in metrics
    text = stats.report()
    assert "5 rows read, 4 used, 1 bad (same_answers: 1)" in text and "4 preference pairs for dpo" in text
    assert "f.jsonl:3: same_answers" in text and "max 6 tokens (data.max_seq_len 64)" in text
    kto = PreferenceStats(objective="kto", rows_read=2, rows_used=2, bad_rows={}, bad_examples=[], desirable=2,
                          undesirable=2)
    assert kto.as_metrics("eval/")["eval/undesirable"] == 2 and "2 desirable, 2 undesirable" in kto.report()


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_preferred_rows_are_the_sft_rows_of_the_preferred_answers(tmp_path: Path, objective: str) -> None:
    """The export's held-out loss on preference data: each prompt with its preferred answer, trained as SFT trains
    that conversation's last turn (only the answer labelled)."""
    from trainer.data.preference import preferred_rows

    tok = tokenizer_for("qwen2")
    rows = [{"prompt": "Q one?", "chosen": "good one", "rejected": "bad"},
            {"prompt": [U("Q two?")], "chosen": [A("good two")], "rejected": [A("worse")]}]
    spec = job(write(tmp_path / "eval.jsonl", rows), objective)
    got = preferred_rows(spec, tok, "train")
    assert len(got) == 2  # KTO: the desirable rows only, not the rejected answers
    for row, (question, answer) in zip(got, [("Q one?", "good one"), ("Q two?", "good two")], strict=True):
        ids, labels = sft_last_turn(tok, [U(question), A(answer)])
        assert row["input_ids"] == ids
        assert [t for t in row["labels"] if t != IGNORE] == labels
