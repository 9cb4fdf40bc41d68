"""Task metrics (trainer/eval/metrics.py, trainer/eval/mermaid.py): positive, negative and tricky cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from trainer.eval import mermaid
from trainer.eval.metrics import METRICS, Context, MetricError, citations, lcs_length, score
from trainer.spec.job import JobSpec

BASE = {"name": "m", "base_model": "org/m", "data": {"train": "t.jsonl"}}


def test_exact_match_normalized_and_exact() -> None:
    assert score("exact_match", "  The capital is  PARIS.\n", "the capital is Paris.").value == 1.0
    exact = Context(normalize=False)
    s = score("exact_match", "The capital is PARIS.", "The capital is Paris.", exact)
    assert s.value == 0.0 and "character 17" in s.why  # 1-based: the A of PARIS
    assert score("exact_match", "Paris", "Paris", exact).value == 1.0
    assert score("exact_match", "Paris.", "Paris").value == 0.0  # punctuation is not normalised away


def test_metrics_that_compare_need_a_reference() -> None:
    for name in ("exact_match", "rouge_l"):
        with pytest.raises(MetricError, match="held-out answer"):
            score(name, "x", None)


def test_rouge_l_matches_lins_examples() -> None:
    # Lin (2004), section 3.1: against "police killed the gunman", S2 scores 3/4 and S3 2/4.
    ref = "police killed the gunman"
    assert score("rouge_l", "police kill the gunman", ref).value == pytest.approx(0.75)
    assert score("rouge_l", "the gunman kill police", ref).value == pytest.approx(0.5)
    assert score("rouge_l", "Police killed the gunman!", ref).value == 1.0  # case and punctuation are not tokens


def test_rouge_l_f1_with_unequal_lengths() -> None:
    s = score("rouge_l", "a b c d e f", "a c f")  # LCS 3: P = 3/6, R = 3/3, F = 2PR/(P+R) = 2/3
    assert s.value == pytest.approx(2 / 3) and "precision 0.50, recall 1.00" in s.why
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # CLRS's textbook example
    assert score("rouge_l", "nothing shared", "entirely different").value == 0.0
    assert score("rouge_l", "...", "words").why == "the answer has no words"
    assert score("rouge_l", "Größe ändern", "größe ändern").value == 1.0  # Unicode words are words


@pytest.mark.parametrize(("answer", "ok"), [
    ('{"a": [1, 2, {"b": null}]}', True),
    ('  [1, 2]\n', True),
    ('Here it is:\n```json\n{"a": 1}\n```\nand more:\n```JSON\n[true]\n```', True),
    ('Here it is:\n```json\n{"a": 1,}\n```', False),  # trailing comma
    ('{"a": 1} and some words', False),
    ('{"x": NaN}', False),  # Python's json accepts NaN; JSON does not
    ("{'a': 1}", False),  # single quotes
    ("", False),
    ('```python\n{"a": 1}\n```', False),  # not a json block, and the answer as a whole is not JSON
])
def test_json_valid(answer: str, ok: bool) -> None:
    s = score("json_valid", answer, None)
    assert s.value == (1.0 if ok else 0.0), s
    assert bool(s.why) != ok


GOOD = {
    "flowchart": "flowchart LR\n  A[\"f(x)\"] --> B & C -- calls --> D:::hot\n  subgraph one [Title]\n"
                 "    a1-.->a2 ==> a3((circle))\n  end\n  classDef hot fill:#f96\n  B -->|yes| E{decide}; E --- F[(db)]",
    "graph": "graph TD\nA[Start] --> B{Is it?}\nB -->|Yes| C[OK]\nB ---->|No| E>flag]\n%% a comment\nC --o D([stadium])",
    "sequence": "sequenceDiagram\n  participant A as Alice\n  actor B\n  A->>+B: hello\n  alt fine\n    B-->>-A: ok\n"
                "  else not\n    B-xA: no\n  end\n  loop every minute\n    A-)B: ping\n  end\n  Note over A,B: done",
    "class": "classDiagram\n  Animal <|-- Duck\n  Animal : +int age\n  class Duck{\n    +swim()\n  }\n"
             '  Animal "1" --> "*" Leg : has\n  <<interface>> Animal',
    "state": "stateDiagram-v2\n  [*] --> Still\n  Still --> Moving : push\n  state Moving {\n    a --> b\n  }\n"
             "  note right of Still\n    resting\n  end note\n  Moving --> [*]",
    "er": 'erDiagram\n  CUSTOMER ||--o{ ORDER : places\n  ORDER ||--|{ LINE-ITEM : "contains"\n  CUSTOMER {\n'
          '    string name PK "the name"\n    int id FK, UK\n  }',
    "unchecked": "pie title Pets\n  \"Dogs\" : 386",
}
BAD = {
    "unquoted brackets in node text": ("flowchart LR\n  A[f(x)] --> B", "line 2"),
    "bad direction": ("graph XY\nA-->B", "line 1"),
    "subgraph never closed": ("graph TD\nA --> B\nsubgraph x\nC", "never closed"),
    "stray end": ("graph TD\nA --> B\nend", "`end` without"),
    "half an arrow": ("graph TD\nA -> B", "line 2"),
    "message without colon": ("sequenceDiagram\n  A->>B hello", "line 2"),
    "else outside alt": ("sequenceDiagram\n  loop x\n  A->>B: a\n  else y\n  end", "`else` outside"),
    "loop never ended": ("sequenceDiagram\n  loop x\n  A->>B: a", "never closed"),
    "class body open": ("classDiagram\n  class A {\n  +x", "never closed"),
    "class arrow typo": ("classDiagram\n  A <|-> B", "line 2"),
    "state arrow typo": ("stateDiagram-v2\n  [*] -> A", "line 2"),
    "er without label": ("erDiagram\n  CUSTOMER ||--o{ ORDER", "line 2"),
    "er bad cardinality": ("erDiagram\n  A ||--<< B : x", "line 2"),
    "unknown type": ("flowgraph TD\nA-->B", "unknown diagram type"),
    "empty": ("%% only a comment", "empty"),
}


@pytest.mark.parametrize("name", GOOD)
def test_mermaid_accepts_valid_diagrams(name: str) -> None:
    assert mermaid.check(GOOD[name]) is None
    assert score("mermaid_valid", f"Here:\n```mermaid\n{GOOD[name]}\n```\n", None).value == 1.0


@pytest.mark.parametrize("name", BAD)
def test_mermaid_rejects_broken_diagrams(name: str) -> None:
    diagram, expected = BAD[name]
    problem = mermaid.check(diagram)
    assert problem is not None and expected in problem, problem


def test_mermaid_valid_scores_the_share_of_valid_diagrams() -> None:
    two = f"```mermaid\n{GOOD['graph']}\n```\ntext\n```mermaid\n{BAD['half an arrow'][0]}\n```"
    s = score("mermaid_valid", two, None)
    assert s.value == 0.5 and s.why.startswith("diagram #2 of 2: line 2")
    assert score("mermaid_valid", GOOD["sequence"], None).value == 1.0  # an answer that is a diagram
    none = score("mermaid_valid", "No diagram, but the word graph TD appears.", None)
    assert none.value == 0.0 and "no Mermaid diagram" in none.why


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "app.py").write_text("a\nb\nc\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# guide\n")
    (tmp_path.parent / "secret.txt").write_text("outside")
    return tmp_path


def test_citations_are_found_and_urls_are_not() -> None:
    text = ("See `src/pkg/app.py:2`, docs/guide.md#L1-L1 and README.md; e.g. version 3.5, "
            "https://example.com/x.py and src/pkg/app.py:2 again.")
    assert citations(text) == [("src/pkg/app.py", 2, 2), ("docs/guide.md", 1, 1), ("README.md", None, None)]


def test_cites_existing_source(repo: Path) -> None:
    ctx = Context(sources_root=repo)
    assert score("cites_existing_source", "In src/pkg/app.py:1-3 and docs/guide.md.", None, ctx).value == 1.0
    missing = score("cites_existing_source", "See src/pkg/app.py and src/pkg/gone.py.", None, ctx)
    assert missing.value == 0.0 and "src/pkg/gone.py does not exist" in missing.why
    lines = score("cites_existing_source", "See src/pkg/app.py:7.", None, ctx)
    assert lines.value == 0.0 and "outside its 3 line(s)" in lines.why
    escape = score("cites_existing_source", "See ../secret.txt", None, ctx)  # exists, but not under the root
    assert escape.value == 0.0 and "does not exist" in escape.why
    assert "cites no source path" in score("cites_existing_source", "Trust me.", None, ctx).why
    with pytest.raises(MetricError, match="eval.sources_root"):
        score("cites_existing_source", "src/pkg/app.py", None)


def test_the_spec_selects_metrics_from_the_closed_set() -> None:
    spec = JobSpec.model_validate({**BASE, "eval": {"metrics": ["rouge_l", "mermaid_valid"]}})
    assert spec.eval.metrics == ["rouge_l", "mermaid_valid"]
    with pytest.raises(ValidationError) as e:
        JobSpec.model_validate({**BASE, "eval": {"metrics": ["bleu"]}})
    assert all(name in str(e.value) for name in METRICS)  # the error lists the valid names
    with pytest.raises(ValidationError, match="eval.sources_root"):
        JobSpec.model_validate({**BASE, "eval": {"metrics": ["cites_existing_source"]}})
    with pytest.raises(ValidationError, match="twice"):
        JobSpec.model_validate({**BASE, "eval": {"metrics": ["rouge_l", "rouge_l"]}})
    with pytest.raises(MetricError, match="known: exact_match"):
        score("bleu", "a", "a")


def test_results_become_mlflow_metrics_and_registry_tags(repo: Path) -> None:
    from trainer.eval.run import Item, context, score_items

    spec = JobSpec.model_validate({**BASE, "eval": {"metrics": ["exact_match", "cites_existing_source"],
                                                    "sources_root": repo.name}})
    items = [Item([{"role": "user", "content": "q1"}], "Paris", "paris", {}),
             Item([{"role": "user", "content": "q2"}], None, "see src/pkg/app.py", {}),  # no reference
             Item([{"role": "user", "content": "q3"}], "Rome", "Lima, per docs/none.md", {})]
    ctx = context(spec, repo.parent)
    assert ctx.sources_root == repo and ctx.normalize
    means, counts = score_items(items, spec.eval.metrics, ctx)
    assert counts == {"exact_match": 2, "cites_existing_source": 3}  # exact_match skips the item without reference
    assert means == {"exact_match": 0.5, "cites_existing_source": pytest.approx(1 / 3)}
    from trainer.eval.run import EvalResult

    result = EvalResult("q8_0", "test", items, means, counts, loss=1.5, perplexity=4.4817)
    assert result.metrics() == {"eval.exact_match": 0.5, "eval.cites_existing_source": pytest.approx(1 / 3),
                                "eval.loss": 1.5, "eval.perplexity": 4.4817}
    assert result.tags() == {"kubetune.eval.exact_match": "0.5000", "kubetune.eval.cites_existing_source": "0.3333",
                             "kubetune.eval.loss": "1.5000", "kubetune.eval.perplexity": "4.4817",
                             "kubetune.eval.answers": "3"}
    table = result.table()
    assert table["exact_match"] == [1.0, None, 0.0] and "docs/none.md does not exist" in table["cites_existing_source_why"][2]
    assert "reasoning" not in table and result.cut_short(64) is None


def test_a_reasoning_models_table_shows_its_reasoning_and_the_replies_cut_short() -> None:
    from trainer.eval.metrics import Context
    from trainer.eval.reply import Reply
    from trainer.eval.run import EvalResult, Item, score_items

    items = [Item([{"role": "user", "content": "q1"}], "Paris"), Item([{"role": "user", "content": "q2"}], "Rome")]
    items[0].take(Reply("Paris", "France's capital"))
    items[1].take(Reply("", "Italy's capital is", finished=False))
    means, counts = score_items(items, ["exact_match"], Context(None, normalize=False))
    result = EvalResult("merged", "test", items, means, counts)
    assert means == {"exact_match": 0.5}  # the thoughts are never scored as the answer
    table = result.table()
    assert table["answer"] == ["Paris", ""] and table["finished"] == [True, False]
    assert table["reasoning"] == ["France's capital", "Italy's capital is"]
    assert result.cut_short(64) == ("1 of 2 replies ran out of eval.max_new_tokens (64) while still reasoning and "
                                    "count as no answer: raise eval.max_new_tokens to score their answers")


@pytest.mark.slow
def test_evaluate_a_tiny_model_and_the_quickstart_gguf(tmp_path: Path) -> None:
    """The runner end to end: greedy answers, metrics, held-out loss equal to transformers' own; a GGUF through
    llama.cpp."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.models import chat_rows, tiny_model
    from trainer.eval.run import evaluate_gguf, evaluate_hf

    for split, seed in (("train", 0), ("eval", 1)):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows(5, seed)))
    folder = tiny_model("qwen2")
    spec = JobSpec.model_validate({"name": "e", "base_model": str(folder), "data": {
        "train": "train.jsonl", "eval": "eval.jsonl", "packing": False, "max_seq_len": 128},
        "eval": {"num_samples": 2, "max_new_tokens": 8, "metrics": ["exact_match", "rouge_l", "json_valid"]}})
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    result = evaluate_hf(model, tok, spec, base_dir=tmp_path)
    assert len(result.items) == 2 and all(it.reference and it.reference.startswith("The capital") for it in result.items)
    assert set(result.means) == {"exact_match", "rouge_l", "json_valid"} and result.counts["rouge_l"] == 2
    assert result.means["exact_match"] == 0.0  # random weights do not answer "The capital of ... is ..."
    # Held-out loss: transformers' own loss per eval row (one sample each, unpacked), weighted by trained tokens.
    from trainer.data import build_dataset

    rows, _ = build_dataset(spec, tok, "eval", base_dir=tmp_path)
    total = count = 0.0
    with torch.no_grad():
        for r in rows:
            labels = torch.tensor([r["labels"]])
            n = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=torch.tensor([r["input_ids"]]), labels=labels).loss.item() * n
            count += n
    assert result.loss == pytest.approx(total / count, rel=1e-4)
    assert result.metrics()["eval.perplexity"] == pytest.approx(2.718281828 ** result.loss, rel=1e-6)

    from launcher import datacheck
    from trainer.spec.io import load_spec

    quickstart = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
    gguf = quickstart.parent.parent / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
    if not gguf.exists():
        pytest.skip("run `make setup` first: the quickstart's GGUF is missing")
    qs = load_spec(quickstart, ["eval.num_samples=2", "eval.max_new_tokens=12", "eval.metrics=[rouge_l, json_valid]"])
    gguf_result = evaluate_gguf(gguf, datacheck.load_tokenizer(qs, quickstart.parent), qs, base_dir=quickstart.parent)
    assert gguf_result.model == gguf.stem and len(gguf_result.items) == 2
    assert all(it.answer for it in gguf_result.items)  # a pretrained model says something
    assert gguf_result.means["json_valid"] == 0.0 and 0.0 <= gguf_result.means["rouge_l"] <= 1.0
    assert gguf_result.loss is None and set(gguf_result.tags()) == {
        "kubetune.eval.rouge_l", "kubetune.eval.json_valid", "kubetune.eval.answers", "kubetune.eval.too_short"}
    # the quickstart's "ANSWER: ... BECAUSE: ..." references are longer than the 12 tokens given here
    assert "eval.max_new_tokens (12) is shorter than 2 of the 2 reference replies" in gguf_result.tags()[
        "kubetune.eval.too_short"]
