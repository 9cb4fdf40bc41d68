"""tinywiki: Markdown notes in, a linked HTML wiki out."""

__version__ = "0.1.0"
