"""The spec's `data` section: training and evaluation data, its row formats, and bad rows.

Part of THE job spec (trainer/spec/job.py, where `JobSpec` holds it). Torch-free.
"""

from __future__ import annotations

import re
import string
from datetime import date
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from trainer.spec.base import Section


class BadRowsSpec(Section):
    policy: Literal["skip", "fail"] = Field(
        "skip",
        description="`skip`: bad rows are counted, reported with their line numbers and logged; "
        "`fail`: the first bad row stops the job.",
    )
    max_bad_fraction: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="With `skip`, the job fails when more than this fraction of rows is bad.",
    )


class TemplateSpec(Section):
    """A user format: turns named fields of each row into one conversation."""

    system: str | None = Field(None, description="System message; may use `{field}` placeholders.")
    user: str = Field(..., description="User turn, e.g. `{question}`.")
    assistant: str = Field(..., description="Assistant turn, e.g. `<think>{thought}</think>{answer}`.")

    @field_validator("system", "user", "assistant")
    @classmethod
    def _placeholders(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(v) if f is not None]
        except ValueError as e:
            raise ValueError(
                f"{e} in {v!r}: placeholders are `{{field}}`; write a literal brace as `{{{{` or `}}}}`"
            ) from None
        for f in fields:
            if f == "" or f.split(".")[0].split("[")[0].isdigit():
                raise ValueError(f"placeholder {{{f}}} in {v!r} must name a column, e.g. {{answer}} or {{meta.why}}")
        return v


class ColumnsSpec(Section):
    """Column names of the `instruction` format (alpaca style)."""

    instruction: str = Field("instruction", description="Column holding the instruction.")
    input: str = Field("input", description="Optional column appended to the instruction.")
    output: str = Field("output", description="Column holding the expected answer.")


class DataSpec(Section):
    train: str | list[str] = Field(
        ...,
        description="Training data: local paths or `s3://` URIs, globs allowed "
        "(`s3://bucket/train-*.jsonl`). JSONL or Parquet.",
    )
    eval: str | list[str] | None = Field(None, description="Held-out data, same forms as `train`.")
    format: Literal["messages", "sharegpt", "instruction", "template", "preference", "unpaired"] = Field(
        "messages",
        description="Row format: `messages` (OpenAI chat: `{messages: [{role, content}]}`), "
        "`sharegpt` (`{conversations: [{from, value}]}`), `instruction` "
        "(instruction / optional input / output) or `template` (see `data.template`). Preference data "
        "(`training.objective: dpo | orpo | kto`, docs/preference.md): `preference` (`{prompt, chosen, rejected}`, "
        "each text or chat turns) or `unpaired` (KTO: `{prompt, completion, label}`).",
    )
    template: TemplateSpec | None = Field(None, description="Required with `format: template`.")
    columns: ColumnsSpec = Field(default_factory=ColumnsSpec, description="Column names for `format: instruction`.")
    system_prompt: str | None = Field(
        None, description="System message added to rows that have none (with `format: template`, use `template.system`)."
    )
    max_seq_len: int = Field(2048, ge=16, le=1_048_576, description="Longest sample in tokens.")
    too_long: Literal["bad_row", "truncate"] = Field(
        "bad_row",
        description="A sample longer than `max_seq_len`: a counted bad row, or truncated.",
    )
    packing: bool = Field(
        True,
        description="Pack several samples into each `max_seq_len` row (best-fit). Samples never "
        "attend to each other: position ids restart per sample.",
    )
    train_on: Literal["completions", "all"] = Field(
        "completions", description="Loss on assistant tokens only (`completions`) or on every token (`all`)."
    )
    reasoning: Literal["train", "mask"] = Field(
        "train",
        description="Assistant reasoning (a `thinking` or `reasoning_content` field, or `<think>...</think>` "
        "before the answer): `train` trains the whole assistant output, reasoning included; `mask` keeps the "
        "reasoning in the context but out of the loss, so only the answer (gpt-oss: the final channel's text; "
        "`<think>` models: the text after `</think>`) and its end-of-turn token are trained. Use `mask` when the "
        "reasoning is not the behaviour to learn (e.g. written by another model) but the answers should follow "
        "it. Turns whose reasoning the chat template drops (most drop it from all but the last assistant turn) "
        "are trained on their answer and counted as `reasoning_dropped_turns`. Needs `train_on: completions`.",
    )
    template_date: date | None = Field(
        None,
        description="The date (YYYY-MM-DD) that chat templates which write today's date into every prompt "
        "(gpt-oss's `Current date:`, Llama 3.2's `Today Date:`, Mistral Small 3.2's, Granite 3.3's) render, "
        "everywhere the job applies the template: training, eval, sample answers, the export's checks and task "
        "metrics. Rendering never reads the calendar, so a row tokenizes the same on every day of the job. Unset: "
        "`launch submit` records the day of submission in the spec it ships to the pods (`--local --resume` keeps "
        "the date the checkpoints were trained with); a trainer started by hand on a spec without one uses "
        "2024-07-26 (the date Llama 3.1's template writes when given none). Set it to train for the date your "
        "prompts will carry. Templates that do not ask for the date ignore it. Part of the data settings: a "
        "resumed job keeps it.",
    )
    bad_rows: BadRowsSpec = Field(default_factory=BadRowsSpec, description="What happens to rows that cannot be used.")

    @field_validator("template_date", mode="before")
    @classmethod
    def _iso_date(cls, v: Any) -> Any:
        if (isinstance(v, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", v.strip())) or isinstance(v, int | float):
            raise ValueError(f"{v!r} is not a date written YYYY-MM-DD, e.g. 2025-08-05")
        return v

    @model_validator(mode="after")
    def _template_needs_template(self) -> DataSpec:
        if self.format == "template" and self.template is None:
            raise ValueError("`format: template` needs `data.template` with `user` and `assistant`")
        if self.format != "template" and self.template is not None:
            raise ValueError(f"`data.template` is only used with `format: template` (format is `{self.format}`)")
        if self.format == "template" and self.system_prompt is not None:
            raise ValueError("`data.system_prompt` is not used with `format: template`: put it in `data.template.system`")
        if self.reasoning == "mask" and self.train_on == "all":
            raise ValueError("`data.reasoning: mask` hides reasoning from the loss, but `data.train_on: all` trains "
                             "every token: set `train_on: completions`, or `reasoning: train`")
        return self
