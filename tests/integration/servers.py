"""Real servers on 127.0.0.1 for integration tests, started and stopped by the tests themselves.

- `moto_s3()`: moto's S3 server (the real S3 HTTP protocol) in a thread; `s3_env(url)` is the
  environment that points boto3 / s3fs / the trainer at it, with dummy credentials.
- `mlflow_server(root)`: a real `mlflow server` process with a sqlite backend under `root`, on a
  free port, returned once its /health answers. It proxies artifacts to `root/artifacts`, or to
  an `s3://` destination on a given (moto) S3 endpoint; it never sees the caller's AWS settings.
- `llama_server(gguf, alias, log)`: llama.cpp's own OpenAI-compatible server (llama-cpp-python's
  `llama_cpp.server`) serving a GGUF, the helper model `launch data generate` talks to.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_env(endpoint: str) -> dict[str, str]:
    """What botocore (boto3, s3fs) reads to talk to the test server instead of AWS."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def wait_http(url: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the server behind {url} exited before it answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1; yields its endpoint URL. s3fs keeps the filesystems it made (keyed by their
    options, not by the endpoint the environment names): they are dropped on the way in and out, so no test writes
    to the server of a test before it, whatever order the tests run in."""
    import s3fs
    from moto.server import ThreadedMotoServer

    s3fs.S3FileSystem.clear_instance_cache()
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/moto-api/", timeout=30)
        # moto keeps buckets in this process across servers: each server starts empty, like a fresh S3
        urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=30)
        yield url
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()


@contextlib.contextmanager
def mlflow_server(root: Path, *, artifacts: str | None = None, s3_endpoint: str | None = None,
                  timeout: float = 180, port: int | None = None, crash: bool = False) -> Iterator[str]:
    """`mlflow server` with a sqlite backend in `root`; yields its URL. `port`: the one of a server stopped
    before, to start it again with the same URL and store (an MLflow outage); default: a free one. `crash`: it
    is killed at the end (SIGKILL), gone at once, instead of shutting down gracefully (which may take seconds).

    Artifacts are proxied to `root/artifacts`, or to `artifacts` = `s3://bucket/prefix` on the S3
    server at `s3_endpoint` (dummy credentials, see `s3_env`). The server's environment drops every
    `AWS_*` / `MLFLOW_S3_*` variable of the caller and gets only what is passed here.
    """
    artifacts = artifacts or str(root / "artifacts")
    if artifacts.startswith("s3://") != (s3_endpoint is not None):
        raise ValueError("an s3:// artifacts destination needs s3_endpoint, and s3_endpoint needs one")
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", artifacts]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_S3_"))}
    if s3_endpoint is not None:
        env |= s3_env(s3_endpoint) | {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    log_path = root / "server.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_http(f"{url}/health", timeout, alive=lambda: proc.poll() is None)
            except (RuntimeError, TimeoutError) as e:
                raise RuntimeError(f"{e}; server log:\n{log_path.read_text()[-3000:]}") from None
            yield url
        finally:
            _stop(proc, grace=0 if crash else 15)


def _stop(proc: subprocess.Popen, grace: float = 15) -> None:
    """Stop the server and the workers it forked (its own process group, started above): SIGTERM, and SIGKILL
    after `grace` seconds (0: at once)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM if grace else signal.SIGKILL)
    try:
        proc.wait(timeout=grace or 5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@contextlib.contextmanager
def llama_server(model: Path, alias: str, log: Path) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server for `model` (a GGUF) as `alias`; yields its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1", "--verbose", "False"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/v1/models", timeout=180, alive=lambda: proc.poll() is None)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{e}; server log:\n{log.read_text()[-3000:]}") from None
        yield url
    finally:
        _stop(proc)
