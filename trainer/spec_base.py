"""The base of every spec section (trainer/spec.py, trainer/spec_export.py). Torch-free."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Every section forbids unknown fields, so a typo is an error, never a silent default."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
