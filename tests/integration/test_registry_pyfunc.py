"""A registered GGUF is an MLflow Model: a quickstart-style export (q8_0, Ollama Modelfile, alias `candidate`)
into a real `mlflow server` (artifacts proxied into moto S3), then a consumer's ways in:
`mlflow.pyfunc.load_model("models:/NAME@candidate").predict(...)`, `mlflow models serve` on loopback
answering POST /invocations, and the model folder's plain GGUF — each answer compared with llama.cpp's own
on the same file. The version's LoggedModel links the training run's params and last-step metrics, and its
description is the model card (also README.md in the folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.integration.servers import _stop, free_port, wait_http
from tests.integration.test_export_pipeline import prepare, run_export, servers  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PARAMS = {"max_tokens": 12, "temperature": 0.0}


def training_summary(s3: str, mlflow: str, spec: Path, run_id: str) -> dict:
    """What a finished training run leaves beside the adapter: its params and metrics, `samples.json`, a full `_SUCCESS`."""
    import s3fs
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    name = yaml.safe_load(spec.read_text())["name"]
    client = MlflowClient(mlflow)
    client.log_batch(run_id, params=[Param("training.learning_rate", "0.001")], metrics=[
        Metric("loss", 2.5, 0, 10), Metric("loss", 0.75, 0, 20), Metric("eval_loss", 0.875, 0, 20)])
    marker = {"job_name": name, "run_id": run_id, "tracking_uri": mlflow, "spec_hash": "test", "steps": 20,
              "final_loss": 0.75, "train_loss": 1.5, "tokens_trained": 4321}
    samples = {"prompt": ["Say hi"], "reference": ["hi"], "before": ["no"], "after": ["hi there"]}
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3}, key="testing", secret="testing")
    fs.pipe(f"runs/{name}/samples.json", json.dumps(samples).encode())
    fs.pipe(f"runs/{name}/_SUCCESS", json.dumps(marker).encode())
    return marker


def chat_from_training(spec: Path) -> list[dict]:
    """A prompt the adapter was trained on (tiny random models answer those with text, not at once EOS)."""
    data = Path(yaml.safe_load(spec.read_text())["data"]["train"])
    conv = json.loads(data.read_text().splitlines()[0])["messages"]
    return conv[: max(i for i, m in enumerate(conv) if m["role"] == "user") + 1]


def llama_cpp_answer(gguf: Path, chat: list[dict]) -> str:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=4096, verbose=False)
    try:
        out = llm.create_chat_completion(messages=chat, max_tokens=PARAMS["max_tokens"], temperature=0.0, seed=0,
                                         top_p=1.0, top_k=40)
    finally:
        llm.close()
    return (out["choices"][0]["message"]["content"] or "").strip()


def serve(uri: str, mlflow: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
           "-p", str(port), "-h", "127.0.0.1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=os.environ | {"MLFLOW_TRACKING_URI": mlflow})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", timeout=300, alive=lambda: proc.poll() is None)
    except (RuntimeError, TimeoutError) as e:
        _stop(proc)
        raise AssertionError(f"{e}; log:\n{log.read_text()[-4000:]}") from None
    return proc, url


def invoke(url: str, chat: list[dict]) -> dict:
    body = json.dumps({"inputs": {"messages": chat}, "params": PARAMS}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as r:
        return json.loads(r.read())


def test_registered_gguf_loads_serves_and_carries_its_card(servers, tmp_path):  # noqa: F811 - the fixture
    import mlflow
    from mlflow import MlflowClient

    s3, tracking = servers
    export = {"gguf": ["q8_0"], "ollama": True, "verify": {"golden_conversations": 2},
              "register": {"name": "reg-pyfunc", "alias": "candidate"}}
    spec, run_id = prepare("llama", tmp_path, s3, tracking, export, eval={"num_samples": 1})
    training_summary(s3, tracking, spec, run_id)
    done = run_export(spec, s3)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "mlflow models serve -m models:/reg-pyfunc@candidate" in done.stdout

    client = MlflowClient(tracking)
    mv = client.get_model_version_by_alias("reg-pyfunc", "candidate")
    assert mv.tags["kubetune.kind"] == "q8_0" and mv.run_id == run_id and mv.tags["kubetune.run_id"] == run_id
    assert mv.source.startswith("models:/m-")  # a LoggedModel
    logged = client.get_logged_model(mv.source.removeprefix("models:/"))
    assert logged.source_run_id == run_id and logged.params["training.learning_rate"] == "0.001"
    assert {(m.key, m.value, m.step) for m in logged.metrics} == {("loss", 0.75, 20), ("eval_loss", 0.875, 20)}
    card = mv.description
    assert card.startswith(f"# reg-pyfunc · version {mv.version} · q8_0")
    for line in ("| spec hash | `test` |", "| train | 4 |", "| 20 | 4,321 | 0.7500 | 1.5000 | 0.8750 |",
                 "| q8_0 (this version) |", "| Say hi | hi | no | hi there |"):
        assert line in card, line

    mlflow.set_tracking_uri(tracking)  # models:/ URIs resolve through the global registry URI
    folder = Path(mlflow.artifacts.download_artifacts("models:/reg-pyfunc@candidate", dst_path=str(tmp_path / "m")))
    name = yaml.safe_load(spec.read_text())["name"]
    gguf = folder / "artifacts" / f"{name}-q8_0.gguf"
    assert hashlib.sha256(gguf.read_bytes()).hexdigest() == mv.tags["kubetune.sha256"]
    assert (folder / "artifacts" / "Modelfile").read_text().startswith(f"FROM ./{gguf.name}\n")
    assert (folder / "README.md").read_text() == card and (folder / "MLmodel").is_file()

    chat = chat_from_training(spec)
    want = llama_cpp_answer(gguf, chat)
    assert want, "llama.cpp gives an empty answer: no comparison possible"
    model = mlflow.pyfunc.load_model("models:/reg-pyfunc@candidate")
    assert list(model.predict({"messages": chat}, params=PARAMS)) == [want]

    proc, url = serve("models:/reg-pyfunc@candidate", tracking, tmp_path / "serve.log")
    try:
        assert invoke(url, chat) == {"predictions": [want]}
    finally:
        _stop(proc)
    assert proc.poll() is not None
