"""`launch data chunk | search | generate`: training data from documents (docs/data-from-documents.md)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import click

from launcher.errors import UserError

TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".text", ".rst"}
API_KEY_ENV = "KUBETUNE_DATAGEN_API_KEY"
db_option = click.option("--db", required=True, type=click.Path(dir_okay=False, path_type=Path),
                         help="The chunks database (SQLite).")


def _documents(paths: tuple[Path, ...]) -> list[Path]:
    """The files to chunk: the files given, and the text/Markdown files under the folders given."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            inside = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
            if not inside:
                raise UserError(f"{p}: no text or Markdown files ({', '.join(sorted(TEXT_SUFFIXES))}) in this folder")
            found += inside
        elif p.suffix.lower() == ".pdf":
            raise UserError(f"{p}: a PDF; extract its text first (e.g. `pdftotext -layout {p} {p.with_suffix('.txt')}`)"
                            " and chunk the .txt")
        elif p.is_file():
            found.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    return found


def _display(path: Path) -> str:
    """How a document is named in the database and in every example's `source`: relative to the current folder
    when it is inside it, else absolute."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return resolved.as_posix()


def _open(db: Path, *, must_exist: bool) -> sqlite3.Connection:
    from launcher.datagen import store

    try:
        return store.connect(db, create=not must_exist)
    except FileNotFoundError as e:
        raise UserError(f"--db {db}: no such database; make it with `launch data chunk DOCS... --db {db}`") from e
    except sqlite3.DatabaseError as e:
        raise UserError(f"--db {db}: not a chunks database ({e})") from e


@click.command()
@click.argument("docs", nargs=-1, required=True, type=click.Path(path_type=Path))
@db_option
@click.option("--size", type=click.IntRange(min=1), default=300, show_default=True,
              help="Chunk size, in --unit.")
@click.option("--overlap", type=click.IntRange(min=0), default=50, show_default=True,
              help="How much neighbouring chunks share, in --unit.")
@click.option("--unit", type=click.Choice(["words", "chars"]), default="words", show_default=True,
              help="What --size and --overlap count: words (roughly tokens) or characters.")
def chunk(docs: tuple[Path, ...], db: Path, size: int, overlap: int, unit: str) -> None:
    """Split DOCS (text / Markdown files, PDF-extracted .txt, or folders of them) into overlapping chunks stored
    with their source, lines and heading path in the SQLite database --db, with a full-text index. A file chunked
    again replaces its chunks when its content or the settings changed."""
    from launcher.datagen import chunk as chunking
    from launcher.datagen import store

    if overlap >= size:
        raise UserError(f"--overlap {overlap}: must be below --size ({size})")
    files = _documents(docs)
    conn = _open(db, must_exist=False)
    settings = {"size": size, "overlap": overlap, "unit": unit}
    changed = unchanged = total = 0
    for f in files:
        data = f.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{f}: not UTF-8 text (byte {e.start}); convert it to UTF-8 text first "
                            "(PDF: `pdftotext`, other encodings: `iconv -t UTF-8`)") from e
        pieces = chunking.split(text, size, overlap, unit)  # type: ignore[arg-type]
        if not pieces:
            click.echo(f"{f}: no text, nothing stored", err=True)
        if store.replace_document(conn, _display(f), store.sha256(data), settings, pieces):
            changed += 1
            total += len(pieces)
            click.echo(f"{_display(f)}: {len(pieces)} chunks")
        else:
            unchanged += 1
    stored = conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
    click.echo(f"{changed} file(s) chunked ({total} chunks), {unchanged} unchanged; {stored} chunks in {db}")


@click.command()
@db_option
@click.argument("query", nargs=-1, required=True)
@click.option("-n", "--limit", type=click.IntRange(min=1), default=10, show_default=True)
def search(db: Path, query: tuple[str, ...], limit: int) -> None:
    """Full-text search of the chunks in --db (every word of QUERY must match); best matches first."""
    from launcher.datagen import store

    hits = store.search(_open(db, must_exist=True), " ".join(query), limit)
    if not hits:
        click.echo("no match", err=True)
    for hit in hits:
        heading = f" [{' > '.join(hit.chunk.headings)}]" if hit.chunk.headings else ""
        click.echo(f"{hit.chunk.source}{heading}: {hit.snippet}")


@click.command()
@db_option
@click.option("--endpoint", required=True, metavar="URL",
              help="An OpenAI-compatible server: http://localhost:11434 (Ollama), https://openrouter.ai/api, ...")
@click.option("--model", required=True, help="The helper model's name on that server.")
@click.option("--out", required=True, metavar="PATH|s3://...", help="Where the JSONL goes (local or s3://).")
@click.option("--format", "fmt", type=click.Choice(["instruction", "messages"]), default="instruction",
              show_default=True, help="The rows' data.format in a job spec.")
@click.option("--per-chunk", type=click.IntRange(min=1, max=50), default=3, show_default=True,
              help="Examples asked for per chunk.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), metavar="R",
              help="At most R requests per second (default: no limit).")
@click.option("--max-retries", type=click.IntRange(min=0), default=5, show_default=True,
              help="Retries per request (429, 5xx, timeouts) and per chunk (answers without usable examples).")
@click.option("--response-format", type=click.Choice(["json_schema", "json_object", "none"]), default="json_schema",
              show_default=True, help="How the answer's JSON shape is asked for: json_schema (OpenAI, vLLM, "
              "Ollama, OpenRouter), json_object with a schema (llama-cpp-python's server), none (the prompt only).")
@click.option("--max-chars", type=click.IntRange(min=1), help="Longest instruction or answer, in characters "
              "(sent in the JSON schema; servers that enforce schemas keep to it).")
@click.option("--max-tokens", type=click.IntRange(min=1), help="The server's max_tokens per answer.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True)
@click.option("--seed", type=int, help="Sampling seed, for servers that take one.")
@click.option("--timeout", type=click.FloatRange(min=1), default=120, show_default=True,
              help="Seconds to wait for one answer before retrying.")
@click.option("--limit", type=click.IntRange(min=1), help="Generate for at most this many chunks in this run.")
@click.option("--api-key-env", default=API_KEY_ENV, show_default=True, metavar="VAR",
              help="The environment variable holding the API key (none needed for local servers).")
def generate(db: Path, endpoint: str, model: str, out: str, fmt: str, per_chunk: int, rate: float | None,
             max_retries: int, response_format: str, max_chars: int | None, max_tokens: int | None,
             temperature: float, seed: int | None, timeout: float, limit: int | None, api_key_env: str) -> None:
    """Ask a helper model for examples grounded in each chunk of --db and write them as JSONL to --out. Chunks
    already done are skipped (re-run to resume or to retry failed ones); every stored example is written."""
    from launcher.datagen import generate as gen
    from launcher.datagen.client import ChatClient, Rejected, Unavailable

    if not endpoint.startswith(("http://", "https://")):
        raise UserError(f"--endpoint {endpoint}: give an http:// or https:// URL")
    api_key = os.environ.get(api_key_env)
    if api_key_env != API_KEY_ENV and not api_key:
        raise UserError(f"--api-key-env {api_key_env}: that environment variable is not set")
    conn = _open(db, must_exist=True)
    if not conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]:
        raise UserError(f"--db {db}: holds no chunks; run `launch data chunk DOCS... --db {db}` first")
    client = ChatClient(endpoint, model, api_key=api_key, rate=rate, max_retries=max_retries, timeout=timeout)
    try:
        summary = gen.run(conn, client, per_chunk=per_chunk, response_format=response_format, max_chars=max_chars,
                          max_tokens=max_tokens, temperature=temperature, seed=seed, limit=limit,
                          progress=lambda line: click.echo(line, err=True))
    except Rejected as e:
        hint = ""
        if e.status in (400, 422) and "response_format" in e.body:
            hint = "; this server may not take --response-format " + response_format + ": try json_object or none"
        elif e.status in (401, 403):
            hint = f"; set the API key in ${api_key_env}"
        elif e.status == 404:
            hint = f"; check --endpoint and that the server has the model {model!r}"
        raise UserError(f"{client.url} refused the request: {e}{hint}") from e
    except Unavailable as e:
        raise UserError(f"the helper model did not answer: {e}; chunks done so far are kept in {db}, "
                        "run the same command again to continue") from e
    try:
        summary.written = gen.write(conn, out, fmt)  # type: ignore[arg-type]
    except ImportError as e:
        raise UserError(f"--out {out}: needs the S3 client; pip install 'kubetune[s3]' ({e})") from e
    except OSError as e:
        raise UserError(f"--out {out}: cannot write it: {e}") from e
    click.echo(f"chunks: {summary.done} done, {summary.skipped} skipped (done before), {len(summary.failed)} failed; "
               f"examples: {summary.examples_new} new, {summary.duplicates} duplicates dropped, "
               f"{summary.invalid} unusable dropped; {summary.written} written to {out} "
               f"({summary.requests} requests, {summary.retries} retried)")
    for chunk_id, reason in summary.failed:
        click.echo(f"  failed chunk {chunk_id}: {reason}", err=True)


COMMANDS = (chunk, search, generate)
