"""Text / Markdown -> overlapping chunks with their position (lines, bytes) and heading path.

A document is first cut into sections at Markdown ATX headings (`# ...` to `###### ...`, not inside ``` or ~~~
fences); a chunk never spans two sections, and a section holding only its heading joins the next one. Inside a
section, a window of `size` units (words, or characters) slides with `overlap` units shared between neighbours;
a window that does not reach the section's end is cut back to the last paragraph break (a blank line) in its
second half, else to the last sentence end there, else at the word boundary. Chunk text is the document's own
text between the first and last word of the window (formatting kept). Plain text (and text extracted from PDFs,
where form feeds separate pages) has no headings: one section.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Literal

Unit = Literal["words", "chars"]
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")
WORD = re.compile(r"\S+")
PARAGRAPH_BREAK = re.compile(r"\n[ \t\f\r]*\n")
SENTENCE_END = re.compile(r"[.!?:;][\"')\]]*$")


@dataclass(frozen=True)
class Chunk:
    text: str
    headings: tuple[str, ...]  # the heading path, outermost first
    start_line: int  # 1-based, inclusive
    end_line: int
    start_byte: int  # UTF-8 byte offsets into the file, end exclusive
    end_byte: int


@dataclass(frozen=True)
class _Section:
    start: int  # character offsets into the document
    end: int
    headings: tuple[str, ...]


def _sections(text: str) -> list[_Section]:
    """Cut at headings; each section starts at its heading line."""
    cuts: list[tuple[int, tuple[str, ...]]] = [(0, ())]
    path: list[tuple[int, str]] = []
    fence: str | None = None
    offset = 0
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\r\n")
        if m := FENCE.match(stripped):
            fence = None if fence == m.group(1) else (fence or m.group(1))
        elif fence is None and (m := HEADING.match(stripped)):
            level = len(m.group(1))
            path = [(lvl, title) for lvl, title in path if lvl < level] + [(level, m.group(2).strip())]
            cuts.append((offset, tuple(title for _, title in path)))
        offset += len(line)
    sections = [_Section(start, end, headings)
                for (start, headings), (end, _) in zip(cuts, [*cuts[1:], (len(text), ())], strict=True)]
    merged: list[_Section] = []
    pending: int | None = None  # start of heading-only sections waiting for a body
    for s in sections:
        words = WORD.findall(text[s.start:s.end])
        heading_only = bool(s.headings) and len(text[s.start:s.end].strip().splitlines()) <= 1
        if not words:
            continue
        if heading_only:
            pending = s.start if pending is None else pending
            continue
        merged.append(_Section(s.start if pending is None else pending, s.end, s.headings))
        pending = None
    if pending is not None:  # trailing headings with no body: keep them rather than drop text
        merged.append(_Section(pending, len(text), sections[-1].headings))
    return merged


def _cut_point(text: str, words: list[tuple[int, int]], i: int, j: int) -> int:
    """Where the window words[i:j] should end: a paragraph break, else a sentence end, in its second half."""
    half = i + max(1, (j - i) // 2)
    for k in range(j - 1, half - 1, -1):  # the gap between words[k-1] and words[k]
        if PARAGRAPH_BREAK.search(text, words[k - 1][1], words[k][0]):
            return k
    for k in range(j - 1, half - 1, -1):
        if SENTENCE_END.search(text[words[k - 1][0]:words[k - 1][1]]):
            return k
    return j


def _window_end(words: list[tuple[int, int]], i: int, size: int, unit: Unit) -> int:
    if unit == "words":
        return min(i + size, len(words))
    j = i + 1  # at least one word, even a word longer than `size` characters
    while j < len(words) and words[j][1] - words[i][0] <= size:
        j += 1
    return j


def _next_start(words: list[tuple[int, int]], i: int, j: int, overlap: int, unit: Unit) -> int:
    if unit == "words":
        return max(j - overlap, i + 1)
    k = j
    while k - 1 > i and words[j - 1][1] - words[k - 1][0] <= overlap:
        k -= 1
    return max(k, i + 1)


def _validate(size: int, overlap: int) -> None:
    if size < 1:
        raise ValueError(f"--size must be at least 1, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"--overlap must be at least 0 and below --size ({size}), got {overlap}")


def split(text: str, size: int = 300, overlap: int = 50, unit: Unit = "words") -> list[Chunk]:
    """The chunks of one document, in order."""
    _validate(size, overlap)
    lines = _LinePositions(text)
    chunks: list[Chunk] = []
    for section in _sections(text):
        words = [(m.start(), m.end()) for m in WORD.finditer(text, section.start, section.end)]
        i = 0
        while i < len(words):
            j = _window_end(words, i, size, unit)
            if j < len(words):
                j = _cut_point(text, words, i, j)
            start, end = words[i][0], words[j - 1][1]
            chunks.append(Chunk(text[start:end], section.headings, lines.line(start), lines.line(end - 1),
                                lines.byte(start), lines.byte(end)))
            if j == len(words):
                break
            i = _next_start(words, i, j, overlap, unit)
    return chunks


class _LinePositions:
    """Character offset -> 1-based line number and UTF-8 byte offset, without re-encoding the whole prefix."""

    def __init__(self, text: str):
        self.text = text
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self._char, self._byte = 0, 0

    def line(self, offset: int) -> int:
        return bisect.bisect_left(self.newlines, offset) + 1

    def byte(self, offset: int) -> int:
        if offset < self._char:
            self._char, self._byte = 0, 0
        self._byte += len(self.text[self._char:offset].encode("utf-8"))
        self._char = offset
        return self._byte
