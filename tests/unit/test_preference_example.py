"""The DPO quickstart example: its pairs are what docs/preference.md says they are, and its spec is a DPO job that
starts from the quickstart's SFT adapter.

- every chosen answer has the quickstart's exact format, and is the quickstart's answer to its question;
- every rejected answer is one of the documented sloppy kinds, recognised here independently of the generator, in
  the counts of docs/preference.md's table; only the `wrong` kind has the format (with another answer);
- no prompt is a quickstart question, none repeats, eval and train are apart;
- the files are the generator's output (it is deterministic);
- examples/dpo-quickstart.yaml validates, with objective dpo, preference data, the quickstart's adapter, model and
  export settings, and `adapter.init_from` at the folder where the quickstart's local run writes its output;
- `launch submit --local` hands the pods that folder as an absolute path (the pods run elsewhere than the spec's
  folder), and a cluster refuses a local init_from.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from launcher import resolve
from trainer.spec.io import load_spec
from trainer.storage import local_path, output_location

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DATA = EXAMPLES / "data"
DOC = ROOT / "docs" / "preference.md"
FORMAT = re.compile(r"ANSWER: ([^\n]+)\nBECAUSE: ([^\n]+)")
SPLITS = {"train": "dpo-train.jsonl", "eval": "dpo-eval.jsonl"}


def read(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def kind_of(rejected: str, answer: str) -> str:
    """Which documented kind of sloppy answer `rejected` is (to the question whose right answer is `answer`)."""
    lines = rejected.split("\n")
    if m := FORMAT.fullmatch(rejected):
        return "wrong" if m.group(1) != answer else "exact format"
    if re.fullmatch(r"ANSWER: .+ BECAUSE: .+", rejected):
        return "one_line"
    if re.fullmatch(r"ANSWER: [^\n]+", rejected):
        return "no_because"
    if re.fullmatch(r"answer: [^\n]+\nbecause: [^\n]+", rejected):
        return "lowercase"
    if re.fullmatch(r"BECAUSE: [^\n]+\nANSWER: [^\n]+", rejected):
        return "swapped"
    if len(lines) == 3 and FORMAT.fullmatch("\n".join(lines[1:])) and "ANSWER" not in lines[0]:
        return "preamble"
    if len(lines) == 2 and not any(re.match(r"(?i)(answer|because):", line) for line in lines):
        return "no_labels"
    if len(lines) == 1 and not re.search(r"(?i)(answer|because):", rejected):
        return "plain"
    return "unknown"


def documented_counts() -> dict[str, dict[str, int]]:
    """docs/preference.md's table of rejected kinds: kind -> {train: n, eval: n}."""
    counts: dict[str, dict[str, int]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^\| `(\w+)` \|.*\| (\d+) \| (\d+) \|$", line):
            counts[m.group(1)] = {"train": int(m.group(2)), "eval": int(m.group(3))}
    return counts


def quickstart_questions() -> set[str]:
    return {row["messages"][0]["content"] for name in ("quickstart-train.jsonl", "quickstart-eval.jsonl")
            for row in read(name)}


def generator() -> ModuleType:
    sys.path.insert(0, str(DATA))  # the generator imports make_quickstart_data as a sibling, as when run
    try:
        spec = importlib.util.spec_from_file_location("make_preference_data", DATA / "make_preference_data.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(DATA))


@pytest.mark.parametrize("split", SPLITS)
def test_pairs_are_well_formed_and_chosen_has_the_exact_format(split: str) -> None:
    for n, row in enumerate(read(SPLITS[split]), start=1):
        assert set(row) == {"prompt", "chosen", "rejected"}, f"{split}:{n}"
        assert [t["role"] for t in row["prompt"]] == ["user"], f"{split}:{n}"
        assert [t["role"] for t in row["chosen"]] == ["assistant"], f"{split}:{n}"
        assert [t["role"] for t in row["rejected"]] == ["assistant"], f"{split}:{n}"
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert FORMAT.fullmatch(chosen), f"{split}:{n}: chosen is not the exact format: {chosen!r}"
        assert rejected != chosen, f"{split}:{n}"
        # short rows: prompt and longer answer in characters (a token is at least one character) leave the chat
        # template's few dozen tokens within the quickstart's max_seq_len of 256
        longest = len(row["prompt"][0]["content"]) + max(len(chosen), len(rejected))
        assert longest < 192, f"{split}:{n}: {longest} characters"


def test_the_checker_recognises_each_kind() -> None:
    cases = {
        "plain": "Kyiv is the capital city of Ukraine.", "lowercase": "answer: Kyiv\nbecause: Kyiv is the capital.",
        "no_labels": "Kyiv\nKyiv is the capital.", "swapped": "BECAUSE: Kyiv is the capital.\nANSWER: Kyiv",
        "wrong": "ANSWER: Riga\nBECAUSE: Riga is the capital.", "preamble": "Sure!\nANSWER: Kyiv\nBECAUSE: It is.",
        "no_because": "ANSWER: Kyiv", "one_line": "ANSWER: Kyiv BECAUSE: Kyiv is the capital.",
        "exact format": "ANSWER: Kyiv\nBECAUSE: Kyiv is the capital.", "unknown": "ANSWER: Kyiv\nbecause: it is",
    }
    assert {kind_of(text, "Kyiv") for text in cases.values()} == set(cases)
    assert all(kind_of(text, "Kyiv") == kind for kind, text in cases.items())


@pytest.mark.parametrize("split", SPLITS)
def test_rejected_answers_are_the_documented_kinds_in_the_documented_counts(split: str) -> None:
    documented = documented_counts()
    assert len(documented) == 8, f"docs/preference.md's table of rejected kinds: {documented}"
    counts: Counter[str] = Counter()
    for n, row in enumerate(read(SPLITS[split]), start=1):
        answer = FORMAT.fullmatch(row["chosen"][0]["content"]).group(1)  # type: ignore[union-attr]
        rejected = row["rejected"][0]["content"]
        kind = kind_of(rejected, answer)
        assert kind in documented, f"{split}:{n}: rejected {rejected!r} is {kind}"
        if kind != "wrong":  # the right answer, badly presented
            assert answer in rejected, f"{split}:{n}: {rejected!r} lacks the answer {answer!r}"
        counts[kind] += 1
    assert dict(counts) == {kind: c[split] for kind, c in documented.items()}


def test_prompts_are_new_questions_and_chosen_answers_are_right() -> None:
    quickstart = quickstart_questions()
    train = [r["prompt"][0]["content"] for r in read(SPLITS["train"])]
    held_out = [r["prompt"][0]["content"] for r in read(SPLITS["eval"])]
    assert len(set(train)) == len(train) == 200 and len(set(held_out)) == len(held_out) == 24
    assert not set(train) & set(held_out)
    assert not (set(train) | set(held_out)) & quickstart
    # the chosen answers are right: recomputed from the questions (arithmetic, comparisons, capitals)
    capitals = generator().MORE_CAPITALS
    by_question: dict[str, str] = {}
    for row in read(SPLITS["train"]) + read(SPLITS["eval"]):
        by_question[row["prompt"][0]["content"]] = row["chosen"][0]["content"]
    checked = 0
    for question, chosen in by_question.items():
        if m := re.fullmatch(r"What is (\d+) (plus|minus) (\d+)\?", question):
            a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
            assert FORMAT.fullmatch(chosen).group(1) == str(a + b if op == "plus" else a - b)  # type: ignore[union-attr]
            checked += 1
        elif m := re.fullmatch(r"Which is larger, (\d+) or (\d+)\?", question):
            assert FORMAT.fullmatch(chosen).group(1) == str(max(int(m.group(1)), int(m.group(2))))  # type: ignore[union-attr]
            checked += 1
        elif m := re.fullmatch(r"What is the capital of (.+)\?", question):
            assert FORMAT.fullmatch(chosen).group(1) == capitals[m.group(1)]  # type: ignore[union-attr]
            checked += 1
    assert checked > 100


def test_the_files_are_the_generators_output() -> None:
    built = generator().build()
    for name in SPLITS.values():
        rows, _ = built[name]
        assert rows == read(name), f"examples/data/{name} differs from make_preference_data.py's output: rerun it"


def test_the_dpo_quickstart_spec_starts_from_the_quickstart() -> None:
    dpo = load_spec(EXAMPLES / "dpo-quickstart.yaml")
    sft = load_spec(EXAMPLES / "quickstart.yaml")
    assert dpo.name == "dpo-quickstart"
    assert dpo.training.objective == "dpo" and sft.training.objective == "sft"
    assert dpo.data.format == "preference"
    assert dpo.data.train == "data/dpo-train.jsonl" and dpo.data.eval == "data/dpo-eval.jsonl"
    assert 5e-5 <= dpo.training.learning_rate <= 5e-4
    assert dpo.preference.beta == 0.1
    assert {"packing", "train_on"}.isdisjoint(dpo.data.model_fields_set)  # refused with a preference objective
    assert dpo.adapter.model_dump(exclude={"init_from"}) == sft.adapter.model_dump(exclude={"init_from"})
    assert (dpo.base_model, dpo.model, dpo.data.max_seq_len) == (sft.base_model, sft.model, sft.data.max_seq_len)
    assert (dpo.resources, dpo.eval, dpo.export) == (sft.resources, sft.eval, sft.export)
    # init_from, read from the spec's folder, is where `launch submit --local examples/quickstart.yaml` writes
    assert dpo.adapter.init_from is not None
    where_sft_writes = output_location(sft.output.uri, sft.name, EXAMPLES)
    assert local_path(dpo.adapter.init_from, EXAMPLES) == where_sft_writes
    assert where_sft_writes == str(EXAMPLES / "runs" / "quickstart")


def test_a_local_run_gets_init_from_as_an_absolute_folder(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLES / "dpo-quickstart.yaml")
    resolved = resolve.for_local(spec, EXAMPLES)
    assert resolved.adapter.init_from == str(EXAMPLES / "runs" / "quickstart")
    assert resolve.for_local(resolved, tmp_path).adapter.init_from == resolved.adapter.init_from  # absolute stays
    missing = [p for p in resolve.local_problems(spec, tmp_path) if p.startswith("adapter.init_from:")]
    assert missing == [f"adapter.init_from: {str(tmp_path / 'runs' / 'quickstart')!r} is not a folder (a job's "
                       "output or an adapter folder): run the job it starts from first"]
    (tmp_path / "runs" / "quickstart").mkdir(parents=True)
    assert not [p for p in resolve.local_problems(spec, tmp_path) if p.startswith("adapter.init_from:")]
    assert any(p.startswith("adapter.init_from: 'runs/quickstart' is a local path")
               for p in resolve.cluster_problems(spec, EXAMPLES))
    for remote in ("s3://runs/quickstart/", "models:/quickstart@candidate"):
        other = load_spec(EXAMPLES / "dpo-quickstart.yaml", [f"adapter.init_from={remote}"])
        assert resolve.for_local(other, EXAMPLES).adapter.init_from == remote
        assert not [p for p in resolve.cluster_problems(other, EXAMPLES) if p.startswith("adapter.init_from")]
    # --set: read from the current directory, as the other path fields; a registry name is not a path
    assert resolve.overrides_from_cwd(["adapter.init_from=runs/sft"], tmp_path) == [
        f"adapter.init_from={json.dumps(str(tmp_path / 'runs' / 'sft'))}"]
    assert resolve.overrides_from_cwd(["adapter.init_from=models:/sft@candidate"], tmp_path) == [
        "adapter.init_from=models:/sft@candidate"]
