"""A small client for any OpenAI-compatible chat endpoint (Ollama, vLLM, llama.cpp server, OpenRouter, ...),
on the standard library's urllib.

`POST {endpoint}/v1/chat/completions`. Answers 429 and 5xx, timeouts and refused or dropped connections are
retried with exponential backoff and jitter (a `Retry-After` header in seconds wins), up to `max_retries` times;
then `Unavailable`. Other 4xx answers (bad model name, bad key, a request the server does not understand) are
the caller's to fix: `Rejected`, at once. Requests are spaced to at most `rate` per second. The API key, when
there is one, is sent as `Authorization: Bearer ...` and never printed.
"""

from __future__ import annotations

import http.client
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

RETRIED_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_BACKOFF = 60.0


class Unavailable(Exception):
    """The endpoint kept failing (429 / 5xx / timeouts / connection errors) through every retry."""


class Rejected(Exception):
    """The endpoint refused the request (a 4xx other than 429): retrying will not help."""

    def __init__(self, status: int, body: str):
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {body}")


def chat_url(endpoint: str) -> str:
    """`http://host:11434`, `.../v1` or `.../v1/chat/completions` -> the chat completions URL."""
    base = endpoint.rstrip("/")
    for suffix in ("/chat/completions", "/v1"):
        base = base.removesuffix(suffix)
    return f"{base}/v1/chat/completions"


class RateLimit:
    """At most `rate` calls per second (None: no limit), by spacing calls 1/rate apart."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.interval = 1.0 / rate if rate else 0.0
        self.clock, self.sleep = clock, sleep
        self.next_at = 0.0

    def wait(self) -> None:
        now = self.clock()
        if now < self.next_at:
            self.sleep(self.next_at - now)
            now = self.next_at
        self.next_at = now + self.interval


class ChatClient:
    def __init__(self, endpoint: str, model: str, *, api_key: str | None = None, rate: float | None = None,
                 max_retries: int = 5, timeout: float = 120.0, backoff: float = 1.0):
        self.url = chat_url(endpoint)
        self.model = model
        self.api_key = api_key
        self.limit = RateLimit(rate)
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self.requests = 0  # HTTP requests sent, retries included
        self.retries = 0

    def complete(self, messages: list[dict[str, str]], **params: Any) -> str:
        """The first choice's message content."""
        body = json.dumps({"model": self.model, "messages": messages, **params}).encode()
        answer = self._post(body)
        try:
            return answer["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise Rejected(200, f"not a chat completion answer: {json.dumps(answer)[:300]}") from e

    def _post(self, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
            self.limit.wait()
            self.requests += 1
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            retry_after: float | None = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                text = e.read().decode("utf-8", "replace")[:500]
                if e.code not in RETRIED_STATUS:
                    raise Rejected(e.code, text) from e
                last = f"HTTP {e.code}: {text}"
                retry_after = _seconds(e.headers.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
                last = str(getattr(e, "reason", None) or e) or type(e).__name__
            except json.JSONDecodeError as e:
                last = f"the answer is not JSON ({e})"
            if attempt < self.max_retries:
                time.sleep(retry_after if retry_after is not None else self._delay(attempt))
        raise Unavailable(f"{self.url}: {last} (after {self.max_retries} retries)")

    def _delay(self, attempt: int) -> float:
        return min(MAX_BACKOFF, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)


def _seconds(value: str | None) -> float | None:
    try:
        return min(MAX_BACKOFF, max(0.0, float(value))) if value else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None
