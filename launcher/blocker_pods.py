"""Blockers of a Pending pod: no node can take it (`Unschedulable`, with what the cluster autoscaler or
Karpenter says), its image cannot be pulled, or its container cannot be configured (a missing Secret, a key
missing in one, a missing ConfigMap)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from launcher.blocker import GPU, Blocker, who
from launcher.kube_events import earliest, events, first_seen, newest

if TYPE_CHECKING:
    from launcher.backends.kubernetes import Cluster

IMAGE = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
CONFIG = ("CreateContainerConfigError",)
AUTOSCALER = ("TriggeredScaleUp", "NotTriggerScaleUp", "FailedScaleUp", "Nominated")
SCALING_UP = ("TriggeredScaleUp", "Nominated")  # cluster-autoscaler, Karpenter: a node for this pod is on its way
# The chart's credential environment (charts/kubetune/templates/_credentials.tpl): variable -> (section, value)
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": ("s3", "accessKeyId"), "AWS_SECRET_ACCESS_KEY": ("s3", "secretAccessKey"),
    "AWS_SESSION_TOKEN": ("s3", "sessionToken"), "AWS_ENDPOINT_URL": ("s3", "endpointUrl"),
    "MLFLOW_TRACKING_USERNAME": ("mlflow", "username"), "MLFLOW_TRACKING_PASSWORD": ("mlflow", "password"),
    "MLFLOW_TRACKING_TOKEN": ("mlflow", "token"),
}


def pod_blockers(cluster: Cluster, pod: dict[str, Any], ns: str) -> list[Blocker]:
    status = pod.get("status") or {}
    if status.get("phase") != "Pending":
        return []
    unschedulable = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"
                          and c.get("status") == "False" and c.get("reason") == "Unschedulable"), None)
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    waiting = [(cs, w) for cs in statuses if (w := (cs.get("state") or {}).get("waiting"))
               and w.get("reason") in IMAGE + CONFIG]
    if not unschedulable and not waiting:
        return []
    said = events(cluster, "Pod", pod["metadata"]["name"])
    if unschedulable:
        return [_unschedulable(pod, unschedulable, said, ns)]
    cs, w = waiting[0]
    if w["reason"] in IMAGE:
        return [_image(pod, cs, w, said, ns)]
    return [_config(pod, cs, w, said, ns)]


def _gpus(pod: dict[str, Any]) -> str | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        limits = (c.get("resources") or {}).get("limits") or {}
        if GPU in limits:
            return str(limits[GPU])
    return None


def _required_nodes(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(label key, what the pod requires of it) from its node selector or required node affinity."""
    spec = pod.get("spec") or {}
    for key, value in (spec.get("nodeSelector") or {}).items():
        return key, f"{key}={value}"
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms") or []:
        for expr in term.get("matchExpressions") or []:
            values = expr.get("values") or []
            shown = f" ({', '.join(values)})" if values else ""
            return expr.get("key", ""), f"{expr.get('key')} {expr.get('operator', '').lower()}{shown}"
    return None


def _unschedulable(pod: dict[str, Any], condition: dict[str, Any], said: list[dict[str, Any]], ns: str) -> Blocker:
    status, name = pod.get("status") or {}, pod["metadata"]["name"]
    failed = newest(said, "FailedScheduling")
    reason = ((failed or {}).get("message") or condition.get("message") or "no node fits it").strip()
    message, progressing = f"no node can take it: {reason.rstrip('.')}", False
    if nominated := status.get("nominatedNodeName"):
        message += f"; preempting lower-priority pods on {nominated}"
        progressing = True
    scaler = newest(said, *AUTOSCALER)
    if scaler:
        words = (scaler.get("message") or "").strip().rstrip(".")
        if scaler["reason"] in SCALING_UP:
            message += f"; a node is being added for it ({scaler['reason']}: {words})"
            progressing = True
        elif scaler["reason"] == "NotTriggerScaleUp":
            message += f"; the cluster autoscaler will not add a node: {words}"
        else:
            message += f"; the cluster autoscaler failed to add a node: {words}"
    fixes = []
    if f"Insufficient {GPU}" in reason:
        gpus = _gpus(pod)
        fixes.append(f"no node has {gpus + ' ' if gpus else ''}free GPUs: wait for running jobs to free them, ask "
                     "for fewer GPUs per node (resources.gpus_per_node) on more nodes (resources.nodes), or ask your "
                     "platform team for GPU nodes")
    if "affinity/selector" in reason or "didn't match Pod's node" in reason:
        required = _required_nodes(pod)
        need = f"nodes with {required[1]}" if required else "nodes its node selector or affinity names"
        key = required[0] if required else "nvidia.com/gpu.product"
        fixes.append(f"the pod needs {need}: compare `kubectl get nodes -L {key}`; pick a GPU type the cluster has "
                     "(resources.gpu), pick your nodes' label with gpu.placement (nvidia-gfd, gke, eks), add "
                     "your nodes' value to gpu.products.<type> or set gpu.productLabel in a values file, or fix "
                     "`nodeSelector` / `affinity` there")
    if taints := re.findall(r"untolerated taint\(?s?\)?\s*(\{[^}]*\})", reason):
        fixes.append(f"tolerate the taint {', '.join(dict.fromkeys(taints))} with `tolerations` (every pod) or "
                     "`gpu.tolerations` (GPU training pods) in a values file")
    if re.search(r"Insufficient (cpu|memory|ephemeral-storage)", reason):
        fixes.append("lower the cpu/memory requests (the chart's `resources` value) or ask for bigger nodes")
    if not fixes:
        fixes.append(f"ask your platform team which nodes can take these pods (`kubectl describe pod {name} -n {ns}`)")
    if scaler and scaler["reason"] not in SCALING_UP:
        fixes.append("no node group the autoscaler may grow fits the pod (its message above)")
    since = earliest(said, "FailedScheduling") or condition.get("lastTransitionTime") or ""
    return Blocker("unschedulable", who(pod), "unschedulable" + (" (a node is being added)" if progressing else ""),
                   message, "; ".join(fixes), since, progressing)


def _container_image(pod: dict[str, Any], cs: dict[str, Any]) -> str:
    spec = pod.get("spec") or {}
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if c.get("name") == cs.get("name"):
            return c.get("image") or cs.get("image") or "?"
    return cs.get("image") or "?"


def _image(pod: dict[str, Any], cs: dict[str, Any], waiting: dict[str, Any], said: list[dict[str, Any]],
           ns: str) -> Blocker:
    image = _container_image(pod, cs)
    pulls = [e for e in said if e.get("reason") == "Failed" and "pull" in (e.get("message") or "").lower()
             and not (e.get("message") or "").startswith("Error: ")]
    event = newest(pulls, "Failed")
    detail = (event or {}).get("message") or waiting.get("message") or ""
    detail = re.sub(r'^Failed to pull image "[^"]*":\s*', "", detail)
    component = (pod["metadata"].get("labels") or {}).get("app.kubernetes.io/component", "training")
    value = "export.image" if component == "export" else "image"
    text = f"{waiting['reason']} {detail}".lower()
    auth = re.search(r"unauthori[sz]ed|\b401\b|\b403\b|denied|forbidden|authentication required|authoriz", text)
    missing = re.search(r"not found|manifest unknown|does not exist|no such|invalidimagename|invalid reference", text)
    secret_fix = (f"name a pull secret in `imagePullSecrets` in a values file (e.g. `imagePullSecrets: "
                  f"[{{name: regcred}}]`, created with `kubectl create secret docker-registry regcred -n {ns} ...`)")
    tag_fix = (f"check `{value}.repository` and `{value}.tag` in your values file (an empty tag is the chart's "
               f"appVersion) and that the image was pushed")
    if auth and not missing:
        fix = f"the registry refuses the nodes: {secret_fix}"
    elif missing and not auth:
        fix = f"no such image or tag in the registry: {tag_fix}"
    else:
        fix = f"{tag_fix}; if the registry is private, {secret_fix}; and check that the nodes can reach it"
    in_container = f" (container {cs.get('name')})" if cs.get("name") not in ("trainer", "export") else ""
    message = f"cannot pull image {image}{in_container}: {waiting['reason']}" + (f": {detail}" if detail else "")
    since = earliest(pulls, "Failed")
    return Blocker("image", who(pod), f"cannot pull image {image}", message, fix, since)


def _env_refs(pod: dict[str, Any], secret: str) -> list[tuple[str, str]]:
    """(variable, key) of every env entry that reads `secret`."""
    spec = pod.get("spec") or {}
    refs = []
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        for env in c.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef") or {}
            if ref.get("name") == secret and (env["name"], ref.get("key", "")) not in refs:
                refs.append((env["name"], ref.get("key", "")))
    return refs


def _config(pod: dict[str, Any], cs: dict[str, Any], waiting: dict[str, Any], said: list[dict[str, Any]],
            ns: str) -> Blocker:
    event = newest([e for e in said if (e.get("message") or "").startswith("Error: ")], "Failed")
    words = waiting.get("message") or ((event or {}).get("message") or "").removeprefix("Error: ")
    since = first_seen(event) if event else ""
    where = who(pod)
    if m := re.search(r"couldn't find key (?P<key>\S+) in Secret (?:(?P<ns>[^/\s]+)/)?(?P<name>[^\s,;]+)", words):
        key, secret = m["key"], m["name"]
        refs = [env for env, k in _env_refs(pod, secret) if k == key]
        fields = [CREDENTIALS[e] for e in refs if e in CREDENTIALS]
        reads = f" (the pod reads {', '.join(refs)} from it)" if refs else ""
        other = (f", or set {' / '.join(f'{s}.secretKeys.{f}' for s, f in fields)} in your values file to the key the "
                 "Secret has" if fields else "")
        return Blocker("config", where, f"Secret {secret} has no key {key}",
                       f"Secret {ns}/{secret} has no key {key}{reads}: {words}",
                       f"add key {key} to Secret {secret} (`kubectl edit secret {secret} -n {ns}`){other}", since)
    if m := re.search(r'secret "(?P<name>[^"]+)" not found', words):
        secret = m["name"]
        refs = _env_refs(pod, secret)
        sections = sorted({CREDENTIALS[e][0] for e, _ in refs if e in CREDENTIALS})
        reads = f" (the pod reads {', '.join(e for e, _ in refs)} from it)" if refs else ""
        keys = " ".join(f"--from-literal={k}=..." for _, k in refs) or "--from-literal=KEY=..."
        point = (f", or set {' / '.join(f'{s}.existingSecret' for s in sections)} in your values file to the Secret "
                 "that holds them" if sections else ", or remove what names it from your values file")
        return Blocker("config", where, f"Secret {secret} is missing", f"Secret {ns}/{secret} does not exist{reads}",
                       f"create it in namespace {ns} (`kubectl create secret generic {secret} -n {ns} {keys}`){point}",
                       since)
    if m := re.search(r'configmap "(?P<name>[^"]+)" not found', words, re.IGNORECASE):
        return Blocker("config", where, f"ConfigMap {m['name']} is missing", f"ConfigMap {ns}/{m['name']} does not "
                       f"exist: {words}", "a ConfigMap named after the submission is its own (submit again); "
                       "another one comes from your values file: create it, or remove what names it", since)
    return Blocker("config", where, "its container cannot be configured",
                   f"{waiting.get('reason')}: {words or 'no message'}",
                   f"the pod's environment or volumes name something missing in namespace {ns} "
                   f"(`kubectl describe pod {pod['metadata']['name']} -n {ns}`)", since)
