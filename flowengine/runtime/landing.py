"""Landing detection for stores the engine does not receive uploads for itself.

Two ways in: bucket notifications (pushed to api/events.py, at once) and the reconciler, which
asks the store about waiting keys on a backoff schedule: soon after a URL is handed out, then
less and less often. A tick checks only the keys that are due, at most `reconcile_batch` of
them, so its cost does not grow with every waiting run. A store that does not answer leaves its
runs waiting (their TTL still applies) and shows on /readyz.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from flowengine.core.machine import Run
from flowengine.errors import Error
from flowengine.persistence.sqlite import Wait
from flowengine.stores.base import StoreUnavailable

if TYPE_CHECKING:
    from flowengine.runtime.engine import Engine

log = logging.getLogger("flowengine.landing")


async def notice(engine: Engine, wait: Wait, via: str) -> Run | None:
    """Look at the object a wait names; if it is there, advance its run. Stat gives the truth
    (size, type, ETag) whatever the notification claimed. `via`: who asked (for the lag metric)."""
    try:
        run, flow = engine.get_run(wait.run_id)
    except Error:
        return None
    edge = run.edges.get(wait.edge)
    if edge is None or edge.object is not None:
        return None
    info = await engine.store_of(flow, edge).stat(edge.key)
    if info is None:
        return None
    return engine.object_landed(wait.location, wait.key, info, via)


async def notify(engine: Engine, location: str, key: str) -> bool:
    """A notification said `key` landed in `location`; True when a run was waiting for it."""
    wait = engine.db.wait_for(location, key)
    if wait is None:
        return False
    try:
        await notice(engine, wait, "notification")
    except StoreUnavailable as exc:
        log.warning("notification for %s %s: store unavailable, the reconciler will look again: %s", location, key, exc)
    return True


class Reconciler:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.requests = 0  # store requests made, for the benchmark
        self._limit = asyncio.Semaphore(engine.config.reconcile_concurrency)

    def next_check(self, now: float, checks: int) -> float:
        base = self.engine.config.reconcile_interval
        return now + min(base * 2**checks, self.engine.config.reconcile_max_interval)

    async def tick(self) -> int:
        """Check every waiting key that is due; returns how many store requests it made."""
        engine = self.engine
        now = engine.clock()
        due = engine.db.due_waits(now, engine.config.reconcile_batch)
        if not due:
            return 0
        with engine.db.transaction():  # reschedule first: a slow store must not make the next tick repeat them
            for wait, checks in due:
                engine.db.reschedule_wait(wait, self.next_check(now, checks), checks + 1)
        await asyncio.gather(*(self._check(wait) for wait, _ in due))
        self.requests += len(due)
        engine.metrics.reconciler_checks.inc(len(due))
        return len(due)

    async def _check(self, wait: Wait) -> None:
        async with self._limit:
            try:
                await notice(self.engine, wait, "reconciler")
            except StoreUnavailable as exc:
                log.warning("reconciler: %s unavailable, %s keeps waiting: %s", wait.location, wait.key, exc)
            except Exception:
                log.exception("reconciler: checking %s %s failed", wait.location, wait.key)
