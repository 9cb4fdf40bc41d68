"""Library output that tells a kubetune user nothing, silenced the same way in training and export.

Checked on the pinned versions: a deprecated name transformers itself calls, PEFT looking for a
config.json beside a GGUF base model, and progress bars, which in pod logs are one long line of
carriage returns (our own `[kubetune]` lines say what is happening and how long it took). The bars of
transformers and huggingface_hub are off; those of other code (transformers' GGUF de-quantization,
llama.cpp's converters) are slowed down without a terminal: tqdm reads TQDM_MININTERVAL when it is
imported, so subprocesses and a tqdm imported later redraw at most every TQDM_SECONDS, a few states in
the log instead of hundreds (the local runner splits them into lines: launcher/backends/local_run.py).
"""

from __future__ import annotations

import os
import sys
import warnings

LIBRARY_NOISE = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    (UserWarning, r"Could not find a config file in .* will assume that the vocabulary was not modified"),
)
TQDM_SECONDS = "10"


def plain_progress() -> None:
    """Without a terminal, tqdm bars redraw at most every TQDM_SECONDS (unless TQDM_MININTERVAL is set)."""
    if sys.stderr is None or not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", TQDM_SECONDS)


def quiet_libraries() -> None:
    for category, message in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    plain_progress()  # before transformers imports tqdm, where it has not yet
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
