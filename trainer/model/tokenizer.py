"""Opening the base model's tokenizer, the one way: from a model folder, a hub id or a `.gguf`, with
`model.chat_template` applied and a pad token. The trainer (trainer/model/load.py) and the data check on the
user's machine (`launch data validate`, launcher/datacheck.py) both open it here, so they count the same
tokens. Torch-free: transformers' tokenizers only, imported when a tokenizer is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer import storage
from trainer.model.errors import ModelError


def read_chat_template(uri: str, base_dir: Path | None = None) -> str:
    """The text of a chat template file (local path, relative to `base_dir`, or s3://)."""
    if not storage.is_remote(uri) and base_dir is not None:
        uri = storage.local_path(uri, base_dir)
    try:
        text = storage.read_text(uri)
    except (FileNotFoundError, IsADirectoryError) as e:
        raise ModelError(f"model.chat_template: cannot read {uri} ({e}); give a Jinja template file") from None
    if "{%" not in text and "{{" not in text:
        raise ModelError(f"model.chat_template: {uri} holds no Jinja template (no `{{%` or `{{{{`)")
    return text


def open_tokenizer(location: str, *, gguf_file: str | None = None, trust_remote_code: bool = False,
                   local_files_only: bool = False, chat_template: str | None = None) -> Any:
    """The tokenizer at `location` (a folder or hub id; with `gguf_file`, the GGUF in that folder).
    `chat_template` (a template's text) replaces the model's own; without a pad token, EOS pads (padding is
    never a label)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file, trust_remote_code=trust_remote_code,
                                              local_files_only=local_files_only)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
