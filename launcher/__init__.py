"""The `launch` CLI and what it does: validate, plan, render and submit a job spec, follow it on a cluster
(`backends/`, `plan/`, `datagen/`, `cli/`). Light: it imports the spec contract (trainer.spec) but never torch,
transformers or peft (pyproject.toml's import-linter contracts)."""
