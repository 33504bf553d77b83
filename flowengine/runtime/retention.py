"""The sweeper: deletes run objects past their retention (inputs 1 day, outputs 7 days by default).

It runs for every store, and removes a finished run's step logs after `output_retention` too,
files presigned for the workflow/task API after `input_retention`, multipart uploads left
incomplete after `multipart_ttl`, and tasks' Idempotency-Keys once their 24 hours are over.
On S3 the engine also installs lifecycle rules for its default `inputs/` and `outputs/` prefixes,
which keep expiring objects while the engine is down; the sweeper covers keys outside those
prefixes and servers without lifecycle support. The run document keeps listing a swept
artifact, marked Expired, with no URL.
"""

from __future__ import annotations

import logging
import shutil
from typing import TYPE_CHECKING

import anyio

from flowengine.errors import Error
from flowengine.runtime import multipart
from flowengine.runtime.tasks import IDEMPOTENCY_WINDOW
from flowengine.stores.base import StoreUnavailable

if TYPE_CHECKING:
    from flowengine.runtime.engine import Engine

log = logging.getLogger("flowengine.retention")
BATCH = 500
LOGS = ""  # the expiry row of a run's step logs (edge names are never empty)


async def sweep(engine: Engine) -> int:
    """Delete every object that is due; returns how many were deleted.

    Objects on a store that does not answer stay due for the next sweep, without holding up the
    objects on other stores (due ones are taken oldest first, so they would otherwise block the rest).
    """
    deleted = 0
    skipped: set[tuple[str, str]] = set()  # due, on a store that is down: left for the next sweep
    down: set[int] = set()  # stores that failed in this sweep: not asked again until the next one
    while due := [d for d in await engine.db.due_expiries(engine.clock(), BATCH + len(skipped)) if d not in skipped]:
        for run_id, edge_name in due:
            if edge_name == LOGS:
                await anyio.to_thread.run_sync(shutil.rmtree, engine.log_root / run_id, True)
                await engine.db.drop_expiry(run_id, edge_name)
                continue
            try:
                run, flow = await engine.get_run(run_id)
                edge = run.edges[edge_name]
                store = engine.store_of(flow, edge)
                if id(store) in down:
                    skipped.add((run_id, edge_name))
                    continue
                await store.delete(edge.key)
            except StoreUnavailable as exc:
                log.warning("sweeper: store unavailable, will retry: %s", exc)
                down.add(id(store))
                skipped.add((run_id, edge_name))
                continue
            except (Error, KeyError):
                pass  # the run or edge is gone: nothing left to delete
            await engine.db.drop_expiry(run_id, edge_name)
            deleted += 1
    deleted += await _sweep_files(engine) + await multipart.sweep(engine)
    await _forget_idempotency_keys(engine)
    return deleted


async def _forget_idempotency_keys(engine: Engine) -> None:
    """Idempotency-Keys past their window (a lookup already ignores them: this only frees the rows)."""
    before = engine.clock() - IDEMPOTENCY_WINDOW
    while await engine.db.drop_idempotency_keys(before, BATCH) == BATCH:
        pass


async def _sweep_files(engine: Engine) -> int:
    """Files presigned for the workflow/task API, past their retention (the run that used one does
    not own it). A store that does not answer keeps them for the next sweep."""
    deleted = 0
    while due := await engine.db.due_files(engine.clock(), BATCH):
        for file in due:
            try:
                await engine.stores.resolve(None, file.store).delete(file.key)
            except StoreUnavailable as exc:
                log.warning("sweeper: store %r unavailable, its files wait for the next sweep: %s", file.store, exc)
                return deleted
            except Error:
                pass  # the store is no longer configured: nothing left to delete
            await engine.db.drop_file(file.store, file.key)
            deleted += 1
    return deleted
