"""Kubernetes API failures as one line the user can act on (a UserError: exit 2, no traceback).

Every message names the object (`namespace/name`, or the namespace for a list) and the cause,
read from the `Status` object the API server returns: 403 says which verb on which resource is
missing, 422 lists the invalid fields, an unreachable server names its URL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from launcher.errors import UserError


@dataclass(frozen=True)
class Call:
    """What was being done, for the message: `create` `jobs.batch` `ml/support-bot-x1y2z`."""

    verb: str
    resource: str  # plural[.group], as RBAC and kubectl name it
    namespace: str
    name: str | None = None
    server: str = ""
    context: str = ""

    @property
    def target(self) -> str:
        return f"{self.namespace}/{self.name}" if self.name else f"namespace {self.namespace}"


class ApiError(UserError):
    """A UserError that remembers the HTTP status, for callers that treat 404 or 409 as an answer."""

    def __init__(self, code: int, message: str):
        self.code = code
        super().__init__(message)


def status_of(body: Any) -> dict[str, Any]:
    """The API server's `Status` object from an error body ({} when it sent something else)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    try:
        status = json.loads(body or "")
    except ValueError:
        return {}
    return status if isinstance(status, dict) and status.get("kind") == "Status" else {}


def api_error(code: int, reason: str, body: Any, call: Call) -> ApiError:
    return ApiError(code, _message(code, reason or "", status_of(body), call))


def _message(code: int, reason: str, status: dict[str, Any], call: Call) -> str:
    said = status.get("message") or reason or "no message"
    what = f"{call.resource} {call.target}"
    if code == 401:
        return (
            f"{call.server} (context {call.context}) rejected your credentials (401 Unauthorized): log in again, "
            "e.g. refresh the kubeconfig with `aws eks update-kubeconfig` or `gcloud container clusters get-credentials`"
        )
    if code == 403:
        return (
            f"{call.target}: forbidden: you may not {call.verb} {call.resource} in namespace {call.namespace}; "
            f"ask your cluster admin for a Role granting `{call.verb}` on `{call.resource}` (the server said: {said})"
        )
    if code == 404:
        return f"{what}: not found ({said})"
    if code == 409:
        return f"{what}: already exists ({said})"
    if code == 422:
        causes = (status.get("details") or {}).get("causes") or []
        fields = "; ".join(f"{c.get('field', '?')}: {c.get('message', '')}" for c in causes)
        return f"{what} is invalid: {fields or said}"
    return f"{what}: {call.verb} failed with {code} {reason}: {said}"


def connection_error(e: Exception, call: Call) -> UserError:
    text = str(getattr(e, "reason", None) or e)
    if "refused" in text.lower():
        text = "connection refused"
    return UserError(
        f"cannot reach the Kubernetes API server {call.server} (context {call.context}) to {call.verb} "
        f"{call.resource} in {call.target}: {text}; is the cluster running and your kubeconfig current?"
    )


def body_error(e: Any, call: Call) -> UserError:
    """The kubernetes client refusing a body before sending it (its models forbid unknown fields)."""
    problems = [f"{'.'.join(str(p) for p in err['loc'][1:]) or '(body)'}: {err['msg']}" for err in e.errors()]
    return UserError(
        f"{call.resource} {call.target}: the rendered object is not valid for the Kubernetes API "
        "(a chart or values-file mistake)",
        problems,
    )
