"""Post-training export: merge (merge.py) -> GGUF and quantization (gguf.py, quants.py) -> the
verification gate (verify.py) -> Ollama / LM Studio files (runtimes.py) -> MLflow registry
(register.py). Entry point: `python -m trainer.export` (run.py). Importing this package is light:
the spec imports `quants` from it.
"""

from __future__ import annotations


def say(message: str) -> None:
    """One line of the export job's log."""
    from trainer import say as out

    out.say(message)
