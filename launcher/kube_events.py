"""The cluster's core/v1 Events about an object, read with `fieldSelector=involvedObject.kind=...,
involvedObject.name=...`, and when each happened: what blockers are read from (launcher/blockers.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from launcher.backends.kube_errors import ApiError

if TYPE_CHECKING:
    from launcher.backends.kubernetes import Cluster


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


def earliest(found: list[dict[str, Any]], *reasons: str) -> str:
    times = [t for e in found if e.get("reason") in reasons if (t := first_seen(e))]
    return min(times, key=_time, default="")
