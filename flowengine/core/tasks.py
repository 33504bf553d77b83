"""A task's status and its server-sent events, derived from its run (a task is a run started through
the workflow/task API). Pure: plain values in, plain values out.

`task_status(run)` maps the run and its steps onto the task API's statuses. Its meanings (the
reference's, cyberun-api.md §5.4) and what each is in a run, checked in this order:

| status    | meaning                                             | the run                                         |
| --------- | --------------------------------------------------- | ----------------------------------------------- |
| completed | success: the outputs are there                      | `COMPLETE`                                      |
| failed    | an error, a timeout, inputs that never came         | `ERROR`                                         |
| cancelled | cancelled before it ended                           | `STOPPED` (a run's status after a cancel)       |
| running   | a step is being executed                            | a step `RUNNING`, or `RETRYING` (between tries) |
| queued    | a step is handed to a worker, not started yet       | a step `READY` (dispatched)                     |
| waiting   | it has begun, but nothing can run until inputs come | no step active, some step dispatched before     |
| pending   | created: nothing scheduled yet                      | no step active, none ever dispatched            |

The engine dispatches a step as soon as its inputs are there, so a task nothing was ever scheduled
for (`pending`) is one whose first steps wait for an input (a webhook, an upload), or a flow without
steps waiting for its wells. `waiting` is the same wait after some of the task has run (a later
step needs a webhook's data). A task with several steps is as far along as its most advanced
active step: one step running and another queued is `running`.

`task_events(before, after)` are the events one commit adds to the task's SSE stream (§5.7): a
`status` event when the status changes to another that is not terminal, else the terminal event
(`completed`, `failed` or `cancelled`), each with single-line JSON data carrying `task_id`,
`status` and `timestamp` (RFC 3339, whole seconds, as the reference's examples); `completed` adds
the task's `output`, `failed` its `error`.
"""

from __future__ import annotations

from collections.abc import Callable
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


def task_status(run: Run) -> TaskStatus:
    """The task's status, from its run and the run's steps (the module's table)."""
    ended = _ENDED.get(run.status)
    if ended is not None:
        return ended
    steps = run.steps.values()
    if any(s.status in (machine.RUNNING, machine.RETRYING) for s in steps):
        return "running"
    if any(s.status == machine.READY for s in steps):
        return "queued"
    return "waiting" if any(s.attempts for s in steps) else "pending"


class TaskEventData(msgspec.Struct, frozen=True):
    """An event's `data:` line. `output` is only on `completed`, `error` only on `failed`."""

    task_id: str
    status: TaskStatus
    timestamp: str
    output: Any = msgspec.UNSET
    error: str | msgspec.UnsetType = msgspec.UNSET
    # `progress` only: what the worker last said (the reference's fields, and its message)
    progress: float | msgspec.UnsetType | None = msgspec.UNSET
    current_node: str | msgspec.UnsetType | None = msgspec.UNSET
    step_current: int | msgspec.UnsetType | None = msgspec.UNSET
    step_total: int | msgspec.UnsetType | None = msgspec.UNSET
    message: str | msgspec.UnsetType = msgspec.UNSET


class TaskEvent(msgspec.Struct, frozen=True):
    kind: TaskEventKind  # the SSE `event:` name
    data: TaskEventData
    at: float  # when the change was committed (the run's `updated`)


def task_events(before: Run | None, after: Run, output: Callable[[Run], Any] = lambda run: None) -> list[TaskEvent]:
    """The events the change from `before` (None: the run was just created) to `after` adds to the
    task's stream: its status when it changed, then a `progress` for each step whose worker said how far
    it is. `output(after)` is asked only for a `completed` event: the task's output summary (the caller's
    to make, from the run's artifacts)."""
    status = task_status(after)
    stamp = rfc3339(after.updated, precise=False)
    events = []
    if before is None or task_status(before) != status:
        if status == "completed":
            data = TaskEventData(after.id, status, stamp, output=output(after))
        elif status == "failed":
            data = TaskEventData(after.id, status, stamp, error=after.error or "")
        else:
            data = TaskEventData(after.id, status, stamp)
        kind: TaskEventKind = status if status in TERMINAL_TASK else "status"  # type: ignore[assignment]
        events.append(TaskEvent(kind, data, after.updated))
    for step_id, step in after.steps.items():
        said = step.progress
        if said is None or (before is not None and step_id in before.steps and before.steps[step_id].progress == said):
            continue
        data = TaskEventData(after.id, status, stamp, progress=said.fraction, current_node=said.current or None,
                             step_current=said.step_current, step_total=said.step_total,
                             message=said.message or msgspec.UNSET)  # fmt: skip
        events.append(TaskEvent("progress", data, after.updated))
    return events


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
