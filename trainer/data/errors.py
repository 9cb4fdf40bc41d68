"""The two kinds of data problems: a whole-job `DataError` and a per-row `BadRow`."""

from __future__ import annotations

from trainer.spec.errors import UsageError

REASONS = (
    "invalid_json",  # a JSONL line that is not JSON, or not a JSON object
    "missing_field",  # a column / key the format needs is absent or null
    "bad_type",  # a field has the wrong type (e.g. content is a number)
    "empty_conversation",  # no messages at all
    "bad_role",  # a role the format does not know
    "empty_content",  # a user / assistant turn with blank text
    "no_assistant_turn",  # nothing to learn from: no assistant message
    "template_error",  # the chat template refused the conversation (raise_exception)
    "too_long",  # longer than data.max_seq_len (or nothing trainable left after truncation)
    "same_answers",  # preference: `chosen` and `rejected` are the same answer
    "prompt_mismatch",  # preference: the answers' prompts differ (in their messages or in their tokens)
)


class DataError(UsageError):
    """A problem that stops the job: the message names the file / line / field and the fix."""


class BadRow(Exception):
    """One unusable row. `reason` is one of REASONS; the message says what is wrong with it."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown bad-row reason {reason!r}")
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")
