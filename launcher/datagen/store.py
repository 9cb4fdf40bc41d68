"""The chunks database (standard library sqlite3): documents, their chunks with an FTS5 index, and what
`launch data generate` made of each chunk (so a re-run skips finished chunks and keeps their examples).

Tables: `documents` (path, sha256 of the bytes, chunking settings), `chunks` (text, heading path, lines, bytes),
`chunks_fts` (FTS5 over text and headings, kept in step by triggers), `generations` (per chunk: done | failed,
attempts, the failure reason) and `examples` (instruction, output, normalised instruction - unique, which is the
deduplication). Deleting a document's chunks deletes what was generated from them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from launcher.datagen.chunk import Chunk

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
  path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, settings TEXT NOT NULL, chunked_at TEXT DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS chunks (
  id INTEGER PRIMARY KEY, path TEXT NOT NULL REFERENCES documents(path) ON DELETE CASCADE, ordinal INTEGER NOT NULL,
  text TEXT NOT NULL, headings TEXT NOT NULL, start_line INTEGER NOT NULL, end_line INTEGER NOT NULL,
  start_byte INTEGER NOT NULL, end_byte INTEGER NOT NULL, UNIQUE (path, ordinal));
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(text, headings, content='chunks', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
  INSERT INTO chunks_fts(rowid, text, headings) VALUES (new.id, new.text, new.headings); END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
  INSERT INTO chunks_fts(chunks_fts, rowid, text, headings) VALUES ('delete', old.id, old.text, old.headings); END;
CREATE TABLE IF NOT EXISTS generations (
  chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE, status TEXT NOT NULL, model TEXT NOT NULL,
  attempts INTEGER NOT NULL, error TEXT, updated_at TEXT DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS examples (
  id INTEGER PRIMARY KEY, chunk_id INTEGER NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
  instruction TEXT NOT NULL, output TEXT NOT NULL, normalized TEXT NOT NULL UNIQUE);
"""


@dataclass(frozen=True)
class StoredChunk:
    id: int
    path: str
    text: str
    headings: tuple[str, ...]
    start_line: int
    end_line: int

    @property
    def source(self) -> str:
        """`path#L10-L42`: where an example's facts come from."""
        return f"{self.path}#L{self.start_line}-L{self.end_line}"


@dataclass(frozen=True)
class Hit:
    chunk: StoredChunk
    snippet: str


def connect(db: Path, *, create: bool = True) -> sqlite3.Connection:
    if not create and not db.is_file():
        raise FileNotFoundError(db)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(SCHEMA)
    return conn


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def replace_document(conn: sqlite3.Connection, path: str, digest: str, settings: dict[str, object],
                     chunks: list[Chunk]) -> bool:
    """Store `chunks` as the chunks of `path`, replacing earlier ones; False (nothing done) when the file and the
    settings are the same as when it was last chunked."""
    wanted = json.dumps(settings, sort_keys=True)
    row = conn.execute("SELECT sha256, settings FROM documents WHERE path = ?", (path,)).fetchone()
    if row == (digest, wanted):
        return False
    with conn:
        conn.execute("DELETE FROM chunks WHERE path = ?", (path,))
        conn.execute("INSERT OR REPLACE INTO documents(path, sha256, settings) VALUES (?, ?, ?)", (path, digest, wanted))
        conn.executemany(
            "INSERT INTO chunks(path, ordinal, text, headings, start_line, end_line, start_byte, end_byte)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(path, n, c.text, json.dumps(list(c.headings)), c.start_line, c.end_line, c.start_byte, c.end_byte)
             for n, c in enumerate(chunks)])
    return True


def _stored(row: tuple) -> StoredChunk:
    cid, path, text, headings, start, end = row
    return StoredChunk(cid, path, text, tuple(json.loads(headings)), start, end)


COLUMNS = "chunks.id, chunks.path, chunks.text, chunks.headings, chunks.start_line, chunks.end_line"


def chunks(conn: sqlite3.Connection) -> Iterator[StoredChunk]:
    for row in conn.execute(f"SELECT {COLUMNS} FROM chunks ORDER BY path, ordinal"):
        yield _stored(row)


def fts_query(words: str) -> str:
    """Free text -> an FTS5 query matching every word (each quoted, so `-`, `:` or `AND` mean nothing special)."""
    terms = [t.replace('"', '""') for t in words.split()]
    return " ".join(f'"{t}"' for t in terms)


def search(conn: sqlite3.Connection, query: str, limit: int = 10) -> list[Hit]:
    rows = conn.execute(
        f"SELECT {COLUMNS}, snippet(chunks_fts, 0, '[', ']', ' ... ', 16) FROM chunks_fts"
        " JOIN chunks ON chunks.id = chunks_fts.rowid WHERE chunks_fts MATCH ? ORDER BY rank LIMIT ?",
        (fts_query(query), limit)).fetchall()
    return [Hit(_stored(row[:6]), row[6]) for row in rows]


def status(conn: sqlite3.Connection, chunk_id: int) -> str | None:
    row = conn.execute("SELECT status FROM generations WHERE chunk_id = ?", (chunk_id,)).fetchone()
    return row[0] if row else None


def record(conn: sqlite3.Connection, chunk_id: int, model: str, attempts: int,
           examples: list[tuple[str, str, str]] | None, error: str | None = None) -> int:
    """Record a chunk's outcome: `examples` (instruction, output, normalised instruction) when it is done, else the
    error. Returns how many examples were duplicates of stored ones (and so not stored)."""
    with conn:
        conn.execute("DELETE FROM examples WHERE chunk_id = ?", (chunk_id,))
        duplicates = 0
        for instruction, output, normalized in examples or []:
            cur = conn.execute("INSERT OR IGNORE INTO examples(chunk_id, instruction, output, normalized)"
                               " VALUES (?, ?, ?, ?)", (chunk_id, instruction, output, normalized))
            duplicates += cur.rowcount == 0
        conn.execute("INSERT OR REPLACE INTO generations(chunk_id, status, model, attempts, error) VALUES"
                     " (?, ?, ?, ?, ?)", (chunk_id, "failed" if examples is None else "done", model, attempts, error))
    return duplicates


def examples(conn: sqlite3.Connection) -> Iterator[tuple[str, str, StoredChunk]]:
    """Every stored example with its chunk, in document order."""
    for row in conn.execute(f"SELECT examples.instruction, examples.output, {COLUMNS} FROM examples"
                            " JOIN chunks ON chunks.id = examples.chunk_id ORDER BY path, ordinal, examples.id"):
        yield row[0], row[1], _stored(row[2:])
