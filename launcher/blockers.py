"""Why a submission does not start: what the cluster's events and the pods' status say, with the fix.

Read for a submission that has not ended, and only where something looks stuck, so a healthy job
costs no extra API call:

- a Job with fewer pods than it should run: its `FailedCreate` events (the Job controller could
  not create a pod: a ResourceQuota is full, a quota requires limits, an admission webhook or Pod
  Security refused it);
- a Pending pod the scheduler cannot place (`PodScheduled=False`, `Unschedulable`): the newest
  `FailedScheduling` message and what the cluster autoscaler (`TriggeredScaleUp`,
  `NotTriggerScaleUp`, `FailedScaleUp`) or Karpenter (`Nominated`) says about it;
- a Pending pod whose container waits in `ErrImagePull` / `ImagePullBackOff` / `InvalidImageName`,
  or in `CreateContainerConfigError` (a Secret or a key in it is missing).

Events are core/v1 Events read with `fieldSelector=involvedObject.kind=...,involvedObject.name=...`.
Without the right to list events the pods' own status still gives what it can.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from launcher.backends.kube_errors import ApiError

if TYPE_CHECKING:
    from launcher.backends.kubernetes import Cluster

IMAGE = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
CONFIG = ("CreateContainerConfigError",)
AUTOSCALER = ("TriggeredScaleUp", "NotTriggerScaleUp", "FailedScaleUp", "Nominated")
SCALING_UP = ("TriggeredScaleUp", "Nominated")  # cluster-autoscaler, Karpenter: a node for this pod is on its way
GPU = "nvidia.com/gpu"
# The chart's credential environment (charts/kubetune/templates/_credentials.tpl): variable -> (section, value)
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": ("s3", "accessKeyId"), "AWS_SECRET_ACCESS_KEY": ("s3", "secretAccessKey"),
    "AWS_SESSION_TOKEN": ("s3", "sessionToken"), "AWS_ENDPOINT_URL": ("s3", "endpointUrl"),
    "MLFLOW_TRACKING_USERNAME": ("mlflow", "username"), "MLFLOW_TRACKING_PASSWORD": ("mlflow", "password"),
    "MLFLOW_TRACKING_TOKEN": ("mlflow", "token"),
}


@dataclass
class Blocker:
    """One thing that keeps a submission from starting: what, where, since when, and the fix."""

    kind: str  # quota | refused | unschedulable | image | config | export (not started after training)
    where: str  # `Job ml/x`, `rank 1 (x-1-abcde)`, `export (x-export-0-abcde)`
    summary: str  # a few words, for the final error line
    message: str  # what happened, with the cluster's own words
    fix: str
    since: str = ""  # when the cluster first said so (an event's or a condition's time), "" when unknown
    progressing: bool = False  # a scale-up or a preemption is under way: not stuck (yet)


# -- reading events ----------------------------------------------------------------------------------


def events(cluster: Cluster, kind: str, name: str) -> list[dict[str, Any]]:
    """The object's events; [] when the user may not list events (the pods' status still says something)."""
    try:
        return cluster.list("Event", fields=f"involvedObject.kind={kind},involvedObject.name={name}")
    except ApiError as e:
        if e.code == 403:
            return []
        raise


def _time(text: str | None) -> datetime:
    """An API timestamp (`...Z`, or a MicroTime with microseconds); the earliest time when it is missing or odd."""
    try:
        found = datetime.fromisoformat(text) if text else None
    except ValueError:
        found = None
    if found is None:
        return datetime.min.replace(tzinfo=UTC)
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def last_seen(event: dict[str, Any]) -> str:
    """When the event last happened: core/v1 `lastTimestamp`, or an events.k8s.io series / eventTime."""
    return ((event.get("series") or {}).get("lastObservedTime") or event.get("lastTimestamp")
            or event.get("eventTime") or (event.get("metadata") or {}).get("creationTimestamp") or "")


def first_seen(event: dict[str, Any]) -> str:
    return event.get("firstTimestamp") or event.get("eventTime") or (event.get("metadata") or {}).get(
        "creationTimestamp") or ""


def newest(found: list[dict[str, Any]], *reasons: str) -> dict[str, Any] | None:
    """The newest event with one of these reasons."""
    matching = [e for e in found if e.get("reason") in reasons]
    return max(matching, key=lambda e: _time(last_seen(e)), default=None)


def _earliest(found: list[dict[str, Any]], *reasons: str) -> str:
    times = [t for e in found if e.get("reason") in reasons if (t := first_seen(e))]
    return min(times, key=_time, default="")


# -- what to look at ---------------------------------------------------------------------------------


def _owned(pods: list[dict[str, Any]], owner: dict[str, Any]) -> list[dict[str, Any]]:
    uid = owner["metadata"].get("uid")
    return [p for p in pods if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])]


def _finished(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Completed", "Failed") and c.get("status") == "True" for c in conditions)


def _short_of_pods(job: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """A running (not suspended, not finished) Job with fewer live pods than it should have now."""
    spec, status = job.get("spec") or {}, job.get("status") or {}
    if spec.get("suspend") or _finished(job):
        return False
    completions = int(spec.get("completions") or 1)
    want = min(int(spec.get("parallelism") or completions), completions - int(status.get("succeeded") or 0))
    live = [p for p in _owned(pods, job) if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    return len(live) < want


def _jobs(cluster: Cluster, owner: dict[str, Any], export: dict[str, Any] | None,
          pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    jobs = [export] if export else []
    if owner.get("kind") != "JobSet":
        return [owner, *jobs]
    spec = owner.get("spec") or {}
    want = sum(int(r.get("replicas", 1)) * int(((r.get("template") or {}).get("spec") or {}).get("parallelism") or 1)
               for r in spec.get("replicatedJobs") or [])
    training = [p for p in pods if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/component", "training")
                == "training" and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    if spec.get("suspend") or _finished(owner) or len(training) >= want:
        return jobs
    return cluster.list("Job", f"jobset.sigs.k8s.io/jobset-name={owner['metadata']['name']}") + jobs


def find(cluster: Cluster, owner: dict[str, Any], export: dict[str, Any] | None,
         pods: list[dict[str, Any]]) -> list[Blocker]:
    """What keeps the submission (its training Job or JobSet, its export Job, their pods) from starting."""
    ns = cluster.namespace
    found = []
    for job in _jobs(cluster, owner, export, pods):
        if _short_of_pods(job, pods):
            name = job["metadata"]["name"]
            refused = newest(events(cluster, "Job", name), "FailedCreate")
            if refused:
                found.append(failed_create(f"Job {ns}/{name}", refused, ns))
    for pod in pods:
        found += pod_blockers(cluster, pod, ns)
    if export is not None and (export.get("spec") or {}).get("suspend") and _succeeded(owner) \
            and "kueue.x-k8s.io/queue-name" not in (export["metadata"].get("labels") or {}):  # queued: Kueue's turn
        found.append(_export_not_started(owner, export, ns))
    return found


def _succeeded(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Completed") and c.get("status") == "True" for c in conditions)


def _export_not_started(owner: dict[str, Any], export: dict[str, Any], ns: str) -> Blocker:
    """Training succeeded, the export Job is still suspended: rank 0 could not start it (trainer/train/start_export.py)."""
    from trainer.train.start_export import QUEUE_LABEL, manual_command, patch_for

    name = export["metadata"]["name"]
    since = (owner.get("status") or {}).get("completionTime") or ""
    return Blocker("export", f"Job {ns}/{name}", "the export Job was not started",
                   "training succeeded but its export Job is still suspended: the trainer of rank 0 could not start "
                   "it (its last log lines say why: `launch logs " + owner["metadata"]["name"] + "`)",
                   f"start it: {manual_command(name, ns, patch_for((owner['metadata'].get('labels') or {}).get(QUEUE_LABEL)))}",
                   since)


def who(pod: dict[str, Any]) -> str:
    """`rank 1 (x-1-abcde)` or `export (x-export-0-abcde)`: how `launch` names a pod everywhere."""
    labels = pod["metadata"].get("labels") or {}
    index = labels.get("batch.kubernetes.io/job-completion-index")
    component = labels.get("app.kubernetes.io/component", "training")
    role = f"rank {index}" if component == "training" and index is not None else component
    return f"{role} ({pod['metadata']['name']})"


# -- FailedCreate: quota, admission ------------------------------------------------------------------

_EXCEEDED = re.compile(r"exceeded quota: (?P<quota>[^,]+), requested: (?P<requested>.*?), used: (?P<used>.*?), "
                       r"limited: (?P<limited>[^\s,]*(?:,[^\s,]+)*)")
_MUST_SPECIFY = re.compile(r"failed quota: (?P<quota>[^:]+): must specify (?P<what>.*)$")
_MUST_SPECIFY_BARE = re.compile(r"must specify (?P<what>.*)$")
_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
             "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^(?P<number>[0-9.]+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|)$")


def _pairs(text: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in text.split(",") if "=" in p)


def _quantity(text: str) -> tuple[Decimal, str] | None:
    m = _QUANTITY.match(text.strip())
    if not m:
        return None
    try:
        return Decimal(m["number"]) * Decimal(_SUFFIXES[m["suffix"]]), m["suffix"]
    except InvalidOperation:
        return None


def _left(used: str, limited: str) -> str | None:
    """What the quota has left of a resource, in the limit's unit (`0`, `16Gi`, `1500m`)."""
    u, lim = _quantity(used), _quantity(limited)
    if u is None or lim is None:
        return None
    left = max(Decimal(0), lim[0] - u[0]) / Decimal(_SUFFIXES[lim[1]])
    return f"{left.normalize():f}{lim[1]}" if left else "0"


def failed_create(where: str, event: dict[str, Any], ns: str) -> Blocker:
    said = event.get("message") or ""
    why = said.split(" is forbidden: ", 1)[-1]
    since = first_seen(event)
    times = int(event.get("count") or (event.get("series") or {}).get("count") or 1)
    seen = f" ({times} times)" if times > 1 else ""
    if m := _EXCEEDED.search(said):
        quota = m["quota"].strip()
        requested, used, limited = _pairs(m["requested"]), _pairs(m["used"]), _pairs(m["limited"])
        parts = []
        for resource, amount in requested.items():
            left = _left(used.get(resource, "0"), limited.get(resource, "")) if resource in limited else None
            parts.append(f"a pod requests {resource}={amount}, " + (
                f"{left} left ({used.get(resource, '?')} of {limited[resource]} in use)" if left is not None
                else f"{used.get(resource, '?')} of {limited.get(resource, '?')} in use"))
        gpus = any(GPU in r for r in requested)
        less = ("fewer GPUs per pod (resources.gpus_per_node) or fewer pods (resources.nodes)" if gpus else
                "smaller requests (the chart's `resources` value, in a values file) or fewer pods (resources.nodes)")
        return Blocker(
            "quota", where, f"ResourceQuota {quota} is full",
            f"cannot create its pods{seen}: ResourceQuota {quota} in namespace {ns} is full: {'; '.join(parts)}",
            f"ask for {less} to fit what is left, wait for other jobs in {ns} to end (the Job keeps retrying), "
            f"submit to another namespace (-n) or Kueue queue (resources.queue), or ask your platform team to raise "
            f"the quota (`kubectl describe resourcequota {quota} -n {ns}`)", since)
    if m := (_MUST_SPECIFY.search(said) or _MUST_SPECIFY_BARE.search(said)):
        quota = m.groupdict().get("quota")
        named = f"ResourceQuota {quota.strip()}" if quota else "a ResourceQuota"
        missing = "; ".join(x.strip() for x in m["what"].split(";") if x.strip())
        return Blocker(
            "quota", where, f"{named} requires resource limits",
            f"cannot create its pods{seen}: {named} in namespace {ns} requires limits the pods do not set: "
            f"must specify {missing}",
            "set them with the chart's `resources` value in a values file (-f), e.g. "
            "`resources: {limits: {cpu: '8', memory: 64Gi}}`, or ask your platform team for a LimitRange in "
            f"{ns} that gives defaults", since)
    return Blocker(
        "refused", where, "the cluster refuses its pods", f"cannot create its pods{seen}: {why}",
        f"the cluster's admission (a webhook, Pod Security, a LimitRange) refuses the pods as the chart renders "
        f"them: the message above names the rule; change the values it names, or ask your platform team what "
        f"namespace {ns} allows", since)


# -- pods --------------------------------------------------------------------------------------------


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
    since = _earliest(said, "FailedScheduling") or condition.get("lastTransitionTime") or ""
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
    since = _earliest(pulls, "Failed")
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
