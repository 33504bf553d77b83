"""The imperative shell around the state machine.

Every event is applied to its run inside one database transaction, under a lock on the run's row;
the commands the machine returns are carried out only after the commit. Everything here runs on
the event loop's thread.

Several engines may share one database (PostgreSQL, `db.shared`). Then nothing here keeps a run in
memory (another engine may have changed it); step attempts are leased from the queue by each
engine's own local executor (its worker id is its own) or by agents, and a dead engine's leases
expire and are retried like an agent's; timers, lease expiry and retention are claimed row by row
(SKIP LOCKED), so any engine does them and none twice; the reconciler runs on one engine at a time;
and commits wake waiters on every engine (notifier.SharedNotifier).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from flowengine.aio import wait_event
from flowengine.config import Config, ensure_secret
from flowengine.core import machine, queue
from flowengine.core.ids import uuid7
from flowengine.core.lru import LRU
from flowengine.core.machine import (
    Abort,
    Command,
    Dispatch,
    EdgeState,
    Event,
    ObjectMeta,
    Run,
)
from flowengine.core.plans import EdgePlan, Plan, make_plan, well_ttl
from flowengine.core.queue import Attempt
from flowengine.core.spec import Flow, with_tasks
from flowengine.core.validate import validate
from flowengine.errors import Error, conflict, not_found
from flowengine.identity.directory import Directory
from flowengine.persistence import open_database
from flowengine.persistence.base import Database, NewRun, Queries, RunRow, TaskEventRow, TaskRecord, Wait
from flowengine.runtime import datadir, landing, retention, tasks, webhooks
from flowengine.runtime.agents import Agents
from flowengine.runtime.catalog import Catalog
from flowengine.runtime.executors.reaper import Reaper
from flowengine.runtime.executors.sandbox import Sandbox
from flowengine.runtime.executors.warm import Workers
from flowengine.runtime.local import ABORT_TOPIC, LocalExecutor
from flowengine.runtime.metrics import Metrics
from flowengine.runtime.notifier import LocalNotifier, Notifier, SharedNotifier, run_topic
from flowengine.runtime.queue import StepQueue
from flowengine.runtime.retention import LOGS
from flowengine.runtime.steps import Sweeper
from flowengine.runtime.supervisor import Supervisor
from flowengine.runtime.workflows import SYNC_INTERVAL as WORKFLOW_SYNC_INTERVAL
from flowengine.runtime.workflows import Workflows
from flowengine.stores.base import ObjectInfo, Store, StoreUnavailable
from flowengine.stores.registry import Stores

FLOW_CACHE = 1024  # decoded flow definitions kept in memory
RUN_CACHE = 10_000  # recently used runs kept in memory
LEASE_TICK = 1.0  # seconds between looks for offers, leases and deadlines that ran out
TIMER_RETRY = 0.05  # seconds before a due run another engine was applying is looked at again
HOUSEKEEPING_INTERVAL = 1.0  # seconds between the database's housekeeping (SQLite: WAL checkpoints)
RECOVERY_BATCH = 500  # rows read at a time when resuming after a restart
log = logging.getLogger("flowengine")
events_log = logging.getLogger("flowengine.runs")  # one line per run and step transition
_decode_flow = msgspec.json.Decoder(Flow).decode
_encode = msgspec.json.Encoder().encode


class Recovery(msgspec.Struct, rename="pascal"):
    """How far resuming after a restart has come (for /readyz)."""

    done: bool = False
    crashed: bool = True  # the engine had not stopped cleanly: embedded uploads may have landed unnoticed
    runs: int = 0  # interrupted runs resumed
    waits: int = 0  # embedded-store waits looked at for an upload that landed before a crash


class _Creation(msgspec.Struct):
    """A new run's rows, waiting for the next group commit."""

    run: Run
    plan: Plan
    waits: list[Wait]
    wake: float | None  # machine.next_wake(run)
    first_check: float  # when the reconciler first asks the store about the waits
    attempts: list[Attempt]  # the queue's rows for the steps it dispatches at once
    task: tasks.NewTask | None = None  # a task's run: its row and first events are inserted with it
    task_rows: tuple[TaskRecord, list[TaskEventRow]] | None = None


class Change(msgspec.Struct):
    """A run change made inside a transaction, to be carried out (`Engine.committed`) after its commit."""

    before: Run
    run: Run
    flow: Flow
    definition: str
    commands: list[Command]
    wake: float | None
    hooks: int = 0  # webhook deliveries it enqueued


class Engine:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = uuid7,
    ) -> None:
        self.config = config
        self.clock = clock
        self.new_id = new_id
        data = config.data_path
        self._lock = datadir.hold(data)  # before anything in the data dir is touched
        self.db: Database = open_database(config)
        self.stores = Stores(config, ensure_secret(config), clock)
        self.directory = Directory(self.db, ensure_secret(config, "jwt_secret"), clock, new_id)
        self.workflows = Workflows(self)
        self.catalog = Catalog(Path(config.flows_dir), self.stores.configured.keys(), config.webhook_allow_private)
        self.work_root = config.work_path
        self.log_root = data / "logs"
        self.python_path = str(Path(config.flows_dir).resolve())  # where Python tasks import from
        self._flows: LRU[str, Flow] = LRU(FLOW_CACHE)  # decoded definitions, by digest
        self._plans: LRU[str, Plan] = LRU(FLOW_CACHE)
        # Runs in memory only where this engine is their one writer: another may change them otherwise.
        self._runs: LRU[str, RunRow] = LRU(0 if self.db.shared else RUN_CACHE)
        self.queue = StepQueue(self)
        self.local = LocalExecutor(self)
        self.agents = Agents(self)
        self._wake = asyncio.Event()
        self._sleep_until = math.inf
        self._background: list[asyncio.Task] = []
        self.metrics = Metrics()
        # wakes whoever waits on a run (SSE streams, long polls), on the other engines on the database too
        self.notifier: Notifier = SharedNotifier(self.db) if self.db.shared else LocalNotifier()
        self.loops = Supervisor(on_failure=lambda name: self.metrics.loop_failures.labels(name).inc())
        self._creations: list[tuple[_Creation, asyncio.Future[None]]] = []
        self.sandbox: Sandbox | None = None
        self.reaper = Reaper()
        self.sweeper = Sweeper()
        self.workers: Workers | None = None
        self.webhooks = webhooks.Sender(self)
        self.recovery = Recovery()

    # lifecycle

    async def start(self) -> None:
        """Resume after a stop or a crash. Only preparing the scratch dirs and the sandbox happens
        before the engine serves; the rest of the recovery (`_recover`) runs in the background."""
        datadir.prepare_work_root(self.work_root, self.config.data_path)
        shutil.rmtree(self.config.data_path / "tmp", ignore_errors=True)
        (self.config.data_path / "tmp").mkdir(parents=True, exist_ok=True)
        self.sandbox = Sandbox.prepare(self.config.data_path.resolve(), self.work_root, Path(self.config.flows_dir),
                                       self.config.step_user, self.config.step_read_paths)  # fmt: skip
        self.reaper.start()
        self.workers = Workers(self.sandbox, self.reaper, self.work_root / "workers", self.python_path,
                               size=self.config.python_workers,
                               max_calls=self.config.python_worker_calls,
                               idle_timeout=self.config.python_worker_idle)  # fmt: skip
        self.recovery.crashed = not await self.db.take_clean_stop(self.local.worker.id)
        await self._check_operator_team()
        await self.local.reclaim()
        await self.agents.resume()
        self.spawn_loop("timers", self._timers, self._until_next_wake)
        self.spawn_loop("local-executor", self.local.turn, every(0))
        self.spawn_loop("local-heartbeat", self.local.heartbeat, self.local.until_heartbeat)
        self.spawn_loop("leases", self.queue.expire, every(LEASE_TICK))
        self.spawn_loop("housekeeping", self.db.housekeeping, every(HOUSEKEEPING_INTERVAL))
        self.spawn_loop("reconciler", landing.Reconciler(self).tick, every(self.config.reconcile_interval))
        self.spawn_loop("sweeper", lambda: retention.sweep(self), every(self.config.sweep_interval))
        self.spawn_loop("event-loop-lag", self.metrics.sample_event_loop_lag, every(0))
        self.spawn_loop("workflows", self.workflows.sync, every(WORKFLOW_SYNC_INTERVAL))
        self.webhooks.open()
        self.spawn_loop("webhooks", self.webhooks.tick, self.webhooks.pause)
        self.spawn_loop("python-workers", self.workers.sweep, every(min(self.config.python_worker_idle, 10.0)))
        if isinstance(self.notifier, SharedNotifier):
            self.spawn_loop("notify-send", self.notifier.send, self.notifier.pending)
            self.spawn_loop("notify-listen", self.notifier.listen, every(1.0))
            self.spawn_loop("queue-hints", self.local.hear_queue, every(0))
        self.spawn(self.stores.prepare_configured())
        self.spawn(self._recover())

    async def _check_operator_team(self) -> None:
        """Warn of an `operator_team` that names no team. Not fatal: it fails closed (no one is the
        dashboard's operator), and the team is looked up at each request, so one created later counts."""
        name = self.config.operator_team
        if name and await self.db.team(name=name) is None:
            log.warning("operator_team %r names no team: no one signed in is the dashboard's operator until a "
                        "team of that name exists (flowengine teams create %s), or correct the setting",
                        name, name)  # fmt: skip

    async def _recover(self) -> None:
        """Carry on with the runs a stop or a crash interrupted, then advance the runs whose embedded
        upload landed just before a crash. Both go through the database RECOVERY_BATCH rows at a time,
        the event loop free in between, so the memory it takes and the time before the engine serves
        do not grow with the database. Should it fail, it starts over (every part of it is idempotent)."""
        until = await self.db.last_run_id()  # runs created from here on are this process's own
        delay = 1.0
        while True:
            try:
                await self._resume_interrupted(until)
                break
            except Exception:
                log.exception("resuming after a restart failed; trying again in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        self.recovery.done = True
        log.info("recovery done: %d interrupted runs resumed, %d embedded waits looked at",
                 self.recovery.runs, self.recovery.waits)  # fmt: skip

    async def _resume_interrupted(self, until: str | None) -> None:
        self.recovery = Recovery(crashed=self.recovery.crashed)
        after = ""
        while until is not None:
            rows = await self.db.runs_with_status(machine.RUNNING, after, until, RECOVERY_BATCH)
            if not rows:
                break
            for row in rows:
                await self._resume(row)
            self.recovery.runs += len(rows)
            after = rows[-1].run.id
            await asyncio.sleep(0)  # the event loop serves between batches
        for location in await self.db.wait_locations() if self.recovery.crashed else ():
            if location.startswith("local:"):
                await self._recover_local_uploads(location)

    async def _resume(self, row: RunRow) -> None:
        """Carry on with a run the last process left RUNNING. Its active steps' attempts are in the
        queue (the local executor's were reclaimed at start; agents' go on). An active step without
        an attempt row (a run from before the queue) gets one: READY, as it was dispatched; RUNNING,
        as an attempt cut short."""
        flow = await self.flow_of(row.definition)
        for name, state in row.run.steps.items():
            if state.status not in (machine.READY, machine.RUNNING):
                continue
            if await self.db.attempt_of(row.run.id, name, state.attempts) is not None:
                continue
            if state.status == machine.RUNNING:
                await self.apply(row.run.id, machine.StepInterrupted(name, state.attempts))
            else:
                attempt = self.queue.attempt_for(row.run, flow, Dispatch(name, state.attempts), self.clock())
                async with self.db.transaction() as tx:
                    await tx.insert_attempts([attempt])
                self.queue.woke()

    async def _recover_local_uploads(self, location: str) -> None:
        """An upload whose file was in place when the process died, before its run advanced. Every
        waiting key is looked at (a stat() each, in a worker thread): nothing durable tells which
        uploads were under way."""
        store = self.stores.local(location.removeprefix("local:"))
        after = ""
        while waits := await self.db.unscheduled_waits(location, after, RECOVERY_BATCH):
            in_place = await asyncio.to_thread(lambda batch=waits: [w for w in batch if store.stat_now(w.key)])
            for wait in in_place:
                await landing.notice(self, wait, "recovery")
            self.recovery.waits += len(waits)
            after = waits[-1].key

    def spawn(self, job: Coroutine[Any, Any, None]) -> None:
        """Run a background job until it ends or the engine stops; if it fails, the log says so."""
        task = asyncio.create_task(job)
        task.add_done_callback(_log_failure)
        self._background.append(task)

    def spawn_loop(self, name: str, work: Callable[[], Awaitable[Any]], pause: Callable[[], Awaitable[None]]) -> None:
        """Do `work`, `pause`, and again, until the engine stops, surviving failures (supervisor.py)."""
        self.spawn(self.loops.run(name, work, pause))

    async def stop(self) -> None:
        tasks = [*self._background, *self.local.running.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.sweeper.drain()
        if self.workers is not None:
            await self.workers.close()
        await self.webhooks.close()
        self.reaper.stop()
        with contextlib.suppress(OSError):
            self.work_root.rmdir()  # empty now: every step removed its own dir
        if self.sandbox is not None:
            self.sandbox.close()
        # No upload can be half landed now: an embedded upload's file and its run's advance happen in
        # one step of the event loop (ingest.receive). Unless a crash's recovery is still unfinished,
        # the next start need not look for one (should this write fail, it looks).
        if self.recovery.done:
            with contextlib.suppress(Error):
                await self.db.mark_clean_stop(self.local.worker.id)
        await self.db.close()
        self._lock.release()

    # reading

    async def flow_of(self, digest: str, db: Queries | None = None) -> Flow:
        flow = self._flows.get(digest)
        if flow is None:
            flow = _decode_flow(await (db or self.db).definition(digest))
            self._flows.put(digest, flow)
        return flow

    async def get_run(self, run_id: str, team: str | None = None) -> tuple[Run, Flow]:
        """A run as last committed, if `team` owns it (None: whoever does; another team's is not
        found, as if it did not exist). Recent runs come from memory: this process is their only
        writer, and every commit refreshes the copy (so a status poll costs no query)."""
        row = self._runs.get(run_id)
        if row is None:
            row = await self.db.load_run(run_id)
            if row is None:
                raise not_found("run", run_id, "path.runID")
            self._runs.put(run_id, row)
        if team is not None and row.run.team != team:
            raise not_found("run", run_id, "path.runID")
        return row.run, await self.flow_of(row.definition)

    def store_of(self, flow: Flow, edge: EdgeState) -> Store:
        return self.stores.resolve(flow, edge.store)

    def expires_at(self, edge: EdgeState) -> float:
        """When an edge's object is past retention (inf: never, or not landed; static objects are not ours)."""
        if edge.filled_at is None:
            return math.inf
        if edge.source == machine.FROM_STEP:
            return edge.filled_at + self.config.output_retention
        return edge.filled_at + self.config.input_retention if edge.source in machine.WAITING_SOURCES else math.inf

    async def store_problems(self) -> dict[str, str]:
        """Stores that cannot be used right now, with why (for /readyz)."""
        problems = {}
        for store in self.stores.all():
            try:
                await store.check()
            except StoreUnavailable as exc:
                problems[store.name] = str(exc) or type(exc).__name__
        return problems

    # creating runs

    def plan(self, flow: Flow, *, inline: bool = False) -> Plan:
        """The flow's plan, made (and the flow validated) only when its definition is first seen.
        An `inline` flow (posted by a client) may use the operator's task library, but define
        commands of its own only where `inline_commands` allows it: they would run on this host."""
        if inline:
            self.check_inline(flow)
        flow = with_tasks(flow, self.catalog.installed.tasks)
        definition = _encode(flow)
        digest = hashlib.sha256(definition).hexdigest()
        plan = self._plans.get(digest)
        if plan is None:
            problems = validate(flow, self.stores.configured.keys(), private_webhooks=self.config.webhook_allow_private)
            if problems:
                raise Error("invalid", "invalid_flow", f"the flow has {len(problems)} problem(s)", "Flow", problems)
            plan = make_plan(flow, digest, definition, self.stores, self.config)
            self._plans.put(digest, plan)
        return plan

    def check_inline(self, flow: Flow, at: str = "body.Flow") -> None:
        """What a client's flow (an inline one, or a team's workflow's) may not do unless the operator
        allows it: define commands (they run on this host), or stores (the engine would connect wherever
        one says, with the operator's S3 credentials). The operator's tasks and stores are used by name
        instead. `at`: where the flow is in the request, for the error's location. With `inline_flows`
        off, no client's flow is taken at all."""
        if not self.config.inline_flows:
            message = "this engine runs only its flow files (inline_flows is off)"
            raise Error("forbidden", "inline_flows_disabled", message, at)
        for i, task in enumerate(flow.tasks):
            if not self.config.inline_commands and (task.exec is not None or task.python is not None):
                installed = ", ".join(sorted(self.catalog.installed.tasks)) or "none"
                raise Error(
                    "forbidden", "inline_commands_disabled",
                    f"task {task.name!r} defines a command, which an inline flow may not do on this engine "
                    f"(inline_commands is off); use a task the operator installed ({installed})",
                    f"{at}.Tasks[{i}]",
                )  # fmt: skip
        if flow.stores and not self.config.inline_stores:
            named = ", ".join(["default", *self.stores.configured]) or "none"
            raise Error(
                "forbidden", "inline_stores_disabled",
                f"store {flow.stores[0].name!r} is defined by the flow, which an inline flow may not do on this "
                f"engine (inline_stores is off); use a store the operator defined ({named})",
                f"{at}.Stores[0]",
            )  # fmt: skip

    async def create_run(
        self,
        plan: Plan,
        team: str = "",
        task: tasks.NewTask | None = None,
        pool: str = "team",
        region: str = "",
        webhook: str = "",
    ) -> Run:
        """A new run of `team`; with `task`, a task's (runtime/tasks.py): its file wells arrive filled,
        its steps take its flags, and its row is inserted with the run. `pool` and `region` say which
        agents its steps may go to, and prefer; `webhook` is notified when it ends."""
        now = self.clock()
        run_id = self.new_id()
        edges = {e.name: e.state(run_id, now) for e in plan.edges}
        if task is not None:
            edges.update(task.edges)
        for store in plan.s3_stores:
            await self.stores.prepare(store)
        for e in plan.statics:
            await _fill_static(e, edges[e.name], now)
        if len(edges) > 1:
            _refuse_shared_keys(edges, plan)
        flags = task.flags if task is not None else None
        run, commands = machine.start(plan.flow, run_id, edges, now, team, flags=flags, task=task is not None,
                                      pool=pool, region=region, webhook=webhook)  # fmt: skip
        waiting = machine.waiting_edges(run)
        waits = [_wait(e.store, run, e.name) for e in plan.edges if e.name in waiting]
        wake = machine.next_wake(run)
        rows = tasks.first_rows(task, run, plan.flow) if task is not None else None
        attempts = self.queue.attempts_for(run, plan.flow, commands, now)
        creation = _Creation(run, plan, waits, wake, now + self.config.reconcile_interval, attempts, task, rows)
        await self._commit_creation(creation)  # cached by the commit (see _flush_creations)
        self._after_commit(None, run, plan.flow, commands, wake)
        return run

    def _commit_creation(self, creation: _Creation) -> asyncio.Future[None]:
        """Group commit: creations that arrive in the same turn of the event loop share one
        transaction (one WAL write instead of many). A creation is refused before it writes anything,
        so one refusal leaves the others' rows whole."""
        future = asyncio.get_running_loop().create_future()
        self._creations.append((creation, future))
        if len(self._creations) == 1:
            asyncio.get_running_loop().create_task(self._flush_creations())
        return future

    async def _flush_creations(self) -> None:
        batch, self._creations = self._creations, []
        refused: dict[int, Error] = {}
        hooks = 0
        try:
            async with self.db.transaction() as tx:
                rows, task_rows, attempts, ended = [], [], [], []
                for i, (creation, _) in enumerate(batch):
                    try:
                        rows.append(await self._claim(tx, creation))
                        attempts += creation.attempts
                    except Error as exc:
                        refused[i] = exc
                        continue
                    if creation.task_rows is not None:
                        task_rows.append(creation.task_rows)
                    if creation.run.status in machine.TERMINAL:  # all it needed was there (static wells)
                        ended.append(creation)
                await tx.insert_runs(rows)
                if task_rows:
                    await tx.insert_tasks(task_rows)
                await tx.insert_attempts(attempts)
                for creation in ended:
                    hooks += await webhooks.enqueue(tx, self, creation.run, creation.plan.flow)
        except Exception as exc:
            for _, future in batch:
                future.set_exception(exc)
            return
        if hooks:
            self.webhooks.wake.set()
        for i, (creation, future) in enumerate(batch):
            if i in refused:
                future.set_exception(refused[i])
                continue
            # Cached here, in the commit's turn: by the time its creator resumes, the local executor may
            # have started a step of the run already, and that newer copy must not be overwritten.
            self._flows.put(creation.plan.digest, creation.plan.flow)
            self._runs.put(creation.run.id, RunRow(creation.run, creation.plan.digest))
            future.set_result(None)

    async def _claim(self, tx: Queries, c: _Creation) -> NewRun:
        """Claim a creation's waits and store its definition, or refuse it before it writes anything;
        returns its run's row, which the batch inserts with the others'."""
        claim = c.task.idempotency if c.task is not None else None
        if claim is not None:  # first: refused, it has written nothing
            since = claim.created - tasks.IDEMPOTENCY_WINDOW
            if not await tx.claim_idempotency_key(msgspec.structs.replace(claim, task=c.run.id), since):
                raise Error("conflict", tasks.IDEMPOTENCY_TAKEN, "another request with this Idempotency-Key came "
                            "first", "header.Idempotency-Key")  # fmt: skip
        # Embedded-store uploads come through the engine and land at once: the reconciler need not
        # ask about them (start() does, once, for uploads a crash interrupted).
        checks = [(w, None if w.location.startswith("local:") else c.first_check) for w in c.waits]
        taken = await tx.claim_waits(checks)
        if taken:
            store = c.run.edges[taken.edge].store
            place = next(e.place for e in c.plan.edges if e.name == taken.edge)
            raise conflict(f"another run is already waiting for {taken.key!r} in store {store!r}", f"{place}.Key")
        if c.plan.digest not in self._flows:
            await tx.put_definition(c.plan.digest, c.plan.definition)
        return NewRun(c.run, c.plan.digest, c.wake)

    # applying events

    async def apply(self, run_id: str, event: Event) -> Run:
        """Apply one event to one run in one transaction; then carry out its commands."""
        async with self.db.transaction() as tx:
            change = await self.advance(tx, run_id, event)
        return self.committed(change)

    async def advance(self, tx: Queries, run_id: str, event: Event, row: RunRow | None = None) -> Change:
        """Apply one event to one run inside the transaction `tx` (its row locked until the commit;
        `row`: as the caller has locked it already), with the queue's rows its commands ask for;
        `committed` carries out the rest after the commit."""
        row = row or await tx.load_run(run_id)
        if row is None:
            raise not_found("run", run_id, "path.runID")
        flow = await self.flow_of(row.definition, tx)
        now = self.clock()
        run, commands = machine.advance(row.run, flow, event, now)
        if run is row.run:
            return Change(row.run, run, flow, row.definition, [], None)
        wake = machine.next_wake(run)
        await tx.save_run(run, wake)
        hooks = 0
        if run.task:
            task = await tx.task(run.id)
            offered = await tx.offered_steps(run.id)
            task_change = tasks.task_change(row.run, run, flow, offered, task.status if task is not None else None)
            if task_change.events:
                await tx.save_task(run.id, task_change)
        if run.status in machine.TERMINAL and row.run.status not in machine.TERMINAL:
            hooks = await webhooks.enqueue(tx, self, run, flow)
        filled = machine.filled(row.run, run)
        still = set(machine.waiting_edges(run))
        gone = [n for n in machine.waiting_edges(row.run) if n not in still]
        await tx.drop_waits([_wait(self.store_of(flow, run.edges[n]), run, n) for n in gone])
        expiries = self._expiries(run, filled)
        if run.status in machine.TERMINAL and run.steps:
            expiries[LOGS] = now + self.config.output_retention  # the steps' logs go with the outputs
        await tx.add_expiries(run.id, expiries)
        await tx.insert_attempts(
            [self.queue.attempt_for(run, flow, c, now) for c in commands if isinstance(c, Dispatch)]
        )
        for command in commands:
            if isinstance(command, Abort):
                for attempt in await tx.open_attempts(run.id, command.step):
                    await tx.save_attempt(queue.end(attempt, "cancelled", now))
        return Change(row.run, run, flow, row.definition, commands, wake, hooks)

    def committed(self, change: Change) -> Run:
        """After the commit of `change`: the cached copy, notifications, logs, and the commands."""
        if change.run is not change.before:
            self._runs.put(change.run.id, RunRow(change.run, change.definition))
            if change.hooks:
                self.webhooks.wake.set()
            self._after_commit(change.before, change.run, change.flow, change.commands, change.wake)
        return change.run

    def _after_commit(
        self, before: Run | None, run: Run, flow: Flow, commands: list[Command], wake: float | None
    ) -> None:
        self.notifier.notify(run_topic(run.id))
        changes = machine.transitions(before, run)
        self.metrics.observe(changes)
        if events_log.isEnabledFor(logging.INFO):
            for transition in changes:
                _log_transition(transition)
        if wake is not None and wake < self._sleep_until:
            self._wake.set()
        if any(isinstance(c, Dispatch) for c in commands):
            self.queue.woke()
        for command in commands:
            if isinstance(command, Abort):
                self.local.cancel(run.id, command.step)
                self.notifier.notify(ABORT_TOPIC)

    def _expiries(self, run: Run, edges: list[str]) -> dict[str, float]:
        due = {name: self.expires_at(run.edges[name]) for name in edges}
        return {name: at for name, at in due.items() if at != math.inf}

    async def object_landed(self, location: str, key: str, info: ObjectInfo, via: str) -> Run | None:
        """An object appeared (`via` a notification or the reconciler): advance the run waiting for
        it, if any. Unknown keys are ignored."""
        wait = await self.db.wait_for(location, key)
        if wait is None:
            return None
        if info.modified:
            self.metrics.landing_lag.labels(via).observe(max(0.0, self.clock() - info.modified))
        landed = machine.Landed(wait.edge, ObjectMeta(info.size, info.content_type, info.etag))
        return await self.apply(wait.run_id, landed)

    async def cancel(self, run_id: str, team: str | None = None) -> Run:
        await self.get_run(run_id, team)
        return await self.apply(run_id, machine.Cancel())

    async def refresh(self, run_id: str, team: str | None = None) -> Run:
        """New upload URLs for the wells still empty: their TTL starts again (the shortest one, for all)."""
        run, flow = await self.get_run(run_id, team)
        waiting = machine.waiting_edges(run)
        if not waiting:
            raise conflict(f"run {run_id!r} is {run.status}: it waits for no upload", "path.runID")
        ttl = min(well_ttl(flow.well(edge), self.config) for edge in waiting)
        return await self.apply(run_id, machine.Refresh(math.ceil(self.clock() + ttl)))

    # timers

    async def _timers(self) -> None:
        """Apply a Tick to every run that is due, and note when the next one is. Each is claimed in
        its own transaction: one another engine is applying is skipped (and looked at again a moment
        later), and one it has applied meanwhile is no longer due, so no timer fires twice."""
        skipped = False
        for run_id in await self.db.due_runs(self.clock()):
            async with self.db.transaction() as tx:
                row = await tx.claim_run(run_id, due=self.clock())
                change = await self.advance(tx, run_id, machine.Tick(), row) if row is not None else None
            if change is None:
                skipped = True
            else:
                self.committed(change)
        nxt = await self.db.next_wake()
        self._sleep_until = math.inf if nxt is None else nxt
        if skipped:
            self._sleep_until = max(self._sleep_until, self.clock() + TIMER_RETRY)
        self._wake.clear()

    async def _until_next_wake(self) -> None:
        """Sleep until the next run is due, or until a commit makes one due sooner."""
        timeout = None if self._sleep_until == math.inf else max(0.0, self._sleep_until - self.clock()) + 0.001
        await wait_event(self._wake, timeout)


def _refuse_shared_keys(edges: dict[str, EdgeState], plan: Plan) -> None:
    """Two edges of one run on one object would overwrite each other."""
    owner: dict[tuple[str, str], str] = {}
    for e in plan.edges:
        edge = edges[e.name]
        other = owner.setdefault((edge.store, edge.key), e.name)
        if other != e.name:
            message = f"edges {other!r} and {e.name!r} both use key {edge.key!r}"
            raise Error("invalid", "shared_key", message, f"{e.place}.Key")


async def _fill_static(plan: EdgePlan, state: EdgeState, now: float) -> None:
    """A static well is filled from the start, by an object that must exist and fit the well."""
    try:
        info = await plan.store.stat(state.key)
    except StoreUnavailable as exc:
        raise Error("unavailable", "store_unavailable", f"store {plan.store_name!r} did not answer: {exc}",
                       f"{plan.place}.Store") from None  # fmt: skip
    if info is None:
        raise Error("invalid", "static_object_missing",
                       f"static well {plan.name!r}: no object {state.key!r} in store {plan.store_name!r}",
                       f"{plan.place}.Key")  # fmt: skip
    obj = ObjectMeta(info.size, info.content_type, info.etag)
    problem = machine.landing_problem(plan.name, state, obj)
    if problem:
        raise Error("invalid", "static_object_rejected", problem.message, f"{plan.place}.Key")
    state.object = obj
    state.filled_at = now


def _wait(store: Store, run: Run, edge: str) -> Wait:
    return Wait(store.location, store.full_key(run.edges[edge].key), run.id, edge)


def _log_transition(t: machine.Transition) -> None:
    fields = {k: v for k, v in msgspec.structs.asdict(t).items() if v is not None and k != "kind"}
    if t.duration is not None:
        fields["duration"] = round(t.duration, 3)
    failed = t.kind in ("run.error", "step.failed")
    events_log.log(logging.WARNING if failed else logging.INFO, t.kind, extra={"fields": fields})


def every(seconds: float) -> Callable[[], Awaitable[None]]:
    """A loop's pause: a fixed sleep."""
    return lambda: asyncio.sleep(seconds)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background job failed", exc_info=task.exception())
