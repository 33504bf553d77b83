"""Landing detection for stores the engine does not receive uploads for itself.

Two ways in: bucket notifications (pushed to api/events.py, at once) and the reconciler, which
finds objects no notification reported. The reconciler walks each location's waiting keys in
key order, a sweep that goes on from where the last tick stopped, and makes at most
`reconcile_batch` store requests per tick, whatever the number of waiting keys:

- Where waiting keys lie close together, one listing request (up to 1,000 keys, from just before
  a waiting key, under the prefix it shares with the location's last waiting key) answers for
  every waiting key it spans: 100,000 waiting keys cost about a hundred requests a sweep, so an
  upload is noticed within seconds.
- Where they lie far apart among other objects, a listing answers for one key only, as a HEAD
  does: there the sweep asks about each key by itself with HEAD (and lists again now and then,
  to notice when keys come close). A few waiting keys in a huge bucket never cost more than a
  request each.
- A key asked about by itself, with HEAD or by a listing that answered for a key or two only,
  is asked about again on a backoff schedule: soon after the URL was handed out, then less and
  less often (`reconcile_max_interval`). Keys a listing answers for by the thousand are looked at
  on every sweep: there it costs next to nothing.

One engine of several on a database reconciles (see Reconciler.tick); should it die, another takes
over within a tick and starts its sweeps from the first key.

Servers order a listing differently: S3 and MinIO by bytes, servers that keep directories
(SeaweedFS) directory by directory, where 'a/b' comes before 'a-b'. A listing answers only for
the waiting keys inside its span in both orders; the sweep asks again from the first key outside
it. An object found by a listing is then looked at with HEAD (a listing has no content type).
A store that does not answer leaves its runs waiting (their TTL still applies) and shows on /readyz.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from flowengine.core.machine import Run
from flowengine.errors import Error
from flowengine.persistence.base import Queries, Wait
from flowengine.stores.base import StoreUnavailable

if TYPE_CHECKING:
    from flowengine.runtime.engine import Engine

log = logging.getLogger("flowengine.landing")
LIST_PAGE = 1000  # keys a listing request asks for: S3's most
DENSE = 2  # waiting keys a listing must answer for to be worth more than a HEAD each
SETTLE = 10_000  # waiting keys one listing may answer for at most (the database rows read for it)
RELIST = 16  # HEADs between listings where keys are far apart
STEPS = 64  # batches of waits read per tick and location at most (each up to `SCAN`)
SCAN = 1_000  # waits read at once while looking for due ones
LEADER = "reconciler"  # what the one engine that reconciles leads (Database.lead)


async def notice(engine: Engine, wait: Wait, via: str) -> Run | None:
    """Look at the object a wait names; if it is there, advance its run. Stat gives the truth
    (size, type, ETag) whatever the notification claimed. `via`: who asked (for the lag metric)."""
    try:
        run, flow = await engine.get_run(wait.run_id)
    except Error:
        return None
    edge = run.edges.get(wait.edge)
    if edge is None or edge.object is not None:
        return None
    info = await engine.store_of(flow, edge).stat(edge.key)
    if info is None:
        return None
    return await engine.object_landed(wait.location, wait.key, info, via)


async def notify(engine: Engine, location: str, key: str) -> bool:
    """A notification said `key` landed in `location`; True when a run was waiting for it."""
    wait = await engine.db.wait_for(location, key)
    if wait is None:
        return False
    try:
        await notice(engine, wait, "notification")
    except StoreUnavailable as exc:
        log.warning("notification for %s %s: store unavailable, the reconciler will look again: %s", location, key, exc)
    return True


class Budget:
    """Store requests left in one tick."""

    def __init__(self, requests: int) -> None:
        self.left = requests

    def take(self, wanted: int) -> int:
        granted = min(wanted, self.left)
        self.left -= granted
        return granted


class Reconciler:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.requests = 0  # store requests made, for the benchmark
        self._limit = asyncio.Semaphore(engine.config.reconcile_concurrency)
        self._cursor: dict[str, str] = {}  # per location: the last key the sweep is done with
        self._heads: dict[str, int] = {}  # per location where keys lie apart: HEADs since the last listing

    async def tick(self) -> int:
        """Go on with every location's sweep; returns how many store requests it made. Of several
        engines on one database, only the one that leads the reconciler does (the first to ask, until
        it dies): their requests do not add up."""
        if not await self.engine.db.lead(LEADER):
            return 0
        batch = self.engine.config.reconcile_batch
        budget = Budget(batch)
        locations = [loc for loc in await self.engine.db.wait_locations() if not loc.startswith("local:")]
        await asyncio.gather(*(self._sweep(loc, budget) for loc in locations))
        self.requests += batch - budget.left
        self.engine.metrics.reconciler_checks.inc(batch - budget.left)
        return batch - budget.left

    async def _sweep(self, location: str, budget: Budget) -> None:
        """Settle due waits from where this location's sweep stopped, until the budget is spent or the
        sweep has gone through every wait once (the next tick then starts over)."""
        db = self.engine.db
        cursor = self._cursor.get(location, "")
        try:
            for _ in range(STEPS):
                if not budget.left:
                    break
                apart = self._heads.get(location, RELIST) < RELIST  # keys lie apart, and no listing is due
                wanted = self.engine.config.reconcile_concurrency if apart else 1
                due, looked_to = await db.due_waits(location, cursor, self.engine.clock(), wanted, SCAN)
                if due:
                    cursor = await (self._ask_each(due, budget) if apart else self._list(due[0], budget)) or cursor
                elif looked_to:
                    cursor = looked_to  # nothing due among these
                else:
                    cursor = ""  # through every wait: the next tick starts over
                    break
        except StoreUnavailable as exc:
            log.warning("reconciler: %s unavailable, its runs keep waiting: %s", location, exc)
        self._cursor[location] = cursor

    async def _list(self, first: Wait, budget: Budget) -> str:
        """One listing from just before `first`, and HEADs of the waiting keys it found; returns the
        key the sweep goes on after."""
        engine, db, location = self.engine, self.engine.db, first.location
        try:
            run, flow = await engine.get_run(first.run_id)
        except Error:
            return first.key  # the run is gone, and with it the wait
        edge = run.edges[first.edge]
        store = engine.store_of(flow, edge)
        base = first.key[: len(first.key) - len(edge.key)]  # the store's own prefix, as the location names keys
        prefix = _common_prefix(first.key, await db.last_wait_key(location, base) or first.key)
        budget.take(1)
        page = await store.list_keys(prefix[len(base) :], edge.key[:-1], LIST_PAGE)
        keys = [base + k for k in page.keys]
        if page.truncated and not keys:
            settled, through = 0, None  # a server may answer an empty page with more to come: nothing learnt
        else:
            last = keys[-1] if page.truncated else None
            settled, through = await db.settled_waits(location, first.key, last, prefix, SETTLE)
        found = await db.waits_at(location, keys) if keys else []
        looked = found[: budget.take(len(found))]
        await asyncio.gather(*(self._look(w) for w in looked))
        if len(looked) < len(found):  # out of requests: the next tick goes on from the first not looked at
            return min(through or first.key[:-1], found[len(looked)].key[:-1])
        if not through:  # the page ended before reaching `first` (in one of the two orders)
            self._heads[location] = 0
            return await self._ask_each([first], budget) or first.key[:-1]
        if page.truncated and settled < DENSE:  # other objects between the waiting keys: ask one by one
            self._heads[location] = 0
        else:
            self._heads.pop(location, None)
        if settled < DENSE:  # a listing for a key or two: as often as a HEAD would be
            async with db.transaction() as tx:
                await self._back_off(tx, location, first.key, through)
        return through

    async def _ask_each(self, waits: list[Wait], budget: Budget) -> str | None:
        """HEAD each of these waits (as many as the budget allows); returns the last key asked about."""
        asked = waits[: budget.take(len(waits))]
        if not asked:
            return None
        location = asked[0].location
        async with self.engine.db.transaction() as tx:  # first: a slow store must not make the next tick ask again
            for wait in asked:
                await self._back_off(tx, location, wait.key, wait.key)
        await asyncio.gather(*(self._look(w) for w in asked))
        self._heads[location] = self._heads.get(location, 0) + len(asked)
        return asked[-1].key

    async def _back_off(self, tx: Queries, location: str, first: str, last: str) -> None:
        config = self.engine.config
        await tx.back_off_waits(
            location, first, last, self.engine.clock(), config.reconcile_interval, config.reconcile_max_interval
        )

    async def _look(self, wait: Wait) -> None:
        async with self._limit:
            try:
                await notice(self.engine, wait, "reconciler")
            except StoreUnavailable as exc:
                log.warning("reconciler: %s unavailable, %s keeps waiting: %s", wait.location, wait.key, exc)
            except Exception:
                log.exception("reconciler: checking %s %s failed", wait.location, wait.key)


def _common_prefix(a: str, b: str) -> str:
    """The longest string both start with, character by character (not by path segment)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]
