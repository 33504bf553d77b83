"""The durable step queue, as the engine runs it: offers, acknowledgements, heartbeats, reports, expiry.

Every step attempt is a row of the `attempts` table, inserted in the same transaction as the run
change whose `Dispatch` asked for it (engine.apply). Workers, the local executor (local.py) and
remote agents (api/agent.py) alike, lease from it under one set of rules (core/queue.py). Each report
about an attempt changes its row and applies its event to the run in one transaction, with the run's
row locked first, then the attempt's (always in that order: two transactions never wait for each
other in a circle): the run lock is what serializes everything that happens to one attempt. A report
whose token is not the attempt's current one is a conflict and changes nothing.

With several engines on one database, any of them may handle any report, and each one's expiry
sweep takes only the attempts whose run no other transaction holds (SKIP LOCKED): one engine
expires an attempt, and a run being advanced elsewhere is left for the next tick.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from flowengine.core import machine, queue
from flowengine.core.machine import (
    ObjectMeta,
    StepFailed,
    StepInterrupted,
    StepReleased,
    StepStarted,
    StepSucceeded,
)
from flowengine.core.queue import Attempt, Worker
from flowengine.core.spec import Flow
from flowengine.errors import Error, conflict, not_found
from flowengine.persistence.base import Queries
from flowengine.runtime import tasks

if TYPE_CHECKING:
    from flowengine.runtime.engine import Change, Engine

QUEUE_TOPIC = "attempts"  # notified when an attempt may be leased: a new one, or one back in the queue
EXPIRY_BATCH = 200  # attempts whose time is up, handled per tick at most
log = logging.getLogger("flowengine.queue")


def new_token() -> str:
    return secrets.token_urlsafe(24)


class StepQueue:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config = engine.config

    def attempt_for(self, run: machine.Run, flow: Flow, dispatch: machine.Dispatch, now: float) -> Attempt:
        """The queue's row for a Dispatch: an attempt no local executor can take gets a schedule-to-start deadline."""
        task = flow.task_of(flow.step(dispatch.step))
        attempt = Attempt(id=self.engine.new_id(), run_id=run.id, step=dispatch.step, attempt=dispatch.attempt,
                          team=run.team, tool=queue.tool_of(task), labels=list(task.labels), pool=run.pool,
                          region=run.region, timeout=task.timeout_seconds, created=now)  # fmt: skip
        attempt.deadline = self.schedule_deadline(attempt, now)
        return attempt

    def attempts_for(self, run: machine.Run, flow: Flow, commands: list[machine.Command], now: float) -> list[Attempt]:
        return [self.attempt_for(run, flow, c, now) for c in commands if isinstance(c, machine.Dispatch)]

    def schedule_deadline(self, attempt: Attempt, now: float) -> float | None:
        """When a queued attempt no worker took fails: never while the local executor may take it."""
        return None if queue.may_take(self.engine.local.worker, attempt) else now + self.config.schedule_to_start

    def woke(self) -> None:
        """Something may be leased: the local executor and every long-polling agent look again."""
        self.engine.local.kick()
        self.engine.notifier.notify(QUEUE_TOPIC)

    # leasing

    async def offer(self, worker: Worker, slots: int) -> list[Attempt]:
        """Offer `worker` (an agent) up to `slots` of the oldest attempts it may take (its region's first)."""
        now = self.engine.clock()
        async with self.engine.db.transaction() as tx:
            found = await self._queued(tx, worker, slots, now)
            offered = [queue.offer(a, worker, new_token(), now, self.config.offer_timeout) for a in found]
            for attempt in offered:
                await tx.save_attempt(attempt)
        for run_id in dict.fromkeys(a.run_id for a in offered):
            async with self.engine.db.transaction() as tx:
                await tasks.refresh(tx, self.engine, run_id)  # the task is `queued` until the ack
        return offered

    async def take(self, worker: Worker, slots: int) -> list[Attempt]:
        """The local executor's lease: up to `slots` attempts offered and acknowledged in one
        transaction, their steps RUNNING. It is in this process, so no answer can be lost on the way
        and an offer would only be a second commit per step. An attempt whose run another transaction
        holds (another engine's, on a shared database) is left queued for the executor's next look:
        waiting for it while holding the attempt's claim could deadlock with that transaction."""
        now = self.engine.clock()
        taken, changes = [], []
        async with self.engine.db.transaction() as tx:
            for attempt in await self._queued(tx, worker, slots, now):
                row = await tx.claim_run(attempt.run_id)
                if row is None:
                    continue
                started = queue.ack(queue.offer(attempt, worker, new_token(), now, self.config.offer_timeout), now,
                                    self.config.lease)  # fmt: skip
                await tx.save_attempt(started)
                event = StepStarted(attempt.step, attempt.attempt)
                changes.append(await self.engine.advance(tx, attempt.run_id, event, row))
                taken.append(started)
        for change in changes:
            self.engine.committed(change)
        return taken

    async def _queued(self, tx: Queries, worker: Worker, slots: int, now: float) -> list[Attempt]:
        """Up to `slots` of the oldest queued attempts `worker` may take (its region's first), claimed."""
        return await tx.queued_attempts(list(worker.tools), list(worker.labels), None if worker.local else worker.team,
                                        worker.community, worker.region, now - self.config.region_wait,
                                        slots)  # fmt: skip

    async def pending_offers(self, worker: Worker) -> list[Attempt]:
        """Offers this session has not acknowledged and that still stand: an answer the agent did not
        receive is offered again (same lease id, same token) until the offer expires."""
        now = self.engine.clock()
        held = await self.engine.db.held_attempts(worker.id, ["offered"])
        return [a for a in held if a.session == worker.session and (a.offer_expires or 0) > now]

    async def ack(self, lease_id: str, token: str, worker: Worker) -> Attempt:
        """The worker takes the offer: the attempt runs, and the step is RUNNING."""
        now = self.engine.clock()
        async with self._current(lease_id, token, worker) as (tx, attempt):
            if attempt.state == "running":  # the same acknowledgement again: the same answer
                return attempt
            if attempt.state != "offered":
                raise _stale(lease_id)
            started = queue.ack(attempt, now, self.config.lease)
            await tx.save_attempt(started)
            change = await self.engine.advance(tx, attempt.run_id, StepStarted(attempt.step, attempt.attempt))
        self.engine.committed(change)
        return started

    async def heartbeat(self, worker: Worker, running: list[str] | None = None) -> None:
        """Extend the running leases of the worker's session: those it says it runs (None: all of them).
        A lease the worker no longer knows of is not kept alive: it expires, and its step is retried."""
        await self.engine.db.extend_leases(worker.id, worker.session, self.engine.clock() + self.config.lease, running)

    async def outcome(self, lease_ids: list[str], worker: Worker) -> tuple[list[str], list[str]]:
        """Of the leases a worker says it runs: those to cancel (the step was aborted) and those lost
        (expired, failed, fenced by a newer session, unknown)."""
        cancel, lost = [], []
        for lease_id in lease_ids:
            attempt = await self.engine.db.attempt(lease_id)
            if attempt is not None and attempt.outcome == "cancelled" and attempt.worker == worker.id:
                cancel.append(lease_id)
            elif attempt is None or attempt.session != worker.session or attempt.state not in ("offered", "running"):
                lost.append(lease_id)  # an offer not acknowledged yet is still the worker's
        return cancel, lost

    # reports

    async def complete(self, lease_id: str, token: str, worker: Worker, outputs: dict[str, ObjectMeta],
                       logs: list[str]) -> None:  # fmt: skip
        """The attempt succeeded, its outputs (edge -> what was written) in place. A repeated report
        of a success already recorded is answered the same."""
        async with self._current(lease_id, token, worker) as (tx, attempt):
            if attempt.outcome == "succeeded":
                return
            if attempt.state != "running":
                raise _stale(lease_id)
            await tx.save_attempt(queue.end(attempt, "succeeded", self.engine.clock()))
            event = StepSucceeded(attempt.step, attempt.attempt, outputs, logs)
            change = await self.engine.advance(tx, attempt.run_id, event)
        self.engine.committed(change)

    async def fail(self, lease_id: str, token: str, worker: Worker, error: str, retryable: bool,
                   logs: list[str]) -> None:  # fmt: skip
        async with self._current(lease_id, token, worker) as (tx, attempt):
            if attempt.outcome == "failed":
                return
            if attempt.state != "running":
                raise _stale(lease_id)
            await tx.save_attempt(queue.end(attempt, "failed", self.engine.clock()))
            event = StepFailed(attempt.step, attempt.attempt, error, logs, retry=retryable)
            change = await self.engine.advance(tx, attempt.run_id, event)
        self.engine.committed(change)

    async def release(self, lease_id: str, token: str, worker: Worker) -> None:
        """A graceful stop: the attempt goes back to the queue as it was, not counted."""
        now = self.engine.clock()
        async with self._current(lease_id, token, worker) as (tx, attempt):
            await tx.save_attempt(queue.requeue(attempt, self.schedule_deadline(attempt, now)))
            if attempt.state == "running":
                change = await self.engine.advance(tx, attempt.run_id, StepReleased(attempt.step, attempt.attempt))
            else:
                change = None
                await tasks.refresh(tx, self.engine, attempt.run_id)
        if change is not None:
            self.engine.committed(change)
        self.woke()

    async def running(self, lease_id: str, token: str, worker: Worker, *, done_ok: bool = False) -> Attempt:
        """The attempt, if `token` is current and it runs (or, with `done_ok`, has ended); else a conflict."""
        attempt = await self.engine.db.attempt(lease_id)
        if attempt is None:
            raise not_found("lease", lease_id, "path.lease_id")
        if not secrets.compare_digest(attempt.token, token) or attempt.worker != worker.id:
            raise _stale(lease_id)
        if attempt.state != "running" and not (done_ok and attempt.state == "done"):
            raise _stale(lease_id)
        return attempt

    async def running_lease(self, lease_id: str) -> Attempt:
        """The attempt of a lease that runs now; else a conflict (its worker is late: it may not write)."""
        attempt = await self.engine.db.attempt(lease_id)
        if attempt is None or attempt.state != "running":
            raise conflict(f"lease {lease_id!r} does not run now: its outputs are no longer taken", "path.key")
        return attempt

    async def logged(self, attempt: Attempt, seq: int) -> None:
        """Log chunks up to `seq` are in the step's log."""
        async with self.engine.db.transaction() as tx:
            current = await tx.attempt(attempt.id)
            if current is not None and current.token == attempt.token and current.log_seq < seq:
                current.log_seq = seq
                await tx.save_attempt(current)

    @asynccontextmanager
    async def _current(self, lease_id: str, token: str, worker: Worker) -> AsyncIterator[tuple[Queries, Attempt]]:
        """A transaction and the attempt in it, read after its run's row is locked, if `token` is its
        current lease token and `worker` holds it; otherwise a conflict (a lease id never seen is not
        found). Which run it is, is read before the transaction: inside, the run's row is locked first."""
        found = await self.engine.db.attempt(lease_id)
        if found is None:
            raise not_found("lease", lease_id, "path.lease_id")
        async with self.engine.db.transaction() as tx:
            await tx.load_run(found.run_id)  # the lock
            attempt = await tx.attempt(lease_id)
            if attempt is None or not secrets.compare_digest(attempt.token, token) or attempt.worker != worker.id:
                raise _stale(lease_id)
            yield tx, attempt

    # time

    async def expire(self) -> None:
        """Offers not acknowledged in time go back to the queue; leases not extended in time, and
        attempts past their timeout, fail (retryable); queued attempts no worker took by their
        deadline fail the step, saying what was missing. An attempt whose run another transaction
        holds (another engine's expiry, a report) is left for the next tick."""
        now = self.engine.clock()
        requeued = False
        for due in await self.engine.db.due_attempts(now, EXPIRY_BATCH):
            async with self.engine.db.transaction() as tx:
                if await tx.claim_run(due.run_id) is None:
                    continue
                attempt = await tx.attempt(due.id)
                if attempt is None:
                    continue
                change = await self._expire(tx, attempt, now)
            if change is True:
                requeued = True
            elif change is not None:
                self.engine.committed(change)
        if requeued:
            self.woke()

    async def _expire(self, tx: Queries, attempt: Attempt, now: float) -> Change | bool | None:
        """A run change to carry out, True when the attempt went back to the queue, None when nothing was due."""
        if attempt.state == "offered" and (attempt.offer_expires or 0) <= now:
            await tx.save_attempt(queue.requeue(attempt, attempt.deadline))
            await tasks.refresh(tx, self.engine, attempt.run_id)
            return True
        expired = attempt.state == "running" and (attempt.lease_expires or 0) <= now
        if expired and attempt.worker.startswith(queue.LOCAL_WORKER):
            # Another engine's local executor stopped reporting: that engine died (its own restart
            # would have reclaimed it). As after a crash, the attempt was cut short: not counted.
            await tx.save_attempt(queue.end(attempt, "interrupted", now))
            log.warning("run %s: step %r, attempt %d: engine %s stopped reporting; the step runs again",
                        attempt.run_id, attempt.step, attempt.attempt, attempt.worker)  # fmt: skip
            return await self.engine.advance(tx, attempt.run_id, StepInterrupted(attempt.step, attempt.attempt))
        if expired:
            await tx.save_attempt(queue.end(attempt, "expired", now))
            error = f"the lease expired: worker {attempt.worker} stopped reporting for {self.config.lease:g}s"
            return await self.engine.advance(tx, attempt.run_id, StepFailed(attempt.step, attempt.attempt, error))
        if attempt.state == "running" and (attempt.deadline or 0) <= now:
            await tx.save_attempt(queue.end(attempt, "failed", now))
            error = f"timed out after {attempt.timeout:g}s (the worker did not report its end)"
            return await self.engine.advance(tx, attempt.run_id, StepFailed(attempt.step, attempt.attempt, error))
        if attempt.state == "queued" and attempt.deadline is not None and attempt.deadline <= now:
            await tx.save_attempt(queue.end(attempt, "failed", now))
            # The team's own agents only: an error shown to the team names no other team's.
            workers = [(a.name, self.engine.agents.worker_of(a)) for a in await tx.agents(attempt.team)
                       if self.engine.agents.connected(a, now)]  # fmt: skip
            error = queue.unplaced_reason(attempt, workers, self.config.schedule_to_start)
            event = StepFailed(attempt.step, attempt.attempt, error, retry=False)
            return await self.engine.advance(tx, attempt.run_id, event)
        return None

    async def fence(self, worker_id: str, now: float) -> None:
        """A worker's earlier session is over (it registered again, or the engine restarted): its
        offers go back to the queue, its running attempts are lost (failed, retryable)."""
        for held in await self.engine.db.held_attempts(worker_id, ["offered", "running"]):
            async with self.engine.db.transaction() as tx:
                await tx.load_run(held.run_id)
                attempt = await tx.attempt(held.id)
                change = None
                if attempt is not None and attempt.state == "offered":
                    await tx.save_attempt(queue.requeue(attempt, attempt.deadline))
                    await tasks.refresh(tx, self.engine, attempt.run_id)
                elif attempt is not None and attempt.state == "running":
                    await tx.save_attempt(queue.end(attempt, "lost", now))
                    error = "the lease was lost: its agent registered again (a new session)"
                    change = await self.engine.advance(tx, attempt.run_id,
                                                       StepFailed(attempt.step, attempt.attempt, error))  # fmt: skip
            if change is not None:
                self.engine.committed(change)
        self.woke()


def _stale(lease_id: str) -> Error:
    return conflict(f"lease {lease_id!r} is no longer yours: its token is not current (expired, released or "
                    "taken over)", "token")  # fmt: skip
