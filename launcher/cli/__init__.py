"""The `launch` CLI, one module per command group: `app` (validate, render, submit: the `main` group),
`cluster` (list, status, logs, cancel), `plan`, `data`, `datagen`. A thin layer over launcher.client;
never imports torch, transformers or peft (pyproject.toml's import-linter contracts)."""

from launcher.cli.app import main

__all__ = ["main"]
