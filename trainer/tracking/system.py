"""MLflow system metrics while a job trains (`tracking.system_metrics`), from rank 0's machine.

MLflow's own monitor (`mlflow.start_run(run_id=..., log_system_metrics=True)`, mlflow 3) samples, every
`tracking.system_metrics_interval` seconds, the CPU, memory, disk and network through psutil, and each GPU's
utilisation, memory and power through NVML (nvidia-ml-py) where a driver answers; it logs them to the run as
`system/cpu_utilization_percentage`, `system/system_memory_usage_megabytes`, `system/disk_usage_percentage`,
`system/network_receive_megabytes`, `system/gpu_0_utilization_percentage`, ... with a step of their own
(a resumed job continues after the last one). It runs in a thread of its own and stops with `stop`
(`Tracker.end`) or when the run is no longer RUNNING.

Rank 0 only: the other ranks of a multi-node job do not know the run (rank 0 creates it) and, with the local
`sqlite:///` store, could not write to it; their machines are alike. Never fails training: a monitor that
cannot start is said once and skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from trainer import say as out
from trainer.spec.output import TrackingSpec

_previous: list[str | None] = []  # MLFLOW_TRACKING_URI before `start`


def start(tracking: TrackingSpec, uri: str, run_id: str, say: Callable[[str], None]) -> bool:
    """Start sampling into run `run_id` at `uri`; True when it runs."""
    if not tracking.system_metrics:
        return False
    import mlflow
    from mlflow.system_metrics import set_system_metrics_sampling_interval

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # not "Started monitoring ..." in the log
    try:
        if mlflow.active_run() is not None:  # a job before this one in the same process (tests) left it open
            mlflow.end_run()
        _previous[:] = [os.environ.get("MLFLOW_TRACKING_URI")]  # set_tracking_uri sets it: put back by `stop`
        mlflow.set_tracking_uri(uri)
        set_system_metrics_sampling_interval(tracking.system_metrics_interval)
        mlflow.start_run(run_id=run_id, log_system_metrics=True)
    except Exception as e:  # metrics about the machine are never worth a failed job
        say(f"MLflow system metrics not logged ({str(e).splitlines()[0][:200]})")
        return False
    return True


def stop(status: str) -> bool:
    """Stop the monitor (joined: no sample is taken after this) and end the fluent run with `status`; False."""
    import mlflow
    from mlflow.system_metrics import set_system_metrics_sampling_interval

    try:
        if mlflow.active_run() is not None:
            mlflow.end_run(status=status)
        if _previous:
            mlflow.set_tracking_uri(_previous.pop())  # None: unset, as before `start`
            set_system_metrics_sampling_interval(None)  # the environment variable it set: unset
    except Exception as e:  # the last samples only
        out.say(f"MLflow system metrics: could not end the monitor ({str(e).splitlines()[0][:200]})")
    return False
