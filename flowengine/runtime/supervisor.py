"""Background loops that never die silently.

A loop is a piece of work done again and again, with a pause between turns. A turn whose work
raises is logged with its traceback, counted, and tried again after a backoff (1 s, doubling, at
most a minute) instead of the pause; the loop then goes on as before. While a loop's last turn
failed, `/readyz` names it with its error, so an operator sees a stuck engine instead of a
healthy-looking one whose timers stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec

log = logging.getLogger("flowengine.loops")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0


class LoopState(msgspec.Struct):
    name: str
    iterations: int = 0
    failures: int = 0  # in all
    failing_since: float | None = None  # the first of the failures in a row, if the last iteration failed
    consecutive: int = 0
    last_error: str = ""


class Supervisor:
    def __init__(
        self,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.loops: dict[str, LoopState] = {}
        self._sleep = sleep
        self._on_failure = on_failure or (lambda name: None)

    def failing(self) -> dict[str, str]:
        """Loops whose last iteration failed, with what it said."""
        failing = (s for s in self.loops.values() if s.consecutive)
        return {s.name: f"{s.consecutive} failure(s) in a row: {s.last_error}" for s in failing}

    async def run(self, name: str, work: Callable[[], Awaitable[None]], pause: Callable[[], Awaitable[None]]) -> None:
        state = self.loops.setdefault(name, LoopState(name))
        while True:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(state, exc)
                await self._sleep(min(BACKOFF_FIRST * 2 ** (state.consecutive - 1), BACKOFF_MAX))
                continue
            state.iterations += 1
            if state.consecutive:
                log.warning("loop %s recovered after %d failure(s)", name, state.consecutive)
                state.consecutive = 0
                state.failing_since = None
            await pause()

    def _failed(self, state: LoopState, exc: Exception) -> None:
        state.failures += 1
        state.consecutive += 1
        state.failing_since = state.failing_since or time.time()
        state.last_error = f"{type(exc).__name__}: {exc}"
        self._on_failure(state.name)
        log.error("loop %s failed (%d in a row), retrying", state.name, state.consecutive, exc_info=exc)
