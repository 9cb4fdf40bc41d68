"""A verified GGUF as an MLflow Model: a LoggedModel of the training run with a `python_function` flavor.

The model folder (the LoggedModel's artifacts) holds `MLmodel`, the flavor's code
(trainer/export/gguf_model.py, "models from code": loading needs mlflow and llama-cpp-python, not
kubetune, with trainer/eval/reply.py beside it in `code/`), its requirements, an input example, `artifacts/<name>-<type>.gguf` with its Ollama
`artifacts/Modelfile` as plain files, and `README.md`, the model card. A LoRA GGUF's folder has the LoRA GGUF
instead, its shared base in the model config, and no input example (MLflow would load the model to check it). The LoggedModel is created in
the training run's experiment with that run as its source and the run's params; the run's metrics
at its last training step (final loss, eval loss ...) are linked to it (what `Model.log` does for
the `step` it is given), and the run lists it among its outputs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

from trainer.eval import reply
from trainer.export import gguf_model

EXAMPLE = {"messages": [{"role": "user", "content": "Hello! Who are you?"}]}  # one chat
_TYPES = {int: "long", float: "double", str: "string", bool: "boolean"}


@dataclass(frozen=True)
class Logged:
    model_id: str
    uri: str  # models:/<model_id>


def signature() -> ModelSignature:
    """Chats in (a `messages` column of role/content lists), the answer text out, generation parameters as params."""
    message = Object([Property("role", "string"), Property("content", "string")])
    params = ParamSchema([ParamSpec(k, _TYPES[type(v)], v) for k, v in gguf_model.PARAMS.items()])
    return ModelSignature(inputs=Schema([ColSpec(Array(message), "messages")]),
                          outputs=Schema([ColSpec("string")]), params=params)


def requirements() -> list[str]:
    import llama_cpp

    return [f"mlflow=={mlflow.__version__}", f"llama-cpp-python=={llama_cpp.__version__}"]


def log_gguf(client: MlflowClient, run_id: str, name: str, gguf: Path, modelfile: Path | None, step: int,
             tags: dict[str, str], base: dict[str, str] | None = None) -> Logged:
    """Log `gguf` (and its Modelfile) as a pyfunc LoggedModel of run `run_id`, named `name`. `base` given, `gguf` is
    a LoRA GGUF over that shared base (`base_source`, `base_file`, `base_sha256`: trainer/export/gguf_model.py)."""
    run = client.get_run(run_id)
    model = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                       params=dict(run.data.params), tags=tags, model_type="kubetune-gguf")
    mlflow.set_tracking_uri(client.tracking_uri)  # Model.log and its finalize step use the global URI
    artifacts = {"lora" if base else "gguf": str(gguf)} | ({"modelfile": str(modelfile)} if modelfile is not None else {})
    Model.log(None, mlflow.pyfunc, run_id=run_id, model_id=model.model_id, step=step,
              python_model=gguf_model.__file__, code_paths=[reply.__file__], artifacts=artifacts, signature=signature(),
              input_example=None if base else (EXAMPLE, {"max_tokens": 8}), pip_requirements=requirements(),
              model_config=base)
    return Logged(model.model_id, f"models:/{model.model_id}")


def add_card(client: MlflowClient, model_id: str, card: str) -> None:
    """The model card as `README.md` at the top of the model folder."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "README.md").write_text(card, encoding="utf-8")
        client.log_model_artifacts(model_id, tmp)

