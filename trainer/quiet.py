"""Library output that tells a kubetune user nothing, silenced the same way in training and export.

Checked on the pinned versions: a deprecated name transformers itself calls, PEFT looking for a
config.json beside a GGUF base model, and progress bars, which in pod logs are one long line of
carriage returns (our own `[kubetune]` lines say what is happening and how long it took).
"""

from __future__ import annotations

import os
import warnings

LIBRARY_NOISE = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    (UserWarning, r"Could not find a config file in .* will assume that the vocabulary was not modified"),
)


def quiet_libraries() -> None:
    for category, message in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
