"""Rate limits by key (a client's address, a user): a token bucket each, in memory.

A bucket holds up to `limit` tokens and refills at `limit` a `window`, so a key may burst `limit`
requests and then keep up the average. Buckets of the keys seen least recently are forgotten past
`keys` of them (a forgotten key starts full again: an attacker with that many addresses is not
stopped by a per-address limit anyway). Each engine keeps its own: with several engines on one
database a key gets each one's limit.
"""

from __future__ import annotations

import math

from flowengine.core.lru import LRU

REMEMBERED = 100_000  # keys whose buckets are kept


class RateLimit:
    def __init__(self, limit: int, window: float = 60.0, keys: int = REMEMBERED) -> None:
        self.limit = limit  # 0: no limit
        self.rate = limit / window  # tokens a second
        self._buckets: LRU[str, tuple[float, float]] = LRU(keys)  # key -> (tokens, when counted)

    def take(self, key: str, now: float) -> int:
        """0 when `key` may go ahead (one token taken), else the whole seconds until it may."""
        if not self.limit:
            return 0
        tokens, then = self._buckets.get(key) or (float(self.limit), now)
        tokens = min(float(self.limit), tokens + max(0.0, now - then) * self.rate)
        if tokens < 1.0:
            self._buckets.put(key, (tokens, now))
            return max(1, math.ceil((1.0 - tokens) / self.rate))
        self._buckets.put(key, (tokens - 1.0, now))
        return 0
