"""`launch data chunk` / `launch data search`: chunk boundaries, overlap, heading paths, positions, the SQLite
store (re-chunking replaces, never duplicates) and the FTS5 index."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import main
from launcher.datagen import store
from launcher.datagen.chunk import WORD, split

DOC = """Preface text before any heading, with ümlauts and € signs.

# Fractions

A fraction names part of a whole. The top number is the numerator.
The bottom number is the denominator.

## Adding fractions

To add fractions, find a common denominator. Then add the numerators.
Example: 3/4 + 1/2 = 3/4 + 2/4 = 5/4.

```
# a comment in code, not a heading
print(3 / 4)
```

## Empty

# Decimals
Decimals are fractions whose denominators are ten, a hundred, a thousand and so on.
"""


def launch(*args: str) -> tuple[int, str, str]:
    done = CliRunner().invoke(main, ["data", *args])
    return done.exit_code, done.stdout, done.stderr


def test_chunks_never_span_headings_and_carry_the_heading_path() -> None:
    chunks = split(DOC, size=200, overlap=10)
    assert [c.headings for c in chunks] == [(), ("Fractions",), ("Fractions", "Adding fractions"), ("Decimals",)]
    assert "# a comment in code" in chunks[2].text  # inside a fence: text, not a heading
    assert chunks[3].text.startswith("## Empty")  # a heading with no body joins the next section, text kept


def test_windows_overlap_and_cover_every_word() -> None:
    text = " ".join(f"w{i}" for i in range(100))
    chunks = split(text, size=30, overlap=10)
    words = [c.text.split() for c in chunks]
    assert all(len(w) <= 30 for w in words)
    for prev, nxt in zip(words, words[1:], strict=False):
        assert prev[-10:] == nxt[:10]
    covered = [w for ws in words for w in ws]
    assert set(covered) == set(text.split()) and words[0][0] == "w0" and words[-1][-1] == "w99"


def test_windows_end_at_a_paragraph_break_when_there_is_one() -> None:
    para = lambda n, tag: " ".join(f"{tag}{i}" for i in range(n))  # noqa: E731
    text = f"{para(20, 'a')}\n\n{para(20, 'b')}"
    first = split(text, size=30, overlap=5)[0]
    assert first.text == para(20, "a")  # not 30 words running into the second paragraph


def test_character_unit() -> None:
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa " * 5
    chunks = split(text, size=60, overlap=15, unit="chars")
    assert all(len(c.text) <= 60 for c in chunks)
    assert all(a.end_byte > b.start_byte for a, b in zip(chunks, chunks[1:], strict=False))  # they overlap


def test_positions_point_at_the_chunk_in_the_file() -> None:
    data = DOC.encode()
    lines = DOC.splitlines()
    for c in split(DOC, size=12, overlap=3):
        assert data[c.start_byte:c.end_byte].decode() == c.text
        first, last = c.text.splitlines()[0], c.text.splitlines()[-1]
        assert lines[c.start_line - 1].endswith(first) or first in lines[c.start_line - 1]
        assert last in lines[c.end_line - 1]


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="--overlap"):
        split(DOC, size=10, overlap=10)


def test_chunk_command_stores_chunks_and_rechunking_replaces_them(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "math.md"
    doc.write_text(DOC)
    (tmp_path / "docs" / "notes.txt").write_text("Page one of a PDF.\f\nPage two: the numerator is on top.\n")
    code, out, err = launch("chunk", "docs", "--db", "c.sqlite", "--size", "12", "--overlap", "3")
    assert code == 0, err
    conn = sqlite3.connect(tmp_path / "c.sqlite")
    count = lambda: conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]  # noqa: E731
    first = count()
    assert first == len(split(DOC, 12, 3)) + 1
    assert {r[0] for r in conn.execute("SELECT path FROM chunks")} == {"docs/math.md", "docs/notes.txt"}

    code, out, _ = launch("chunk", "docs", "--db", "c.sqlite", "--size", "12", "--overlap", "3")
    assert (code, count()) == (0, first) and "0 file(s) chunked" in out and "2 unchanged" in out

    doc.write_text(DOC.replace("Decimals are", "Decimal numbers are"))
    code, out, _ = launch("chunk", str(doc), "--db", "c.sqlite", "--size", "12", "--overlap", "3")
    assert code == 0 and "1 file(s) chunked" in out
    texts = [r[0] for r in conn.execute("SELECT text FROM chunks WHERE path = 'docs/math.md'")]
    assert len(texts) == len(split(DOC, 12, 3)) and any("Decimal numbers" in t for t in texts)
    assert not any("Decimals are" in t for t in texts)

    code, out, _ = launch("chunk", str(doc), "--db", "c.sqlite", "--size", "50", "--overlap", "3")
    assert code == 0 and "1 file(s) chunked" in out  # other settings: chunked again
    assert conn.execute("SELECT COUNT(*) FROM chunks WHERE path = 'docs/math.md'").fetchone()[0] == 4


def test_search_finds_chunks_through_the_fts_index(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "math.md").write_text(DOC)
    assert launch("chunk", "math.md", "--db", "c.sqlite", "--size", "40", "--overlap", "5")[0] == 0
    code, out, _ = launch("search", "--db", "c.sqlite", "common", "denominator")
    assert code == 0
    assert out.splitlines()[0].startswith("math.md#L8-L") and "[Fractions > Adding fractions]" in out
    assert "[denominator]" in out  # the snippet marks the match
    conn = store.connect(tmp_path / "c.sqlite")
    assert store.search(conn, "numerator AND-NOT:weird") == []  # FTS syntax in a query is just words
    doc_text = (tmp_path / "math.md").write_text("nothing about maths")
    assert doc_text and launch("chunk", "math.md", "--db", "c.sqlite")[0] == 0
    assert store.search(conn, "denominator") == []  # the old chunks left the index with their rows
    assert [h.chunk.path for h in store.search(conn, "maths")] == ["math.md"]


def test_user_errors_name_the_file_and_the_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "book.pdf").write_bytes(b"%PDF-1.7")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty").mkdir()
    for args, words in (
        (["book.pdf"], "pdftotext"),
        (["latin1.txt"], "not UTF-8"),
        (["missing.md"], "no such file"),
        (["empty"], "no text or Markdown files"),
        (["latin1.txt", "--size", "10", "--overlap", "10"], "--overlap 10"),
    ):
        code, _, err = launch("chunk", *args, "--db", "c.sqlite")
        assert code == 2 and words in err, (args, err)
    code, _, err = launch("search", "--db", "nope.sqlite", "x")
    assert code == 2 and "launch data chunk" in err


def test_word_pattern_counts_what_a_reader_calls_words() -> None:
    assert WORD.findall("a  b\n\nc\fd") == ["a", "b", "c", "d"]
