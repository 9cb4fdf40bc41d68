"""Blockers of a Job that cannot create its pods (its `FailedCreate` events): a full ResourceQuota, one that
requires limits the pods do not set, or admission (a webhook, Pod Security, a LimitRange) refusing them."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from launcher.blocker import GPU, Blocker
from launcher.kube_events import first_seen

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
