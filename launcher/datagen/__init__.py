"""Training data from documents: `launch data chunk` (documents -> chunks in SQLite with an FTS5 index),
`launch data search` and `launch data generate` (chunks -> examples from a helper model behind an
OpenAI-compatible endpoint -> JSONL). Standard library only (sqlite3, urllib), plus fsspec for `s3://` output.
"""
