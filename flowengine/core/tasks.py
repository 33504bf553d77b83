"""A task's status and its server-sent events, derived from its run (a task is a run started through
the workflow/task API). Pure: plain values in, plain values out.

`task_status(run)` maps the run and its steps onto the task API's statuses. Its meanings (the
reference's, cyberun-api.md §5.4) and what each is in a run, checked in this order:

| status    | meaning                                             | the run, and its attempts in the step queue     |
| --------- | --------------------------------------------------- | ----------------------------------------------- |
| completed | success: the outputs are there                      | `COMPLETE`                                      |
| failed    | an error, a timeout, inputs that never came         | `ERROR`                                         |
| cancelled | cancelled before it ended                           | `STOPPED` (a run's status after a cancel)       |
| running   | a step is being executed                            | a step `RUNNING` (its worker acknowledged it),  |
|           |                                                     | or `RETRYING` (between tries)                   |
| queued    | a step is offered to a worker, not acknowledged yet | a step `READY` whose attempt is `offered`       |
| waiting   | the scheduler has it: no eligible worker took a     | a step `READY` whose attempt is still `queued`; |
|           | step yet, or nothing can run until inputs come      | or no step active, some step dispatched before  |
| pending   | created: nothing scheduled yet                      | no step active, none ever dispatched            |

The engine dispatches a step as soon as its inputs are there, so a task nothing was ever scheduled
for (`pending`) is one whose first steps wait for an input (a webhook, an upload), or a flow without
steps waiting for its wells. A step the engine's own executor takes is offered and acknowledged at
once, so such a task goes from `waiting` to `running`; an agent's step is `queued` between the offer
and the agent's acknowledgement. A task with several steps is as far along as its most advanced
active step: one step running and another queued is `running`.

`task_events(before, after)` are the events one commit adds to the task's SSE stream (§5.7): a
`status` event when the status changes to another that is not terminal, else the terminal event
(`completed`, `failed` or `cancelled`), each with single-line JSON data carrying `task_id`,
`status` and `timestamp` (RFC 3339, whole seconds, as the reference's examples); `completed` adds
the task's `output`, `failed` its `error`. A `progress` event follows each report of a running
step's worker (`progress`: the fraction done, 0 to 1, or null; `current_node`: what runs now, a
ComfyUI node's id; `message`; `step`: the flow's step).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Literal

import msgspec

from flowengine.core import machine
from flowengine.core.machine import Run
from flowengine.core.spec import Flow
from flowengine.core.times import rfc3339

TaskStatus = Literal["pending", "waiting", "queued", "running", "completed", "failed", "cancelled"]
TASK_STATUSES: tuple[TaskStatus, ...] = ("pending", "waiting", "queued", "running", "completed", "failed", "cancelled")
TERMINAL_TASK: frozenset[TaskStatus] = frozenset({"completed", "failed", "cancelled"})
# The reference's stream also has `error`.
TaskEventKind = Literal["status", "progress", "completed", "failed", "cancelled"]

_ENDED: dict[str, TaskStatus] = {machine.COMPLETE: "completed", machine.ERROR: "failed", machine.STOPPED: "cancelled"}


def task_status(run: Run, offered: Collection[str] = ()) -> TaskStatus:
    """The task's status, from its run, the run's steps and `offered`, the steps whose attempt is
    offered to a worker that has not acknowledged it yet (the module's table)."""
    ended = _ENDED.get(run.status)
    if ended is not None:
        return ended
    steps = run.steps
    if any(s.status in (machine.RUNNING, machine.RETRYING) for s in steps.values()):
        return "running"
    ready = [name for name, s in steps.items() if s.status == machine.READY]
    if any(name in offered for name in ready):
        return "queued"
    return "waiting" if ready or any(s.attempts for s in steps.values()) else "pending"


class TaskEventData(msgspec.Struct, frozen=True):
    """An event's `data:` line. `output` is only on `completed`, `error` only on `failed`."""

    task_id: str
    status: TaskStatus
    timestamp: str
    output: Any = msgspec.UNSET
    error: str | msgspec.UnsetType = msgspec.UNSET


class ProgressData(msgspec.Struct, frozen=True):
    """A `progress` event's `data:` line: what a running step's worker last reported."""

    task_id: str
    status: TaskStatus
    progress: float | None  # the fraction done, 0 to 1 (null: the worker did not say)
    current_node: str  # what runs now: a ComfyUI node's id, a phase
    message: str
    step: str  # the flow's step that reported it
    timestamp: str
    step_current: int | None = None  # within the node: a sampler's step, of step_total
    step_total: int | None = None


class TaskEvent(msgspec.Struct, frozen=True):
    kind: TaskEventKind  # the SSE `event:` name
    data: TaskEventData | ProgressData
    at: float  # when the change was committed (the run's `updated`)


def task_events(
    before: Run | None,
    after: Run,
    output: Callable[[Run], Any] = lambda run: None,
    *,
    offered: Collection[str] = (),
    was: str | None = None,
) -> list[TaskEvent]:
    """The events the change from `before` (None: the run was just created) to `after` adds to the
    task's stream: a status event when the task's status changed (from `was`, the status the task
    had; by default `before`'s with the same offers), and a `progress` event for each running step
    whose worker reported something new. `output(after)` is asked only for a `completed` event: the
    task's output summary (the caller's to make, from the run's artifacts)."""
    status = task_status(after, offered)
    if was is None and before is not None:
        was = task_status(before, offered)
    stamp = rfc3339(after.updated, precise=False)
    events = [] if was == status else [_status_event(after, status, stamp, output)]
    if before is not None and status not in TERMINAL_TASK:
        for name, state in after.steps.items():
            said = state.progress
            if said is not None and state.status == machine.RUNNING and said != before.steps[name].progress:
                data = ProgressData(
                    after.id,
                    status,
                    said.fraction,
                    said.current,
                    said.message,
                    name,
                    stamp,
                    said.step_current,
                    said.step_total,
                )
                events.append(TaskEvent("progress", data, after.updated))
    return events


def _status_event(after: Run, status: TaskStatus, stamp: str, output: Callable[[Run], Any]) -> TaskEvent:
    if status == "completed":
        data = TaskEventData(after.id, status, stamp, output=output(after))
    elif status == "failed":
        data = TaskEventData(after.id, status, stamp, error=after.error or "")
    else:
        data = TaskEventData(after.id, status, stamp)
    kind: TaskEventKind = status if status in TERMINAL_TASK else "status"  # type: ignore[assignment]
    return TaskEvent(kind, data, after.updated)


def output_edges(run: Run, flow: Flow) -> list[str]:
    """The task's outputs: the edges its steps write that no step reads (what the flow produces), in
    the run's edge order. `download_urls` has one URL per output edge."""
    read = {b.edge for s in flow.steps for b in s.inputs}
    return [name for name, e in run.edges.items() if e.source == machine.FROM_STEP and name not in read]


class OutputFile(msgspec.Struct, frozen=True):
    storage_key: str
    size: int
    content_type: str


class TaskOutput(msgspec.Struct, frozen=True):
    """A completed task's `task_output`: the first output's `storage_key` (the reference's shape), and
    every output edge's object."""

    storage_key: str | None
    outputs: dict[str, OutputFile]


def task_output(run: Run, flow: Flow) -> TaskOutput:
    files = {
        name: OutputFile(edge.key, edge.object.size, edge.object.content_type)
        for name in output_edges(run, flow)
        if (edge := run.edges[name]).object is not None
    }
    return TaskOutput(next((f.storage_key for f in files.values()), None), files)


def retry_count(run: Run) -> int:
    """Automatic retries so far: attempts after each step's first, not counting those the engine's
    stop or crash cut short (they run again without counting against the step's tries)."""
    return sum(max(0, s.attempts - s.interrupted - 1) for s in run.steps.values())
