"""Finds the Markdown notes under the source folder."""

from pathlib import Path

from tinywiki.config import Config


def find_notes(config: Config) -> list[Path]:
    return sorted(p for p in config.source.rglob("*.md") if not is_hidden(p))


def is_hidden(path: Path) -> bool:
    return any(part.startswith(".") for part in path.parts)
