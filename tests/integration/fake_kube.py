"""A fake Kubernetes API server on 127.0.0.1: the HTTP boundary the `kubernetes` backend is tested at.

No API server can run on these machines, so the tests start this one (a threaded `http.server`)
and point a generated kubeconfig at it. It speaks the paths the client calls —
`/api/v1/namespaces/{ns}/{configmaps,services,serviceaccounts,secrets,pods}`, `pods/{name}/log`,
`/apis/batch/v1/namespaces/{ns}/jobs`, `/apis/jobset.x-k8s.io/v1alpha2/...` (when `jobset=True`:
the CRD is "installed"), `/api/v1/namespaces/{ns}/events` (label and field selectors: `fieldSelector=
involvedObject.name=...`), the all-namespaces lists and `/version` — keeps objects in memory with
uid, resourceVersion and creationTimestamp, and answers errors with real `Status` objects
(401, 403, 404, 409, 422, 415). Every body it is sent is validated against the Kubernetes
OpenAPI schema (fake_kube_schema.py), so a malformed object fails the test that sent it. A field
the schema does not have is dropped, as the API server does, unless the request asks for
`fieldValidation=Strict`: then a create is refused 400 BadRequest (`strict decoding error: unknown
field "spec.x"`) and a patch 422 Invalid, as the real one answers. `fail()` makes the next requests
fail (an HTTP status such as 429 or 503, or a connection reset) for the client's retries.
It plays the Job and JobSet controllers (fake_kube_workloads.py); tests drive the pods. It records
the Events the cluster would: `FailedCreate` on a Job whose pods are refused (`refuse_pods`, e.g. a
full ResourceQuota: then no pod exists), and from the scheduler and the kubelet for a pod put into
an unschedulable or waiting state (see PodState); `event()` adds any other (an autoscaler's).
Besides the user's token it accepts ServiceAccount tokens (`service_account_token`), as a pod's projected
volume holds them: those are authorized by the Roles bound to their ServiceAccount in the store (fake_kube_rbac.py).
"""

from __future__ import annotations

import copy
import itertools
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.integration.fake_kube_http import Fault, Handler, Reply, fields_match, matches, merge_patch
from tests.integration.fake_kube_rbac import authorize
from tests.integration.fake_kube_schema import api_causes, drop, field_path, schema_causes, unknown_fields
from tests.integration.fake_kube_workloads import (
    EVENTS,
    JOBS,
    JOBSETS,
    PODS,
    TERMINAL,
    PodState,
    apply_state,
    job_pods,
    now,
    pod_events,
    sync_job,
    sync_jobset,
)

TOKEN = "kubetune-fake-token"
USER = "alice@example.com"
KINDS = {("v1", "configmaps"): "ConfigMap", ("v1", "services"): "Service", ("v1", "secrets"): "Secret",
         ("v1", "serviceaccounts"): "ServiceAccount", ("v1", "pods"): "Pod", JOBS: "Job", JOBSETS: "JobSet",
         EVENTS: "Event", ("rbac.authorization.k8s.io/v1", "roles"): "Role",
         ("rbac.authorization.k8s.io/v1", "rolebindings"): "RoleBinding",
         ("networking.k8s.io/v1", "networkpolicies"): "NetworkPolicy"}
VERBS = {"POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    fault: str = ""  # how a fault answered it (`fail()`): the status, or reset / reset-after


def _resource(gv: str, plural: str) -> str:
    group = gv.rpartition("/")[0]
    return f"{plural}.{group}" if group else plural


class FakeKube:
    """The server and its in-memory cluster; `with FakeKube() as fake:` serves on a free loopback port."""

    def __init__(self, jobset: bool = False):
        self.jobset = jobset
        self.lock = threading.RLock()
        self.objects: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
        self.logs: dict[tuple[str, str], str] = {}
        self.denied: set[tuple[str, str]] = set()
        self.requests: list[Request] = []
        self.scripts: dict[str, list[PodState | dict[int, PodState]]] = {}
        self.every_job: list[PodState | dict[int, PodState]] = []  # the script of each Job created from now on
        self.refuse_pods: str | None = None  # the Job controller's pod creations are forbidden with this message
        self.trainer_starts_export = True  # a rank-0 pod put into Succeeded starts its export Job, as the trainer does
        self.follow_started = threading.Event()
        self.faults: list[Fault] = []  # the next requests that fail, in order (`fail()`)
        self.accounts: dict[str, tuple[str, str]] = {}  # ServiceAccount tokens -> (namespace, name): RBAC applies
        self._versions = itertools.count(1000)
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> FakeKube:
        handler = type("Handler", (Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def kubeconfig(self, path: Path, namespace: str | None = "ml", token: str = TOKEN) -> Path:
        """A kubeconfig whose contexts `fake` (namespace `namespace`) and `other` point here."""
        context = {"cluster": "fake", "user": "alice"} | ({"namespace": namespace} if namespace else {})
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "alice", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": context},
                         {"name": "other", "context": {"cluster": "fake", "user": "alice", "namespace": "team-b"}}],
        }))
        return path

    # -- the store -------------------------------------------------------------------------------

    def bucket(self, gv: str, plural: str, ns: str) -> dict[str, dict[str, Any]]:
        return self.objects.setdefault((gv, plural, ns), {})

    def store(self, gv: str, plural: str, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        meta.update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion=str(next(self._versions)),
                    creationTimestamp=now(), generation=1)
        self.bucket(gv, plural, ns)[meta["name"]] = obj
        return obj

    def remove(self, gv: str, plural: str, ns: str, name: str, cascade: bool = True) -> None:
        """Delete the object; its dependents go too (`cascade`), each once ALL its owners are gone, as the
        garbage collector does: until then it only loses the reference to this one."""
        obj = self.bucket(gv, plural, ns).pop(name, None)
        if obj is None:  # already collected, through another owner
            return
        uid = obj["metadata"]["uid"]
        for (dgv, dplural, dns), items in list(self.objects.items()):
            for dname, dep in list(items.items()):
                refs = dep["metadata"].get("ownerReferences", [])
                if dns == ns and any(r.get("uid") == uid for r in refs):
                    rest = [r for r in refs if r.get("uid") != uid]
                    if cascade and not any(self._alive(ns, r) for r in rest):
                        self.remove(dgv, dplural, dns, dname)
                    else:
                        dep["metadata"]["ownerReferences"] = rest

    def _alive(self, ns: str, ref: dict[str, Any]) -> bool:
        """Whether the owner a reference names still exists (uids are unique)."""
        return any(o["metadata"]["uid"] == ref.get("uid") for (_g, _p, n), b in self.objects.items() if n == ns
                   for o in b.values())

    def items(self, plural: str, ns: str) -> list[dict[str, Any]]:
        gv = next(g for (g, p) in KINDS if p == plural)
        with self.lock:
            return copy.deepcopy(list(self.bucket(gv, plural, ns).values()))

    def get(self, plural: str, ns: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self.items(plural, ns) if o["metadata"]["name"] == name), None)

    # -- what tests do to the cluster ------------------------------------------------------------

    def fail(self, method: str, plural: str, *answers: int | str, retry_after: int | None = None) -> None:
        """The next `method` requests on `plural` (its collection or an object in it) fail, one per answer: an HTTP
        status (a Status object, with `Retry-After: retry_after` when given), `reset` (the connection dropped
        before the request is handled) or `reset-after` (handled, then dropped without an answer)."""
        with self.lock:
            self.faults += [Fault(method, plural, a, retry_after) for a in answers]

    def fault(self, method: str, path: str, query: dict[str, str], body: Any) -> Fault | None:
        """The fault that takes this request, if any (recorded in `requests` with it)."""
        with self.lock:
            try:
                plural = self._route(path)[2]
            except Reply:
                return None
            found = next((f for f in self.faults if (f.method, f.plural) == (method, plural)), None)
            if found is not None:
                self.faults.remove(found)
            if found is not None and found.answer != "reset-after":  # handled: recorded by `handle`
                self.requests.append(Request(method, path, query, body, str(found.answer)))
            return found

    def service_account_token(self, ns: str, account: str) -> str:
        """A token of ServiceAccount `ns/account`, as a pod's projected volume holds it: requests made with it are
        allowed only by the Roles bound to that ServiceAccount (fake_kube_rbac.py)."""
        token = f"sa-{ns}-{account}-{uuid.uuid4().hex[:8]}"
        self.accounts[token] = (ns, account)
        return token

    def deny(self, verb: str, resource: str) -> None:
        """RBAC: the user may not `verb` `resource` (e.g. "create", "jobs.batch")."""
        self.denied.add((verb, resource))

    def pods(self, ns: str, job: str) -> list[dict[str, Any]]:
        with self.lock:
            found = self.bucket(*JOBS, ns).get(job)
            return copy.deepcopy(job_pods(self, found)) if found else []

    def set_pods(self, ns: str, job: str, state: PodState | dict[int, PodState]) -> None:
        """Put the Job's pods (all, or by completion index) into a state, as the kubelet would."""
        with self.lock:
            found = self.bucket(*JOBS, ns)[job]
            for pod in job_pods(self, found):
                index = int(pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"])
                one = state.get(index) if isinstance(state, dict) else state
                if one is None or pod["status"]["phase"] in TERMINAL:
                    continue
                apply_state(pod, one)
                for type_, reason, message, component in pod_events(pod, one):
                    self.event(pod, type_, reason, message, component, pod["spec"].get("nodeName"))
                if one.log:
                    self.append_log(ns, pod["metadata"]["name"], one.log)
                if index == 0 and one.phase == "Succeeded" and self.trainer_starts_export:
                    self._trainer_starts_export(ns, pod)
            sync_job(self, found)

    def _trainer_starts_export(self, ns: str, pod: dict[str, Any]) -> None:
        """What the trainer of rank 0 does after `_SUCCESS` (trainer/train/start_export.py): the same merge patch on the
        Job its `KUBETUNE_EXPORT_JOB` names (the Role allows exactly that), as that pod's ServiceAccount."""
        from trainer.train.start_export import patch_for

        env = {e["name"]: e.get("value", "") for c in pod["spec"]["containers"] for e in c.get("env", [])}
        export = self.bucket(*JOBS, ns).get(env.get("KUBETUNE_EXPORT_JOB", ""))
        if export is None:
            return
        patched = merge_patch(export, patch_for(env.get("KUBETUNE_EXPORT_QUEUE")))
        patched["metadata"]["resourceVersion"] = str(next(self._versions))
        self.bucket(*JOBS, ns)[patched["metadata"]["name"]] = patched
        sync_job(self, patched)

    def tick(self, ns: str, job: str) -> None:
        """The Job controller's periodic look at a Job: what time alone changes (its deadline)."""
        with self.lock:
            sync_job(self, self.bucket(*JOBS, ns)[job])

    def script(self, job: str, steps: list[PodState | dict[int, PodState]]) -> None:
        """Each time a client reads pods of `job` (a list or one pod), its pods take the next step after the answer."""
        with self.lock:
            self.scripts[job] = list(steps)

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str, component: str,
              host: str | None = None) -> dict[str, Any]:
        """A core/v1 Event about `obj`, as a controller's event recorder writes it: the same reason and message
        again only counts up (`count`, `lastTimestamp`)."""
        with self.lock:
            meta = obj["metadata"]
            ns = meta["namespace"]
            for ev in self.bucket(*EVENTS, ns).values():
                if (ev["involvedObject"]["uid"], ev["reason"], ev["message"]) == (meta["uid"], reason, message):
                    ev.update(count=ev["count"] + 1, lastTimestamp=now())
                    ev["metadata"]["resourceVersion"] = str(next(self._versions))
                    return copy.deepcopy(ev)
            stamp = now()
            return copy.deepcopy(self.store(*EVENTS, ns, {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}"},
                "involvedObject": {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", ""),
                                   "namespace": ns, "name": meta["name"], "uid": meta["uid"],
                                   "resourceVersion": meta.get("resourceVersion", "")},
                "reason": reason, "message": message, "type": type_, "count": 1,
                "source": {"component": component} | ({"host": host} if host else {}),
                "firstTimestamp": stamp, "lastTimestamp": stamp, "eventTime": None,
                "reportingComponent": component, "reportingInstance": host or "",
            }))

    def events(self, ns: str, name: str = "") -> list[dict[str, Any]]:
        """The events in `ns` (about the object `name` only, when given)."""
        return [e for e in self.items("events", ns) if not name or e["involvedObject"]["name"] == name]

    def append_log(self, ns: str, pod: str, text: str) -> None:
        with self.lock:
            self.logs[(ns, pod)] = self.logs.get((ns, pod), "") + text

    # -- the API ---------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], headers: Any, body: Any) -> tuple[int, Any]:
        self.requests.append(Request(method, path, query, body))
        bearer = (headers.get("Authorization") or "").removeprefix("Bearer ")
        if bearer != TOKEN and bearer not in self.accounts:
            raise Reply(401, "Unauthorized", "Unauthorized")
        if path == "/version":
            return 200, {"major": "1", "minor": "35", "gitVersion": "v1.35.0", "platform": "linux/amd64"}
        gv, ns, plural, name, sub = self._route(path)
        verb = VERBS.get(method, "get" if name else "list")
        if bearer in self.accounts:
            with self.lock:
                authorize(self.objects, self.accounts[bearer], gv, ns, plural + (f"/{sub}" if sub else ""), verb, name)
        resource = _resource(gv, plural) + (f"/{sub}" if sub else "")
        if (verb, resource) in self.denied:
            subject = f'{resource} "{name}"' if name else resource
            where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
            raise Reply(403, "Forbidden", f'{subject} is forbidden: User "{USER}" cannot {verb} resource "{plural}'
                        f'{"/" + sub if sub else ""}" in API group "{gv.rpartition("/")[0]}"{where}',
                        {"name": name or "", "group": gv.rpartition("/")[0], "kind": plural})
        if (gv, plural) == JOBSETS and not self.jobset:  # authorization first, then "no such resource type"
            raise Reply(404, "NotFound", "the server could not find the requested resource")
        with self.lock:
            if method == "GET" and sub == "log":
                return 200, self._log(ns, name, query)
            if method == "GET" and name:
                found = copy.deepcopy(self._existing(gv, plural, ns, name))
                if plural == "pods":
                    self._advance_scripts([found])
                return 200, found
            if method == "GET":
                return 200, self._list(gv, plural, ns, query.get("labelSelector", ""), query.get("fieldSelector", ""))
            strict = query.get("fieldValidation") == "Strict"
            if method == "POST" and not name:
                return 201, self._create(gv, plural, ns, body, strict)
            if method == "PATCH" and name:
                return 200, self._patch(gv, plural, ns, name, headers.get("Content-Type", ""), body, strict)
            if method == "DELETE" and name:
                policy = query.get("propagationPolicy") or (body or {}).get("propagationPolicy")
                return 200, self._delete(gv, plural, ns, name, policy)
        raise Reply(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _route(self, path: str) -> tuple[str, str, str, str, str]:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            gv, rest = "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise Reply(404, "NotFound", "the server could not find the requested resource")
        ns = ""
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        if not rest or (gv, rest[0]) not in KINDS:
            raise Reply(404, "NotFound", "the server could not find the requested resource")
        return gv, ns, rest[0], rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""

    def _existing(self, gv: str, plural: str, ns: str, name: str) -> dict[str, Any]:
        found = self.bucket(gv, plural, ns).get(name)
        if found is None:
            group = gv.rpartition("/")[0]
            raise Reply(404, "NotFound", f'{_resource(gv, plural)} "{name}" not found',
                        {"name": name, "group": group, "kind": plural})
        return found

    def _list(self, gv: str, plural: str, ns: str, selector: str, fields: str = "") -> dict[str, Any]:
        fields_match({}, plural, fields)  # an unsupported field is refused even when nothing would match
        buckets = [b for (g, p, n), b in self.objects.items() if (g, p) == (gv, plural) and (not ns or n == ns)]
        found = [o for b in buckets for o in b.values() if matches(o["metadata"].get("labels") or {}, selector)
                 and fields_match(o, plural, fields)]
        items = [{k: v for k, v in copy.deepcopy(o).items() if k not in ("kind", "apiVersion")} for o in found]
        if plural == "pods":
            self._advance_scripts(found)
        return {"kind": f"{KINDS[(gv, plural)]}List", "apiVersion": gv,
                "metadata": {"resourceVersion": str(next(self._versions))}, "items": items}

    def _advance_scripts(self, pods: list[dict[str, Any]]) -> None:
        for job in {p["metadata"]["labels"].get("batch.kubernetes.io/job-name") for p in pods}:
            steps = self.scripts.get(job or "")
            if steps:
                ns = pods[0]["metadata"]["namespace"]
                self.set_pods(ns, job, steps.pop(0))

    def _create(self, gv: str, plural: str, ns: str, body: Any, strict: bool = False) -> dict[str, Any]:
        kind = KINDS[(gv, plural)]
        if not isinstance(body, dict) or body.get("apiVersion") != gv or body.get("kind") != kind:
            raise Reply(400, "BadRequest", f"the body is not a {gv} {kind}: apiVersion/kind are "
                        f"{(body or {}).get('apiVersion')}/{(body or {}).get('kind')}")
        meta = body.get("metadata") or {}
        if meta.get("namespace") not in (None, ns):
            raise Reply(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                        "sent on the request")
        for field in ("uid", "resourceVersion", "creationTimestamp"):
            if field in meta:
                raise Reply(400, "BadRequest", f"metadata.{field} must not be set on create")
        self._validate(kind, gv, plural, body, strict)
        if meta["name"] in self.bucket(gv, plural, ns):
            raise Reply(409, "AlreadyExists", f'{_resource(gv, plural)} "{meta["name"]}" already exists',
                        {"name": meta["name"], "group": gv.rpartition("/")[0], "kind": plural})
        obj = self.store(gv, plural, ns, copy.deepcopy(body))
        if kind == "Job" and self.every_job:
            self.script(meta["name"], self.every_job)
        if kind == "Job":
            sync_job(self, obj)
        elif kind == "JobSet":
            sync_jobset(self, obj)
        return copy.deepcopy(obj)

    def _validate(self, kind: str, gv: str, plural: str, body: dict[str, Any], strict: bool = False,
                  patch: Any = None) -> None:
        """Refuse `body` (a create's, or the object as `patch` leaves it) as the API server would; its unknown
        fields are dropped from it, or under `strict` refused."""
        view = body if patch is None else {k: v for k, v in body.items() if k != "status"}
        unknown = unknown_fields(view)
        if unknown and strict:
            error = "strict decoding error: " + ", ".join(f'unknown field "{field_path(f)}"' for f in unknown)
            if patch is None:  # decoding the body of a create
                raise Reply(400, "BadRequest", f'{kind} in version "{gv.rpartition("/")[2]}" cannot be handled '
                            f"as a {kind}: {error}")
            value = f'Invalid value: "{json.dumps(patch, separators=(",", ":"))}": {error}'
            raise Reply(422, "Invalid", f' "" is invalid: patch: {value}', {
                "name": "", "group": "", "kind": "", "causes": [
                    {"reason": "FieldValueInvalid", "field": "patch", "message": value}]})
        for path in unknown:
            drop(body, path)
        view = body if patch is None else {k: v for k, v in body.items() if k != "status"}
        causes = schema_causes(view) + api_causes(view)
        if causes:
            name = (body.get("metadata") or {}).get("name", "")
            group = gv.rpartition("/")[0]
            summary = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
            raise Reply(422, "Invalid", f'{kind}{"." + group if group else ""} "{name}" is invalid: [{summary}]',
                        {"name": name, "group": group, "kind": kind, "causes": causes})

    def _patch(self, gv: str, plural: str, ns: str, name: str, content_type: str, body: Any,
               strict: bool = False) -> dict[str, Any]:
        kind = KINDS[(gv, plural)]
        obj = self._existing(gv, plural, ns, name)
        custom = (gv, plural) == JOBSETS
        if content_type.startswith("application/json-patch+json") or (
            custom and content_type.startswith("application/strategic-merge-patch+json")
        ):
            raise Reply(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted "
                        f"media types include: application/merge-patch+json{'' if custom else ', application/strategic-merge-patch+json'}")
        patched = merge_patch(obj, body)
        self._validate(kind, gv, plural, patched, strict, patch=body)
        patched["metadata"]["resourceVersion"] = str(next(self._versions))
        self.bucket(gv, plural, ns)[name] = patched
        if kind == "Job":
            sync_job(self, patched)
        elif kind == "JobSet":
            sync_jobset(self, patched)
        return copy.deepcopy(patched)

    def _delete(self, gv: str, plural: str, ns: str, name: str, policy: str | None) -> dict[str, Any]:
        obj = self._existing(gv, plural, ns, name)
        orphan = policy == "Orphan" or (policy is None and (gv, plural) == JOBS)  # batch/v1 Jobs orphan by default
        self.remove(gv, plural, ns, name, cascade=not orphan)
        group = gv.rpartition("/")[0]
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": group, "kind": plural, "uid": obj["metadata"]["uid"]}}

    def _log(self, ns: str, name: str, query: dict[str, str]) -> str | Iterator[bytes]:
        pod = self._existing(*PODS, ns, name)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = query.get("container") or containers[0]
        if container not in containers:
            raise Reply(400, "BadRequest", f"container {container} is not valid for pod {name}")
        statuses = {s["name"]: s for s in pod["status"].get("containerStatuses", [])}
        waiting = (statuses.get(container, {}).get("state") or {}).get("waiting")
        if pod["status"]["phase"] == "Pending":
            why = (waiting or {}).get("reason", "PodInitializing")
            raise Reply(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: {why}')
        text = self.logs.get((ns, name), "")
        if query.get("tailLines"):
            text = "".join(text.splitlines(keepends=True)[-int(query["tailLines"]):])
        if query.get("follow") != "true":
            return text
        return self._follow(ns, name)

    def _follow(self, ns: str, name: str) -> Iterator[bytes]:
        sent = 0
        self.follow_started.set()
        while True:
            with self.lock:
                text = self.logs.get((ns, name), "")
                pod = self.bucket(*PODS, ns).get(name)
                over = pod is None or pod["status"]["phase"] in TERMINAL
            if len(text) > sent:
                yield text[sent:].encode()
                sent = len(text)
            elif over:
                return
            else:
                time.sleep(0.02)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up is not an error here
            super().handle_error(request, client_address)
