"""The gate: a GGUF is registered only when llama.cpp runs it like the merged HF model.

Per GGUF, on golden conversations from the held-out data:
- tokenization: llama.cpp's tokenizer gives the HF tokenizer's ids, on rendered conversations
  (special tokens included) and on their plain message texts;
- next-token distributions: with the same ids fed to both, at every position, top-1 agreement
  (at least `min_top1`) and mean KL(HF || llama.cpp) (at most `max_kl`), thresholds per quant type;
- chat template: the template embedded in the GGUF, with the GGUF's own BOS/EOS, renders every
  golden conversation (and its generation prompt) exactly as the training template did;
- stopping: each end-of-turn token of the training template (and EOS) has the same id in the GGUF
  and is an end-of-generation token for llama.cpp, so a chat ends where training taught it to.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

Message = dict[str, str]


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class FileReport:
    quant: str
    file: str
    top1: float | None = None
    kl: float | None = None
    positions: int = 0
    min_top1: float = 0.0
    max_kl: float = 0.0
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


@dataclass
class Report:
    files: list[FileReport]
    golden: int

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.files)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "golden_conversations": self.golden,
                "files": [asdict(f) | {"passed": f.passed} for f in self.files]}

    def render(self) -> str:
        lines = [f"export verification on {self.golden} golden conversations: "
                 + ("PASSED" if self.passed else "FAILED")]
        lines.append(f"  {'quant':8} {'top-1':>8} {'min':>6} {'KL':>9} {'max':>7} {'positions':>9}  result")
        for f in self.files:
            top1 = f"{f.top1:.2%}" if f.top1 is not None else "-"
            kl = f"{f.kl:.5f}" if f.kl is not None else "-"
            lines.append(f"  {f.quant:8} {top1:>8} {f.min_top1:>6.0%} {kl:>9} {f.max_kl:>7.3f} {f.positions:>9}  "
                         + ("pass" if f.passed else "FAIL"))
        for f in self.files:
            for c in f.failures():
                lines.append(f"  ✗ {f.quant} {c.name}: {c.detail}")
        return "\n".join(lines)


# -- the reference: the merged HF model ---------------------------------------------------------
@dataclass
class Golden:
    conversations: list[list[Message]]
    texts: list[str]  # each conversation rendered by the training template
    prompts: list[str]  # each conversation up to its last user turn, with the generation prompt
    ids: list[list[int]]  # HF token ids of `texts`
    logprobs: list[torch.Tensor]  # HF next-token log-probabilities at every position of `ids`


def _prefix_ids(tokenizer: Any) -> list[int]:
    """Ids the tokenizer puts before any text by itself (usually [bos] or [])."""
    with_special = tokenizer("x").input_ids
    without = tokenizer("x", add_special_tokens=False).input_ids
    k = len(with_special) - len(without)
    return list(with_special[:k]) if k > 0 and with_special[k:] == without else []


def _up_to_last_user(conv: list[Message]) -> list[Message]:
    last = max((i for i, m in enumerate(conv) if m["role"] == "user"), default=len(conv) - 1)
    return conv[: last + 1]


def reference(model: Any, tokenizer: Any, conversations: list[list[Message]]) -> Golden:
    """Render, tokenize and run the golden conversations through the merged model once."""
    prefix = _prefix_ids(tokenizer)
    texts, prompts, ids, logprobs = [], [], [], []
    model.eval()
    for conv in conversations:
        text = tokenizer.apply_chat_template(conv, tokenize=False)
        prompts.append(tokenizer.apply_chat_template(_up_to_last_user(conv), tokenize=False,
                                                     add_generation_prompt=True))
        body = tokenizer(text, add_special_tokens=False).input_ids
        seq = body if prefix and body[: len(prefix)] == prefix else prefix + body
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0].float()
        texts.append(text)
        ids.append(seq)
        logprobs.append(torch.log_softmax(logits, dim=-1))
    return Golden(conversations, texts, prompts, ids, logprobs)


# -- one GGUF ------------------------------------------------------------------------------------
def load(path: Path, n_ctx: int, lora: Path | None = None) -> Any:
    """The GGUF in llama.cpp, ready to score `n_ctx` tokens at once; `lora`: a LoRA GGUF applied at load."""
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                 verbose=False, n_threads=max(1, os.cpu_count() or 1), seed=0,
                 lora_path=str(lora) if lora is not None else None)


def distribution(llm: Any, golden: Golden) -> tuple[float, float, int]:
    agree = 0
    kl_sum = 0.0
    n = 0
    for seq, ref in zip(golden.ids, golden.logprobs, strict=True):
        llm.reset()
        llm.eval(seq)
        scores = torch.from_numpy(np.array(llm.scores[: len(seq)], dtype=np.float32))
        vocab = min(scores.shape[-1], ref.shape[-1])
        p = torch.log_softmax(ref[:, :vocab], dim=-1)
        q = torch.log_softmax(scores[:, :vocab], dim=-1)
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        kl_sum += float((p.exp() * (p - q)).sum(-1).clamp_min(0).sum())
        n += len(seq)
    return agree / n, kl_sum / n, n


def tokenization(llm: Any, tokenizer: Any, golden: Golden) -> Check:
    samples = [*golden.texts, *(m["content"] for conv in golden.conversations for m in conv)]
    bad = []
    for text in samples:
        hf = tokenizer(text, add_special_tokens=False).input_ids
        cpp = llm.tokenize(text.encode(), add_bos=False, special=True)
        if list(hf) != list(cpp):
            bad.append((text, hf, cpp))
    if not bad:
        return Check("tokenization", True, f"{len(samples)} texts tokenize identically")
    text, hf, cpp = bad[0]
    at = next((i for i, (a, b) in enumerate(zip(hf, cpp, strict=False)) if a != b), min(len(hf), len(cpp)))
    return Check("tokenization", False,
                 f"{len(bad)} of {len(samples)} texts tokenize differently; first: {text[:60]!r} differs at token "
                 f"{at}: HF {hf[at:at + 4]} vs llama.cpp {cpp[at:at + 4]}")


def _vocab(llm: Any) -> Any:
    """The GGUF's llama.cpp vocabulary, through llama-cpp-python's public API (`Llama.model`, the C functions)."""
    import llama_cpp

    return llama_cpp.llama_model_get_vocab(llm.model)


def _gguf_token(llm: Any, token_id: int | None) -> str | None:
    if token_id is None or token_id < 0:
        return None
    import llama_cpp

    return llama_cpp.llama_vocab_get_text(_vocab(llm), token_id).decode("utf-8")


def template(llm: Any, tokenizer: Any, golden: Golden) -> Check:
    embedded = llm.metadata.get("tokenizer.chat_template")
    if not embedded:
        return Check("chat_template", False, "the GGUF has no tokenizer.chat_template: runtimes would guess one; the "
                     "merged folder needs chat_template.jinja (export from the training output's tokenizer)")
    other = copy.deepcopy(tokenizer)
    other.chat_template = embedded
    for attr, key in (("bos_token", "bos"), ("eos_token", "eos")):
        text = _gguf_token(llm, int(llm.metadata[f"tokenizer.ggml.{key}_token_id"])
                           if f"tokenizer.ggml.{key}_token_id" in llm.metadata else None)
        if text is not None:
            setattr(other, attr, text)
    for conv, want, want_prompt in zip(golden.conversations, golden.texts, golden.prompts, strict=True):
        try:
            got = other.apply_chat_template(conv, tokenize=False)
            got_prompt = other.apply_chat_template(_up_to_last_user(conv), tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - any jinja error of the embedded template is a finding
            return Check("chat_template", False, f"the embedded template cannot render a golden conversation: {e}")
        for kind, a, b in (("conversation", want, got), ("generation prompt", want_prompt, got_prompt)):
            if a != b:
                at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                return Check("chat_template", False,
                             f"a golden {kind} renders differently at character {at}: training "
                             f"{a[max(0, at - 20):at + 30]!r} vs GGUF {b[max(0, at - 20):at + 30]!r}")
    return Check("chat_template", True, f"{len(golden.texts)} conversations and prompts render identically")


def stopping(llm: Any, tokenizer: Any, eos: list[str]) -> Check:
    import llama_cpp

    from trainer.data.render import end_of_turn

    vocab = _vocab(llm)
    problems = []
    if end_of_turn(tokenizer) is None:
        problems.append("the chat template closes an assistant turn with no special token, so llama.cpp and Ollama "
                        "would not stop after an answer: end each turn with EOS or an end-of-turn token "
                        f"(e.g. {tokenizer.eos_token})")
    for token in eos:
        hf_id = tokenizer.convert_tokens_to_ids(token)
        cpp = llm.tokenize(token.encode(), add_bos=False, special=True)
        if cpp != [hf_id]:
            problems.append(f"{token} is id {hf_id} in HF but {cpp} in the GGUF")
        elif not llama_cpp.llama_vocab_is_eog(vocab, hf_id):
            problems.append(f"{token} (id {hf_id}) is not an end-of-generation token for llama.cpp: the model "
                            "would not stop after its answer")
    if problems:
        return Check("stopping", False, "; ".join(problems))
    return Check("stopping", True, f"{', '.join(eos)} end generation in llama.cpp")


def verify_file(path: Path, quant: str, tokenizer: Any, eos: list[str], golden: Golden,
                min_top1: float, max_kl: float) -> FileReport:
    report = FileReport(quant, path.name, min_top1=min_top1, max_kl=max_kl)
    n_ctx = max(len(s) for s in golden.ids) + 16
    try:
        llm = load(path, n_ctx)
    except (ValueError, RuntimeError, OSError) as e:
        report.checks.append(Check("load", False, f"llama.cpp cannot load the file: {e}"))
        return report
    try:
        report.checks.append(tokenization(llm, tokenizer, golden))
        report.top1, report.kl, report.positions = distribution(llm, golden)
        ok_top1, ok_kl = report.top1 >= min_top1, report.kl <= max_kl and np.isfinite(report.kl)
        report.checks.append(Check("top1", ok_top1, f"top-1 agreement {report.top1:.2%} (need >= {min_top1:.0%})"))
        report.checks.append(Check("kl", bool(ok_kl), f"mean KL {report.kl:.5f} nats (need <= {max_kl})"))
        report.checks.append(template(llm, tokenizer, golden))
        report.checks.append(stopping(llm, tokenizer, eos))
    finally:
        llm.close()
    return report


def write_report(report: Report, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "verify.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    (out_dir / "verify.txt").write_text(report.render() + "\n")
