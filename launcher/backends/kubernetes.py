"""The `kubernetes` backend: the API calls `launch` makes, through the official client.

Objects go in and come out as plain dicts in the API's own camelCase (what `helm template`
renders and `kubectl get -o json` shows): responses are read with `_preload_content=False`
and parsed as JSON, so nothing is lost to, or reshaped by, the client's models. Every call
goes through `Cluster._call`, which retries what failed for a passing reason (kube_retry.py) and
turns failures into one-line UserErrors (kube_errors.py). Creates and patches ask for strict field
validation (`fieldValidation=Strict`): a field the API does not know is an error, not silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from launcher.backends.kube_errors import ApiError, Call, api_error, body_error, connection_error
from launcher.backends.kube_retry import Passing, connection_failure, http_failure, retried
from launcher.backends.kubeconfig import Target

TIMEOUT = (10, 60)  # seconds: connect, read (log streams: no read timeout)
STRICT = "Strict"  # fieldValidation of creates and patches: unknown or duplicate fields are refused


@dataclass(frozen=True)
class Kind:
    kind: str
    api_version: str
    plural: str
    method: str  # the typed API's name for it (`config_map`); "" for a custom resource

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


KINDS = {
    k.kind: k
    for k in (
        Kind("ServiceAccount", "v1", "serviceaccounts", "service_account"),
        Kind("Secret", "v1", "secrets", "secret"),
        Kind("ConfigMap", "v1", "configmaps", "config_map"),
        Kind("Service", "v1", "services", "service"),
        Kind("Pod", "v1", "pods", "pod"),
        Kind("Job", "batch/v1", "jobs", "job"),
        Kind("JobSet", "jobset.x-k8s.io/v1alpha2", "jobsets", ""),
        # the export Job's starter (charts/kubetune/templates/rbac.yaml): through the generic path, as a JobSet
        Kind("Role", "rbac.authorization.k8s.io/v1", "roles", ""),
        Kind("RoleBinding", "rbac.authorization.k8s.io/v1", "rolebindings", ""),
        Kind("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", ""),  # networkPolicy.enabled
        Kind("Event", "v1", "events", "event"),  # read only: why a Job makes no pods, why a pod does not start
    )
}


POD_LOG = Kind("Pod", "v1", "pods/log", "pod")  # the log subresource, as RBAC names it


def kind_of(kind: str) -> Kind:
    return KINDS[kind]


class Cluster:
    """One namespace of one cluster, as the kubeconfig context (or the pod's ServiceAccount) sees it."""

    def __init__(self, target: Target):
        from kubernetes import client

        self.target = target
        self.namespace = target.namespace
        self.core = client.CoreV1Api(target.api)
        self.batch = client.BatchV1Api(target.api)
        self.custom = client.CustomObjectsApi(target.api)

    def _what(self, verb: str, kind: Kind, name: str | None = None, all_namespaces: bool = False) -> Call:
        ns = "(all namespaces)" if all_namespaces else self.namespace
        return Call(verb, kind.resource, ns, name, self.target.server, self.target.context)

    def _call(self, call: Call, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run one API call, retried while it fails for a passing reason: the raw urllib3 response, or a
        UserError naming the object and the cause. Only for calls that may be repeated (not a create)."""
        return retried(lambda: self._try(call, fn, *args, **kw))

    def _try(self, call: Call, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """One try of an API call: the raw urllib3 response; a Passing failure (kube_retry.py), or a UserError."""
        import urllib3
        from kubernetes.client.exceptions import ApiException
        from pydantic import ValidationError

        kw.setdefault("_request_timeout", TIMEOUT)
        try:
            return fn(*args, _preload_content=False, **kw)
        except ApiException as e:
            error = api_error(e.status or 0, e.reason or "", e.body, call)
            raise http_failure(e.status or 0, error, e.headers) from None
        except ValidationError as e:
            raise body_error(e, call) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise connection_failure(e, connection_error(e, call)) from None

    def _json(self, call: Call, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return _parsed(self._call(call, fn, *args, **kw))

    def _typed(self, kind: Kind, verb: str) -> Callable[..., Any]:
        api = self.batch if kind.group == "batch" else self.core
        return getattr(api, f"{verb}_namespaced_{kind.method}")

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create it (strict field validation); retried only where no second object can come of it: after a
        failure the server may have acted on, a look decides whether the first try made it (kube_retry.py)."""
        kind = kind_of(body["kind"])
        call = self._what("create", kind, body["metadata"]["name"])
        if kind.method:
            fn, args = self._typed(kind, "create"), (self.namespace, body)
        else:
            fn = self.custom.create_namespaced_custom_object
            args = (kind.group, kind.version, self.namespace, kind.plural, body)
        maybe_made = False  # an earlier try may have created it: an AlreadyExists may be our own object

        def attempt() -> dict[str, Any]:
            try:
                return _parsed(self._try(call, fn, *args, field_validation=STRICT))
            except ApiError as e:
                if e.code == 409 and maybe_made and (found := self._ours(body)) is not None:
                    return found
                raise

        def looked(_: Passing) -> dict[str, Any] | None:
            nonlocal maybe_made
            maybe_made = True
            return self._ours(body)

        return retried(attempt, looked)

    def _ours(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The object `body` names if it exists with the labels and owners `body` has (so a create of ours made it:
        submissions have unique names), else None."""
        found = self.get(body["kind"], body["metadata"]["name"])
        if found is None:
            return None
        sent, meta = body["metadata"], found.get("metadata") or {}
        labels = sent.get("labels") or {}
        owners = {o.get("uid") for o in sent.get("ownerReferences") or []}
        if labels and labels.items() <= (meta.get("labels") or {}).items() and owners <= {
                o.get("uid") for o in meta.get("ownerReferences") or []}:
            return found
        return None

    def get(self, kind_name: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        kind = kind_of(kind_name)
        call = self._what("get", kind, name)
        try:
            if kind.method:
                return self._json(call, self._typed(kind, "read"), name, self.namespace)
            fn = self.custom.get_namespaced_custom_object
            return self._json(call, fn, kind.group, kind.version, self.namespace, kind.plural, name)
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    def list(self, kind_name: str, selector: str = "", all_namespaces: bool = False,
             fields: str = "") -> list[dict[str, Any]]:
        """Objects matching the label selector (and `fields`, a field selector), in this namespace or in all; a
        custom kind whose CRD is missing: []."""
        kind = kind_of(kind_name)
        call = self._what("list", kind, all_namespaces=all_namespaces)
        api = self.batch if kind.group == "batch" else self.core
        if kind.method and all_namespaces:
            fn, args = getattr(api, f"list_{kind.method}_for_all_namespaces"), ()
        elif kind.method:
            fn, args = self._typed(kind, "list"), (self.namespace,)
        elif all_namespaces:
            fn, args = self.custom.list_cluster_custom_object, (kind.group, kind.version, kind.plural)
        else:
            fn = self.custom.list_namespaced_custom_object
            args = (kind.group, kind.version, self.namespace, kind.plural)
        try:
            extra = {"field_selector": fields} if fields else {}
            return self._json(call, fn, *args, label_selector=selector, **extra)["items"]
        except ApiError as e:
            if e.code == 404 and not kind.method:
                return []
            raise

    def patch(self, kind_name: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        kind = kind_of(kind_name)
        call = self._what("patch", kind, name)
        if kind.method:  # a dict body goes as a strategic merge patch
            fn = self._typed(kind, "patch")
            return self._json(call, fn, name, self.namespace, patch, field_validation=STRICT)
        fn = self.custom.patch_namespaced_custom_object
        return self._json(call, fn, kind.group, kind.version, self.namespace, kind.plural, name, patch,
                          field_validation=STRICT,
                          _content_type="application/merge-patch+json")  # custom resources take no strategic merge

    def delete(self, kind_name: str, name: str, propagation: str = "Foreground") -> bool:
        """Delete it and (Foreground, Background) what it owns; False when it did not exist."""
        kind = kind_of(kind_name)
        call = self._what("delete", kind, name)
        if kind.method:
            fn, args = self._typed(kind, "delete"), (name, self.namespace)
        else:
            fn = self.custom.delete_namespaced_custom_object
            args = (kind.group, kind.version, self.namespace, kind.plural, name)
        try:
            self._call(call, fn, *args, propagation_policy=propagation)
        except ApiError as e:
            if e.code == 404:
                return False
            raise
        return True

    def log(self, pod: str, container: str, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        """The container's log as text chunks; with `follow`, until the container ends."""
        import urllib3

        call = self._what("get", POD_LOG, pod)
        resp = self._call(call, self.core.read_namespaced_pod_log, pod, self.namespace, container=container,
                          follow=follow, tail_lines=tail, _request_timeout=None if follow else TIMEOUT)
        try:
            for chunk in resp.stream(decode_content=True):
                yield chunk.decode("utf-8", errors="replace")
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise connection_error(e, call) from None
        finally:
            resp.release_conn()


def _parsed(response: Any) -> Any:
    """A response's JSON body ({} when empty)."""
    data = response.data
    return json.loads(data) if data else {}
