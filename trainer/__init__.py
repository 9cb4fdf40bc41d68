"""The trainer: the torch-free contract (`spec/`) that the launcher and every pod import, and the pod runtime
in rooms by concern: `data/`, `model/`, `train/`, `tracking/`, `eval/`, `export/`, `preflight/`, `storage`.
The runtime never imports `launcher`; `spec/` imports nothing heavy (pyproject.toml's import-linter contracts)."""
