"""The local executor: a worker inside the engine process, leasing exec and python steps from the
step queue under the same rules as a remote agent (leases, heartbeats, token-fenced reports), and
running them as subprocesses (steps.py). Being in-process, it takes an attempt with its offer and
acknowledgement in one transaction (Queue.take): no answer can be lost between them.

Its worker id is `local:<node>`, the same across restarts of one engine (one data dir on one
host), so that a restarted engine knows the attempts its previous process held: an offer goes back
to the queue, a running attempt was cut short (StepInterrupted: not counted against MaxAttempts).

With several engines on one database each has its own (their data dirs differ), and it learns what
another engine decided about its leases from its heartbeat: a step cancelled there (the run was
cancelled, or failed) is killed here, as is one whose lease was lost (it expired while this engine
could not reach the database: the step runs again elsewhere). The Abort that cancels a step wakes
the heartbeat on every engine (ABORT_TOPIC), so that this takes a moment, not a heartbeat interval.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from typing import TYPE_CHECKING

from flowengine.aio import wait_event
from flowengine.core import machine, queue
from flowengine.core.machine import StepFailed, StepSucceeded
from flowengine.core.queue import Attempt, Worker
from flowengine.errors import Error
from flowengine.runtime.queue import QUEUE_TOPIC
from flowengine.runtime.steps import StepJob, run_step

if TYPE_CHECKING:
    from flowengine.runtime.engine import Engine

POLL = 1.0  # seconds between looks at the queue when nothing wakes the executor (other replicas' attempts)
HINT_WAIT = 60.0  # seconds a wait for another engine's hint lasts before it is made again
ABORT_TOPIC = "aborted"  # notified after a commit that aborted a step: its lease, wherever it runs, is over
log = logging.getLogger("flowengine")


def node_id(engine: Engine) -> str:
    """`local:<hash of host and data dir>`: one engine's own, the same after a restart."""
    place = f"{socket.gethostname()}:{engine.config.data_path.resolve()}"
    return queue.LOCAL_WORKER + hashlib.sha256(place.encode()).hexdigest()[:16]


class LocalExecutor:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        config = engine.config
        self.worker = Worker(id=node_id(engine), session=engine.new_id(), labels=tuple(config.local_labels),
                             local=True)  # fmt: skip
        self.running: dict[tuple[str, str], asyncio.Task] = {}  # (run, step) -> the task running its attempt
        self.leases: dict[str, tuple[str, str]] = {}  # lease id -> the (run, step) it runs
        self._kicked = asyncio.Event()

    def kick(self) -> None:
        self._kicked.set()

    def cancel(self, run_id: str, step: str) -> None:
        """The machine aborted the step: kill its process (its attempt is ended already)."""
        task = self.running.get((run_id, step))
        if task:
            task.cancel()

    async def reclaim(self) -> None:
        """At start, before serving: what this engine's previous process held. Its offers go back to
        the queue; what it was running was cut short by the stop or crash."""
        for held in await self.engine.db.held_attempts(self.worker.id, ["offered", "running"]):
            async with self.engine.db.transaction() as tx:
                await tx.load_run(held.run_id)  # the lock
                attempt = await tx.attempt(held.id)
                change = None
                if attempt is not None and attempt.state == "offered":
                    await tx.save_attempt(queue.requeue(attempt, attempt.deadline))
                elif attempt is not None and attempt.state == "running":
                    await tx.save_attempt(queue.end(attempt, "interrupted", self.engine.clock()))
                    event = machine.StepInterrupted(attempt.step, attempt.attempt)
                    change = await self.engine.advance(tx, attempt.run_id, event)
            if change is not None:
                self.engine.committed(change)

    async def turn(self) -> None:
        """One look at the queue: lease while there are free slots, then wait for a kick, or poll.
        A turn, not an endless loop, so that the supervisor sees a turn that worked after one that
        failed (a locked database) and readiness recovers."""
        self._kicked.clear()
        free = self.engine.config.concurrency - len(self.running)
        taken = await self.engine.queue.take(self.worker, free) if free > 0 else []
        for attempt in taken:
            self._start(attempt)
        if taken and len(taken) == free:
            await self._kicked.wait()  # full: the next kick is a slot freed (or new work)
            return
        await wait_event(self._kicked, POLL)

    async def heartbeat(self) -> None:
        """Extend the leases of what runs here, and kill the steps whose lease is over (see the module's doc)."""
        await self.engine.queue.heartbeat(self.worker)
        if not self.leases:
            return
        cancel, lost = await self.engine.queue.outcome(list(self.leases), self.worker)
        for lease_id in [*cancel, *lost]:
            key = self.leases.get(lease_id)
            if key is not None and key in self.running:
                log.info("local executor: lease %s of run %s, step %r is over elsewhere: its step is stopped",
                         lease_id, *key)  # fmt: skip
                self.running[key].cancel()

    async def until_heartbeat(self) -> None:
        """The heartbeat's pause: its interval, or until a step is aborted (on any engine)."""
        await self.engine.notifier.wait(ABORT_TOPIC, self.engine.config.heartbeat_interval)

    async def hear_queue(self) -> None:
        """Another engine's hint that an attempt was queued wakes this executor (its POLL is the fallback)."""
        if await self.engine.notifier.wait(QUEUE_TOPIC, HINT_WAIT):
            self.kick()

    def _start(self, attempt: Attempt) -> None:
        key = (attempt.run_id, attempt.step)
        task = asyncio.create_task(self._run(attempt))
        self.running[key] = task
        self.leases[attempt.id] = key

        def done(t: asyncio.Task) -> None:
            if self.running.get(key) is t:
                del self.running[key]
            self.leases.pop(attempt.id, None)
            self.kick()

        task.add_done_callback(done)

    async def _run(self, attempt: Attempt) -> None:
        run, flow = await self.engine.get_run(attempt.run_id)
        state = run.steps.get(attempt.step)
        if state is None or state.attempts != attempt.attempt or state.status != machine.RUNNING:
            return
        step = flow.step(attempt.step)
        engine = self.engine
        job = StepJob(
            run_id=run.id,
            step=step,
            task=flow.task_of(step),
            attempt=attempt.attempt,
            edges=run.edges,
            store_of=lambda edge: engine.store_of(flow, edge),
            work_root=engine.work_root,
            log_path=engine.log_root / run.id / f"{step.id}.{attempt.attempt}.log",
            log_tail=engine.config.log_tail,
            python_path=engine.python_path,
            sandbox=engine.sandbox,
            reaper=engine.reaper,
            workers=engine.workers,
            sweeper=engine.sweeper,
            flags=run.flags.get(step.id, {}),
        )
        try:
            event = await run_step(job)
        except Exception as exc:  # a fault of the engine's own, around the step: the attempt fails, visibly
            log.exception("step %r of run %s, attempt %d: the runner failed", step.id, run.id, attempt.attempt)
            event = StepFailed(step.id, attempt.attempt, f"internal error: {type(exc).__name__}: {exc}")
        # Recorded before the slot is freed: a step started in it must come after this one's end.
        await self._report(attempt, event)

    async def _report(self, attempt: Attempt, event: StepSucceeded | StepFailed) -> None:
        """Report a step's end with the lease's token; a database that refuses it for a moment is tried
        again until it takes it, so that no step is left RUNNING for good."""
        delay = 0.1
        while True:
            try:
                if isinstance(event, StepSucceeded):
                    await self.engine.queue.complete(attempt.id, attempt.token, self.worker, event.outputs, event.logs)
                else:
                    await self.engine.queue.fail(attempt.id, attempt.token, self.worker, event.error, event.retry,
                                                 event.logs)  # fmt: skip
                return
            except Error as exc:
                if exc.kind == "conflict":  # the lease is no longer ours (it expired, the run was cancelled)
                    log.warning("step %r of run %s, attempt %d: its end came too late: %s", attempt.step,
                                attempt.run_id, attempt.attempt, exc.message)  # fmt: skip
                    return
                if exc.kind not in ("unavailable", "insufficient_storage"):
                    raise
                log.exception("run %s: recording the result of step %r failed; retrying in %gs", attempt.run_id,
                              attempt.step, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
