"""Run IDs: UUIDv7, strictly increasing from one generator whatever the clock does."""

from __future__ import annotations

import uuid

from flowengine.core.ids import COUNTER_BITS, UUID7, uuid7_floor


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms * 1_000_000 + 123_456  # nanoseconds within the millisecond do not count


def fields(value: str) -> tuple[int, int, int]:
    """(timestamp ms, version, variant) of a UUID string."""
    u = uuid.UUID(value)
    return u.int >> 80, u.version or 0, u.int >> 62 & 0b11


def test_ids_in_one_millisecond_strictly_increase_and_are_valid_uuid7():
    clock = Clock(1_700_000_000_000)
    make = UUID7(clock)
    ids = [make() for _ in range(10_000)]  # all in the same millisecond
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {fields(i) for i in ids} == {(1_700_000_000_000, 7, 0b10)}
    clock.ms += 1
    later = make()
    assert later > ids[-1] and fields(later)[0] == clock.ms


def test_each_millisecond_starts_from_a_random_counter_with_room_to_count():
    clock = Clock(1_700_000_000_000)
    make = UUID7(clock)
    counters = []
    for _ in range(200):
        clock.ms += 1
        value = uuid.UUID(make()).int
        counters.append((value >> 64 & 0xFFF) << 30 | (value >> 32 & ((1 << 30) - 1)))
    assert all(c < 1 << (COUNTER_BITS - 1) for c in counters)  # the top bit is clear: half the range is left
    assert len(set(counters)) == len(counters)  # random, not a fixed start


def test_a_clock_stepping_back_does_not_break_the_order():
    clock = Clock(1_700_000_000_000)
    make = UUID7(clock)
    first = make()
    clock.ms -= 5_000  # an NTP correction
    second = make()
    assert second > first and fields(second)[0] == 1_700_000_000_000


def test_a_full_counter_borrows_the_next_millisecond():
    clock = Clock(1_700_000_000_000)
    seed = b"\xff" * 6  # the largest seed: the counter's top bit clear, all the others set
    make = UUID7(clock, random_bytes=lambda n: seed * (n // 6 + 1))
    ids = [make() for _ in range(3)]
    assert ids == sorted(ids)
    make._counter = (1 << COUNTER_BITS) - 1  # as if 2**41 IDs had been made in this millisecond
    overflowed = make()
    assert overflowed > ids[-1] and fields(overflowed)[0] == clock.ms + 1


def test_the_floor_of_a_millisecond_sorts_between_the_ids_before_and_after_it():
    ms = 1_700_000_000_123
    ids = [UUID7(clock_ns=lambda at=at: at * 1_000_000)() for at in (ms - 1, ms, ms + 1)]
    floor = uuid7_floor(ms / 1000 + 0.0004)
    assert ids[0] < floor < ids[1] < ids[2] and uuid.UUID(floor).version == 7
