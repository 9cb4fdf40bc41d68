"""build_dataset end to end: bad-row policies, accounting, empty data, Parquet + globs, stats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.resources import tokenizer_for
from trainer.data import DataError, build_dataset, conversations
from trainer.data.render import IGNORE
from trainer.spec.job import JobSpec

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def spec(train: Any, **data: Any) -> JobSpec:
    return JobSpec.model_validate({"name": "t", "base_model": "m", "data": {"train": train, **data}})


def write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok() -> Any:
    return tokenizer_for("qwen2")


MIXED = [GOOD, "{oops", GOOD, {"messages": []}, GOOD, {"text": "x"}, GOOD, GOOD, GOOD, GOOD]


def test_skip_counts_every_bad_row_with_its_location(tmp_path: Path, tok: Any) -> None:
    f = write(tmp_path / "train.jsonl", MIXED)
    rows, stats = build_dataset(spec(str(f), bad_rows={"policy": "skip", "max_bad_fraction": 0.5}), tok)
    assert (stats.rows_read, stats.rows_used, stats.samples) == (10, 7, 7)
    assert stats.bad_rows == {"invalid_json": 1, "empty_conversation": 1, "missing_field": 1}
    assert stats.rows_read == stats.rows_used + sum(stats.bad_rows.values())
    assert stats.bad_examples[0].startswith(f"{f}:2: invalid_json — ")
    assert stats.bad_examples[1] == f"{f}:4: empty_conversation — `messages` is empty"
    assert stats.bad_examples[2].startswith(f"{f}:6: missing_field — no `messages` field")
    m = stats.as_metrics()
    assert m["data/rows_read"] == 10.0 and m["data/bad_rows"] == 3.0 and m["data/bad_rows/invalid_json"] == 1.0
    assert "3 bad" in stats.report() and f"{f}:2" in stats.report()


def test_only_the_first_ten_examples_are_kept(tmp_path: Path, tok: Any) -> None:
    f = write(tmp_path / "train.jsonl", [GOOD] + ["{bad"] * 12)
    _, stats = build_dataset(spec(str(f), bad_rows={"max_bad_fraction": 1.0}), tok)
    assert stats.bad_rows == {"invalid_json": 12}
    assert len(stats.bad_examples) == 10 and stats.bad_examples[-1].startswith(f"{f}:11:")


def test_policy_fail_stops_at_the_first_bad_row(tmp_path: Path, tok: Any) -> None:
    f = write(tmp_path / "train.jsonl", MIXED)
    with pytest.raises(DataError) as e:
        build_dataset(spec(str(f), bad_rows={"policy": "fail"}), tok)
    assert f"{f}:2: invalid_json" in str(e.value)
    assert "policy: skip" in str(e.value)


def test_policy_fail_names_a_render_failure_in_file_order(tmp_path: Path, tok: Any) -> None:
    long = {"messages": [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "x"}]}
    f = write(tmp_path / "train.jsonl", [GOOD, long, {"text": 1}])
    with pytest.raises(DataError, match=rf"{f}:2: too_long"):
        build_dataset(spec(str(f), max_seq_len=64, bad_rows={"policy": "fail"}), tok)


def test_max_bad_fraction_exceeded_reports_counts_and_examples(tmp_path: Path, tok: Any) -> None:
    f = write(tmp_path / "train.jsonl", MIXED)
    with pytest.raises(DataError) as e:
        build_dataset(spec(str(f), bad_rows={"policy": "skip", "max_bad_fraction": 0.2}), tok)
    msg = str(e.value)
    assert "3 of 10 rows are bad (30.00%)" in msg and "max_bad_fraction = 0.2" in msg
    assert "invalid_json: 1" in msg and f"{f}:4: empty_conversation" in msg
    # exactly at the limit is allowed
    _, stats = build_dataset(spec(str(f), bad_rows={"max_bad_fraction": 0.3}), tok)
    assert stats.rows_used == 7


def test_empty_file_fails(tmp_path: Path, tok: Any) -> None:
    f = tmp_path / "train.jsonl"
    f.write_text("\n\n")
    with pytest.raises(DataError, match="no rows at all"):
        build_dataset(spec(str(f)), tok)


def test_no_usable_row_fails_even_when_bad_rows_are_allowed(tmp_path: Path, tok: Any) -> None:
    f = write(tmp_path / "train.jsonl", ["{x", {"messages": []}])
    with pytest.raises(DataError) as e:
        build_dataset(spec(str(f), bad_rows={"max_bad_fraction": 1.0}), tok)
    assert "none of the 2 rows" in str(e.value) and f"{f}:1: invalid_json" in str(e.value)


def test_eval_split_needs_data_eval(tmp_path: Path, tok: Any) -> None:
    f = write(tmp_path / "train.jsonl", [GOOD])
    with pytest.raises(DataError, match="data.eval is not set"):
        build_dataset(spec(str(f)), tok, "eval")
    rows, stats = build_dataset(spec(str(f), eval=str(f)), tok, "eval")
    assert stats.split == "eval" and len(rows) == 1


def test_parquet_glob_with_instruction_columns(tmp_path: Path, tok: Any) -> None:
    for i in range(2):
        table = pa.table({"q": [f"question {i}a", f"question {i}b"], "ctx": ["", "context"], "a": [f"answer {i}", None]})
        pq.write_table(table, tmp_path / f"part-{i}.parquet")
    s = spec(
        str(tmp_path / "part-*.parquet"),
        format="instruction",
        columns={"instruction": "q", "input": "ctx", "output": "a"},
        bad_rows={"max_bad_fraction": 0.5},
        packing=False,
    )
    rows, stats = build_dataset(s, tok)
    assert (stats.rows_read, stats.rows_used, stats.bad_rows) == (4, 2, {"missing_field": 2})
    assert stats.bad_examples[0] == f"{tmp_path / 'part-0.parquet'}:row 1: missing_field — no `a` column (found: q, ctx, a); set data.columns if it is named differently"
    assert [tok.decode([t for t in r["labels"] if t != IGNORE]) for r in rows] == ["answer 0<|im_end|>", "answer 1<|im_end|>"]
    assert all(r["position_ids"] == list(range(len(r["input_ids"]))) for r in rows)


def test_template_problem_names_the_row(tmp_path: Path) -> None:
    qwen25 = tokenizer_for("qwen2")  # its template reads no reasoning field: the last turn's would be lost
    reasoning = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "thinking": "t"}]}
    f = write(tmp_path / "train.jsonl", [GOOD, GOOD, reasoning])
    with pytest.raises(DataError, match=rf"^{f}:3: the chat template does not render the reasoning of assistant turn #2"):
        build_dataset(spec(str(f)), qwen25)


def test_relative_paths_use_base_dir(tmp_path: Path, tok: Any) -> None:
    write(tmp_path / "train.jsonl", [GOOD])
    _, stats = build_dataset(spec("train.jsonl"), tok, base_dir=tmp_path)
    assert stats.files == [str(tmp_path / "train.jsonl")]


def test_conversations_returns_the_first_usable_ones(tmp_path: Path) -> None:
    rows = [{"text": 0}, *({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(5))]
    f = write(tmp_path / "eval.jsonl", rows)
    convs = conversations(spec("unused.jsonl", eval=str(f), system_prompt="S"), "eval", 2)
    assert convs == [
        [{"role": "system", "content": "S"}, {"role": "user", "content": "q0"}, {"role": "assistant", "content": "a"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"}],
    ]
    assert conversations(spec(str(f)), "train", 0) == []


def test_truncated_samples_are_counted(tmp_path: Path, tok: Any) -> None:
    long = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 100}]}
    f = write(tmp_path / "train.jsonl", [GOOD, long, GOOD])
    _, stats = build_dataset(spec(str(f), max_seq_len=64, too_long="truncate"), tok)
    assert (stats.rows_used, stats.truncated, stats.bad_total) == (3, 1, 0)
    assert stats.as_metrics()["data/truncated"] == 1.0
    assert "truncated to 64 tokens: 1 sample(s)" in stats.report()
