"""Seeded randomness that is the same on every machine, rank and Python version: `key` (a 64-bit
key from a seed and names), `mix` (splitmix64's finaliser, a well-spread hash of a 64-bit
integer) and `permuted` (element i of a keyed permutation of range(n), computed, never listed).
The stripes of a pass are opened and picked with these (trainer/data/stripes.py). No torch here.
"""

from __future__ import annotations

import hashlib

MASK = 2**64 - 1
GAMMA = 0x9E3779B97F4A7C15


def mix(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of a 64-bit integer."""
    x = (x + GAMMA) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def key(*parts: object) -> int:
    """A 64-bit key from a seed and names (the same on every machine and Python version)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big")


def permuted(i: int, n: int, k: int) -> int:
    """Element `i` of a permutation of range(n) drawn by key `k`: a four-round Feistel network on
    the smallest even number of bits that holds n, walked until it lands inside range(n)."""
    if not 0 <= i < n:
        raise ValueError(f"{i} is not in range({n})")
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1
    x = i
    while True:
        left, right = x >> half, x & mask
        for r in range(4):
            left, right = right, left ^ (mix(k ^ (r << 60) ^ right) & mask)
        x = (left << half) | right
        if x < n:
            return x
