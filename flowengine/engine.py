"""The imperative shell around the state machine.

Every event is applied to its run inside one SQLite transaction; the commands the machine
returns are carried out only after the commit. Everything here runs on the event loop's
thread, so a transaction is never interleaved with another.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from flowengine import landing, machine
from flowengine.catalog import Catalog
from flowengine.config import Config, ensure_secret
from flowengine.db import Database, RunRow, Wait
from flowengine.errors import ApiError, conflict, not_found
from flowengine.ids import uuid7
from flowengine.keys import DEFAULT_INPUT_KEY, DEFAULT_OUTPUT_KEY, check_key, expand
from flowengine.lru import LRU
from flowengine.machine import Abort, Command, Dispatch, EdgeState, Event, ObjectMeta, Run
from flowengine.retention import LOGS
from flowengine.spec import DataWell, Flow
from flowengine.steps import StepJob, run_step
from flowengine.stores.base import ObjectInfo, Store, StoreUnavailable
from flowengine.stores.registry import Stores
from flowengine.validate import parse_duration, validate

WAITING_SOURCES = ("upload", "webhook")
FLOW_CACHE = 1024  # decoded flow definitions kept in memory
RUN_CACHE = 10_000  # recently used runs kept in memory
log = logging.getLogger("flowengine")
_decode_flow = msgspec.json.Decoder(Flow).decode
_encode = msgspec.json.Encoder().encode


class _Creation(msgspec.Struct):
    """A new run's rows, waiting for the next group commit."""

    run: Run
    digest: str
    body: bytes
    waits: list[Wait]
    key_places: dict[str, str]  # edge -> where its Key is defined, for a conflict's location
    first_check: float


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
        data.mkdir(parents=True, exist_ok=True)
        self.db = Database(data / "flowengine.db")
        self.stores = Stores(config, ensure_secret(config), clock)
        self.catalog = Catalog(Path(config.flows_dir), self.stores.configured.keys())
        self.work_root = data / "work"
        self.log_root = data / "logs"
        self.python_path = str(Path(config.flows_dir).resolve())  # where Python tasks import from
        self._flows: LRU[str, Flow] = LRU(FLOW_CACHE)  # decoded definitions, by digest
        self._runs: LRU[str, RunRow] = LRU(RUN_CACHE)
        self._steps: dict[tuple[str, str], asyncio.Task] = {}
        self._slots = asyncio.Semaphore(config.concurrency)
        self._wake = asyncio.Event()
        self._sleep_until = math.inf
        self._background: list[asyncio.Task] = []
        self._creations: list[tuple[_Creation, asyncio.Future[None]]] = []

    # lifecycle

    async def start(self) -> None:
        """Resume after a stop or a crash: re-dispatch interrupted steps, restart the timers."""
        shutil.rmtree(self.work_root, ignore_errors=True)
        shutil.rmtree(self.config.data_path / "tmp", ignore_errors=True)
        (self.config.data_path / "tmp").mkdir(parents=True, exist_ok=True)
        for row in self.db.runs_with_status(machine.RUNNING):
            for name, state in row.run.steps.items():
                if state.status in (machine.READY, machine.RUNNING):
                    self._dispatch(row.run.id, self.flow_of(row.definition), Dispatch(name, state.attempts))
        self.spawn(self._timer_loop())
        self.spawn(self.stores.prepare_configured())
        self.spawn(self._recover_local_uploads())

    async def _recover_local_uploads(self) -> None:
        """An upload whose file was in place when the process died, before its run advanced."""
        for wait in self.db.unscheduled_waits():
            await landing.notice(self, wait)

    def spawn(self, job: Coroutine[Any, Any, None]) -> None:
        """Run a background loop until the engine stops."""
        self._background.append(asyncio.create_task(job))

    async def stop(self) -> None:
        tasks = [*self._background, *self._steps.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.db.close()

    # reading

    def flow_of(self, digest: str) -> Flow:
        flow = self._flows.get(digest)
        if flow is None:
            flow = _decode_flow(self.db.definition(digest))
            self._flows.put(digest, flow)
        return flow

    def get_run(self, run_id: str) -> tuple[Run, Flow]:
        """A run as last committed. Recent runs come from memory: this process is their only
        writer, and every commit refreshes the copy (so a status poll costs no query)."""
        row = self._runs.get(run_id)
        if row is None:
            row = self.db.load_run(run_id)
            if row is None:
                raise not_found("run", run_id, "path.runID")
            self._runs.put(run_id, row)
        return row.run, self.flow_of(row.definition)

    def store_of(self, flow: Flow, edge: EdgeState) -> Store:
        return self.stores.resolve(flow, edge.store)

    def expires_at(self, edge: EdgeState) -> float:
        """When an edge's object is past retention (inf: never, or not landed; static objects are not ours)."""
        if edge.filled_at is None:
            return math.inf
        if edge.source == machine.FROM_STEP:
            return edge.filled_at + self.config.output_retention
        return edge.filled_at + self.config.input_retention if edge.source in WAITING_SOURCES else math.inf

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

    async def create_run(self, flow: Flow) -> Run:
        body = _encode(flow)
        digest = hashlib.sha256(body).hexdigest()
        if digest not in self._flows:  # a definition in use was validated when it was first seen
            problems = validate(flow, self.stores.configured.keys())
            if problems:
                raise ApiError(422, "invalid_flow", f"the flow has {len(problems)} problem(s)", "Flow", problems)
        now = self.clock()
        run_id = self.new_id()
        edges: dict[str, EdgeState] = {}
        wells = {w.edge: (i, w) for i, w in enumerate(flow.data_wells)}
        outputs = [b.edge for s in flow.steps for b in s.outputs]
        for edge in [*wells, *(e for e in outputs if e not in wells)]:
            index, well = wells.get(edge, (None, None))
            edges[edge] = await self._edge(flow, run_id, edge, index, well, now)
        _refuse_shared_keys(edges, wells)
        run, commands = machine.start(flow, run_id, edges, now)
        waits = [self._wait(flow, run, name) for name in machine.waiting_edges(run)]
        key_places = {w.edge: f"DataWells[{wells[w.edge][0]}].Key" for w in waits}
        await self._commit_creation(
            _Creation(run, digest, body, waits, key_places, now + self.config.reconcile_interval)
        )
        self._flows.put(digest, flow)
        self._runs.put(run.id, RunRow(run, digest))
        self._after_commit(run, flow, commands)
        return run

    def _commit_creation(self, creation: _Creation) -> asyncio.Future[None]:
        """Group commit: creations that arrive in the same turn of the event loop share one
        transaction (one WAL write instead of many). A creation is refused before it writes anything,
        so one refusal leaves the others' rows whole."""
        future = asyncio.get_running_loop().create_future()
        self._creations.append((creation, future))
        if len(self._creations) == 1:
            asyncio.get_running_loop().call_soon(self._flush_creations)
        return future

    def _flush_creations(self) -> None:
        batch, self._creations = self._creations, []
        refused: dict[int, ApiError] = {}
        try:
            with self.db.transaction():
                for i, (creation, _) in enumerate(batch):
                    try:
                        self._insert(creation)
                    except ApiError as exc:
                        refused[i] = exc
        except Exception as exc:
            for _, future in batch:
                future.set_exception(exc)
            return
        for i, (_, future) in enumerate(batch):
            if i in refused:
                future.set_exception(refused[i])
            else:
                future.set_result(None)

    def _insert(self, c: _Creation) -> None:
        # Embedded-store uploads come through the engine and land at once: the reconciler need not
        # ask about them (start() does, once, for uploads a crash interrupted).
        checks = [(w, None if w.location.startswith("local:") else c.first_check) for w in c.waits]
        taken = self.db.claim_waits(checks)
        if taken:
            store = c.run.edges[taken.edge].store
            raise conflict(
                f"another run is already waiting for {taken.key!r} in store {store!r}", c.key_places[taken.edge]
            )
        if c.digest not in self._flows:
            self.db.put_definition(c.digest, c.body)
        self.db.insert_run(c.run, c.digest, machine.next_wake(c.run))

    async def _edge(
        self, flow: Flow, run_id: str, edge: str, index: int | None, well: DataWell | None, now: float
    ) -> EdgeState:
        location = f"DataWells[{index}]" if index is not None else "Flow"
        store_name = well.store if well else "default"
        store = self.stores.resolve(flow, store_name)
        source = well.source if well and well.source else machine.FROM_STEP
        default = DEFAULT_OUTPUT_KEY if source == machine.FROM_STEP else DEFAULT_INPUT_KEY
        key = expand(well.key if well and well.key else default, run_id=run_id, flow_name=flow.name, edge=edge, now=now)
        check_key(key, f"{location}.Key")
        await self.stores.prepare(store)
        state = EdgeState(store_name, key, source)
        if well is None:
            return state
        state.expect_size = well.size
        state.content_type = well.content_type
        state.accept = list(well.accept)
        if source in WAITING_SOURCES:
            state.deadline = math.ceil(now + self._ttl(well))  # whole seconds, like the URL's expiry and TTL
            state.max_size = min(well.max_size or self.config.max_upload_size, self.config.max_upload_size)
        if source == "static":
            try:
                info = await store.stat(key)
            except StoreUnavailable as exc:
                raise ApiError(503, "store_unavailable", f"store {store_name!r} did not answer: {exc}",
                               f"{location}.Store") from None  # fmt: skip
            if info is None:
                raise ApiError(422, "static_object_missing",
                               f"static well {edge!r}: no object {key!r} in store {store_name!r}",
                               f"{location}.Key")  # fmt: skip
            obj = ObjectMeta(info.size, info.content_type, info.etag)
            problem = machine.landing_problem(edge, state, obj)
            if problem:
                raise ApiError(422, "static_object_rejected", problem.message, f"{location}.Key")
            state.object = obj
            state.filled_at = now
        return state

    def _wait(self, flow: Flow, run: Run, edge: str) -> Wait:
        store = self.store_of(flow, run.edges[edge])
        return Wait(store.location, store.full_key(run.edges[edge].key), run.id, edge)

    # applying events

    def apply(self, run_id: str, event: Event) -> Run:
        """Apply one event to one run in one transaction; then carry out its commands."""
        with self.db.transaction():
            row = self.db.load_run(run_id)
            if row is None:
                raise not_found("run", run_id, "path.runID")
            flow = self.flow_of(row.definition)
            run, commands = machine.advance(row.run, flow, event, self.clock())
            if run is row.run:
                return run
            self.db.save_run(run, machine.next_wake(run))
            filled = [n for n, e in run.edges.items() if e.object and not row.run.edges[n].object]
            still = set(machine.waiting_edges(run))
            self.db.drop_waits([self._wait(flow, run, n) for n in machine.waiting_edges(row.run) if n not in still])
            expiries = self._expiries(run, filled)
            if run.status in machine.TERMINAL and run.steps:
                expiries[LOGS] = self.clock() + self.config.output_retention  # the steps' logs go with the outputs
            self.db.add_expiries(run.id, expiries)
        self._runs.put(run.id, RunRow(run, row.definition))
        self._after_commit(run, flow, commands)
        return run

    def _after_commit(self, run: Run, flow: Flow, commands: list[Command]) -> None:
        wake = machine.next_wake(run)
        if wake is not None and wake < self._sleep_until:
            self._wake.set()
        for command in commands:
            if isinstance(command, Dispatch):
                self._dispatch(run.id, flow, command)
            elif isinstance(command, Abort):
                task = self._steps.get((run.id, command.step))
                if task:
                    task.cancel()

    def _expiries(self, run: Run, edges: list[str]) -> dict[str, float]:
        due = {name: self.expires_at(run.edges[name]) for name in edges}
        return {name: at for name, at in due.items() if at != math.inf}

    def object_landed(self, location: str, key: str, info: ObjectInfo) -> Run | None:
        """An object appeared: advance the run waiting for it, if any. Unknown keys are ignored."""
        wait = self.db.wait_for(location, key)
        if wait is None:
            return None
        return self.apply(wait.run_id, machine.Landed(wait.edge, ObjectMeta(info.size, info.content_type, info.etag)))

    def cancel(self, run_id: str) -> Run:
        return self.apply(run_id, machine.Cancel())

    def refresh(self, run_id: str) -> Run:
        """New upload URLs for the wells still empty: their TTL starts again (the shortest one, for all)."""
        run, flow = self.get_run(run_id)
        waiting = machine.waiting_edges(run)
        if not waiting:
            raise conflict(f"run {run_id!r} is {run.status}: it waits for no upload", "path.runID")
        ttl = min(self._ttl(flow.well(edge)) for edge in waiting)
        return self.apply(run_id, machine.Refresh(math.ceil(self.clock() + ttl)))

    def _ttl(self, well: DataWell) -> float:
        return parse_duration(well.ttl) if well.ttl is not None else self.config.upload_ttl

    # steps

    def _dispatch(self, run_id: str, flow: Flow, command: Dispatch) -> None:
        task = asyncio.create_task(self._run_step(run_id, flow, command))
        self._steps[(run_id, command.step)] = task
        task.add_done_callback(lambda _t, k=(run_id, command.step): self._forget(k, _t))

    def _forget(self, key: tuple[str, str], task: asyncio.Task) -> None:
        if self._steps.get(key) is task:
            del self._steps[key]

    async def _run_step(self, run_id: str, flow: Flow, command: Dispatch) -> None:
        async with self._slots:
            run = self.apply(run_id, machine.StepStarted(command.step, command.attempt))
            state = run.steps.get(command.step)
            if state is None or state.attempts != command.attempt or state.status != machine.RUNNING:
                return
            step = flow.step(command.step)
            job = StepJob(
                run_id=run_id,
                step=step,
                task=flow.task_of(step),
                attempt=command.attempt,
                edges=run.edges,
                store_of=lambda edge: self.store_of(flow, edge),
                work_root=self.work_root,
                log_path=self.log_root / run_id / f"{step.id}.{command.attempt}.log",
                log_tail=self.config.log_tail,
                python_path=self.python_path,
            )
            event = await run_step(job)
        self.apply(run_id, event)

    # timers

    async def _timer_loop(self) -> None:
        while True:
            now = self.clock()
            for run_id in self.db.due_runs(now):
                self.apply(run_id, machine.Tick())
            nxt = self.db.next_wake()
            self._sleep_until = math.inf if nxt is None else nxt
            self._wake.clear()
            timeout = None if nxt is None else max(0.0, nxt - self.clock()) + 0.001
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)


def _refuse_shared_keys(edges: dict[str, EdgeState], wells: dict[str, tuple[int, DataWell]]) -> None:
    """Two edges of one run on one object would overwrite each other."""
    owner: dict[tuple[str, str], str] = {}
    for name, edge in edges.items():
        other = owner.setdefault((edge.store, edge.key), name)
        if other != name:
            place = f"DataWells[{wells[name][0]}].Key" if name in wells else "Flow"
            raise ApiError(422, "shared_key", f"edges {other!r} and {name!r} both use key {edge.key!r}", place)
