"""Timestamps as the APIs write them: RFC 3339, UTC, with a `Z`."""

from __future__ import annotations

import functools
import time


@functools.lru_cache(maxsize=4096)
def _seconds(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def rfc3339(t: float, precise: bool = True) -> str:
    """UTC, 'Z'; milliseconds unless `precise` is off (TTLs and expiries are whole seconds)."""
    whole = int(t)
    return f"{_seconds(whole)}.{int((t - whole) * 1000):03d}Z" if precise else f"{_seconds(whole)}Z"
