"""Starting the export Job once training has succeeded: one PATCH to the Kubernetes API by rank 0.

The chart renders the export Job suspended (charts/kubetune/templates/export-job.yaml) and names it
in `KUBETUNE_EXPORT_JOB`; right after `_SUCCESS` is written, rank 0 sends it a JSON merge patch:

- `spec.suspend: false`, so its pod starts now, whenever that is (training may have queued for days);
- with a Kueue queue (`KUBETUNE_EXPORT_QUEUE`), the queue label instead: Kueue then admits it
  within the queue's quota and un-suspends it itself;
- `metadata.ownerReferences: null`: `launch` made it a dependent of the training Job while it
  waited, so that a training that never succeeds takes it along; from now on the training Job's
  TTL cannot delete it (the export Job has its own).

Plain HTTPS with the ServiceAccount token, CA and namespace of the projected volume the chart mounts
in the trainer container (its Role allows get and patch on that one Job): no Kubernetes client.
Without `KUBETUNE_EXPORT_JOB` (no export; the local runner, which starts the export itself) it does
nothing. It never fails training: on an error it logs one line with the `kubectl patch` that starts
the export by hand.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

TOKEN_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
ATTEMPTS = 4  # with a pause of 2, 4, 8 s between them: a restarting API server, a network hiccup
TIMEOUT = 30.0


def patch_for(queue: str | None) -> dict[str, Any]:
    """The merge patch that starts the export Job (or hands it to Kueue's queue)."""
    if queue:
        return {"metadata": {"ownerReferences": None, "labels": {QUEUE_LABEL: queue}}}
    return {"metadata": {"ownerReferences": None}, "spec": {"suspend": False}}


def manual_command(job: str, namespace: str, patch: dict[str, Any]) -> str:
    body = json.dumps(patch, separators=(",", ":"))
    return f"kubectl patch job {job} -n {namespace} --type merge -p '{body}'"


def api_server(env: Mapping[str, str]) -> str:
    host = env.get("KUBERNETES_SERVICE_HOST", "")
    if not host:
        raise RuntimeError("KUBERNETES_SERVICE_HOST is not set (not in a pod?)")
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}:{env.get('KUBERNETES_SERVICE_PORT', '443')}"


def _send(url: str, token: str, body: bytes, context: ssl.SSLContext | None) -> None:
    request = urllib.request.Request(url, data=body, method="PATCH", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json",
        "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as resp:
        resp.read()


def failure_reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        try:
            message = json.loads(e.read() or b"{}").get("message", "")
        except (ValueError, OSError, AttributeError):
            message = ""
        return f"HTTP {e.code} {e.reason}" + (f": {message}" if message else "")
    if isinstance(e, urllib.error.URLError):
        return f"cannot reach the API server: {e.reason}"
    return f"{type(e).__name__}: {e}"


def _retryable(e: BaseException) -> bool:
    if isinstance(e, urllib.error.HTTPError):
        return e.code == 429 or e.code >= 500
    return isinstance(e, (urllib.error.URLError, OSError))


def start(
    env: Mapping[str, str] | None = None, token_dir: Path = TOKEN_DIR, server: str | None = None,
    say: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Start the export Job named in `KUBETUNE_EXPORT_JOB`; True when the API server took the patch.
    `server` (tests): the API server's URL instead of the pod's `KUBERNETES_SERVICE_*` (then any CA)."""
    env = os.environ if env is None else env
    job = env.get("KUBETUNE_EXPORT_JOB", "")
    if not job:
        return False
    queue = env.get("KUBETUNE_EXPORT_QUEUE") or None
    patch = patch_for(queue)
    namespace = "<namespace>"
    try:
        namespace = (token_dir / "namespace").read_text(encoding="utf-8").strip() or namespace
        token = (token_dir / "token").read_text(encoding="utf-8").strip()
        base = server or api_server(env)
        context = ssl.create_default_context(cafile=str(token_dir / "ca.crt")) if base.startswith("https") else None
        url = f"{base.rstrip('/')}/apis/batch/v1/namespaces/{namespace}/jobs/{job}"
        body = json.dumps(patch).encode()
        for attempt in range(ATTEMPTS):
            try:
                _send(url, token, body, context)
                break
            except Exception as e:  # retried, then reported below
                if attempt + 1 == ATTEMPTS or not _retryable(e):
                    raise
                sleep(2.0 ** (attempt + 1))
    except Exception as e:  # never fails training: the adapter is written and _SUCCESS with it
        say(f"[kubetune] warning: could not start the export Job {namespace}/{job} ({failure_reason(e)}); training "
            f"succeeded and the export waits: start it with `{manual_command(job, namespace, patch)}`")
        return False
    if queue:
        say(f"[kubetune] export Job {namespace}/{job} handed to Kueue queue {queue}: it starts when admitted")
    else:
        say(f"[kubetune] started the export Job {namespace}/{job}")
    return True
