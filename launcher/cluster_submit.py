"""A submission sent to a cluster (`launch submit`): rendered for the target's namespace, the plan said
before anything is created, a failed job deleted first when resumed (backends/kube_resume.py), then its
objects created (backends/kube_submit.py). Following it afterwards is launcher/cluster.py."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher import helm
from launcher.backends import kube_submit
from launcher.backends.kube_resume import retire
from launcher.backends.kubernetes import Cluster
from launcher.status import QUEUE, labels, main_container
from launcher.submission import Submission, render

if TYPE_CHECKING:
    from launcher.backends.kube_submit import Created
    from launcher.backends.kubeconfig import Target


def submit_cluster(
    sub: Submission, target: Target, extra_values: Sequence[Path] = (), say: Callable[[str], None] = print
) -> list[Created]:
    """Render for the target's namespace, say the plan, then create the objects (backends/kube_submit.py)."""
    manifests = helm.parse_manifests(render(sub, extra_values, namespace=target.namespace))
    cluster = Cluster(target)
    if sub.resumed:
        retire(cluster, sub.name, manifests, say)
    for line in plan_lines(sub, manifests, target):
        say(line)
    return kube_submit.create(cluster, manifests, sub.name, say)


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "JobSet":
        spec = spec["replicatedJobs"][0]["template"]["spec"]
    return spec["template"]


def plan_lines(sub: Submission, manifests: list[dict[str, Any]], target: Target) -> list[str]:
    spec, res = sub.spec, sub.spec.resources
    owner = kube_submit.owner_of(manifests, sub.name)
    template = pod_template(owner)
    image = next(c["image"] for c in template["spec"]["containers"] if c["name"] == main_container(template))
    gpus = "none (CPU only)" if res.gpu == "none" else (
        f"{res.gpu} x {res.gpus_per_node} per node x {res.nodes} node(s) = {res.gpus_per_node * res.nodes}")
    queue = labels(owner).get(QUEUE)
    export = next((m for m in manifests if m["kind"] == "Job" and m["metadata"]["name"] == f"{sub.name}-export"), None)
    return [
        f"plan for {sub.name} (spec {spec.name}):",
        f"  GPUs:       {gpus}",
        f"  strategy:   {spec.training.strategy}",
        f"  nodes:      {res.nodes} pod(s) of {owner['kind']} {sub.name}, {res.processes_per_node} process(es) each",
        f"  queue:      {queue + ' (Kueue LocalQueue)' if queue else 'none: starts when the scheduler places the pods'}",
        f"  namespace:  {target.namespace} (context {target.context}, {target.server})",
        f"  image:      {image}",
        f"  export:     {'Job ' + export['metadata']['name'] if export else 'none (no export section in the spec)'}",
    ]
