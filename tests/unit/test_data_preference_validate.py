"""`launch data validate` (and `launch submit --local`'s precheck) on preference data: pairs or desirable /
undesirable counts, bad rows with their lines, token lengths; a bad dataset exits 2. Real Qwen2.5 tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from launcher import datacheck
from launcher.cli import main
from tests.resources import tokenizer_for
from trainer.data import build_preference
from trainer.spec.job import JobSpec

GOOD = [{"prompt": f"What is {n}+{n}?", "chosen": f"ANSWER: {2 * n}\nBECAUSE: {n}+{n}={2 * n}",
         "rejected": f"it's {2 * n + 1} probably"} for n in range(1, 7)]
BROKEN = [*GOOD[:2], {"prompt": "Q", "chosen": "same", "rejected": "same"}, "{not json\n",
          {"prompt": "Q", "chosen": "a"}, {"prompt": "word " * 100, "chosen": "a", "rejected": "b"}, *GOOD[2:]]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qwen2-tokenizer")
    tokenizer_for("qwen2").save_pretrained(out)
    return out


def write_spec(folder: Path, base_model: Path, rows: list[Any], objective: str = "dpo", **data: Any) -> Path:
    (folder / "train.jsonl").write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    spec = folder / "job.yaml"
    spec.write_text(yaml.safe_dump({"name": "v", "base_model": str(base_model), "training": {"objective": objective},
                                    "data": {"train": "train.jsonl", "format": "preference", "max_seq_len": 96,
                                             **data}}))
    return spec


def validate(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["data", "validate", *args])
    return result.exit_code, result.output


def test_pairs_bad_rows_with_lines_and_lengths(tmp_path: Path, tokenizer_dir: Path) -> None:
    spec = write_spec(tmp_path, tokenizer_dir, BROKEN, bad_rows={"max_bad_fraction": 0.5})
    code, out = validate(str(spec), "-o", "json")
    assert code == 0, out
    report = json.loads(out)["splits"][0]
    assert (report["rows_read"], report["rows_used"], report["pairs"], report["problems"]) == (10, 6, 6, [])
    assert report["bad_rows"] == {"same_answers": 1, "invalid_json": 1, "missing_field": 1, "too_long": 1}
    f = tmp_path / "train.jsonl"
    assert [e.split(" — ")[0] for e in report["bad_examples"]] == [
        f"{f}:3: same_answers", f"{f}:4: invalid_json", f"{f}:5: missing_field", f"{f}:6: too_long"]
    # the lengths are those of the trainer's items
    items, stats = build_preference(JobSpec.model_validate(yaml.safe_load(spec.read_text())),
                                    tokenizer_for("qwen2"), base_dir=tmp_path)
    assert report["lengths"] == stats.lengths
    assert report["lengths"]["chosen"]["max"] == max(len(i["chosen_ids"]) for i in items)
    assert report["lengths"]["sequence"]["max"] == max(len(i["prompt_ids"]) + max(len(i["chosen_ids"]),
                                                       len(i["rejected_ids"])) for i in items) <= 96
    code, out = validate(str(spec))
    assert "6 preference pairs for dpo" in out and f"{f}:6: too_long" in out and "prompt + longer answer: max" in out


def test_a_bad_dataset_exits_2_naming_its_rows(tmp_path: Path, tokenizer_dir: Path) -> None:
    spec = write_spec(tmp_path, tokenizer_dir, BROKEN)
    code, out = validate(str(spec))
    assert code == 2
    assert "4 of 10 rows are bad (40.00%), more than data.bad_rows.max_bad_fraction = 0.01" in out
    assert f"{tmp_path / 'train.jsonl'}:3: same_answers" in out
    code, out = validate(str(spec), "--set", "data.bad_rows.policy=fail")
    assert code == 2 and "policy is fail" in out and "train.jsonl:4: invalid_json" in out
    code, out = validate(str(write_spec(tmp_path, tokenizer_dir, [])))
    assert code == 2 and "data.train is empty: no rows in" in out


def test_kto_counts_desirable_and_undesirable(tmp_path: Path, tokenizer_dir: Path) -> None:
    code, out = validate(str(write_spec(tmp_path, tokenizer_dir, GOOD, objective="kto")), "-o", "json")
    report = json.loads(out)["splits"][0]
    assert code == 0 and (report["desirable"], report["undesirable"], report["pairs"]) == (6, 6, 0)
    rows = [{"prompt": "Q", "completion": "a", "label": True}, {"prompt": "Q", "completion": "b", "label": "no"}]
    spec = write_spec(tmp_path, tokenizer_dir, rows, objective="kto", format="unpaired")
    code, out = validate(str(spec))
    assert code == 2 and "1 rows for kto: 1 desirable, 0 undesirable" in out and "train.jsonl:2: bad_type" in out
    code, out = validate(str(spec), "--sample", "1", "-o", "json")
    assert code == 0 and json.loads(out)["splits"][0]["sampled"] is True


def test_precheck_reads_preference_rows(tmp_path: Path, tokenizer_dir: Path) -> None:
    spec = JobSpec.model_validate(yaml.safe_load(write_spec(tmp_path, tokenizer_dir, BROKEN).read_text()))
    problems = datacheck.precheck(spec, tmp_path)  # the format only: too_long needs the tokenizer
    assert len(problems) == 1 and "3 of 10 rows are bad" in problems[0]
    good = JobSpec.model_validate(yaml.safe_load(write_spec(tmp_path, tokenizer_dir, GOOD).read_text()))
    assert datacheck.precheck(good, tmp_path) == []
