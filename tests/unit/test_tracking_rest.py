"""The launcher's MLflow REST client against loopback servers: the credentials and TLS settings MLflow's own client
reads (a bearer token, basic auth, a CA bundle, no check, a client certificate), transient failures retried and
others not, and a clear error when the server refuses the credentials."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from launcher import tracking_rest
from launcher.errors import UserError
from launcher.tracking_rest import MlflowRest, TrackingRefused, TrackingUnreachable, progress

EXPERIMENT = {"experiment": {"experiment_id": "7", "name": "exp"}}
RUN = {"info": {"run_id": "r1", "status": "RUNNING"},
       "data": {"metrics": [{"key": "loss", "value": 1.5, "step": 20}]}}
HISTORY = {"metrics": [{"key": "loss", "value": 2.0, "step": 10, "timestamp": 1_000_000},
                       {"key": "loss", "value": 1.5, "step": 20, "timestamp": 1_010_000}]}
ANSWERS = {"experiments/get-by-name": EXPERIMENT, "runs/search": {"runs": [RUN]}, "metrics/get-history": HISTORY}

# (status, body) for one request; None: the MLflow answer of the path
Script = Callable[[str, dict[str, str]], tuple[int, dict[str, Any]]]


class Server:
    """An MLflow-like server on 127.0.0.1 whose answers a test scripts; it records each request's headers."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None):
        self.requests: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                path = self.path.split("/api/2.0/mlflow/", 1)[-1].split("?", 1)[0]
                headers = dict(self.headers.items())
                outer.requests.append((path, headers))
                code, body = script(path, headers)
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.uri = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def mlflow(path: str, _headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    return 200, ANSWERS.get(path, {})


def needs(authorization: str) -> Script:
    def script(path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if headers.get("Authorization") != authorization:
            return 401, {"error_code": "UNAUTHENTICATED", "message": "You are not authenticated."}
        return mlflow(path, headers)
    return script


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MLflow settings or proxies of this machine; a home without ~/.mlflow/credentials; quick backoff."""
    for var in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
                "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tracking_rest, "BACKOFF_FIRST", 0.01)
    monkeypatch.setattr(tracking_rest, "BACKOFF_MOST", 0.05)


def test_bearer_token_reaches_the_server_and_progress_reads_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "s3cret")
    with Server(needs("Bearer s3cret")) as server:
        found = progress(server.uri, "exp", "job-1", max_steps=40, epochs=None)
    assert found is not None and found.run_id == "r1"
    assert found.done == 20 and found.eta_seconds == pytest.approx(20.0)  # 10 steps in 10 s, 20 to go
    assert [p for p, _ in server.requests] == ["experiments/get-by-name", "runs/search", "metrics/get-history"]


def test_basic_auth_from_the_environment_wins_over_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ada")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pa:ss")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "ignored")  # MLflow's order: basic auth first
    basic = "Basic " + base64.b64encode(b"ada:pa:ss").decode()
    with Server(needs(basic)) as server:
        assert MlflowRest(server.uri).find_run("exp", "job-1") == RUN


def test_basic_auth_from_the_mlflow_credentials_file(tmp_path: Path) -> None:
    folder = tmp_path / "home" / ".mlflow"
    folder.mkdir(parents=True)
    (folder / "credentials").write_text("[mlflow]\nmlflow_tracking_username = bo\nmlflow_tracking_password = pw\n")
    with Server(needs("Basic " + base64.b64encode(b"bo:pw").decode())) as server:
        assert MlflowRest(server.uri).find_run("exp", "job-1") == RUN


def test_two_503s_then_an_answer_is_retried() -> None:
    failures = iter(range(2))

    def flaky(path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if next(failures, None) is not None:
            return 503, {"message": "busy"}
        return mlflow(path, headers)

    with Server(flaky) as server:
        assert MlflowRest(server.uri).find_run("exp", "job-1") == RUN
    assert [p for p, _ in server.requests] == ["experiments/get-by-name"] * 3 + ["runs/search"]


def test_a_server_that_stays_unavailable_gives_up_within_the_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking_rest, "RETRY_SECONDS", 0.5)
    with Server(lambda *_: (503, {"message": "down"})) as server:
        start = time.monotonic()
        with pytest.raises(TrackingUnreachable, match=r"answered 503 .* tries\)") as caught:
            MlflowRest(server.uri).find_run("exp", "job-1")
        assert time.monotonic() - start < 2.0
    assert not isinstance(caught.value, UserError)
    assert 3 <= len(server.requests) <= 20  # backoff 0.01 s doubling to 0.05 s, for half a second


def test_a_refused_connection_is_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking_rest, "RETRY_SECONDS", 0.3)
    with Server(mlflow) as server:
        uri = server.uri
    with pytest.raises(TrackingUnreachable, match=r"unreachable from here .*refused.*tries\)"):
        MlflowRest(uri).find_run("exp", "job-1")


@pytest.mark.parametrize(("code", "said"), [(401, "401 Unauthorized"), (403, "403 Forbidden")])
def test_refused_credentials_are_a_clear_user_error_and_not_retried(
        monkeypatch: pytest.MonkeyPatch, code: int, said: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "wrong")
    with Server(lambda *_: (code, {"error_code": "PERMISSION_DENIED"})) as server, \
            pytest.raises(TrackingRefused) as caught:
        MlflowRest(server.uri).find_run("exp", "job-1")
    assert len(server.requests) == 1
    message = caught.value.message
    assert said in message and "MLFLOW_TRACKING_TOKEN" in message and "MLFLOW_TRACKING_USERNAME" in message
    assert isinstance(caught.value, UserError) and caught.value.exit_code == 2
    assert isinstance(caught.value, TrackingUnreachable)  # `launch submit --wait` keeps following the job


def test_other_client_errors_are_not_retried() -> None:
    with Server(lambda *_: (400, {"error_code": "INVALID_PARAMETER_VALUE"})) as server, \
            pytest.raises(TrackingUnreachable, match="answered 400"):
        MlflowRest(server.uri).find_run("exp", "job-1")
    assert len(server.requests) == 1


def test_a_missing_experiment_is_no_run_not_an_error() -> None:
    with Server(lambda *_: (404, {"error_code": "RESOURCE_DOES_NOT_EXIST"})) as server:
        assert MlflowRest(server.uri).find_run("exp", "job-1") is None
    assert len(server.requests) == 1


# --- TLS -------------------------------------------------------------------------------------------------


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate, key) PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def https(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    cert, key = self_signed(tmp_path, "server")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with Server(mlflow, context) as server:
        yield server, cert


def test_https_verified_with_the_server_cert_path(https: tuple[Server, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    server, cert = https
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
    assert MlflowRest(server.uri).find_run("exp", "job-1") == RUN


def test_https_with_an_untrusted_certificate_is_refused_with_the_fix(https: tuple[Server, Path]) -> None:
    server, _ = https
    with pytest.raises(TrackingRefused, match="MLFLOW_TRACKING_SERVER_CERT_PATH.*MLFLOW_TRACKING_INSECURE_TLS=true"):
        MlflowRest(server.uri).find_run("exp", "job-1")
    assert server.requests == []  # the handshake failed: no request was read, none retried


def test_https_accepted_without_a_check_when_insecure(https: tuple[Server, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    server, _ = https
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    assert MlflowRest(server.uri).find_run("exp", "job-1") == RUN


def test_insecure_and_a_cert_path_together_are_refused(https: tuple[Server, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    server, cert = https
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
    with pytest.raises(TrackingRefused, match="both set"):
        MlflowRest(server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "yes")
    with pytest.raises(TrackingRefused, match="MLFLOW_TRACKING_INSECURE_TLS='yes'"):
        MlflowRest(server.uri)


def test_client_certificate_from_client_cert_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server_cert, server_key = self_signed(tmp_path, "server")
    client_cert, client_key = self_signed(tmp_path, "client")
    bundle = tmp_path / "client.pem"  # one file with the certificate and its key, as `requests` takes it
    bundle.write_bytes(client_cert.read_bytes() + client_key.read_bytes())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cert, server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(client_cert)
    monkeypatch.setattr(tracking_rest, "RETRY_SECONDS", 0.3)  # a reset handshake is retried: not for long
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(server_cert))
    with Server(mlflow, context) as server:
        with pytest.raises(TrackingUnreachable):  # no client certificate: the server ends the handshake
            MlflowRest(server.uri).find_run("exp", "job-1")
        monkeypatch.setenv("MLFLOW_TRACKING_CLIENT_CERT_PATH", str(bundle))
        assert MlflowRest(server.uri).find_run("exp", "job-1") == RUN
