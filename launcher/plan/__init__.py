"""Fit planning: how much GPU memory a job spec's LoRA training needs, and how to make it fit.

`arch` (the model's shape from a config.json, `gguf` headers or the `catalog`), `source` (which of
those a spec uses), `memory` (the estimate, for a `setup`, with the `activations` it saves), `fit` (GPU
types and counts), `ladder` (seed 004's out-of-memory protocol as `--set` overrides, auto-fit), `report`
(what `launch plan` prints) and `gate` (the check `launch submit` runs). Torch-free, like the rest of
the launcher.
"""
