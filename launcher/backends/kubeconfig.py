"""Which cluster and namespace `launch` talks to, found the way kubectl finds them.

kubeconfig: `--kubeconfig`, else `$KUBECONFIG` (several files joined with `:` are merged), else
`~/.kube/config`; `--context`, else the file's current context. With no kubeconfig at all and
`KUBERNETES_SERVICE_HOST` set (launch running in a pod), the pod's ServiceAccount is used.
Namespace: `-n`, else the context's namespace (the pod's own in-cluster), else `default`.
The kubernetes client is imported here, lazily: only commands that talk to a cluster load it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.backends.kube_retry import urllib3_retries
from launcher.errors import UserError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

DEFAULT_KUBECONFIG = "~/.kube/config"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
IN_CLUSTER = "in-cluster"


@dataclass
class Target:
    api: ApiClient
    namespace: str
    context: str  # the kubeconfig context, or "in-cluster"
    server: str  # the API server's URL, for messages


def kubeconfig_paths(kubeconfig: str | None) -> tuple[str, list[Path]]:
    """The kubeconfig setting (as the user gave it) and the files of it that exist."""
    setting = kubeconfig or os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG
    if kubeconfig and not Path(kubeconfig).expanduser().is_file():
        raise UserError(f"--kubeconfig {kubeconfig}: no such file")
    files = [Path(p).expanduser() for p in setting.split(os.pathsep) if p]
    return setting, [f for f in files if f.is_file()]


def connect(context: str | None = None, kubeconfig: str | None = None, namespace: str | None = None) -> Target:
    from kubernetes import client, config

    setting, files = kubeconfig_paths(kubeconfig)
    cfg = client.Configuration()
    cfg.retries = urllib3_retries()  # HTTP statuses are retried by launcher/backends/kube_retry.py
    if not files:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not context:
            return _in_cluster(cfg, namespace)
        raise UserError(
            f"no kubeconfig at {setting}: pass --kubeconfig FILE or set KUBECONFIG (e.g. after "
            "`aws eks update-kubeconfig` or `gcloud container clusters get-credentials`)"
        )
    try:
        contexts, current = config.list_kube_config_contexts(setting)
    except config.ConfigException as e:
        raise UserError(f"kubeconfig {setting}: {e}") from None
    names = [c["name"] for c in contexts]
    if context is not None and context not in names:
        raise UserError(f"--context {context}: no such context in {setting}; it has: {', '.join(names) or 'none'}")
    chosen = next((c for c in contexts if c["name"] == context), None) if context else current
    if not chosen:
        raise UserError(f"kubeconfig {setting} has no current context: pass --context (one of: {', '.join(names)})")
    try:
        config.load_kube_config(
            config_file=setting, context=chosen["name"], client_configuration=cfg, persist_config=False
        )
    except (config.ConfigException, OSError, ValueError) as e:
        raise UserError(f"kubeconfig {setting}, context {chosen['name']}: {e}") from None
    ns = namespace or (chosen.get("context") or {}).get("namespace") or "default"
    return Target(client.ApiClient(cfg), ns, chosen["name"], cfg.host)


def _in_cluster(cfg: object, namespace: str | None) -> Target:
    from kubernetes import client, config

    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException as e:
        raise UserError(f"running in a pod, but its ServiceAccount cannot be used: {e}") from None
    own = IN_CLUSTER_NAMESPACE.read_text().strip() if IN_CLUSTER_NAMESPACE.is_file() else ""
    return Target(client.ApiClient(cfg), namespace or own or "default", IN_CLUSTER, cfg.host)  # type: ignore[attr-defined]
