"""UUIDv7 run IDs: time-ordered, so the newest runs sort last in an index."""

from __future__ import annotations

import os
import time
import uuid


def uuid7(now_ns: int | None = None, rand: bytes | None = None) -> str:
    ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    tail = int.from_bytes(os.urandom(10) if rand is None else rand, "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (tail >> 68 & 0xFFF) << 64 | 0b10 << 62
    value |= tail & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))
