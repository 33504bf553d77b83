"""Agents as the engine knows them: registrations and sessions, the leases they are handed (with
presigned URLs: an agent never holds store credentials), their long polls, heartbeats and reports.

The protocol's rules are the queue's (queue.py, core/queue.py); this module adds who the agent is
(an `ak-` key's team, a name, a session that a new registration fences) and what a lease carries.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

import msgspec

from flowengine.core import machine
from flowengine.core.machine import EdgeState, Run
from flowengine.core.queue import Attempt, Worker, more_key, output_key
from flowengine.core.spec import Flow, Step, Task
from flowengine.core.workflows import COMFYUI
from flowengine.errors import Error, conflict, not_found
from flowengine.persistence.base import AgentRecord, AgentRow, RunningStep
from flowengine.runtime.queue import QUEUE_TOPIC
from flowengine.runtime.steps import flag_values, output_type
from flowengine.runtime.tasks import TaskBody
from flowengine.stores.base import PutConditions, StoreUnavailable

if TYPE_CHECKING:
    from flowengine.runtime.engine import Engine

OFFLINE_AFTER = 3  # heartbeat intervals without one: the agent counts as offline
POLL_SLICE = 1.0  # seconds a long poll waits at most between looks (a region's wait may end meanwhile)


AgentStatus = Literal["idle", "busy", "offline"]
AGENT_STATUSES: tuple[AgentStatus, ...] = get_args(AgentStatus)


class AgentState(msgspec.Struct, frozen=True):
    """An agent as its team sees it: offline after OFFLINE_AFTER heartbeat intervals without one."""

    record: AgentRecord
    status: AgentStatus
    running: list[RunningStep]  # its running attempts


Fact = str | int | float | bool | None
# What an agent says of its machine: facts by name, and `gpu_devices` (the reference's system_stats:
# `[{device_name, device_type, vram_total, vram_free}]`, as ComfyUI's /system_stats lists them).
System = dict[str, Fact | list[dict[str, Fact]]]


def gpu_type(system: System) -> str | None:
    """The agent's GPU model: its first GPU device's `device_name`, else its `gpu` fact; None if neither."""
    devices = system.get("gpu_devices")
    name = devices[0].get("device_name") if isinstance(devices, list) and devices else system.get("gpu")
    return name if isinstance(name, str) and name else None


class Registration(msgspec.Struct, kw_only=True):
    name: str
    labels: list[str] = []
    tools: list[str] = msgspec.field(default_factory=lambda: ["exec", "python"])
    region: str = ""
    capacity: int = 1
    community: bool = False
    system: System = {}


class InputURL(msgspec.Struct):
    url: str
    size: int
    content_type: str
    name: str  # the file's name (the last part of its key)


class OutputURL(msgspec.Struct):
    url: str
    headers: dict[str, str]  # send every one with the PUT, verbatim
    name: str
    content_type: str


class Lease(msgspec.Struct):
    lease_id: str
    token: str  # every report about this lease carries it
    run_id: str
    task_id: str | None  # the run's id when the run is a task of the workflow/task API
    step: str
    attempt: int
    tool: str
    timeout: float  # seconds the step may run, counted from the acknowledgement
    flags: dict[str, Any]
    inputs: dict[str, InputURL]
    outputs: dict[str, OutputURL]
    payload: dict[str, Any]  # what the tool runs: exec's argv and env, python's module:function and env,
    # comfyui's graph and the node input each input file goes to (`_comfyui_payload`)
    lease_expires: float  # the offer's end: acknowledge before it


class LogChunk(msgspec.Struct):
    seq: int  # numbered from 1 per lease: a chunk sent again is ignored
    text: str


class Written(msgspec.Struct):
    size: int
    content_type: str = ""
    etag: str = ""


class Agents:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config = engine.config

    # who

    def worker_of(self, agent: AgentRecord) -> Worker:
        return Worker(id=agent.id, session=agent.session, team=agent.team, labels=tuple(agent.labels),
                      tools=tuple(agent.tools), region=agent.region, community=agent.community)  # fmt: skip

    def connected(self, agent: AgentRecord, now: float) -> bool:
        return now - agent.last_heartbeat <= OFFLINE_AFTER * self.config.heartbeat_interval

    async def states(self, team: str | None, limit: int | None = None, offset: int = 0) -> list[AgentState]:
        """A page of the team's agents (None: every team's; no limit: all), by name, each with its status and
        running attempts: what both the API's list and the dashboard show."""
        now = self.engine.clock()
        return [AgentState(row.agent, self._status(row, now), row.running)
                for row in await self.engine.db.agent_rows(team, limit, offset)]  # fmt: skip

    def _status(self, row: AgentRow, now: float) -> AgentStatus:
        return "offline" if not self.connected(row.agent, now) else "busy" if row.running else "idle"

    async def resume(self) -> None:
        """At start: the engine was away, and agents could not extend their leases meanwhile. Every
        running lease of an agent lasts at least two more leases from now: one for the engine to come
        up and serve, one for an agent that carried on (backing off meanwhile) to get its heartbeat in."""
        until = self.engine.clock() + 2 * self.config.lease
        for worker in await self.engine.db.attempts_running():
            agent = await self.engine.db.agent(id=worker)
            if agent is not None:
                await self.engine.db.extend_leases(worker, agent.session, until)

    async def register(self, team: str, body: Registration) -> AgentRecord:
        """A new session for the agent named `body.name` in `team`: the previous one's leases are lost."""
        now = self.engine.clock()
        known = await self.engine.db.agent(team=team, name=body.name)
        agent_id = known.id if known else self.engine.new_id()
        agent = AgentRecord(agent_id, team, body.name, sorted(set(body.labels)), sorted(set(body.tools)),
                            body.region.strip().lower(), body.capacity, body.community, body.system,
                            f"{agent_id}.{secrets.token_urlsafe(18)}", now, now,
                            known.tasks_completed if known else 0)  # fmt: skip
        await self.engine.db.put_agent(agent)
        if known:
            await self.engine.queue.fence(agent_id, now)
        return agent

    async def session_worker(self, team: str, session: str) -> Worker:
        """The worker of a current session of an agent of `team`; a fenced or unknown one is a conflict."""
        agent = await self.engine.db.agent(id=session.partition(".")[0])
        if agent is None or agent.team != team or not secrets.compare_digest(agent.session, session):
            raise conflict("this session is over (the agent registered again, or never did): register again",
                           "session")  # fmt: skip
        return self.worker_of(agent)

    async def lease_worker(self, team: str, lease_id: str) -> Worker:
        """The worker holding a lease, if it is an agent of `team` (another team's lease is not found)."""
        attempt = await self.engine.db.attempt(lease_id)
        agent = await self.engine.db.agent(id=attempt.worker) if attempt and attempt.worker else None
        if attempt is None or (agent is not None and agent.team != team):
            raise not_found("lease", lease_id, "path.lease_id")
        if agent is None:
            raise conflict(f"lease {lease_id!r} is not held by an agent", "path.lease_id")
        return self.worker_of(agent)

    # leasing

    async def lease(self, worker: Worker, slots: int, wait: float, base_url: str) -> list[Lease]:
        """Offers for `worker`: at once when there is work it may take, else when some comes, or
        none after `wait` seconds. Offers it holds and has not acknowledged come first (an answer
        that never reached it), with the same lease id and token."""
        await self.engine.db.touch_agent(worker.id, self.engine.clock())
        until = time.monotonic() + wait
        with self.engine.notifier.subscribe(QUEUE_TOPIC) as changes:
            while True:
                offered = (await self.engine.queue.pending_offers(worker))[:slots]
                if len(offered) < slots:
                    offered += await self.engine.queue.offer(worker, slots - len(offered))
                if offered:
                    return [await self.lease_of(a, base_url) for a in offered]
                left = until - time.monotonic()
                if left <= 0:
                    return []
                await changes.wait(min(left, POLL_SLICE))
                worker = await self._now(worker)

    async def _now(self, worker: Worker) -> Worker:
        """The worker as its agent is now: its heartbeats change the tools it offers while it polls."""
        agent = await self.engine.db.agent(id=worker.id)
        return self.worker_of(agent) if agent is not None and agent.session == worker.session else worker

    async def lease_of(self, attempt: Attempt, base_url: str) -> Lease:
        """What an agent needs to run an attempt anywhere: URLs for its inputs and outputs, valid for
        the whole attempt, its flags and its tool's payload."""
        run, flow, step, task = await self._of(attempt)
        expires = self._expires(attempt)
        inputs = {}
        for b in step.inputs:
            edge = run.edges[b.edge]
            obj = edge.object or machine.ObjectMeta(0, "application/octet-stream", "")
            url = self.engine.store_of(flow, edge).presign_get(edge.key, expires, base_url).url
            inputs[b.slot] = InputURL(url, obj.size, obj.content_type, PurePosixPath(edge.key).name)
        outputs = {b.slot: self._output_url(run, flow, attempt, _place(run, task, step, b.slot), expires, base_url)
                   for b in step.outputs}  # fmt: skip
        payload: dict[str, Any] = {"env": task.env}
        if task.exec is not None:
            payload["exec"] = task.exec
        if task.python is not None:
            payload["python"] = task.python
        record = await self.engine.db.task(run.id)
        if record is not None and task.tool == COMFYUI:
            payload.update(_comfyui_payload(msgspec.json.decode(record.body, type=TaskBody), step))
        flags = dict(flag_values(step, task))
        return Lease(attempt.id, attempt.token, run.id, record and record.id, step.id, attempt.attempt, attempt.tool,
                     attempt.timeout, flags, inputs, outputs, payload, attempt.offer_expires or math.inf)  # fmt: skip

    async def _of(self, attempt: Attempt) -> tuple[Run, Flow, Step, Task]:
        """The attempt's run, its flow, and the step and task it runs."""
        run, flow = await self.engine.get_run(attempt.run_id)
        step = flow.step(attempt.step)
        return run, flow, step, flow.task_of(step)

    def _expires(self, attempt: Attempt) -> float:
        """When an attempt's URLs stop working: after the longest it may be offered, run and extended."""
        return self.engine.clock() + self.config.offer_timeout + attempt.timeout + 2 * self.config.lease

    def _output_url(self, run: Run, flow: Flow, attempt: Attempt, place: _Place, expires: float,
                    base_url: str) -> OutputURL:  # fmt: skip
        key = output_key(place.key, attempt.attempt)
        conditions = PutConditions(content_type=place.content_type, lease=attempt.id)
        signed = self.engine.store_of(flow, place.state).presign_put(key, expires, conditions, base_url)
        return OutputURL(signed.url, signed.headers, PurePosixPath(key).name, place.content_type)

    async def more_outputs(self, lease_id: str, token: str, worker: Worker, slots: list[str],
                           base_url: str) -> dict[str, OutputURL]:  # fmt: skip
        """URLs for the files beyond the first of the running step's outputs numbered `.0` (`9.images.1`
        for slot `9.images.0`): how many files such an output gives is known only once it ran."""
        attempt = await self.engine.queue.running(lease_id, token, worker)
        run, flow, step, task = await self._of(attempt)
        expires = self._expires(attempt)
        return {slot: self._output_url(run, flow, attempt, _more_place(run, task, step, slot), expires, base_url)
                for slot in slots}  # fmt: skip

    async def heartbeat(self, worker: Worker, running: list[str],
                        tools: list[str] | None) -> tuple[list[str], list[str]]:  # fmt: skip
        """Extend the worker's leases; `tools`, when given, are the tools it offers from now on (a ComfyUI
        that went away, or came back). The leases to cancel, and those lost."""
        now = self.engine.clock()
        await self.engine.db.touch_agent(worker.id, now)
        if tools is not None and sorted(set(tools)) != list(worker.tools):
            await self.engine.db.set_agent_tools(worker.id, worker.session, sorted(set(tools)))
        await self.engine.queue.heartbeat(worker, running)
        return await self.engine.queue.outcome(running, worker)

    # reports

    async def logs(self, lease_id: str, token: str, worker: Worker, chunks: list[LogChunk]) -> None:
        """Append the chunks not seen yet to the step's log, in order; a chunk sent again is ignored."""
        if not chunks:
            return
        attempt = await self.engine.queue.running(lease_id, token, worker, done_ok=True)
        if attempt.state == "done":  # a report sent again: its chunks are in already
            return
        fresh = sorted((c for c in chunks if c.seq > attempt.log_seq), key=lambda c: c.seq)
        if not fresh:
            return
        path = self.engine.log_root / attempt.run_id / f"{attempt.step}.{attempt.attempt}.log"
        text = "".join(c.text if c.text.endswith("\n") else c.text + "\n" for c in fresh)
        await asyncio.to_thread(_append, path, text)
        await self.engine.queue.logged(attempt, fresh[-1].seq)

    async def progress(self, lease_id: str, token: str, worker: Worker, said: machine.Progress) -> None:
        """Show what the worker says in the run document (and so in the task's events)."""
        if said == machine.Progress():
            return
        attempt = await self.engine.queue.running(lease_id, token, worker)
        await self.engine.apply(attempt.run_id, machine.StepProgressed(attempt.step, attempt.attempt, said))

    def tail(self, attempt: Attempt) -> list[str]:
        path = self.engine.log_root / attempt.run_id / f"{attempt.step}.{attempt.attempt}.log"
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return lines[-self.config.log_tail :]

    async def complete(self, lease_id: str, token: str, worker: Worker, written: dict[str, Written]) -> None:
        """Accept a success once every output the step declares has landed where its lease said, with
        the size the agent reports."""
        attempt = await self.engine.queue.running(lease_id, token, worker, done_ok=True)
        if attempt.state == "done":
            await self.engine.queue.complete(lease_id, token, worker, {}, [])  # the same answer again, or 409
            return
        run, flow, step, task = await self._of(attempt)
        declared = [b.slot for b in step.outputs]
        for slot in declared:
            if slot not in written:
                raise Error("invalid", "output_missing", f"output {slot!r} is not reported", f"outputs.{slot}")
        places = [_place(run, task, step, slot) for slot in declared]
        places += [_more_place(run, task, step, slot) for slot in written if slot not in declared]
        outputs = {}
        for place in places:
            key = output_key(place.key, attempt.attempt)
            reported = written[place.slot]
            try:
                info = await self.engine.store_of(flow, place.state).stat(key)
            except StoreUnavailable as exc:
                raise Error("unavailable", "store_unavailable", f"store {place.state.store!r} did not answer: "
                            f"{exc}") from None  # fmt: skip
            if info is None:
                raise Error("invalid", "output_missing", f"output {place.slot!r} has not landed: upload it to its "
                            "URL", f"outputs.{place.slot}")  # fmt: skip
            if info.size != reported.size:
                raise Error("invalid", "output_size", f"output {place.slot!r} landed with {info.size} bytes, "
                            f"reported {reported.size}", f"outputs.{place.slot}.size")  # fmt: skip
            # a file beyond the first always says where it is: its edge is made from the report
            where = "" if key == place.state.key and place.edge in run.edges else key
            outputs[place.edge] = machine.ObjectMeta(info.size, info.content_type, info.etag, where)
        await self.engine.queue.complete(lease_id, token, worker, outputs, self.tail(attempt))
        await self.engine.db.touch_agent(worker.id, self.engine.clock(), completed=1)


class _Place(NamedTuple):
    """Where an output slot of a step writes: the edge it fills, the edge whose store (and, for a
    declared slot, whose key) it takes, the key before the attempt's own, its content type."""

    slot: str
    edge: str
    state: EdgeState
    key: str
    content_type: str


def _place(run: Run, task: Task, step: Step, slot: str) -> _Place:
    binding = next(b for b in step.outputs if b.slot == slot)
    edge = run.edges[binding.edge]
    return _Place(slot, binding.edge, edge, edge.key, output_type(task, slot, edge))


def _more_place(run: Run, task: Task, step: Step, slot: str) -> _Place:
    """The place of a file beyond the first of an output numbered `.0`; 400 for a slot that is none."""
    more = machine.more_output(step, slot)
    if more is None:
        raise Error("invalid", "unknown_output", f"step {step.id!r} has no output {slot!r}, nor one numbered "
                    f"'.0' that {slot!r} would be one more file of", f"outputs.{slot}")  # fmt: skip
    binding, i = more
    edge_name = machine.more_edge(binding.edge, i)
    first = run.edges[binding.edge]
    key = more_key(first.key, i)
    if edge_name in run.edges or any(e.key == key for e in run.edges.values()):
        raise Error("invalid", "unknown_output", f"output {slot!r} would fill edge {edge_name!r} or key {key!r}, "
                    "which the run has already", f"outputs.{slot}")  # fmt: skip
    return _Place(slot, edge_name, first, key, output_type(task, binding.slot, first))


def _comfyui_payload(body: TaskBody, step: Step) -> dict[str, Any]:
    """A comfyui step's: `graph`, the task's graph with its parameters patched in, and `files`, the node
    input (`{node_id, field}`) each input slot's file goes to once the agent has uploaded it to ComfyUI."""
    nodes = {f.edge: f.node for f in body.files if f.node is not None}
    files = {b.slot: msgspec.to_builtins(nodes[b.edge]) for b in step.inputs if b.edge in nodes}
    return {"graph": body.graph, "files": files}


def _append(path: Any, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
