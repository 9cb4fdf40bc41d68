"""Files that local runtimes need next to a verified GGUF: an Ollama Modelfile, an LM Studio layout.

Ollama runs Go templates, not Jinja. The training template's turn markers are read off probe
renderings (what comes before and after a system, user and assistant message, and the
generation prompt); the Go template is assembled from them, and only written when the same
markers rebuild every golden conversation exactly as the training template rendered it.
Otherwise the Modelfile has no TEMPLATE and says why, and how to get one: Ollama only applies a
template it recognises in the GGUF's metadata (else it sends the bare prompt), so for such a family
(gpt-oss's Harmony channels, for one) the template of Ollama's own model of that family is the one to
copy in (`ollama show <model> --template`).
"""

from __future__ import annotations

import os
import shutil
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.spec.data import DataSpec

Message = dict[str, str]
MARK = "\x00{}\x00"


@dataclass(frozen=True)
class Turns:
    head: str  # before the first user message when there is no system message (BOS, default system)
    system_before: str | None  # before the system text (replaces `head`); None: no system messages
    system_after: str | None  # after the system text, up to the first user message
    user_pre: str
    user_post: str
    assistant_pre: str
    assistant_post: str  # after an assistant message that a user message follows
    final_post: str  # after the conversation's last assistant message
    generation: str  # the generation prompt (may differ from assistant_pre, e.g. an empty thought block)

    def render(self, conv: list[Message], generation_prompt: bool = False) -> str:
        msgs = list(conv)
        out = self.head
        if msgs and msgs[0]["role"] == "system":
            if self.system_before is None or self.system_after is None:
                raise ValueError("this template has no system messages")
            out = self.system_before + msgs.pop(0)["content"] + self.system_after
        for i, m in enumerate(msgs):
            if m["role"] == "user":
                out += ("" if i == 0 else self.user_pre) + m["content"] + self.user_post
            else:
                out += self.assistant_pre + m["content"] + (self.final_post if i == len(msgs) - 1 else self.assistant_post)
        return out + (self.generation if generation_prompt else "")

    def go_template(self) -> str:
        """The same rendering as an Ollama (Go text/template) TEMPLATE."""
        q = _go_string
        if self.system_before is None or self.system_after is None:
            head = q(self.head)
        else:
            head = (f"{{{{- if .System }}}}{q(self.system_before)}{{{{ .System }}}}{q(self.system_after)}"
                    f"{{{{- else }}}}{q(self.head)}{{{{- end }}}}")
        return (
            "{{- $first := true }}" + head +
            "{{- range .Messages }}"
            "{{- if eq .Role \"user\" }}"
            f"{{{{- if not $first }}}}{q(self.user_pre)}{{{{- end }}}}{{{{ .Content }}}}{q(self.user_post)}"
            "{{- $first = false }}"
            "{{- else if eq .Role \"assistant\" }}"
            f"{q(self.assistant_pre)}{{{{ .Content }}}}{q(self.assistant_post)}"
            "{{- $first = false }}"
            "{{- end }}{{- end }}"
            f"{q(self.generation)}"
        )


def _go_string(text: str) -> str:
    """A literal inside a Go template: printed through a quoted string so whitespace survives `{{-`."""
    if not text:
        return ""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return '{{ "' + escaped + '" }}'


def _between(text: str, a: str | None, b: str | None) -> str:
    start = 0 if a is None else text.index(a) + len(a)
    end = len(text) if b is None else text.index(b, start)
    return text[start:end]


def _split_after(text: str, eot: str | None) -> tuple[str, str]:
    """`<eot>\\n<next turn...>` -> (`<eot>\\n`, `<next turn...>`)."""
    if not eot or eot not in text:
        return text, ""
    cut = text.index(eot) + len(eot)
    while cut < len(text) and text[cut] in "\r\n":
        cut += 1
    return text[:cut], text[cut:]


def read_turns(tokenizer: Any, eot: str | None) -> Turns | None:
    """The training template's turn markers, or None when the template renders without markers."""
    s, u1, a1, u2, a2 = (MARK.format(k) for k in ("S", "U1", "A1", "U2", "A2"))

    def render(conv: list[Message], gen: bool = False) -> str:
        return tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)

    try:
        plain = render([{"role": "user", "content": u1}, {"role": "assistant", "content": a1},
                        {"role": "user", "content": u2}, {"role": "assistant", "content": a2}])
        prompt = render([{"role": "user", "content": u1}], gen=True)
    except Exception:  # noqa: BLE001 - a template that cannot render a plain chat
        return None
    try:
        with_system: str | None = render([{"role": "system", "content": s}, {"role": "user", "content": u1}])
    except Exception:  # noqa: BLE001 - e.g. Gemma 2: "System role not supported"
        with_system = None
    assistant_post, user_pre = _split_after(_between(plain, a1, u2), eot)
    user_post, assistant_pre = _split_after(_between(plain, u1, a1), eot)
    gen = _between(prompt, u1, None)
    if not gen.startswith(user_post):
        return None
    return Turns(
        head=_between(plain, None, u1),
        system_before=_between(with_system, None, s) if with_system else None,
        system_after=_between(with_system, s, u1) if with_system else None,
        user_pre=user_pre, user_post=user_post, assistant_pre=assistant_pre, assistant_post=assistant_post,
        final_post=_between(plain, a2, None), generation=gen[len(user_post):],
    )


def default_system(data: DataSpec) -> str | None:
    """The system message every training conversation started with, for the Modelfile's SYSTEM:
    `data.system_prompt`, or with `format: template` a `template.system` without `{field}` placeholders
    (one with placeholders differs per row: there is no single default to give)."""
    if data.system_prompt:
        return data.system_prompt
    system = data.template.system if data.format == "template" and data.template else None
    if system and all(field is None for _, field, _, _ in string.Formatter().parse(system)):
        return system.replace("{{", "{").replace("}}", "}")
    return None


def modelfile(gguf_name: str, tokenizer: Any, eos: list[str], golden: list[list[Message]],
              system: str | None, adapter: str | None = None) -> tuple[str, str | None]:
    """(Modelfile text, why it has no TEMPLATE or None). `gguf_name`: a file beside the Modelfile, or a path;
    `adapter`: a LoRA GGUF beside it, applied over that base (`ADAPTER`)."""
    eot = eos[-1] if eos else None
    turns = read_turns(tokenizer, eot)
    why = None
    if turns is None:
        why = "the chat template's turn markers could not be read from probe renderings"
    else:
        for conv in golden:
            prompt = conv[: max(i for i, m in enumerate(conv) if m["role"] == "user") + 1]
            try:
                same = (turns.render(conv) == tokenizer.apply_chat_template(conv, tokenize=False) and
                        turns.render(prompt, True) == tokenizer.apply_chat_template(prompt, tokenize=False,
                                                                                    add_generation_prompt=True))
            except ValueError:
                same = False
            if not same:
                why = "the chat template renders some golden conversations in ways turn markers cannot express"
                break
    lines = [f"FROM {gguf_name}" if "/" in gguf_name else f"FROM ./{gguf_name}"]
    if adapter:
        lines.append(f"ADAPTER ./{adapter}")
    if why is None and turns is not None:
        lines.append(f'TEMPLATE """{turns.go_template()}"""')
    else:
        lines.append(f"# no TEMPLATE: {why}.")
        lines.append("# Ollama applies the GGUF's embedded template only when it recognises it; if answers run on or")
        lines.append("# ignore the chat format, copy the TEMPLATE of Ollama's own model of this family here, e.g.")
        lines.append("#   ollama show gpt-oss:20b --template")
    if system and turns is not None and turns.system_before is None:
        lines.append("# no SYSTEM: this chat template has no system messages")
    elif system:
        lines.append(f'SYSTEM """{system}"""')
    for token in eos:
        lines.append(f'PARAMETER stop "{token}"')
    return "\n".join(lines) + "\n", why


def lmstudio_layout(files: list[Path], root: Path, publisher: str, model: str) -> list[Path]:
    """`root/<publisher>/<model>/<file>.gguf` (LM Studio ignores GGUFs at its models root); hard links
    when possible, else copies."""
    dest_dir = root / publisher / model
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        dest = dest_dir / f.name
        dest.unlink(missing_ok=True)
        try:
            os.link(f, dest)
        except OSError:
            shutil.copy2(f, dest)
        out.append(dest)
    return out
