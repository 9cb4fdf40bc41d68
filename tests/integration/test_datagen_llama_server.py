"""`launch data generate` over real HTTP: a real llama.cpp server (llama-cpp-python's `llama_cpp.server`) on
loopback serving a GGUF that kubetune itself exported from a tiny random Qwen2 model, its sampling constrained to
our JSON schema so that even random weights answer schema-valid JSON; and a stub OpenAI-compatible server in this
file (the HTTP boundary) that answers 429 / 500 / garbage on cue, for retries, rate limiting, resumability,
deduplication and `s3://` output (moto)."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from launcher.cli import main
from tests.integration.servers import llama_server as serve_gguf
from tests.integration.servers import moto_s3, s3_env
from tests.models import tiny_model
from trainer.data.formats import to_messages
from trainer.spec.data import DataSpec

pytestmark = pytest.mark.integration

DOC = """# Fractions

A fraction names part of a whole. The numerator is on top, the denominator below.

## Adding

To add fractions, rewrite them over a common denominator, then add the numerators.

# Decimals

A decimal is a fraction whose denominator is a power of ten.
"""
SOURCE = re.compile(r"^math\.md#L(\d+)-L(\d+)$")


def launch(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = CliRunner(env=env).invoke(main, ["data", *args])
    return done.exit_code, done.stdout, done.stderr


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_rows(rows: list[dict], fmt: str) -> None:
    """Every row is a valid training row of the spec's `fmt`, with a source reference into math.md."""
    data = DataSpec(train="x.jsonl", format=fmt)
    lines = DOC.splitlines()
    for row in rows:
        messages = to_messages(row, data)
        assert [m["role"] for m in messages] == ["user", "assistant"]
        start, end = map(int, SOURCE.match(row["source"]).groups())
        assert 1 <= start <= end <= len(lines)


# -- the stub: an OpenAI-compatible server that misbehaves on cue ------------------------------------------------

class Stub:
    def __init__(self) -> None:
        self.faults: list[int] = []  # HTTP statuses to answer first, one per request
        self.requests: list[tuple[float, dict, dict]] = []  # (time, headers, body)
        self.garbage_for: str | None = None  # chunks containing this word get answers without JSON

    def answer(self, body: dict) -> str:
        passage = body["messages"][-1]["content"]
        if self.garbage_for and self.garbage_for in passage:
            return "Sure! Here are some great questions about this topic."
        topic = next(t for t in ("common denominator", "numerator", "decimal") if t in passage)
        examples = [{"instruction": f"What is a {topic}?", "output": f"Read about the {topic} in the passage."},
                    {"instruction": f"what is a  {topic.upper()} ", "output": "A duplicate, by its words."},
                    {"instruction": "", "output": "no instruction: unusable"}]
        if topic == "common denominator":  # the same question as the first chunk's: a duplicate across chunks
            examples.append({"instruction": "What is a numerator!", "output": "The top number."})
        return f"Here you go:\n```json\n{json.dumps({'examples': examples})}\n```\nHope this helps!"


@contextlib.contextmanager
def stub_server() -> Iterator[tuple[str, Stub]]:
    stub = Stub()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            stub.requests.append((time.monotonic(), dict(self.headers), body))
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": f"no route {self.path}"})
            if stub.faults:
                status = stub.faults.pop(0)
                return self._send(status, {"error": "slow down" if status == 429 else "boom"},
                                  {"Retry-After": "0"} if status == 429 else {})
            content = stub.answer(body)
            self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})

        def _send(self, status: int, doc: dict, headers: dict | None = None) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", stub
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def chunked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "math.md").write_text(DOC)
    code, _, err = launch("chunk", "math.md", "--db", "c.sqlite", "--size", "200", "--overlap", "10")
    assert code == 0, err
    return tmp_path


def test_retries_rate_limit_dedup_resume_against_a_stub(chunked: Path) -> None:
    secret = "sk-test-do-not-print-1234"
    with stub_server() as (url, stub):
        stub.faults = [429, 500]
        stub.garbage_for = "power of ten"  # the Decimals chunk: answers without JSON
        args = ["generate", "--db", "c.sqlite", "--endpoint", url + "/v1", "--model", "helper", "--out",
                "train.jsonl", "--per-chunk", "3", "--rate", "5", "--max-retries", "2", "--api-key-env", "MY_KEY"]
        code, out, err = launch(*args, env={"MY_KEY": secret})
        assert code == 0, err
        assert "chunks: 2 done, 0 skipped (done before), 1 failed" in out
        assert "examples: 2 new, 3 duplicates dropped, 2 unusable dropped; 2 written" in out
        assert re.search(r"failed chunk \d+: 3 answer\(s\) without usable examples", err)
        assert secret not in out + err
        assert all(h.get("Authorization") == f"Bearer {secret}" for _, h, _ in stub.requests)
        # 429 and 500 were retried: 2 faults + 2 chunks answered at once... + 3 tries for the garbage chunk
        assert len(stub.requests) == 2 + 2 + 3 and "(7 requests, 2 retried)" in out
        gaps = [b - a for (a, _, _), (b, _, _) in zip(stub.requests, stub.requests[1:], strict=False)]
        # --rate 5: the client starts requests at least 1/5 s apart; the stub stamps them when its handler
        # thread reads them, which a loaded machine delays by tens of milliseconds, hence the margin
        assert min(gaps) >= 0.75 / 5
        body = stub.requests[-1][2]
        assert body["model"] == "helper" and body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["schema"]["properties"]["examples"]["minItems"] == 3
        rows = jsonl(chunked / "train.jsonl")
        check_rows(rows, "instruction")
        assert [r["instruction"] for r in rows] == ["What is a numerator?", "What is a common denominator?"]

        # re-run: the done chunks are skipped, the failed one is asked again (and now answers)
        stub.garbage_for = None
        before = len(stub.requests)
        code, out, err = launch(*args[:-2], "--format", "messages")
        assert code == 0, err
        assert "chunks: 1 done, 2 skipped (done before), 0 failed" in out
        assert len(stub.requests) == before + 1
        rows = jsonl(chunked / "train.jsonl")
        check_rows(rows, "messages")
        assert [r["messages"][0]["content"] for r in rows] == [
            "What is a numerator?", "What is a common denominator?", "What is a decimal?"]

        stub.faults = [503] * 3  # the endpoint stays down: a clear error, the work done so far kept
        (chunked / "more.md").write_text("# Percent\n\nA percent is a fraction of a hundred.\n")
        assert launch("chunk", "more.md", "--db", "c.sqlite")[0] == 0
        code, _, err = launch(*args[:-2], "--max-retries", "2")
        assert code == 2 and "HTTP 503" in err and "run the same command again" in err


def test_refusals_and_bad_flags_are_user_errors(chunked: Path) -> None:
    with stub_server() as (url, _):
        code, _, err = launch("generate", "--db", "c.sqlite", "--endpoint", url + "/api", "--model", "m", "--out", "o")
        assert code == 2 and "HTTP 404" in err and "check --endpoint" in err
    for args, words in ((["--endpoint", "localhost:1"], "http:// or https://"),
                        (["--api-key-env", "NOT_SET_ANYWHERE"], "NOT_SET_ANYWHERE"),
                        (["--db", "none.sqlite"], "launch data chunk")):
        base = {"--db": "c.sqlite", "--endpoint": "http://127.0.0.1:9", "--model": "m", "--out": "o.jsonl"}
        flags = dict(base, **dict(zip(args[::2], args[1::2], strict=True)))
        code, _, err = launch("generate", *[x for kv in flags.items() for x in kv])
        assert code == 2 and words in err, (args, err)


def test_writes_to_s3(chunked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    with moto_s3() as s3_url, stub_server() as (url, _):
        for k, v in s3_env(s3_url).items():
            monkeypatch.setenv(k, v)
        boto3.client("s3").create_bucket(Bucket="data")
        code, out, err = launch("generate", "--db", "c.sqlite", "--endpoint", url, "--model", "m",
                                "--out", "s3://data/gen/train.jsonl", "--per-chunk", "1")
        assert code == 0, err
        assert "3 written to s3://data/gen/train.jsonl" in out
        body = boto3.client("s3").get_object(Bucket="data", Key="gen/train.jsonl")["Body"].read().decode()
        check_rows([json.loads(line) for line in body.splitlines()], "instruction")


# -- the real thing: llama.cpp serving a GGUF kubetune exported ---------------------------------------------------

@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from trainer.export import gguf

    tmp = tmp_path_factory.mktemp("llama-server")
    model = gguf.convert(tiny_model("qwen2"), tmp / "tiny-qwen2-f16.gguf", "f16", tmp / "convert.log").path
    with serve_gguf(model, "tiny-qwen2", tmp / "server.log") as url:
        yield url


@pytest.mark.slow
def test_generate_against_a_real_llama_cpp_server(chunked: Path, llama_server: str) -> None:
    args = ["generate", "--db", "c.sqlite", "--endpoint", llama_server, "--model", "tiny-qwen2", "--out",
            "train.jsonl", "--per-chunk", "2", "--response-format", "json_object", "--max-chars", "16",
            "--max-tokens", "400", "--max-retries", "2", "--seed", "7", "--temperature", "1.0"]
    code, out, err = launch(*args)
    assert code == 0, err
    summary = re.compile(r"chunks: (\d+) done, (\d+) skipped \(done before\), (\d+) failed")
    done, skipped, failed = (int(x) for x in summary.search(out).groups())
    assert skipped == 0
    assert done + failed == 3 and done >= 1, out + err  # schema-constrained: random weights still give JSON
    rows = jsonl(chunked / "train.jsonl")
    assert rows and int(re.search(r"(\d+) written", out).group(1)) == len(rows)
    check_rows(rows, "instruction")
    assert all(len(r["instruction"]) <= 16 and len(r["output"]) <= 16 for r in rows)  # the schema's maxLength held

    code, out, err = launch(*args)  # resumed: nothing done is asked for again, the same rows are written
    assert code == 0, err
    again, skipped, still_failed = (int(x) for x in summary.search(out).groups())
    assert skipped == done and again + still_failed == failed  # only the failed chunks were asked again
    assert {json.dumps(r) for r in rows} <= {json.dumps(r) for r in jsonl(chunked / "train.jsonl")}

    spec = chunked / "spec.yaml"  # the spec that trains on it accepts the data
    spec.write_text(yaml.safe_dump({"name": "from-docs", "base_model": str(tiny_model("qwen2")),
                                    "data": {"train": "train.jsonl", "format": "instruction", "max_seq_len": 256}}))
    code, out, err = launch("validate", str(spec))
    assert code == 0, out + err
    assert f"{spec}: ok" in out
