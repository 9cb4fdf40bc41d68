"""The model's one error class, importable without transformers (the launcher's data check raises it too)."""

from __future__ import annotations

from trainer.spec.errors import UsageError


class ModelError(UsageError):
    """A base model or adapter setting that cannot work; the message says what to change."""
