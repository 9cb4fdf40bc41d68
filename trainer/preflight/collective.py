"""The process group itself: join it the way accelerate will (a TCPStore on rank 0's address and
port), all-reduce a known tensor, measure the all-reduce bandwidth, leave.

gloo always (it is what CPU jobs train with, and it needs every pair of ranks to reach each other
directly); nccl as well when the pod sees a GPU and `--backend` allows it, on the pod's first GPU.
Bandwidth is the bus bandwidth of nccl-tests: size / time x 2(N-1)/N, comparable across N.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from trainer.preflight import PreflightError, say
from trainer.preflight.rendezvous import Rendezvous

if TYPE_CHECKING:
    import torch

TIMED_ROUNDS = 3
MiB = 1024 * 1024


def backends(choice: str, has_gpu: bool) -> list[str]:
    """The backends to check for `--backend auto|gloo|nccl` on a pod with or without a GPU."""
    if choice == "nccl" and not has_gpu:
        raise PreflightError(
            "preflight.backend is `nccl` but this pod sees no GPU: give the pods GPUs (gpu.type / gpu.perNode), "
            "or set preflight.backend to `auto` or `gloo`"
        )
    return ["gloo", "nccl"] if choice == "nccl" or (choice == "auto" and has_gpu) else ["gloo"]


def _url(rdv: Rendezvous) -> str:
    host = f"[{rdv.host}]" if ":" in rdv.host else rdv.host
    return f"tcp://{host}:{rdv.port}"


def check(rdv: Rendezvous, rank: int, choice: str, size_mib: int, started: float) -> None:
    """Join, verify and measure each backend, then destroy the group (rank 0's port is free afterwards)."""
    import torch
    import torch.distributed as dist

    chosen = backends(choice, torch.cuda.is_available())
    timeout = timedelta(seconds=rdv.group_timeout)  # every rank is up: seconds, not the wait for nodes
    try:
        dist.init_process_group("gloo", init_method=_url(rdv), rank=rank, world_size=rdv.nodes, timeout=timeout)
    except RuntimeError as e:
        raise PreflightError(_not_formed(rdv, "gloo", e)) from None
    try:
        joined = time.monotonic() - started
        for backend in chosen:
            if backend == "gloo":
                group, device = None, torch.device("cpu")
            else:
                torch.cuda.set_device(0)
                device = torch.device("cuda", 0)
                try:
                    group = dist.new_group(backend="nccl", timeout=timeout, device_id=device)
                except RuntimeError as e:
                    raise PreflightError(_not_formed(rdv, "nccl", e)) from None
            measured = _all_reduce(dist, torch, rdv.nodes, rank, device, group, backend, size_mib)
            head = f"{rdv.nodes} ranks joined in {joined:.1f}s; " if backend == chosen[0] else ""
            say(f"{head}{measured} ({backend})")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _all_reduce(
    dist: Any, torch: Any, nodes: int, rank: int, device: torch.device, group: Any, backend: str, size_mib: int
) -> str:
    """Check a known sum, then time `size_mib` MiB all-reduces; what was measured, as words."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        known = torch.tensor([float(rank + 1)], dtype=torch.float64, device=device)
        dist.all_reduce(known, group=group)
        expected = nodes * (nodes + 1) / 2
        if known.item() != expected:
            raise PreflightError(
                f"the {backend} all-reduce of each rank's rank+1 gave {known.item():g}, not {expected:g}: ranks take "
                "part in the group with wrong data; check that every pod runs the same image"
            )
        if size_mib <= 0:
            return "all-reduce checked, bandwidth not measured (preflight.allReduceMiB is 0)"
        if nodes == 1:
            return "all-reduce checked; one rank: no bandwidth to measure"
        buf = torch.ones(size_mib * MiB // 4, dtype=torch.float32, device=device)
        dist.all_reduce(buf, group=group)  # warm-up, and every element must have arrived
        if not bool((buf == nodes).all()):
            raise PreflightError(f"a {size_mib} MiB {backend} all-reduce returned wrong values: the transport corrupts data")
        sync()
        dist.barrier(group=group)
        t0 = time.perf_counter()
        for _ in range(TIMED_ROUNDS):
            dist.all_reduce(buf, group=group)
        sync()
        seconds = (time.perf_counter() - t0) / TIMED_ROUNDS
    except RuntimeError as e:  # a rank died or the transport broke in the middle
        raise PreflightError(f"the {backend} all-reduce failed: {_first_line(e)}; the other ranks' logs say why") from None
    busbw = size_mib * MiB / seconds * 2 * (nodes - 1) / nodes / 1e9
    return f"all-reduce {size_mib} MiB: {busbw:.2f} GB/s, {seconds * 1000:.0f} ms each"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _not_formed(rdv: Rendezvous, backend: str, e: BaseException) -> str:
    return (
        f"the {backend} process group of {rdv.nodes} ranks did not form within {rdv.group_timeout:.0f} s although every rank "
        f"had reached rank 0 at {rdv.where} ({_first_line(e)}). {backend} connects every pair of ranks directly, "
        f"on other ports than {rdv.port}: a NetworkPolicy that allows only that port blocks it; on nodes with several "
        "network interfaces set GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME in the chart's `env`"
    )
