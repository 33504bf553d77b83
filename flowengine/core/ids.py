"""UUIDv7 run IDs: time-ordered, so the newest runs sort last in an index."""

from __future__ import annotations

import os
import time

_pool = bytearray()


def _random10() -> bytes:
    """10 random bytes, from one getrandom call per 400 IDs."""
    global _pool
    if not _pool:
        _pool = bytearray(os.urandom(4000))
    chunk = bytes(_pool[-10:])
    del _pool[-10:]
    return chunk


def uuid7(now_ns: int | None = None, rand: bytes | None = None) -> str:
    ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    tail = int.from_bytes(_random10() if rand is None else rand, "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (tail >> 68 & 0xFFF) << 64 | 0b10 << 62
    value |= tail & ((1 << 62) - 1)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
