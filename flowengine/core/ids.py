"""UUIDv7 run IDs: time-ordered, so the newest runs sort last in an index.

IDs from one generator are strictly increasing, also within a millisecond (RFC 9562, section
6.2, method 1): after the 48-bit millisecond timestamp come 42 bits of counter (the 12 bits of
`rand_a` and the top 30 of `rand_b`), seeded at random at each new millisecond with its top bit
clear and incremented by one for each further ID in the same millisecond; 32 random bits follow.
When the clock steps back, IDs keep the last timestamp issued and count on; when the counter
overflows (some 2 trillion IDs in a millisecond), the timestamp moves one millisecond ahead.
Listings page by ID (keyset pagination), which needs exactly that order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

COUNTER_BITS = 42
_COUNTER_LOW = 30  # bits of the counter in rand_b
_LOW_MASK = (1 << _COUNTER_LOW) - 1
_SEED_SHIFT = 48 - (COUNTER_BITS - 1)  # a 6-byte random number cut to the counter's width, top bit clear


class UUID7:
    """A generator of strictly increasing UUIDv7 strings; `clock_ns` and `random_bytes` can be injected.

    Not thread-safe: the engine makes IDs on its event loop's thread only."""

    def __init__(
        self, clock_ns: Callable[[], int] = time.time_ns, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        self._clock_ns = clock_ns
        self._random_bytes = random_bytes
        self._pool = b""
        self._ms = -1
        self._counter = 0

    def _random(self, n: int) -> int:
        """n random bytes, from one system call per few hundred IDs."""
        if len(self._pool) < n:
            self._pool = self._random_bytes(4096)
        chunk, self._pool = self._pool[:n], self._pool[n:]
        return int.from_bytes(chunk, "big")

    def __call__(self) -> str:
        ms = self._clock_ns() // 1_000_000
        if ms > self._ms:
            self._ms, self._counter = ms, self._random(6) >> _SEED_SHIFT
        else:
            self._counter += 1
            if self._counter >> COUNTER_BITS:  # used up (or the clock stepped back): borrow the next millisecond
                self._ms, self._counter = self._ms + 1, self._random(6) >> _SEED_SHIFT
        counter = self._counter
        value = (
            (self._ms & ((1 << 48) - 1)) << 80
            | 0x7 << 76
            | (counter >> _COUNTER_LOW) << 64
            | 0b10 << 62
            | (counter & _LOW_MASK) << 32
            | self._random(4)
        )
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


uuid7 = UUID7()  # the process's generator: every run ID comes from here, so all of them increase


def uuid7_floor(seconds: float) -> str:
    """The least UUIDv7 string of the millisecond `seconds` falls in: every ID made at or after that
    time sorts after it, every one made before sorts before it (a time range as an ID range)."""
    h = f"{int(seconds * 1000) & ((1 << 48) - 1):012x}7000" + "8" + "0" * 15
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
