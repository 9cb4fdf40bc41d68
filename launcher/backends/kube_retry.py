"""Retrying Kubernetes API calls that failed for a passing reason, and how long to wait in between.

Passing: HTTP 429 (Too Many Requests: its Retry-After is honoured), 500, 502, 503 and 504, and a connection
that timed out or was reset. A call is tried up to ATTEMPTS times, waiting KUBETUNE_K8S_BACKOFF seconds
(BACKOFF by default; tests make it short) before the second try and twice as long before each next one,
each wait shortened by a random jitter of up to half, and at most BUDGET seconds of waiting in all.

Reads, lists, deletes and patches are retried on every passing failure: doing one twice does no harm. A
create is sent again at once only when the failure proves that the server did not process it (429 and 503,
refused before processing, or a connection that could not be made); after one that may have been
processed (500, 502, 504, a connection reset or a read timed out once the request was sent), the caller
looks first (launcher/backends/kubernetes.py: a GET, the object ours if it has the labels and owners sent).
An unreachable server (connection refused, an unknown host) is said at once, as before.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from launcher import env
from launcher.backends.kube_errors import ApiError
from launcher.errors import UserError

ATTEMPTS = 5
BACKOFF = 2.0  # seconds before the second try; doubled before each next one (jitter: 50-100% of it)
BUDGET = 30.0  # seconds of waiting in all, Retry-After included
RETRIED = frozenset({429, 500, 502, 503, 504})
NOT_PROCESSED = frozenset({429, 503})  # the API server (or its load balancer) refused the request before acting on it

T = TypeVar("T")


class Passing(Exception):
    """A try that failed for a passing reason: `error` is what the user sees if no try succeeds."""

    def __init__(self, error: UserError, processed: bool, retry_after: float | None = None):
        super().__init__(error.message)
        self.error = error
        self.processed = processed  # the server may have acted on the request (a create may have been made)
        self.retry_after = retry_after  # seconds the server asked to wait (Retry-After)


def urllib3_retries() -> Any:
    """What urllib3 itself retries under this module (the client's `Configuration.retries`): as by default, a
    connection to make and an idempotent request whose connection broke, at once, 3 times; but never an HTTP
    status, not even with a Retry-After (its default for 429 and 503 on a GET): those are retried here."""
    from urllib3.util.retry import Retry

    return Retry(3, respect_retry_after_header=False)


def backoff_seconds() -> float:
    return env.seconds("KUBETUNE_K8S_BACKOFF", BACKOFF, "seconds before retrying a Kubernetes API call that failed "
                       "for a passing reason", zero_ok=True)


def retry_after(headers: Any) -> float | None:
    """The seconds of a `Retry-After: N` header (None when absent, or an HTTP date)."""
    value = (headers or {}).get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def http_failure(status: int, error: UserError, headers: Any) -> UserError | Passing:
    """An HTTP error answer as a Passing failure (a status worth retrying) or as the error it is."""
    if status not in RETRIED:
        return error
    return Passing(error, processed=status not in NOT_PROCESSED, retry_after=retry_after(headers))


def connection_failure(e: Exception, error: UserError) -> UserError | Passing:
    """A connection failure (urllib3's, or the socket's) as a Passing failure (timed out, reset) or as the error
    it is (refused, an unknown host: nothing listens there)."""
    import urllib3

    errors = urllib3.exceptions
    cause = e.reason if isinstance(e, errors.MaxRetryError) and e.reason is not None else e
    if isinstance(cause, errors.NewConnectionError):  # a subclass of ConnectTimeoutError, but refused
        return error
    if isinstance(cause, errors.ConnectTimeoutError):
        return Passing(error, processed=False)  # no connection: nothing was sent
    if isinstance(cause, (errors.ReadTimeoutError, errors.ProtocolError, ConnectionResetError, TimeoutError)):
        return Passing(error, processed=True)  # sent, no answer: it may have been acted on
    return error


def retried(attempt: Callable[[], T], looked: Callable[[Passing], T | None] | None = None) -> T:
    """`attempt()` until it returns, raises a UserError, or the tries and BUDGET are spent (a UserError that
    names the call and says how long it was tried). `looked`, for a create: after a failure the server may have
    acted on, what a look at the cluster finds (the object, made by that try), or None to try again."""
    base, tries, waited = backoff_seconds(), 1, 0.0
    while True:
        try:
            return attempt()
        except Passing as p:
            if p.processed and looked is not None and (found := looked(p)) is not None:
                return found
            wait = base * 2 ** (tries - 1) * random.uniform(0.5, 1.0)
            if p.retry_after is not None:
                wait = max(wait, p.retry_after)
            if tries >= ATTEMPTS or waited + wait > BUDGET:
                raise _gave_up(p, tries, waited) from None
            time.sleep(wait)
            waited += wait
            tries += 1


def _gave_up(p: Passing, tries: int, waited: float) -> UserError:
    error = p.error
    asked = f"; the server asked to wait {p.retry_after:g} s more" if (p.retry_after or 0) > BUDGET - waited else ""
    note = f" (tried {tries} time{'s' if tries != 1 else ''} in {waited:.1f} s{asked})"
    if isinstance(error, ApiError):
        return ApiError(error.code, error.message + note)
    return UserError(error.message + note, error.problems)
