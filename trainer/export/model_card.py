"""The model card of a registered GGUF version: its description in the registry and `README.md` in its model folder.

What it was made from (base model, data fingerprint and row counts, spec hash, llama.cpp), how training went
(steps, trained tokens, final train loss, eval loss), the verification gate's table, the sample answers before
and after training, and how to run it: llama.cpp, Ollama, LM Studio, `mlflow.pyfunc` and `mlflow models serve`.
Pure text from the facts given: trainer/export/publish.py gathers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Facts:
    name: str  # the registered model
    version: str
    kind: str  # the GGUF type, e.g. q8_0
    file: str  # the GGUF's file name
    sha256: str
    size_bytes: int
    base_model: str
    run_id: str
    spec_hash: str
    data_fingerprint: str
    llama_cpp: str
    modelfile: bool  # an Ollama Modelfile is next to the GGUF
    data: dict[str, Any] = field(default_factory=dict)  # data_stats.json: {"train": {...}, "eval": {...} | None}
    training: dict[str, Any] = field(default_factory=dict)  # steps, tokens_trained, final_loss, train_loss, eval_loss
    gate: dict[str, Any] = field(default_factory=dict)  # verify.Report.as_dict()
    samples: dict[str, list[str]] = field(default_factory=dict)  # samples.json: prompt, reference, before, after
    alias: str | None = None
    objective: str = "sft"  # training.objective
    parent: dict[str, str] = field(default_factory=dict)  # the adapter training started from: register.parent_tags


def _cell(text: Any, width: int = 160) -> str:
    text = " ".join(str(text if text is not None else "").split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def _number(value: Any, fmt: str = "{:,}") -> str:
    return "–" if value is None else fmt.format(value)


def _parent(f: Facts) -> list[str]:
    """The adapter training started from (`adapter.init_from`), as given and as found."""
    if not f.parent:
        return []
    given, resolved, run = (f.parent.get(f"kubetune.parent{k}") for k in ("", ".resolved", ".run_id"))
    found = f" = `{resolved}`" if resolved and resolved != given else ""
    return [f"| started from | `{given}`{found}" + (f" (training run `{run}`)" if run else "") + " |"]


def _lineage(f: Facts) -> list[str]:
    how = "a LoRA fine-tune" if f.objective == "sft" else f"a LoRA {f.objective.upper()} preference tune"
    return [
        f"# {f.name} · version {f.version} · {f.kind}", "",
        f"A {f.kind} GGUF of {how} of `{f.base_model}`, made by kubetune and verified against the merged "
        "model before it was registered.", "",
        "| | |", "| --- | --- |",
        f"| base model | `{f.base_model}` |",
        f"| objective | `{f.objective}` |", *_parent(f),
        f"| file | `{f.file}` ({f.size_bytes / 2**20:,.1f} MiB) |",
        f"| sha256 | `{f.sha256}` |",
        f"| training run | `{f.run_id}` |",
        f"| spec hash | `{f.spec_hash}` |",
        f"| data fingerprint | `{f.data_fingerprint}` |",
        f"| llama.cpp (llama-cpp-python) | {f.llama_cpp} |", "",
    ]


def _data(f: Facts) -> list[str]:
    splits = [(k, v) for k, v in f.data.items() if isinstance(v, dict)]
    if not splits:
        return []
    lines = ["## Data", "", "| split | rows read | rows used | tokens | trained tokens |", "| --- | ---: | ---: | ---: | ---: |"]
    for split, s in splits:
        lines.append(f"| {split} | {_number(s.get('rows_read'))} | {_number(s.get('rows_used'))} | "
                     f"{_number(s.get('tokens_total'))} | {_number(s.get('tokens_trained'))} |")
    return [*lines, ""]


def _training(f: Facts) -> list[str]:
    t = f.training
    if not any(v is not None for v in t.values()):
        return []
    return ["## Training", "", "| steps | trained tokens | final train loss | mean train loss | eval loss |",
            "| ---: | ---: | ---: | ---: | ---: |",
            f"| {_number(t.get('steps'))} | {_number(t.get('tokens_trained'))} | {_number(t.get('final_loss'), '{:.4f}')} "
            f"| {_number(t.get('train_loss'), '{:.4f}')} | {_number(t.get('eval_loss'), '{:.4f}')} |", ""]


def _gate(f: Facts) -> list[str]:
    files = f.gate.get("files") or []
    if not files:
        return []
    lines = ["## Verification", "",
             f"llama.cpp against the merged model on {f.gate.get('golden_conversations')} golden conversations "
             "(tokenization, next-token distributions, chat template, stopping):", "",
             "| type | top-1 agreement | min | mean KL (nats) | max | positions | result |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in files:
        mark = " (this version)" if r["quant"] == f.kind else ""
        lines.append(f"| {r['quant']}{mark} | {_number(r.get('top1'), '{:.2%}')} | {r['min_top1']:.0%} | "
                     f"{_number(r.get('kl'), '{:.5f}')} | {r['max_kl']:.3f} | {r.get('positions', 0)} | "
                     + ("pass" if r.get("passed") else "FAIL") + " |")
    return [*lines, ""]


def _samples(f: Facts) -> list[str]:
    prompts = f.samples.get("prompt") or []
    if not prompts:
        return []
    lines = ["## Sample answers", "", "Greedy answers of the base model and of the fine-tune (HF weights, during "
             "training) to held-out prompts:", "", "| prompt | reference | before | after |", "| --- | --- | --- | --- |"]
    for i, prompt in enumerate(prompts):
        row = [prompt, *((f.samples.get(k) or [""] * len(prompts))[i] for k in ("reference", "before", "after"))]
        lines.append("| " + " | ".join(_cell(x) for x in row) + " |")
    return [*lines, ""]


def _usage(f: Facts) -> list[str]:
    uri = f"models:/{f.name}/{f.version}"
    folder = f"{f.name}-{f.kind}"
    lines = ["## Run it", "", "With `MLFLOW_TRACKING_URI` pointing at this registry:", "", "```sh",
             f"mlflow artifacts download -u {uri} -d {folder}     # the GGUF is {folder}/artifacts/{f.file}",
             f"llama-cli -m {folder}/artifacts/{f.file} -cnv                        # llama.cpp"]
    if f.modelfile:
        lines.append(f"ollama create {f.name} -f {folder}/artifacts/Modelfile && ollama run {f.name}   # Ollama")
    lines += [f"lms import {folder}/artifacts/{f.file}                             # LM Studio",
              f"mlflow models serve -m {uri} --env-manager local -p 5001",
              "curl -s localhost:5001/invocations -H 'Content-Type: application/json' \\",
              "  -d '{\"inputs\": {\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}, "
              "\"params\": {\"max_tokens\": 64}}'", "```", "", "In Python (needs `llama-cpp-python`):", "", "```python",
              "import mlflow", "",
              f"chat = mlflow.pyfunc.load_model(\"{uri}\")",
              "chat.predict({\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}, params={\"max_tokens\": 64})",
              "```", ""]
    if f.alias:
        lines += [f"`models:/{f.name}@{f.alias}` names the version the `{f.alias}` alias points at.", ""]
    return lines


def render(f: Facts) -> str:
    return "\n".join([*_lineage(f), *_data(f), *_training(f), *_gate(f), *_samples(f), *_usage(f)]).rstrip() + "\n"


def description(card: str, limit: int = 5000) -> str:
    """The card as a registry description: SQL stores keep at most 5000 characters; a longer card is cut at a
    line, pointing at the full one."""
    if len(card) <= limit:
        return card
    note = "\n\n… (cut: the full model card is README.md in the model folder)\n"
    return card[: card.rfind("\n", 0, limit - len(note))] + note
