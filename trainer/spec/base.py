"""The base of every spec section (trainer/spec/job.py and its section modules). Torch-free."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Every section forbids unknown fields, so a typo is an error, never a silent default."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


# A Kubernetes resource quantity as pods take it: `32`, `500m`, `400Gi`, `1.5T`, `2e9`.
QUANTITY = re.compile(r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
GiB = 2**30
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # a Kubernetes name (DNS-1123 label)


def quantity(value: str | None, unit: str) -> str | None:
    """`value` when it is a Kubernetes quantity (None passes); else a ValueError naming the fix."""
    if value is not None and not QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity: write e.g. {unit}")
    return value


def cpu_quantity(value: object, unit: str) -> str | None:
    """A CPU count as a quantity: a number (`cpu: 32`, `--set resources.cpu=32`) becomes its string."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = f"{value:g}"
    return quantity(value if value is None else str(value), unit)


def quantity_value(value: str) -> float:
    """The number a quantity stands for (bytes for memory, cores for CPU)."""
    m = QUANTITY.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number, suffix = m.group(1), m.group(3) or ""
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return float(number + suffix)
    return float(number) * _SUFFIX[suffix]


def gibibytes(n_bytes: float) -> str:
    """Bytes as a whole number of GiB, rounded up: `24Gi`."""
    return f"{max(1, -(-int(n_bytes) // GiB))}Gi"


# A duration as people write one: `36h`, `90m`, `2d`, `1h30m`, `3600s` (or a bare number of seconds).
DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def duration_seconds(value: object, field: str) -> int:
    """Seconds in a duration; a ValueError naming `field` and the fix for anything else (zero included)."""
    text = f"{value}".strip() if isinstance(value, int | str) and not isinstance(value, bool) else None
    if text is not None and text.isdigit():
        seconds = int(text)
    elif text and (m := DURATION.match(text)) and any(m.groups()):
        days, hours, minutes, secs = (int(g or 0) for g in m.groups())
        seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    else:
        raise ValueError(f"{field}: {value!r} is not a duration: write e.g. `36h`, `90m`, `2d` or `1h30m`")
    if seconds <= 0:
        raise ValueError(f"{field}: a duration of {value!r} is no time at all: write e.g. `36h`")
    return seconds
