"""The fake API server's HTTP side: Status replies, label selectors, merge patches, chunked log streams, and
the faults a test injects (an HTTP error status, a connection reset)."""

from __future__ import annotations

import copy
import json
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Reply(Exception):
    """An HTTP answer other than success: carries the Status object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        self.code = code
        self.status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "details": details or {}, "code": code}


@dataclass
class Fault:
    """One request to fail: `method` on `plural` is answered `answer`, an HTTP status (a Status object; with a
    `Retry-After` header when `retry_after` is set), `reset` (the connection dropped before the request is
    handled) or `reset-after` (handled, then the connection dropped without an answer)."""

    method: str
    plural: str
    answer: int | str
    retry_after: int | None = None

    def reply(self) -> Reply:
        assert isinstance(self.answer, int), self.answer
        reasons = {429: "TooManyRequests", 500: "InternalError", 502: "BadGateway", 503: "ServiceUnavailable",
                   504: "Timeout"}
        return Reply(self.answer, reasons.get(self.answer, "InternalError"), f"injected fault: {self.answer}",
                     {"retryAfterSeconds": self.retry_after} if self.retry_after is not None else None)


def matches(labels: dict[str, str], selector: str) -> bool:
    """Equality (`a=b`, `a!=b`), set (`a in (x,y)`, `a notin (x)`) and existence (`a`, `!a`) requirements."""
    for req in _split(selector):
        req = req.strip()
        if " in " in req or " notin " in req:
            key, op, rest = req.split(None, 2)
            values = {v.strip() for v in rest.strip("() ").split(",")}
            if (labels.get(key) in values) != (op == "in"):
                return False
        elif "!=" in req:
            key, value = req.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in req:
            key, value = req.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif req.startswith("!"):
            if req[1:] in labels:
                return False
        elif req and req not in labels:
            return False
    return True


# The fields each resource can be selected by (the API server's ToSelectableFields); every kind has metadata.*
FIELDS = {
    "events": {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
               "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
               "reportingComponent", "source", "type"},
    "pods": {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
             "status.phase", "status.podIP", "status.nominatedNodeName"},
}


def _field(obj: dict[str, Any], path: str) -> str:
    if path == "source":  # an Event's `source` selects on source.component
        path = "source.component"
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def fields_match(obj: dict[str, Any], plural: str, selector: str) -> bool:
    """A field selector (`a=b`, `a==b`, `a!=b`, comma-separated), as the API server reads it; a field the resource
    cannot be selected by is a Reply 400 (`field label not supported`)."""
    for req in (r.strip() for r in selector.split(",") if r.strip()):
        negate = "!=" in req
        key, _, value = req.replace("!=", "=").replace("==", "=").partition("=")
        if key not in FIELDS.get(plural, set()) | {"metadata.name", "metadata.namespace"}:
            raise Reply(400, "BadRequest", f"field label not supported: {key}")
        if (_field(obj, key) == value) == negate:
            return False
    return True


def _split(selector: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur] if cur else parts


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also what a strategic merge patch does to maps and scalars)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: Any  # the FakeKube this server answers for

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers: dict[str, str] = {}
        try:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                raise Reply(400, "BadRequest", "the request body is not JSON") from None
            fault = self.fake.fault(self.command, url.path, query, body)
            if fault is not None and fault.answer == "reset":
                return self._reset()
            if fault is not None and fault.answer != "reset-after":
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                raise fault.reply()
            code, answer = self.fake.handle(self.command, url.path, query, self.headers, body)
            if fault is not None:  # reset-after: done, but the answer never reaches the client
                return self._reset()
        except Reply as r:
            code, answer = r.code, r.status
        if isinstance(answer, Iterator):
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in answer:
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if isinstance(answer, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _reset(self) -> None:
        """Drop the connection without an answer, with a TCP reset (as a crashing server or proxy does)."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve
