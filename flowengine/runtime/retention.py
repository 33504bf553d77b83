"""The sweeper: deletes run objects past their retention (inputs 1 day, outputs 7 days by default).

It runs for every store, and removes a finished run's step logs after `output_retention` too (with
several engines on one database, each its own: see _sweep_own_logs), files presigned for the
workflow/task API after `input_retention`, multipart uploads left incomplete after `multipart_ttl`,
and tasks' Idempotency-Keys once their 24 hours are over.
On S3 the engine also installs lifecycle rules for its default `inputs/` and `outputs/` prefixes,
which keep expiring objects while the engine is down; the sweeper covers keys outside those
prefixes and servers without lifecycle support. The run document keeps listing a swept
artifact, marked Expired, with no URL.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
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
SWEEP_LEASE = 300.0  # seconds a claimed expiry is left to its claimer before it comes due again
LOGS = ""  # the expiry row of a run's step logs (edge names are never empty)


async def sweep(engine: Engine) -> int:
    """Delete every object that is due; returns how many were deleted.

    Due objects are claimed a batch at a time (see Queries.claim_expiries): engines sweeping at once
    share them, and one that dies leaves its claims for the others after SWEEP_LEASE. Objects on a
    store that does not answer stay claimed, and come due again after the lease, without holding up
    the objects on other stores.
    """
    deleted = 0
    down: set[int] = set()  # stores that failed in this sweep: not asked again until the next one
    while due := await engine.db.claim_expiries(engine.clock(), SWEEP_LEASE, BATCH):
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
                    continue
                await store.delete(edge.key)
            except StoreUnavailable as exc:
                log.warning("sweeper: store unavailable, will retry: %s", exc)
                down.add(id(store))
                continue
            except (Error, KeyError):
                pass  # the run or edge is gone: nothing left to delete
            await engine.db.drop_expiry(run_id, edge_name)
            deleted += 1
    if engine.db.shared:
        before = engine.clock() - engine.config.output_retention - SWEEP_LEASE  # after the LOGS expiry's own turn
        await anyio.to_thread.run_sync(_sweep_own_logs, engine.log_root, before)
    deleted += await _sweep_files(engine) + await multipart.sweep(engine, SWEEP_LEASE)
    await _forget_idempotency_keys(engine)
    return deleted


async def _forget_idempotency_keys(engine: Engine) -> None:
    """Idempotency-Keys past their window (a lookup already ignores them: this only frees the rows)."""
    before = engine.clock() - IDEMPOTENCY_WINDOW
    while await engine.db.drop_idempotency_keys(before, BATCH) == BATCH:
        pass


def _sweep_own_logs(root: Path, before: float) -> None:
    """Engines sharing a database each keep the logs of the steps they ran: the engine that claims a
    run's LOGS expiry deletes its own, and every engine deletes what is left of its own, a lease
    later: the run folders it last added a log to before `before`."""
    with contextlib.suppress(FileNotFoundError):
        for folder in root.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if folder.stat().st_mtime < before:
                    shutil.rmtree(folder, ignore_errors=True)


async def _sweep_files(engine: Engine) -> int:
    """Files presigned for the workflow/task API, past their retention (the run that used one does
    not own it), claimed as the run objects are. A store that does not answer keeps them for later."""
    deleted = 0
    down: set[str] = set()
    while due := await engine.db.claim_files(engine.clock(), SWEEP_LEASE, BATCH):
        for file in due:
            if file.store in down:
                continue
            try:
                await engine.stores.resolve(None, file.store).delete(file.key)
            except StoreUnavailable as exc:
                log.warning("sweeper: store %r unavailable, its files wait for a later sweep: %s", file.store, exc)
                down.add(file.store)
                continue
            except Error:
                pass  # the store is no longer configured: nothing left to delete
            await engine.db.drop_file(file.store, file.key)
            deleted += 1
    return deleted
