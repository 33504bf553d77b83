"""The token bucket behind the pairing limits: a burst of `limit`, then the average, key by key."""

from __future__ import annotations

from flowengine.core.ratelimit import RateLimit


def test_a_key_bursts_its_limit_then_waits_for_tokens_to_come_back():
    limit = RateLimit(3, window=60.0)
    assert [limit.take("a", 0.0) for _ in range(4)] == [0, 0, 0, 20]  # a token every 20 s
    assert limit.take("b", 0.0) == 0  # keys are apart
    assert limit.take("a", 5.0) == 15 and limit.take("a", 20.0) == 0 and limit.take("a", 21.0) == 19
    assert [limit.take("a", 1000.0) for _ in range(4)] == [0, 0, 0, 20]  # full again, never over


def test_no_limit_and_forgotten_keys():
    assert {RateLimit(0).take("a", 0.0) for _ in range(100)} == {0}
    limit = RateLimit(1, keys=2)
    assert [limit.take(k, 0.0) for k in ("a", "b", "c")] == [0, 0, 0]
    assert limit.take("a", 0.0) == 0  # the least recent key was forgotten: it starts full
    assert limit.take("c", 0.0) == 60
