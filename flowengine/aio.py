"""asyncio helpers that the standard library lacks, or gets wrong on the Python versions we support."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Whether `event` is set within `timeout` seconds (None: no limit).

    Not `asyncio.wait_for(event.wait(), timeout)`: on Python 3.11 that swallows a cancellation which
    arrives in the instant the event is set, so the cancelled task carries on (still marked as
    cancelling). An engine stopping right after a commit had kicked its loops waited for them
    forever. `asyncio.timeout()` tells its own cancellation from another's."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
