"""The model card of a registered GGUF (trainer/export/model_card.py) and the chat signature of its pyfunc model."""

from __future__ import annotations

import re

from trainer.export import model_card
from trainer.export.model_card import Facts

GATE = {"passed": True, "golden_conversations": 3, "files": [
    {"quant": "q8_0", "file": "quickstart-q8_0.gguf", "top1": 0.9712, "kl": 0.00231, "positions": 417,
     "min_top1": 0.9, "max_kl": 0.02, "checks": [], "passed": True},
    {"quant": "f16", "file": "quickstart-f16.gguf", "top1": 0.9976, "kl": 0.00012, "positions": 417,
     "min_top1": 0.98, "max_kl": 0.005, "checks": [], "passed": True},
]}


def facts(**changes) -> Facts:
    base = Facts(
        name="quickstart", version="3", kind="q8_0", file="quickstart-q8_0.gguf", sha256="ab" * 32,
        size_bytes=291_000_000, base_model="google/gemma-3-270m", run_id="0123abcd", spec_hash="5f3e9a",
        data_fingerprint="d1e2f3a4b5c6d7e8", llama_cpp="0.3.36", modelfile=True,
        data={"train": {"rows_read": 120, "rows_used": 118, "tokens_total": 20480, "tokens_trained": 9100},
              "eval": {"rows_read": 12, "rows_used": 12, "tokens_total": 2048, "tokens_trained": 880}},
        training={"steps": 30, "tokens_trained": 9100, "final_loss": 0.4321, "train_loss": 0.9876, "eval_loss": 0.5555},
        gate=GATE,
        samples={"prompt": ["What is 2+2?"], "reference": ["ANSWER: 4 | BECAUSE: sum"],
                 "before": ["2+2 is a number"], "after": ["ANSWER: 4 BECAUSE: 2 plus 2"]},
        alias="candidate",
    )
    return base if not changes else Facts(**{**base.__dict__, **changes})


def training_row(card: str) -> list[str]:
    line = card.split("## Training")[1].splitlines()[4]
    return [c.strip() for c in line.strip("|").split("|")]


def row(card: str, first_cell: str) -> list[str]:
    """A Markdown table row's cells (an escaped `\\|` stays inside its cell)."""
    line = next(x for x in card.splitlines() if x.startswith(f"| {first_cell} "))
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def test_card_says_what_the_version_was_made_from_and_how_training_went() -> None:
    card = model_card.render(facts())
    assert card.startswith("# quickstart · version 3 · q8_0\n")
    assert "| base model | `google/gemma-3-270m` |" in card
    assert "| data fingerprint | `d1e2f3a4b5c6d7e8` |" in card and "| spec hash | `5f3e9a` |" in card
    assert f"| sha256 | `{'ab' * 32}` |" in card and "| training run | `0123abcd` |" in card
    assert "(277.5 MiB)" in card  # 291e6 bytes
    assert row(card, "train") == ["train", "120", "118", "20,480", "9,100"]
    assert row(card, "eval") == ["eval", "12", "12", "2,048", "880"]
    assert training_row(card) == ["30", "9,100", "0.4321", "0.9876", "0.5555"]


def test_card_has_the_gate_table_and_the_sample_answers() -> None:
    card = model_card.render(facts())
    assert "on 3 golden conversations" in card
    assert row(card, "q8_0 (this version)") == ["q8_0 (this version)", "97.12%", "90%", "0.00231", "0.020", "417", "pass"]
    assert row(card, "f16") == ["f16", "99.76%", "98%", "0.00012", "0.005", "417", "pass"]
    assert row(card, "What is 2+2?") == ["What is 2+2?", "ANSWER: 4 \\| BECAUSE: sum", "2+2 is a number",
                                         "ANSWER: 4 BECAUSE: 2 plus 2"]


def test_card_says_how_to_run_it_everywhere() -> None:
    card = model_card.render(facts())
    assert "mlflow artifacts download -u models:/quickstart/3 -d quickstart-q8_0" in card
    assert "llama-cli -m quickstart-q8_0/artifacts/quickstart-q8_0.gguf -cnv" in card
    assert "ollama create quickstart -f quickstart-q8_0/artifacts/Modelfile && ollama run quickstart" in card
    assert "lms import quickstart-q8_0/artifacts/quickstart-q8_0.gguf" in card
    assert "mlflow models serve -m models:/quickstart/3 --env-manager local" in card
    assert 'mlflow.pyfunc.load_model("models:/quickstart/3")' in card
    assert "`models:/quickstart@candidate`" in card
    assert "ollama" not in model_card.render(facts(modelfile=False, alias=None))


def test_card_leaves_out_what_is_not_known() -> None:
    card = model_card.render(facts(data={}, training={"steps": None, "eval_loss": None}, samples={}, gate={}))
    for heading in ("## Data", "## Training", "## Verification", "## Sample answers"):
        assert heading not in card
    partial = model_card.render(facts(training={"steps": 12, "eval_loss": None}))
    assert training_row(partial) == ["12", "–", "–", "–", "–"]


def test_the_objective_and_the_parent_adapter_are_in_the_card_and_every_versions_tags() -> None:
    from trainer.export.register import Lineage, parent_tags

    assert "| objective | `sft` |" in model_card.render(facts()) and "started from" not in model_card.render(facts())
    run_tags = {"kubetune.parent": "s3://runs/sft", "kubetune.parent.resolved": "s3://runs/sft/adapter",
                "kubetune.parent.run_id": "run-sft", "kubetune.spec_hash": "5f3e9a", "mlflow.user": "me"}
    parent = parent_tags(run_tags, "s3://runs/sft")  # as training recorded it (trainer/model/init_from.py)
    assert parent == {k: v for k, v in run_tags.items() if k.startswith("kubetune.parent")}
    assert parent_tags({}, "runs/sft") == {"kubetune.parent": "runs/sft"} and parent_tags({}, None) == {}
    tags = Lineage("run-dpo", "h", "d", "google/gemma-3-270m", "0.3.36", "dpo", parent).tags()
    assert tags["kubetune.objective"] == "dpo" and tags["kubetune.run_id"] == "run-dpo"
    assert tags["kubetune.parent.resolved"] == "s3://runs/sft/adapter" and tags["kubetune.parent.run_id"] == "run-sft"
    card = model_card.render(facts(objective="dpo", parent=parent))
    assert "A q8_0 GGUF of a LoRA DPO preference tune of `google/gemma-3-270m`" in card
    assert "| objective | `dpo` |" in card
    assert "| started from | `s3://runs/sft` = `s3://runs/sft/adapter` (training run `run-sft`) |" in card


def test_a_long_card_is_cut_at_a_line_for_the_registry() -> None:
    many = {k: [f"{k} {i} " + "word " * 30 for i in range(40)] for k in ("prompt", "reference", "before", "after")}
    card = model_card.render(facts(samples=many))
    assert len(card) > 5000
    cut = model_card.description(card)
    assert len(cut) <= 5000 and cut.endswith("the full model card is README.md in the model folder)\n")
    assert card.startswith(cut.split("\n\n… (cut")[0])
    assert model_card.description("short\n") == "short\n"


def test_the_pyfunc_signature_is_a_chat_with_generation_params() -> None:
    from trainer.export import gguf_model, logged_model

    sig = logged_model.signature().to_dict()
    assert re.search(r'"name": "messages"', sig["inputs"]) and '"role"' in sig["inputs"] and '"content"' in sig["inputs"]
    assert '"type": "string"' in sig["outputs"]
    params = {p.name: (p.dtype.name, p.default) for p in logged_model.signature().params.params}
    assert params == {"max_tokens": ("long", 256), "temperature": ("double", 0.0), "top_p": ("double", 1.0),
                      "top_k": ("long", 40), "seed": ("long", 0)}
    chat = [{"role": "user", "content": "hi"}]
    assert gguf_model._chats({"messages": chat}) == [chat]  # one chat
    assert gguf_model._chats({"messages": [chat, chat]}) == [chat, chat]
    assert gguf_model._chats([chat]) == [chat]
