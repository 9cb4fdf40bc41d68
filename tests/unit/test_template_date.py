"""Rendering does not depend on the calendar: chat templates that write today's date (gpt-oss's, Llama 3.2's) render
the job's `data.template_date`; `launch submit` records it in the spec it ships.

Days are simulated by replacing the clock transformers' `strftime_now` reads (`datetime.now()` in
`transformers.utils.chat_template_utils`). The first test fails when transformers changes how templates get the
date: trainer/data/template_date.py then needs another way to fix it.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from launcher import client
from tests.chat import ONE_ROW, A, S, U
from tests.resources import chat_template, tokenizer_for
from trainer.data import template_date
from trainer.data.render import ChatRenderer
from trainer.spec.data import DataSpec
from trainer.spec.io import flatten, spec_from_dict
from trainer.spec.job import JobSpec

DAY = date(2025, 3, 7)
CONV = [S("Be brief."), U("2+2?"), A("4"), U("Thanks"), A("Bye.")]
# (template, tokenizer family, how it writes DAY, how it writes DEFAULT)
DATED = [("openai-gpt-oss-120b.jinja", "harmony", "Current date: 2025-03-07", "Current date: 2024-07-26"),
         ("meta-llama-Llama-3.2-3B-Instruct.jinja", "llama3", "Today Date: 07 Mar 2025", "Today Date: 26 Jul 2024")]


@contextmanager
def calendar(day: date) -> Iterator[None]:
    """transformers' chat templates see `day` as today (at midnight)."""

    class Clock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Clock:  # type: ignore[override]
            return cls(day.year, day.month, day.day)

    with mock.patch("transformers.utils.chat_template_utils.datetime", Clock):
        yield


def tokenizer(template: str, family: str) -> Any:
    tok = tokenizer_for(family)
    tok.chat_template = chat_template(template)
    return tok


def test_the_macro_writes_what_transformers_strftime_now_writes() -> None:
    tok = tokenizer_for("qwen2")
    # the pinned apply_chat_template passes these positionally given arguments on by name
    assert list(inspect.signature(type(tok).apply_chat_template).parameters)[:5] == \
        ["self", "conversation", "tools", "documents", "chat_template"]
    formats = "%Y-%m-%d|%d %b %Y|%B %d, %Y|%A %a %j %U %W %w %y %e|%-d %-m %_d|%%Y %%|%H:%M:%S|%x|%Q|%"
    tok.chat_template = "{{- strftime_now('" + formats + "') }} {{ messages[0].content }}"
    for day in (DAY, date(2024, 2, 29), date(1999, 12, 31)):
        with calendar(day):
            clock = tok.apply_chat_template([U("hi")], tokenize=False)
            assert clock.startswith(datetime(day.year, day.month, day.day).strftime(formats))  # the simulated day
            assert template_date.apply_chat_template(tok, day, [U("hi")], tokenize=False) == clock


@pytest.mark.parametrize(("template", "family", "written", "default"), DATED)
def test_the_same_row_renders_the_same_on_every_day(template: str, family: str, written: str, default: str) -> None:
    tok = tokenizer(template, family)
    with calendar(date(2031, 1, 2)):
        clock_then = tok.apply_chat_template(CONV, tokenize=False)
    with calendar(date(2031, 1, 3)):
        clock_now = tok.apply_chat_template(CONV, tokenize=False)
    assert clock_then != clock_now  # the template reads the calendar

    unpinned: list[Any] = []
    pinned: list[Any] = []
    prompts: list[Any] = []
    for day in (date(2031, 1, 2), date(2031, 1, 3)):
        with calendar(day):
            unpinned.append(ChatRenderer(tok, max_seq_len=1024).encode(CONV))  # no date given: DEFAULT
            dated = template_date.pin(copy.deepcopy(tok), DAY)
            pinned.append(ChatRenderer(dated, max_seq_len=1024).encode(CONV))
            # what sample answers, eval metrics and the export's golden conversations render
            prompts.append((dated.apply_chat_template(CONV[:-1], add_generation_prompt=True, return_dict=True,
                                                      return_tensors="pt")["input_ids"].tolist(),
                            copy.deepcopy(dated).apply_chat_template(CONV, tokenize=False)))
    for a, b in (unpinned, pinned):
        assert (a.input_ids, a.labels) == (b.input_ids, b.labels)
    assert prompts[0] == prompts[1]
    assert written in tok.decode(pinned[0].input_ids) and written in prompts[0][1]
    assert default in tok.decode(unpinned[0].input_ids)
    assert pinned[0].input_ids != unpinned[0].input_ids


def test_pinning_leaves_the_saved_template_and_undated_templates_alone(tmp_path: Path) -> None:
    tok = template_date.pin(tokenizer("openai-gpt-oss-120b.jinja", "harmony"), DAY)
    assert template_date.pinned(tok) == DAY and template_date.pinned(tokenizer_for("qwen2")) is None
    assert template_date.describe(DAY, tok.chat_template) == "chat template date 2025-03-07 (data.template_date)"
    assert "2024-07-26 (data.template_date unset" in template_date.describe(None, tok.chat_template)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == chat_template("openai-gpt-oss-120b.jinja")
    for family in ("llama3", "qwen2"):  # Llama 3.1 writes `date_string` (26 Jul 2024 by default), Qwen no date
        plain = tokenizer_for(family)
        assert not template_date.uses_date(plain.chat_template)
        assert template_date.pin(copy.deepcopy(plain), DAY).apply_chat_template(CONV, tokenize=False) == \
            plain.apply_chat_template(CONV, tokenize=False)


# -- the spec ------------------------------------------------------------------------------------------
def test_template_date_is_a_data_setting() -> None:
    assert DataSpec(train="x").template_date is None
    assert DataSpec(train="x", template_date="2025-03-07").template_date == DAY
    for bad in ("2025-3-7", "07.03.2025", 20250307):
        with pytest.raises(ValueError, match="is not a date written YYYY-MM-DD"):
            DataSpec(train="x", template_date=bad)
    raw = yaml.safe_load("name: a\nbase_model: org/m\ndata: {train: t.jsonl, template_date: 2025-03-07}\n")
    spec = spec_from_dict(raw)  # an unquoted YAML date
    assert spec.data.template_date == DAY and flatten(spec)["data.template_date"] == "2025-03-07"
    assert spec_from_dict(raw, overrides=["data.template_date=2025-03-08"]).data.template_date == date(2025, 3, 8)


def test_the_date_is_in_the_data_fingerprint(tmp_path: Path) -> None:
    from trainer.data.stream import TrainStream

    (tmp_path / "train.jsonl").write_text(ONE_ROW)
    tok = tokenizer_for("qwen2")

    def fingerprint(**data: Any) -> dict[str, Any]:
        spec = JobSpec.model_validate({"name": "t", "base_model": "m", "training": {"max_steps": 1},
                                       "data": {"train": str(tmp_path / "train.jsonl"), **data}})
        return TrainStream(spec, tok, rank=0, world_size=1).fingerprint

    assert fingerprint()["settings"] != fingerprint(template_date="2025-03-07")["settings"]
    assert fingerprint(template_date="2025-03-07") == fingerprint(template_date="2025-03-07")


# -- the launcher --------------------------------------------------------------------------------------
def spec_file(folder: Path, data: dict[str, Any] | None = None) -> Path:
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "train.jsonl").write_text(ONE_ROW)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "dated", "base_model": "org/model", "resources": {"gpu": "none"},
                                    "data": {"train": "data/train.jsonl", **(data or {})}}))
    return path


def shipped_spec(manifests: str) -> dict[str, Any]:
    """The spec the pods read: the ConfigMap's spec.yaml."""
    (cm,) = [d for d in yaml.safe_load_all(manifests) if d and d["kind"] == "ConfigMap"]
    return yaml.safe_load(cm["data"]["spec.yaml"])


@pytest.mark.usefixtures("helm_binary")
def test_submit_records_the_date_in_the_spec_it_ships(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from launcher.cli import main

    path = spec_file(tmp_path)
    for args in (["--local"], []):  # local pods, and a cluster's (a dry run renders despite the local paths)
        before = date.today().isoformat()
        done = CliRunner().invoke(main, ["submit", "--dry-run", *args, str(path)])
        assert done.exit_code == 0, done.output
        assert shipped_spec(done.stdout)["data"]["template_date"] in {before, date.today().isoformat()}  # at midnight
    done = CliRunner().invoke(main, ["submit", "--dry-run", "--local", str(path), "--set",
                                     "data.template_date=2025-03-07"])
    assert done.exit_code == 0, done.output
    assert shipped_spec(done.stdout)["data"]["template_date"] == "2025-03-07"  # the user's own


def test_a_resumed_local_job_keeps_the_date_its_checkpoints_were_trained_with(tmp_path: Path) -> None:
    from trainer.train.checkpoint import FOLDER, MANIFEST

    path = spec_file(tmp_path)
    before = date.today()
    first = client.prepare(path, local=True)
    assert first.spec.data.template_date in {before, date.today()}  # a run across midnight records either day
    manifest = Path(first.spec.output.uri or "") / FOLDER / MANIFEST
    manifest.parent.mkdir(parents=True)
    flat = flatten(first.spec) | {"data.template_date": "2025-03-07"}  # trained on an earlier day
    manifest.write_text(json.dumps({"format": 1, "job_name": first.name, "run_id": None, "spec": flat,
                                    "entries": [{"step": 5}]}))
    resumed = client.prepare(path, local=True, name=first.name)
    assert resumed.spec.data.template_date == DAY
    assert re.search(r"template_date: '2025-03-07'", resumed.values["spec"])
    # a date the user sets wins (the trainer then refuses to resume with another one)
    path.write_text(path.read_text().replace("train: data/train.jsonl", "train: data/train.jsonl\n  template_date: "
                                                                         "'2025-03-09'"))
    assert client.prepare(path, local=True, name=first.name).spec.data.template_date == date(2025, 3, 9)
