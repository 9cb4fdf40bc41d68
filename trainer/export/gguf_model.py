"""The `python_function` model of a registered GGUF: chat with it through llama-cpp-python.

MLflow "models from code": trainer/export/logged_model.py logs this file as the model's code, so
`mlflow.pyfunc.load_model` and `mlflow models serve` run it without kubetune installed (it imports
only mlflow and llama_cpp). The GGUF is the model's `gguf` artifact, a plain file next to its
Ollama Modelfile.

Input: a `messages` column, one chat per row (`[{"role": "user", "content": "..."}, ...]`);
output: the assistant's answer per row. Generation parameters are params (`PARAMS`: their
defaults are the signature's). The chat template and the stop tokens are the GGUF's own
(`tokenizer.chat_template`, its end-of-generation tokens): the export's gate checked that they
render every golden conversation as training did and end an answer where training ended it.
`KUBETUNE_N_CTX` (default 4096) is the context the GGUF is loaded with.

The answer is the reply without its reasoning, as kubetune's evaluation scores it (trainer/eval/reply.py, which
travels with the model): gpt-oss's `final` channel, the text after a `<think>` block's end. To tell Harmony's
channels apart the reply is generated as llama-cpp-python's chat completion generates it (the GGUF's Jinja
template, the same sampling), as tokens, and decoded with its special tokens. A GGUF whose template
llama-cpp-python knows by name (`chat_format` other than `chat_template.default`) is answered through
`create_chat_completion` itself. Each chat is evaluated from an empty context: no answer depends on the ones before.

A LoRA GGUF version (`export.mode: adapters`) has the LoRA GGUF as its `lora` artifact and names its shared
base in the model config (`base_source`: the base version's source URI, `base_file`, `base_sha256`): the base
is downloaded once into `KUBETUNE_BASE_CACHE` (default `~/.cache/kubetune/bases`, a folder per sha256) with the
loader's own MLflow tracking URI and object-store credentials, and llama.cpp applies the LoRA at load.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

try:  # in a registered model: reply.py beside this file (MLflow code_paths, trainer/export/logged_model.py)
    from reply import generate_tokens, opens_thought, split_reply
except ImportError:  # imported by kubetune itself
    from trainer.eval.reply import generate_tokens, opens_thought, split_reply

PARAMS: dict[str, Any] = {"max_tokens": 256, "temperature": 0.0, "top_p": 1.0, "top_k": 40, "seed": 0}


def _chats(model_input: Any) -> list[list[dict[str, str]]]:
    """The chats in what pyfunc hands over: a DataFrame with a `messages` column, a dict, or a list of chats."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # a pandas DataFrame
        rows = list(model_input["messages"])
    elif isinstance(model_input, dict):
        rows = model_input["messages"]
        rows = [rows] if rows and isinstance(rows[0], dict) else rows
    else:
        rows = list(model_input)
    return [[{"role": str(m["role"]), "content": str(m["content"])} for m in chat] for chat in rows]


def base_gguf(config: dict[str, Any]) -> str:
    """The shared base GGUF a LoRA version needs, downloaded once per sha256 (see the module docstring)."""
    from mlflow.artifacts import download_artifacts

    cache = Path(os.environ.get("KUBETUNE_BASE_CACHE") or Path.home() / ".cache" / "kubetune" / "bases")
    target = cache / str(config["base_sha256"]) / str(config["base_file"])
    if target.is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        got = Path(download_artifacts(artifact_uri=str(config["base_source"]), dst_path=tmp))
        found = [got] if got.is_file() else sorted(got.rglob("*.gguf"))
        if len(found) != 1:
            raise FileNotFoundError(f"the base {config['base_source']} holds {len(found)} GGUF files, not one")
        os.replace(found[0], target)  # whole or absent: a download cut short leaves nothing behind
    return str(target)


class GgufChat(PythonModel):
    def load_context(self, context: Any) -> None:
        from llama_cpp import Llama

        if "lora" in context.artifacts:  # base + adapter: llama.cpp applies the LoRA at load
            files = {"model_path": base_gguf(context.model_config or {}), "lora_path": context.artifacts["lora"]}
        else:
            files = {"model_path": context.artifacts["gguf"]}
        self.llm = Llama(**files, n_ctx=int(os.environ.get("KUBETUNE_N_CTX", "4096")),
                         n_threads=max(1, os.cpu_count() or 1), verbose=False)
        self.formatter = _formatter(self.llm)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a signature
        p = PARAMS | {k: v for k, v in (params or {}).items() if k in PARAMS and v is not None}
        return [self._answer(chat, p) for chat in _chats(model_input)]

    def _answer(self, chat: list[dict[str, str]], p: dict[str, Any]) -> str:
        if self.formatter is None:
            out = self.llm.create_chat_completion(
                messages=chat, max_tokens=int(p["max_tokens"]), temperature=float(p["temperature"]),
                top_p=float(p["top_p"]), top_k=int(p["top_k"]), seed=int(p["seed"]))
            return split_reply(out["choices"][0]["message"]["content"] or "").answer
        prompt = self.formatter(messages=chat).prompt
        tokens = generate_tokens(self.llm, self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True),
                                 int(p["max_tokens"]), top_k=int(p["top_k"]), top_p=float(p["top_p"]),
                                 temperature=float(p["temperature"]), seed=int(p["seed"]))
        return split_reply(self.llm.detokenize(tokens, special=True).decode("utf-8", errors="replace"),
                           _control_texts(self.llm, tokens), thinking=opens_thought(prompt)).answer


def _formatter(llm: Any) -> Any:
    """The Jinja formatter llama-cpp-python's `create_chat_completion` renders this GGUF's chats with (`Llama`'s own
    construction: the GGUF's template, its EOS and BOS texts); None where it uses a chat format it knows by name."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    if llm.chat_format != "chat_template.default":
        return None
    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def text(token: int) -> str:
        return llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8") if token != -1 else ""

    return Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token=text(llm.token_eos()),
                               bos_token=text(llm.token_bos()), stop_token_ids=[llm.token_eos()])


def _control_texts(llm: Any, tokens: list[int]) -> list[str]:
    """The texts of the special tokens among `tokens`: the pieces that decoding without special tokens drops."""
    return [llm.detokenize([t], special=True).decode("utf-8", errors="replace") for t in set(tokens)
            if not llm.detokenize([t]) and llm.detokenize([t], special=True)]


set_model(GgufChat())
