"""Evaluation: task metrics chosen by name (`eval.metrics`), and the runner that generates answers on
held-out conversations and scores them (`trainer.eval.run`).

`metrics` and `mermaid` are light (standard library only): the spec imports the metric names.
The runner imports torch / transformers / llama.cpp, so it is not imported here.
"""

from trainer.eval.metrics import METRICS, Context, Score, score

__all__ = ["METRICS", "Context", "Score", "score"]
