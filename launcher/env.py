"""Settings `launch` reads from the environment (`KUBETUNE_POLL_SECONDS`, `KUBETUNE_K8S_BACKOFF`, ...), each
checked the same way: a bad value is a UserError naming the variable and what it wants."""

from __future__ import annotations

import os

from launcher.errors import UserError


def seconds(name: str, default: float, what: str, zero_ok: bool = False) -> float:
    """Seconds from environment variable `name`, `default` when unset."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0 or (value == 0 and not zero_ok):
        raise UserError(f"{name}={raw!r}: {what}, a number {'of 0 or more' if zero_ok else 'above 0'}")
    return value
