"""The date chat templates see: one per job (`data.template_date`), never the calendar.

Some chat templates write today's date into every prompt: gpt-oss's (`Current date: 2025-08-05`),
Llama 3.2's (`Today Date: 05 Aug 2025`), Mistral Small 3.2's, Granite 3.3's. They ask
transformers for it through `strftime_now(format)`, a global of the jinja environment that
`apply_chat_template` renders with (transformers 5.23: `utils/chat_template_utils.py`,
`_cached_compile_jinja_template`, which returns `datetime.now().strftime(format)`). Left alone,
the same row tokenizes differently on different days: a job resumed on a later day would not
continue the run it resumes, and the data fingerprint would not see why.

transformers has no public switch for that global: template variables passed to
`apply_chat_template` (`**kwargs`) reach the template only as plain data (a function becomes the
string `"<function>"`), and the environment is built inside transformers. What is public is the
`chat_template=` argument: `dated_template` puts a jinja macro named `strftime_now` in front of the
template, which the template's own calls then reach instead of the global (a name defined in the
template shadows a global of its environment; macros defined inside it see it too). The macro
formats the job's date: every one-letter `strftime` directive (glibc's flags `%-d` ... too), `%%`,
time fields at midnight.
The template saved with the tokenizer, the adapter and the exports stays the original one:
only the rendering is dated.

`pin(tokenizer, day)` makes every `tokenizer.apply_chat_template(...)` of that tokenizer object
render with `day` (training render, eval, sample prompts, the export's golden conversations and
eval metrics all take the tokenizer they are given); a `copy.deepcopy` of it stays pinned. The
trainer pins the tokenizer it loads to `data.template_date`; `launch submit` records that date
in the spec it ships (the submission's day when unset), so every pod, restart and resume of a
job renders the same text.

A spec without a date (a trainer started by hand on a spec that did not go through `launch`)
renders with DEFAULT, 2024-07-26: a fixed date, so such a run and its resumes agree with each
other. It is the date Llama 3.1's template itself writes when no date is given. Templates that
do not call `strftime_now` (Llama 3.1's, which writes `date_string`, 26 Jul 2024 unless given
one, Qwen, Gemma, Phi-3) render exactly as before.

Light: no torch, no transformers import (the launcher imports it).
"""

from __future__ import annotations

import functools
import string
from datetime import date, datetime
from typing import Any

DEFAULT = date(2024, 7, 26)
FIELD = "data.template_date"
_MARK = "{#- kubetune: data.template_date #}"  # first line of a dated template: never dated twice


def resolve(day: date | None) -> date:
    """The date a job renders with: its own, or DEFAULT when the spec has none."""
    return DEFAULT if day is None else day


FLAGS = "-_0^#"  # glibc's padding / case flags (`%-d`: the day without a leading zero)


def _directives(day: date) -> dict[str, str]:
    """What `strftime` writes for each one-letter directive on `day` (with and without a flag), at 00:00:00."""
    moment = datetime(day.year, day.month, day.day)
    out = {"%": "%"}
    for flag in ("", *FLAGS):
        for c in string.ascii_letters:
            key = flag + c
            try:
                value = moment.strftime("%" + key)
            except ValueError:  # a directive this platform's strftime refuses
                continue
            if value != "%" + key:  # glibc writes an unknown directive back as it is
                out[key] = value
    return out


def _jinja_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


@functools.lru_cache(maxsize=64)
def dated_template(template: str, day: date) -> str:
    """`template` with `strftime_now(format)` answering for `day` instead of the clock (a template that never asks
    for the date: as it is)."""
    if not uses_date(template):
        return template
    if template.startswith(_MARK):
        template = template.split("\n", 2)[2]  # already dated: replace the date
    table = ", ".join(f"{_jinja_string(k)}: {_jinja_string(v)}" for k, v in sorted(_directives(day).items()))
    macro = (
        "{%- macro strftime_now(format) -%}{%- set kt_days = {" + table + "} -%}"
        "{%- set kt = namespace(out='', pct=false, flag='') -%}"
        "{%- for c in format -%}"
        "{%- if kt.pct and kt.flag == '' and c in " + _jinja_string(FLAGS) + " -%}{%- set kt.flag = c -%}"
        "{%- elif kt.pct -%}{%- set kt.out = kt.out ~ kt_days.get(kt.flag ~ c, '%' ~ kt.flag ~ c) -%}"
        "{%- set kt.pct = false -%}{%- set kt.flag = '' -%}"
        "{%- elif c == '%' -%}{%- set kt.pct = true -%}"
        "{%- else -%}{%- set kt.out = kt.out ~ c -%}{%- endif -%}"
        "{%- endfor -%}{{- kt.out ~ ('%' ~ kt.flag if kt.pct else '') -}}{%- endmacro %}"
    )  # `%}` then a newline, which trim_blocks removes: the template's own leading whitespace stays
    return f"{_MARK}\n{macro}\n{template}"


def apply_chat_template(tokenizer: Any, day: date, conversation: Any, tools: Any = None, documents: Any = None,
                        chat_template: str | None = None, **kwargs: Any) -> Any:
    """`tokenizer.apply_chat_template(...)` (the class's own, whatever is pinned) rendered on `day`."""
    template = tokenizer.get_chat_template(chat_template, tools)
    return type(tokenizer).apply_chat_template(tokenizer, conversation, tools=tools, documents=documents,
                                               chat_template=dated_template(template, day), **kwargs)


class _Dated:
    """The instance attribute `pin` sets: `tokenizer.apply_chat_template`, dated. A plain object (not a closure
    over the tokenizer), so that `copy.deepcopy(tokenizer)` gives a copy pinned to itself."""

    def __init__(self, tokenizer: Any, day: date):
        self.tokenizer = tokenizer
        self.day = day

    def __call__(self, conversation: Any, *args: Any, **kwargs: Any) -> Any:
        names = ("tools", "documents", "chat_template")  # apply_chat_template's positional parameters after it
        if len(args) > len(names):
            raise TypeError(f"apply_chat_template: pass arguments after {', '.join(names)} by name")
        kwargs.update(zip(names, args, strict=False))
        return apply_chat_template(self.tokenizer, self.day, conversation, **kwargs)


def pin(tokenizer: Any, day: date | None) -> Any:
    """Make `tokenizer.apply_chat_template` render on `day` (None: DEFAULT) from now on; returns the tokenizer.

    Saving is unchanged: `save_pretrained` writes the template as it is, without the date."""
    tokenizer.apply_chat_template = _Dated(tokenizer, resolve(day))
    return tokenizer


def pinned(tokenizer: Any) -> date | None:
    """The date `tokenizer` is pinned to, or None (it renders with the clock)."""
    dated = getattr(tokenizer, "__dict__", {}).get("apply_chat_template")
    return dated.day if isinstance(dated, _Dated) else None


def uses_date(template: Any) -> bool:
    """Whether a chat template (or a dict of named ones) asks for the date at all."""
    return bool(template) and "strftime_now" in str(template)


def describe(day: date | None, template: Any) -> str:
    """The log line: which date the job's chat template renders, and why."""
    why = f"{FIELD}" if day is not None else f"{FIELD} unset: the fixed default"
    used = "" if uses_date(template) else "; this chat template writes no date"
    return f"chat template date {resolve(day).isoformat()} ({why}{used})"
