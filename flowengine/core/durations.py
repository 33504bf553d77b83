"""Durations as operators write them: `90` (seconds), `1.5`, `"90s"`, `"15m"`, `"1h30m"`, `"2d"`, `"500ms"`.

One parser for every duration a flow or the configuration takes (a well's TTL, a task's Timeout and
Backoff, the `*_ttl`, `*_retention` and `*_interval` settings), so they all read the same way.
"""

from __future__ import annotations

import math
import re

Duration = int | float | str  # seconds, or a string with units

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_duration(value: object) -> float:
    """Seconds in a number or a string like "90s", "15m", "1h30m"; ValueError otherwise.

    Only the form is checked here: what range a duration may have is its user's to say."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a duration: give seconds (90) or a string like '90s', '15m', '1h'")
    seconds = float(value) if isinstance(value, int | float) else _parse_text(value)
    if not math.isfinite(seconds):
        raise ValueError(f"duration {value!r} must be a finite number of seconds")
    return seconds


def _parse_text(value: str) -> float:
    text = value.strip().lower()
    if _NUMBER.fullmatch(text):
        return float(text)
    parts = _PART.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(
            f"duration {value!r} is not a number with a unit ms, s, m, h or d, like '90s', '15m' or '1h30m'"
        )
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
