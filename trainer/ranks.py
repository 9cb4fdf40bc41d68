"""Which process this is: rank, local rank and world size, from the environment torchrun, accelerate and
DeepSpeed set for every process (a lone process is rank 0 of 1). Torch-free: read before any process group exists.

The one place that answers "am I rank 0": output (trainer/say.py), checkpoints, the data stream's shard and
the exit reports all ask here.
"""

from __future__ import annotations

import os


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise ValueError(f"{name}={value!r}: not an integer (set by the launcher: torchrun, accelerate)") from None


def rank() -> int:
    """This process's rank in the job (`RANK`)."""
    return _int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its node (`LOCAL_RANK`): its GPU index."""
    return _int("LOCAL_RANK", 0)


def world_size() -> int:
    """Processes in the job (`WORLD_SIZE`)."""
    return _int("WORLD_SIZE", 1)


def local_world_size() -> int:
    """Processes on this node (`LOCAL_WORLD_SIZE`)."""
    return _int("LOCAL_WORLD_SIZE", 1)


def is_main() -> bool:
    """Whether this is the job's first process, which writes the shared outputs and speaks for the job."""
    return rank() == 0


def is_local_main() -> bool:
    """Whether this is its node's first process, which handles the node's local disk."""
    return local_rank() == 0
