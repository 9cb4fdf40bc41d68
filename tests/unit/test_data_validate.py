"""`launch data validate`: real data through the real tokenizer and chat template; broken data exits 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from launcher import datacheck
from launcher.cli import main
from tests.models import chat_rows
from tests.resources import tokenizer_for

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local base model folder holding Qwen2.5's real tokenizer and chat template (no weights: none are read)."""
    out = tmp_path_factory.mktemp("qwen2-tokenizer")
    tokenizer_for("qwen2").save_pretrained(out)
    return out


def write_spec(folder: Path, base_model: Path | str, rows: list[Any] | None, **data: Any) -> Path:
    if rows is not None:
        (folder / "train.jsonl").write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    spec = folder / "job.yaml"
    spec.write_text(yaml.safe_dump({"name": "v", "base_model": str(base_model),
                                    "data": {"train": "train.jsonl", "max_seq_len": 64, **data}}))
    return spec


def validate(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["data", "validate", *args])
    return result.exit_code, result.output


def broken_rows() -> list[Any]:
    good = chat_rows(6)
    long = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    return [*good[:2], "{not json\n", {"messages": [{"role": "user", "content": "hi"}]}, long, {"text": "x"},
            *good[2:]]


def test_bad_rows_by_reason_with_file_and_line(tmp_path: Path, tokenizer_dir: Path) -> None:
    spec = write_spec(tmp_path, tokenizer_dir, broken_rows(), bad_rows={"max_bad_fraction": 0.5}, max_seq_len=128)
    code, out = validate(str(spec), "-o", "json")
    assert code == 0, out
    report = json.loads(out)["splits"][0]
    assert (report["rows_read"], report["rows_used"]) == (10, 6)
    assert report["bad_rows"] == {"invalid_json": 1, "no_assistant_turn": 1, "too_long": 1, "missing_field": 1}
    lines = sorted(e.split(": ")[0] for e in report["bad_examples"])
    assert lines == [f"{tmp_path / 'train.jsonl'}:{n}" for n in (3, 4, 5, 6)]
    assert report["lengths"]["min"] <= report["lengths"]["p50"] <= report["lengths"]["max"] <= 128
    assert 0 < report["trained_share"] < 1  # completions only: the prompts are masked
    assert report["packed_rows"] < report["rows_used"]  # two ~35-token samples share a 128-token row
    assert report["packing_efficiency"] == round(report["tokens_total"] / (report["packed_rows"] * 128), 4)


def test_too_many_bad_rows_exit_2_naming_the_limit(tmp_path: Path, tokenizer_dir: Path) -> None:
    code, out = validate(str(write_spec(tmp_path, tokenizer_dir, broken_rows())))
    assert code == 2
    assert "4 of 10 rows are bad (40.00%), more than data.bad_rows.max_bad_fraction = 0.01" in out
    assert "bad rows: " in out and "train.jsonl:3: invalid_json" in out  # the report is printed before the error
    code, out = validate(str(write_spec(tmp_path, tokenizer_dir, broken_rows())), "--set", "data.bad_rows.policy=fail")
    assert code == 2 and "policy is fail" in out


def test_an_empty_dataset_exits_2(tmp_path: Path, tokenizer_dir: Path) -> None:
    code, out = validate(str(write_spec(tmp_path, tokenizer_dir, [])))
    assert code == 2 and "data.train is empty: no rows in" in out


def test_every_row_bad_exits_2(tmp_path: Path, tokenizer_dir: Path) -> None:
    spec = write_spec(tmp_path, tokenizer_dir, chat_rows(3), format="instruction", bad_rows={"max_bad_fraction": 1.0})
    code, out = validate(str(spec))
    assert code == 2 and "every one of the 3 rows is bad; check data.format" in out
    assert "missing_field 3" in out


def test_sample_reads_only_the_first_rows(tmp_path: Path, tokenizer_dir: Path) -> None:
    spec = write_spec(tmp_path, tokenizer_dir, chat_rows(20))
    code, out = validate(str(spec), "--sample", "5")
    assert code == 0, out
    assert "data.train: 1 file(s), 5 rows read (--sample: the first rows only), 5 used, 0 bad" in out
    code, out = validate(str(spec), "--sample", "20")
    assert "20 rows read, 20 used" in out and "--sample" not in out


def test_a_hub_model_that_is_not_cached_asks_for_a_tokenizer(
    tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = write_spec(tmp_path, "kubetune-tests/not-a-model", chat_rows(3))
    code, out = validate(str(spec))
    assert code == 2 and "not in this machine's Hugging Face cache; pass --tokenizer PATH" in out
    code, out = validate(str(spec), "--tokenizer", str(tokenizer_dir))
    assert code == 0, out


def test_precheck_reads_local_rows_without_a_tokenizer(tmp_path: Path) -> None:
    from trainer.spec.io import load_spec

    spec = write_spec(tmp_path, "org/m", [])
    assert datacheck.precheck(load_spec(spec), tmp_path) == [
        f"data.train is empty: no rows in {tmp_path / 'train.jsonl'}; write the data first, or point data.train at it; "
        "`launch data validate` shows the rows"]
    write_spec(tmp_path, "org/m", [*chat_rows(3), "{oops\n"])
    assert "1 of 4 rows are bad" in datacheck.precheck(load_spec(spec), tmp_path)[0]
    remote = load_spec(spec, ["data.train=s3://bucket/train.jsonl"])
    assert datacheck.precheck(remote, tmp_path) == []  # remote data is the trainer's to read


def test_a_byte_order_mark_is_no_bad_row(tmp_path: Path, tokenizer_dir: Path) -> None:
    """A JSONL file saved by Excel or Notepad starts with UTF-8's byte-order mark: validate and the
    precheck read its first row like the others (the trainer's own reader, trainer/data/jsonl.py)."""
    from trainer.spec.io import load_spec

    spec = write_spec(tmp_path, tokenizer_dir, None)
    (tmp_path / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in chat_rows(4)).encode())
    code, out = validate(str(spec), "-o", "json")
    assert code == 0, out
    report = json.loads(out)["splits"][0]
    assert (report["rows_read"], report["rows_used"], report["bad_rows"]) == (4, 4, {})
    assert datacheck.precheck(load_spec(spec), tmp_path) == []


def test_percentiles_are_nearest_rank() -> None:
    assert datacheck.distribution(list(range(1, 101))) == {"min": 1, "p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert datacheck.distribution([7]) == {"min": 7, "p50": 7, "p90": 7, "p99": 7, "max": 7}


@pytest.mark.slow
def test_quickstart_agrees_with_build_dataset() -> None:
    """The quickstart's data through its GGUF tokenizer: what validate reports is what training builds."""
    from trainer.data import build_dataset
    from trainer.spec.io import load_spec

    if not (ROOT / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf").exists():
        pytest.skip("run `make setup` first: the quickstart's GGUF is missing")
    code, out = validate(str(QUICKSTART), "-o", "json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["ok"] and [s["split"] for s in doc["splits"]] == ["train", "eval"]
    spec = load_spec(QUICKSTART)
    tok = datacheck.load_tokenizer(spec, QUICKSTART.parent)
    _, stats = build_dataset(spec, tok, "train", base_dir=QUICKSTART.parent)
    train = doc["splits"][0]
    assert (train["rows_read"], train["rows_used"], train["tokens_total"], train["tokens_trained"],
            train["packed_rows"]) == (stats.rows_read, stats.rows_used, stats.tokens_total, stats.tokens_trained,
                                      stats.packed_rows)
