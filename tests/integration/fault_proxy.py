"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an S3 server (moto), for tests.

Clients (boto3, s3fs) point their endpoint at `FaultProxy.url`; every request is forwarded to
the upstream server unless a fault rule takes it:

- `slowdown_every=n`: every n-th request is answered `503 SlowDown`, as S3 throttles;
- `cut`: one GET whose path contains this string (the first after `cut_after` such GETs) gets its
  headers and half of its body, then the connection is closed (a connection dropped mid-body);
- `drop`: the first request whose path contains this string is read, forwarded, and its
  connection closed without an answer (a connection dropped while the client waits);
- `stall`: the first request whose path contains this string is answered only after
  `stall_seconds` (longer than the client's read timeout);
- `deny`: requests whose path contains one of these strings (and whose method is in
  `deny_methods`) are answered `403 AccessDenied`.

`log` holds (method, path, what happened) for every request, so tests can tell that a fault
was injected, and how many times a client asked again.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def s3_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            "<RequestId>fault-proxy</RequestId></Error>").encode()


class FaultProxy:
    def __init__(self, upstream: str, *, slowdown_every: int = 0, cut: str | None = None, cut_after: int = 0,
                 drop: str | None = None, stall: str | None = None, stall_seconds: float = 5.0,
                 deny: tuple[str, ...] = (),
                 deny_methods: tuple[str, ...] = ("GET",)):
        self.upstream = urlsplit(upstream)
        self.slowdown_every = slowdown_every
        self.cut, self.cut_after, self.drop = cut, cut_after, drop
        self.stall, self.stall_seconds = stall, stall_seconds
        self.deny, self.deny_methods = deny, deny_methods
        self.log: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._count = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def faults(self, kind: str) -> int:
        return sum(1 for _, _, what in self.log if what == kind)

    def requests(self, method: str, fragment: str) -> int:
        return sum(1 for m, p, _ in self.log if m == method and fragment in p)

    def _decide(self, method: str, path: str) -> str:
        """Which fault (or `forward`) this request gets; one decision at a time."""
        with self._lock:
            self._count += 1
            if any(d in path for d in self.deny) and method in self.deny_methods:
                what = "denied"
            elif self.stall and self.stall in path:
                what, self.stall = "stalled", None
            elif self.drop and self.drop in path:
                what, self.drop = "dropped", None
            elif self.slowdown_every and self._count % self.slowdown_every == 0:
                what = "slowdown"
            elif self.cut and method == "GET" and self.cut in path and self.cut_after:
                what, self.cut_after = "forward", self.cut_after - 1
            elif self.cut and method == "GET" and self.cut in path:
                what, self.cut = "cut", None
            else:
                what = "forward"
            self.log.append((method, path, what))
            return what

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for key, value in headers.items():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    conn.putheader(key, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP], data
        finally:
            conn.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while size := int(self.rfile.readline().strip().split(b";")[0], 16):
                        out += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return out
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response_only(status)
                for key, value in headers:
                    if key.lower() != "content-length" or self.command == "HEAD":  # HEAD: the object's length
                        self.send_header(key, value)
                if self.command != "HEAD" or not any(k.lower() == "content-length" for k, _ in headers):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                what = proxy._decide(self.command, self.path)
                if what == "denied":
                    return self._reply(403, [("Content-Type", "application/xml")], s3_error("AccessDenied", "Access Denied"))
                if what == "slowdown":
                    return self._reply(503, [("Content-Type", "application/xml")],
                                       s3_error("SlowDown", "Please reduce your request rate."))
                if what == "stalled":
                    time.sleep(proxy.stall_seconds)  # the client gave up meanwhile; it asks again elsewhere
                try:
                    status, headers, data = proxy._forward(self.command, self.path, dict(self.headers.items()), body)
                except OSError:  # the upstream server is gone (a stalled request outlived the test)
                    self.close_connection = True
                    return None
                if what == "dropped":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return None
                if what == "cut" and len(data) > 1:
                    self.send_response_only(status)
                    for key, value in headers:
                        if key.lower() != "content-length":
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return None
                try:
                    self._reply(status, headers, data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                return None

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        return Handler

    @contextmanager
    def running(self) -> Iterator[FaultProxy]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
