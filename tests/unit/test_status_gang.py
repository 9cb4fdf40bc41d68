"""`launch status` of a multi-node job partly started: which ranks are Pending and why, which wait for them."""

from __future__ import annotations

from launcher.backends.kubeconfig import Target
from launcher.blockers import Blocker
from launcher.cluster import result
from launcher.status import PREFLIGHT_RUNNING, Pod, Snapshot, gang_line
from launcher.views import status_table

UNSCHEDULABLE = "no node can take it: 0/12 nodes are available: 12 Insufficient nvidia.com/gpu"


def snapshot(*pods: Pod, blockers: list[Blocker] | None = None) -> Snapshot:
    return Snapshot("sft-abc12", "ml", "sft", "", "pending", "0/4", None, list(pods), blockers or [])


def rank(r: int, phase: str, reason: str) -> Pod:
    return Pod(f"sft-abc12-{r}-x", "training", r, phase, 0, "-" if phase == "Pending" else f"node-{r}", reason)


def test_pending_ranks_are_named_with_why_and_the_ranks_waiting_for_them() -> None:
    snap = snapshot(
        rank(0, "Pending", PREFLIGHT_RUNNING), rank(1, "Pending", PREFLIGHT_RUNNING),
        rank(2, "Pending", "Unschedulable: 0/12 nodes are available"),
        rank(3, "Pending", "Unschedulable: 0/12 nodes are available"),
        blockers=[Blocker("unschedulable", f"rank {r} (sft-abc12-{r}-x)", "unschedulable", UNSCHEDULABLE, "fix")
                  for r in (2, 3)],
    )  # fmt: skip
    line = f"ranks 2,3 pending: {UNSCHEDULABLE}; ranks 0,1 waiting in preflight for them"
    assert gang_line(snap) == line
    assert line in status_table(snap, None, "no run")
    target = Target(api=None, namespace="ml", context="prod", server="https://127.0.0.1:6443")  # type: ignore[arg-type]
    assert result(snap, target, None, None)["gang"] == line  # -o json says it too


def test_without_a_blocker_the_pods_reason_says_why() -> None:
    snap = snapshot(rank(0, "Pending", PREFLIGHT_RUNNING), rank(1, "Pending", "init container preflight: PodInitializing"))
    assert gang_line(snap) == "rank 1 pending: init container preflight: PodInitializing; rank 0 waiting in preflight for them"


def test_nothing_to_say_when_no_rank_waits_or_none_is_behind() -> None:
    assert gang_line(snapshot(rank(0, "Pending", "Unschedulable: no"), rank(1, "Pending", "Unschedulable: no"))) is None
    assert gang_line(snapshot(rank(0, "Pending", PREFLIGHT_RUNNING), rank(1, "Pending", PREFLIGHT_RUNNING))) is None
    assert gang_line(snapshot(rank(0, "Running", ""), rank(1, "Running", ""))) is None
