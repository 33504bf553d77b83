"""The pure state machine: every run transition is decided here, and only here.

`advance(run, flow, event, now) -> (run, commands)` takes plain values and returns plain values:
no I/O, no clock, no database. Events are facts the shell observed; commands are what the shell
must do next. Applying an event that no longer fits (a duplicate landing, a result from a stale
attempt, anything on a finished run) returns the run unchanged and no commands, which is what
makes redelivery harmless.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec
from msgspec import structs

from flowengine.core.spec import Binding, Flow, Scalar, Step
from flowengine.core.validate import mime_matches

# Run status, as in the flow API reference.
STOPPED, WAITING, RUNNING, COMPLETE, ERROR = "STOPPED", "WAITING", "RUNNING", "COMPLETE", "ERROR"
TERMINAL = frozenset({STOPPED, COMPLETE, ERROR})
# Step status.
IDLE, READY, RETRYING = "IDLE", "READY", "RETRYING"
ACTIVE_STEP = frozenset({READY, RUNNING, RETRYING})
FROM_STEP = "step"  # an edge's source when a step's output fills it
FROM_FILE = "file"  # a task's well, filled when the task is created with a file the team uploaded
# An attempt cut short by the engine stopping or dying is not the step's failure: it runs again as a
# new attempt, not counted against MaxAttempts. A step interrupted this many times fails the run
# (an engine that dies each time it runs a step would otherwise run it forever).
MAX_INTERRUPTIONS = 5
WAITING_SOURCES = ("upload", "webhook")  # sources a client fills: the run waits for them
MAX_FILES = 256  # files an output numbered `.0` may give in all (its first and those `more_output` names)
_MORE = re.compile(r"[1-9][0-9]*")


# gc=False: runs are kept in memory by the thousand and never hold a reference back to anything, so
# the cyclic garbage collector need not walk them (it cost about a twentieth of a create's CPU).
class ObjectMeta(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    size: int
    content_type: str
    etag: str
    key: str = ""  # a step's output written elsewhere than its edge's key (a later attempt's own key)


class EdgeState(msgspec.Struct, omit_defaults=True, gc=False):
    store: str
    key: str
    source: str  # upload | webhook | static | step | file
    deadline: float | None = None  # a waiting well's TTL
    expect_size: int | None = None
    max_size: int | None = None
    content_type: str | None = None  # declared: the object must carry exactly this type
    accept: tuple[str, ...] = ()  # a tuple: shared, and not one more object per edge for the GC
    object: ObjectMeta | None = None  # set once the edge is filled, never again
    filled_at: float | None = None


class Progress(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """What a worker last said about a running attempt."""

    fraction: float | None = None  # 0 to 1
    current: str = ""  # what runs now (a ComfyUI node, a phase)
    message: str = ""
    step_current: int | None = None  # within `current`, for work that counts its steps (a sampler)
    step_total: int | None = None


class StepState(msgspec.Struct, omit_defaults=True, gc=False):
    status: str = IDLE
    attempts: int = 0  # attempts started, interrupted ones included: each has its own number and log
    interrupted: int = 0  # of those, how many the engine's stop or crash cut short
    error: str | None = None
    logs: list[str] = []
    started: float | None = None
    finished: float | None = None
    retry_at: float | None = None
    progress: Progress | None = None  # the running attempt's, as its worker last reported


class Run(msgspec.Struct, omit_defaults=True, gc=False):
    id: str
    flow: str
    status: str
    created: float
    updated: float
    edges: dict[str, EdgeState]
    steps: dict[str, StepState]
    error: str | None = None
    failed_step: str | None = None
    team: str = ""  # the team that owns it ('' on an engine without credentials)
    flags: dict[str, dict[str, Scalar]] = {}  # step -> flag -> value, over the step's own Flags (a task's parameters)
    task: bool = False  # started through the workflow/task API: its changes are the task's events too
    pool: str = "team"  # which agents may run its steps: its team's, or also the community pool's
    region: str = ""  # the region whose agents its steps prefer ('' for any)
    webhook: str = ""  # a flow-API run's URL, notified when it ends ('' for none)


# Events: facts.
class Landed(msgspec.Struct, tag=True, frozen=True):
    edge: str
    object: ObjectMeta


class StepStarted(msgspec.Struct, tag=True, frozen=True):
    step: str
    attempt: int


class StepSucceeded(msgspec.Struct, tag=True, frozen=True):
    step: str
    attempt: int
    outputs: dict[str, ObjectMeta]  # edge -> what was written there
    logs: list[str] = []


class StepFailed(msgspec.Struct, tag=True, frozen=True):
    step: str
    attempt: int
    error: str
    logs: list[str] = []
    retry: bool = True  # False: the worker says another attempt cannot help; the step fails now


class StepReleased(msgspec.Struct, tag=True, frozen=True):
    """The worker gave a running attempt back unfinished (a graceful stop): it waits for a worker
    again, as the same attempt, not counted against MaxAttempts."""

    step: str
    attempt: int


class StepProgressed(msgspec.Struct, tag=True, frozen=True):
    step: str
    attempt: int
    progress: Progress


class StepInterrupted(msgspec.Struct, tag=True, frozen=True):
    """The engine stopped or died while this attempt ran (found RUNNING at start): its process is gone."""

    step: str
    attempt: int


class Tick(msgspec.Struct, tag=True, frozen=True):
    """A timer fired: deadlines and retry times up to `now` are due."""


class Cancel(msgspec.Struct, tag=True, frozen=True):
    reason: str = "cancelled by request"


class Refresh(msgspec.Struct, tag=True, frozen=True):
    deadline: float  # the new TTL for every well still empty


Event = (
    Landed
    | StepStarted
    | StepProgressed
    | StepSucceeded
    | StepFailed
    | StepReleased
    | StepInterrupted
    | Tick
    | Cancel
    | Refresh
)


# Commands: what the shell must do.
class Dispatch(msgspec.Struct, tag=True, frozen=True):
    step: str
    attempt: int


class Abort(msgspec.Struct, tag=True, frozen=True):
    step: str


Command = Dispatch | Abort


def start(
    flow: Flow,
    run_id: str,
    edges: dict[str, EdgeState],
    now: float,
    team: str = "",
    *,
    flags: dict[str, dict[str, Scalar]] | None = None,
    task: bool = False,
    pool: str = "team",
    region: str = "",
    webhook: str = "",
) -> tuple[Run, list[Command]]:
    """A new run of `team`: the shell resolved every edge's store and key (static wells, and a task's
    file wells, arrive filled). `flags` override the steps' own; `task`: a task's run; `pool` and
    `region`: which agents its steps may go to, and prefer; `webhook`: the URL notified when it ends."""
    steps = {s.id: StepState() for s in flow.steps}
    run = Run(run_id, flow.name, WAITING, now, now, edges, steps, team=team, flags=flags or {}, task=task, pool=pool,
              region=region, webhook=webhook)  # fmt: skip
    commands = _settle(run, flow, now)
    return run, commands


def advance(run: Run, flow: Flow, event: Event, now: float) -> tuple[Run, list[Command]]:
    if run.status in TERMINAL:
        return run, []
    new = _clone(run)
    commands = _HANDLERS[type(event)](new, flow, event, now)
    commands += _settle(new, flow, now)
    if new == run:
        return run, []
    new.updated = now
    return new, commands


def next_wake(run: Run) -> float | None:
    """When a Tick is next due: the earliest well TTL or retry time; None when nothing waits on time."""
    if run.status in TERMINAL:
        return None
    # Exactly the times a Tick acts on (the wells _on_tick expires, the retries _settle dispatches),
    # so a due Tick always changes the run and the timer loop never spins on one.
    deadlines = (run.edges[name].deadline for name in waiting_edges(run))
    times = [d for d in deadlines if d is not None]
    times += [s.retry_at for s in run.steps.values() if s.status == RETRYING and s.retry_at is not None]
    return min(times, default=None)


def waiting_edges(run: Run) -> list[str]:
    """Edges a client or webhook must still fill."""
    if run.status in TERMINAL:
        return []
    return [name for name, e in run.edges.items() if e.object is None and e.source != FROM_STEP]


class LandingProblem(msgspec.Struct, frozen=True):
    kind: str  # "size" (not the declared size), "too_large" (over the limit), "type" (a type it does not take)
    message: str


def landing_problem(edge_name: str, edge: EdgeState, obj: ObjectMeta) -> LandingProblem | None:
    """Why an object that arrived on an edge cannot be used, or None."""
    if edge.expect_size is not None and obj.size != edge.expect_size:
        return LandingProblem("size", f"object for edge {edge_name!r} is {obj.size} bytes, declared {edge.expect_size}")
    if edge.max_size is not None and obj.size > edge.max_size:
        message = f"object for edge {edge_name!r} is {obj.size} bytes, over the limit of {edge.max_size}"
        return LandingProblem("too_large", message)
    mime = obj.content_type.split(";")[0].strip().lower()
    if edge.content_type is not None and mime != edge.content_type.split(";")[0].strip().lower():
        return LandingProblem(
            "type", f"object for edge {edge_name!r} has type {mime!r}, declared {edge.content_type!r}"
        )
    if edge.accept and not any(mime_matches(mime, p) for p in edge.accept):
        message = f"object for edge {edge_name!r} has type {mime!r}, not one of {', '.join(edge.accept)}"
        return LandingProblem("type", message)
    return None


def _clone(run: Run) -> Run:
    return structs.replace(
        run,
        edges={k: structs.replace(v) for k, v in run.edges.items()},
        steps={k: structs.replace(v) for k, v in run.steps.items()},
    )


def _fill(run: Run, edge: str, obj: ObjectMeta, now: float) -> None:
    state = run.edges[edge]
    if obj.key:
        state.key = obj.key  # where the attempt that won wrote it: downloads, later steps and retention read it there
    state.object = obj
    state.filled_at = now
    state.deadline = None


def _fail(run: Run, error: str, step: str | None = None) -> None:
    run.status = ERROR
    run.error = error
    run.failed_step = step


def _on_landed(run: Run, flow: Flow, event: Landed, now: float) -> list[Command]:
    edge = run.edges.get(event.edge)
    if edge is None or edge.object is not None or edge.source == FROM_STEP:
        return []
    problem = landing_problem(event.edge, edge, event.object)
    if problem:
        _fail(run, problem.message)
        return []
    _fill(run, event.edge, event.object, now)
    return []


def _current(run: Run, step: str, attempt: int, statuses: frozenset[str]) -> StepState | None:
    """The step's state if this report is about its current attempt, else None (a stale duplicate)."""
    state = run.steps.get(step)
    if state is None or state.attempts != attempt or state.status not in statuses:
        return None
    return state


def _on_started(run: Run, flow: Flow, event: StepStarted, now: float) -> list[Command]:
    state = _current(run, event.step, event.attempt, frozenset({READY}))
    if state:
        state.status = RUNNING
        state.started = now
    return []


def _on_succeeded(run: Run, flow: Flow, event: StepSucceeded, now: float) -> list[Command]:
    state = _current(run, event.step, event.attempt, frozenset({READY, RUNNING}))
    if state is None:
        return []
    step = flow.step(event.step)
    missing = [b.edge for b in step.outputs if b.edge not in event.outputs]
    if missing:
        failed = StepFailed(event.step, event.attempt, f"no output written for {', '.join(missing)}", event.logs)
        return _on_failed(run, flow, failed, now)
    state.status = COMPLETE
    state.finished = now
    state.logs = event.logs
    state.error = None
    for binding in step.outputs:  # only its own outputs: a report cannot fill someone else's edge
        if run.edges[binding.edge].object is None:
            _fill(run, binding.edge, event.outputs[binding.edge], now)
    _add_more(run, step, event.outputs, now)
    return []


def more_output(step: Step, name: str) -> tuple[Binding, int] | None:
    """`(binding, i)` when `name` names file `i` (from 1) of an output slot of `step` numbered `.0`: a ComfyUI
    node's images, whose number is known only once it ran (`9.images.3` is the fourth file of slot
    `9.images.0`, and fills edge `more_edge(<its edge>, 3)`). None for any other name."""
    head, _, index = name.rpartition(".")
    if _MORE.fullmatch(index) and int(index) < MAX_FILES:
        for b in step.outputs:
            if b.slot == f"{head}.0":
                return b, int(index)
    return None


def more_edge(edge: str, i: int) -> str:
    """The edge of the file numbered `i` of an output whose first file fills `edge` (`9.images.0`: `9.images.i`)."""
    return f"{edge.removesuffix('.0')}.{i}"


def _add_more(run: Run, step: Step, outputs: dict[str, ObjectMeta], now: float) -> None:
    """Edges for the files beyond the first of the step's outputs numbered `.0`, each after the edge of
    its first, on its store, where the report says it was written (numbered on from 1, as produced)."""
    numbered = {b.edge for b in step.outputs if b.slot.endswith(".0")}
    if not numbered:  # nearly every step: no pass over the run's edges
        return
    edges: dict[str, EdgeState] = {}
    added = []
    for name, edge in run.edges.items():
        edges[name] = edge
        if name not in numbered:
            continue
        for i in range(1, MAX_FILES):
            more = more_edge(name, i)
            obj = outputs.get(more)
            if obj is None or not obj.key or more in run.edges:
                break
            edges[more] = EdgeState(edge.store, obj.key, FROM_STEP, content_type=edge.content_type)
            added.append(more)
    if added:
        run.edges = edges
        for name in added:
            _fill(run, name, outputs[name], now)


def _on_failed(run: Run, flow: Flow, event: StepFailed, now: float) -> list[Command]:
    state = _current(run, event.step, event.attempt, frozenset({READY, RUNNING}))
    if state is None:
        return []
    task = flow.task_of(flow.step(event.step))
    state.error = event.error
    state.logs = event.logs
    state.finished = now
    failures = state.attempts - state.interrupted
    if event.retry and failures < task.max_attempts:
        state.status = RETRYING
        state.retry_at = now + task.backoff_seconds * 2 ** (failures - 1)
        return []
    state.status = ERROR
    _fail(run, f"step {event.step!r} failed after {failures} attempt(s): {event.error}", event.step)
    return []


def _on_progressed(run: Run, flow: Flow, event: StepProgressed, now: float) -> list[Command]:
    state = _current(run, event.step, event.attempt, frozenset({RUNNING}))
    if state:
        state.progress = event.progress
    return []


def _on_released(run: Run, flow: Flow, event: StepReleased, now: float) -> list[Command]:
    state = _current(run, event.step, event.attempt, frozenset({RUNNING}))
    if state:
        state.status = READY
        state.started = state.progress = None
    return []


def _on_interrupted(run: Run, flow: Flow, event: StepInterrupted, now: float) -> list[Command]:
    state = _current(run, event.step, event.attempt, frozenset({RUNNING}))
    if state is None:
        return []
    state.interrupted += 1
    state.error = f"attempt {event.attempt} was interrupted: the engine stopped while it ran"
    state.finished = now
    if state.interrupted < MAX_INTERRUPTIONS:
        state.status = RETRYING
        state.retry_at = now  # at once: _settle dispatches the next attempt
        return []
    state.status = ERROR
    _fail(run, f"step {event.step!r} was interrupted {state.interrupted} times by the engine stopping", event.step)
    return []


def _on_tick(run: Run, flow: Flow, event: Tick, now: float) -> list[Command]:
    for name in waiting_edges(run):
        deadline = run.edges[name].deadline
        if deadline is not None and deadline <= now:
            _fail(run, f"upload for edge {name!r} expired")
            return []
    return []  # due retries are picked up by _settle


def _on_cancel(run: Run, flow: Flow, event: Cancel, now: float) -> list[Command]:
    run.status = STOPPED
    run.error = event.reason
    return []


def _on_refresh(run: Run, flow: Flow, event: Refresh, now: float) -> list[Command]:
    for name in waiting_edges(run):
        run.edges[name].deadline = event.deadline
    return []


_HANDLERS = {
    Landed: _on_landed,
    StepStarted: _on_started,
    StepSucceeded: _on_succeeded,
    StepFailed: _on_failed,
    StepReleased: _on_released,
    StepProgressed: _on_progressed,
    StepInterrupted: _on_interrupted,
    Tick: _on_tick,
    Cancel: _on_cancel,
    Refresh: _on_refresh,
}


def _settle(run: Run, flow: Flow, now: float) -> list[Command]:
    """Dispatch what became ready, stop what must stop, and derive the run's status."""
    if run.status in TERMINAL:
        return _stop_active(run, now)
    commands: list[Command] = []
    for step in flow.steps:
        state = run.steps[step.id]
        inputs_ready = all(run.edges[b.edge].object is not None for b in step.inputs)
        due = state.status == IDLE and inputs_ready
        due = due or (state.status == RETRYING and state.retry_at is not None and state.retry_at <= now)
        if due:
            state.status = READY
            state.attempts += 1
            state.retry_at = None
            state.started = state.finished = state.progress = None
            commands.append(Dispatch(step.id, state.attempts))
    run.status = _derived_status(run)
    return commands


def _stop_active(run: Run, now: float) -> list[Command]:
    commands: list[Command] = []
    for name, state in run.steps.items():
        if state.status in ACTIVE_STEP:
            if state.status != RETRYING:
                commands.append(Abort(name))
            state.status = ERROR
            state.error = state.error or "stopped: the run ended"
            state.finished = now
            state.retry_at = None
    return commands


def _derived_status(run: Run) -> str:
    if any(s.status in ACTIVE_STEP for s in run.steps.values()):
        return RUNNING
    if all(e.object is not None for e in run.edges.values()):
        return COMPLETE
    return WAITING


# Transitions: what changed between two versions of a run, for logs and metrics. Derived, so the
# shell reports exactly what the machine decided, however the change came about.
TransitionKind = Literal[
    "run.created", "run.waiting", "run.running", "run.complete", "run.error", "run.stopped",
    "edge.filled", "step.started", "step.succeeded", "step.failed",
]  # fmt: skip


class Transition(msgspec.Struct, frozen=True, omit_defaults=True):
    kind: TransitionKind
    run: str
    flow: str
    status: str | None = None  # the run's, for run.* kinds
    step: str | None = None
    attempt: int | None = None
    retry: bool | None = None  # step.failed: whether another attempt follows
    edge: str | None = None
    source: str | None = None  # edge.filled: upload, webhook, static or step
    size: int | None = None  # edge.filled: bytes
    duration: float | None = None  # seconds: a step's attempt, or a run from creation to its end
    error: str | None = None


def filled(before: Run | None, after: Run) -> list[str]:
    """The edges filled between `before` (None for a new run) and `after`, those a step added among them."""
    return [name for name, edge in after.edges.items() if edge.object is not None and (
        before is None or name not in before.edges or before.edges[name].object is None)]  # fmt: skip


def transitions(before: Run | None, after: Run) -> list[Transition]:
    """What happened between `before` (None for a new run) and `after`, in a sensible order:
    edges filled, steps that ended, steps that started, then the run's own status."""
    found: list[Transition] = []
    for name in filled(before, after):
        edge = after.edges[name]
        assert edge.object is not None
        found.append(_t("edge.filled", after, edge=name, source=edge.source, size=edge.object.size))
    for name, step in after.steps.items():
        old = before.steps[name] if before is not None else StepState()
        if (step.status, step.attempts) == (old.status, old.attempts):
            continue
        # An attempt ended: its step moved on, or (no backoff) was dispatched again at once.
        ended = step.status in (COMPLETE, ERROR, RETRYING) or step.attempts > old.attempts
        if ended and old.status in (READY, RUNNING):
            duration = after.updated - old.started if old.started is not None else None
            kind: TransitionKind = "step.succeeded" if step.status == COMPLETE else "step.failed"
            retry = None if step.status == COMPLETE else step.status != ERROR
            found.append(_t(kind, after, step=name, attempt=old.attempts, duration=duration, retry=retry,
                            error=step.error if step.status != COMPLETE else None))  # fmt: skip
        if step.status == RUNNING:
            found.append(_t("step.started", after, step=name, attempt=step.attempts))
    if before is None:
        found.append(_t("run.created", after, status=after.status))
    elif after.status != before.status:
        kind = f"run.{after.status.lower()}"  # type: ignore[assignment]
        if after.status in TERMINAL:
            ended = {"error": after.error, "step": after.failed_step, "duration": after.updated - after.created}
            found.append(_t(kind, after, status=after.status, **ended))
        else:
            found.append(_t(kind, after, status=after.status))
    return found


def _t(kind: TransitionKind, run: Run, **fields: Any) -> Transition:
    return Transition(kind, run.id, run.flow, **fields)
