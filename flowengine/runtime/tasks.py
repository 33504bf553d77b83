"""Tasks: runs started through the workflow/task API. Not a second engine: a task is a run (same id),
with a row that records what the caller asked for (the workflow and its version, the parameters,
dispatch_target, target_pool, submitter_region, tool_type, how it was created) and the events of its
SSE stream. Both are written in the transaction of the run change that causes them (the engine's
`create_run` and `apply` call `first_rows` and `change`), so TTLs, retention, retries and restart
safety are the run's, and a stream resumed after a restart misses nothing.

Submitting (`submit`): the workflow must be active; `core.workflows.resolve_run` checks the
parameters; each file parameter's object must be a file the team presigned, still kept, and in the
store, of a type its parameter and well accept: the type the object was stored with, or, when the
upload sent none (a store's generic `application/octet-stream`), the type declared at presign. The
run's file wells are filled with those objects at once (edge source `file`), and its steps' flags
take the parameters. An `Idempotency-Key` makes a retry within 24 hours return the first task.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import msgspec

from flowengine.core import machine
from flowengine.core.machine import EdgeState, ObjectMeta, Run
from flowengine.core.spec import Flow
from flowengine.core.tasks import TERMINAL_TASK, task_events, task_output, task_status
from flowengine.core.workflow_fields import Value
from flowengine.core.workflows import FileInput, RunRequest, StoredFile, WorkflowIn, check_file, resolve_run
from flowengine.errors import Error, bad_request
from flowengine.identity.directory import Principal
from flowengine.persistence.base import IdempotencyKey, Queries, TaskChange, TaskEventRow, TaskRecord
from flowengine.runtime.files import files_store

if TYPE_CHECKING:
    from flowengine.runtime.engine import Engine
    from flowengine.runtime.workflows import Stored

IDEMPOTENCY_WINDOW = 86_400.0  # seconds an Idempotency-Key names the task its first request made
MAX_IDEMPOTENCY_KEY = 255
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})  # an upload that named no type
IDEMPOTENCY_TAKEN = "idempotency_key_taken"
CREATED_VIA = {"user": "jwt", "integration": "api_key", "device": "device"}
_encode = msgspec.json.Encoder().encode


class TaskBody(msgspec.Struct, frozen=True):
    """What a task runs with, as its row keeps it: every parameter's value (defaults included), the
    files that filled its wells, and the ComfyUI graph with the node parameters patched in."""

    parameters: dict[str, Value]
    files: list[FileInput]
    graph: dict[str, Any] | None = None


class NewTask(msgspec.Struct, frozen=True):
    """A task for `Engine.create_run` to start: its row (id, status and events are the run's to set),
    its file wells (filled), its steps' flags, and the Idempotency-Key it claims (task: the run's)."""

    record: TaskRecord
    edges: dict[str, EdgeState]
    flags: dict[str, dict[str, Value]]
    idempotency: IdempotencyKey | None = None


async def submit(
    engine: Engine, principal: Principal, stored: Stored, request: RunRequest, idempotency_key: str | None = None
) -> tuple[str, bool]:
    """Start a task of the workflow (at the version `stored` is) for the caller's team; returns its id,
    and whether it is the task an earlier request with the same Idempotency-Key started."""
    team, now = principal.team, engine.clock()
    fingerprint = hashlib.sha256(stored.record.id.encode() + b"\0" + _encode(request)).hexdigest()
    if idempotency_key is not None:
        found = await engine.db.idempotency_key(team, idempotency_key, now - IDEMPOTENCY_WINDOW)
        if found is not None:
            return _replayed(found, fingerprint), True
    if stored.record.status != "active":
        raise bad_request("workflow_disabled", f"workflow {stored.record.slug!r} is disabled: it takes no new tasks",
                          "workflow_status")  # fmt: skip
    workflow = stored.workflow
    inputs = resolve_run(workflow, request)
    edges = {f.edge: await _file_edge(engine, workflow, f, team) for f in inputs.files}
    assert workflow.flow is not None, "a stored workflow has its flow"
    plan = engine.plan(workflow.flow, inline=stored.record.team != "")  # a team's follows the inline rules
    body = TaskBody(inputs.parameters, inputs.files, inputs.graph)
    record = TaskRecord(
        "", team, stored.record.id, stored.version, "pending", 0, _encode(body), inputs.dispatch_target,
        inputs.target_pool, inputs.submitter_region, inputs.tool_type, CREATED_VIA[principal.kind], now,
    )  # fmt: skip
    claim = IdempotencyKey(team, idempotency_key, "", fingerprint, now) if idempotency_key is not None else None
    try:
        run = await engine.create_run(plan, team, NewTask(record, edges, inputs.flags, claim), pool=record.target_pool,
                                      region=record.submitter_region)  # fmt: skip
    except Error as exc:
        if exc.code != IDEMPOTENCY_TAKEN:
            raise
        found = await engine.db.idempotency_key(team, idempotency_key or "", now - IDEMPOTENCY_WINDOW)
        if found is None:  # the other request's key is gone again: its window closed meanwhile
            raise
        return _replayed(found, fingerprint), True
    return run.id, False


def _replayed(found: IdempotencyKey, fingerprint: str) -> str:
    if found.fingerprint != fingerprint:
        message = (
            "this Idempotency-Key came with another request (workflow or body) in the last 24 hours: use a new key"
        )
        raise Error("conflict", "idempotency_key_reused", message, "header.Idempotency-Key")
    return found.task


async def _file_edge(engine: Engine, workflow: WorkflowIn, file: FileInput, team: str) -> EdgeState:
    """The well a file parameter fills, filled with the team's uploaded object (check_file's rules)."""
    store, now = files_store(engine), engine.clock()
    record = await engine.db.file(store.name, file.file_key)
    info = None
    if record is not None and record.team == team and now < record.expires:
        info = await store.stat(file.file_key)
    if record is None or info is None:
        check_file(workflow, file, None, team)  # raises: not uploaded (or not the team's: told the same)
        raise AssertionError("check_file takes no file that is not there")
    content_type = record.content_type if info.content_type in GENERIC_TYPES else info.content_type
    check_file(workflow, file, StoredFile(record.team, info.size, content_type), team)
    obj = ObjectMeta(info.size, content_type, info.etag)
    return EdgeState(store.name, file.file_key, machine.FROM_FILE, object=obj, filled_at=now)


def first_rows(task: NewTask, run: Run, flow: Flow) -> tuple[TaskRecord, list[TaskEventRow]]:
    """A new task's row and its first event (its status), for the transaction that inserts its run."""
    events = [TaskEventRow(i, *row) for i, row in enumerate(_rows(None, run, flow), 1)]
    change = task_change(None, run, flow)
    record = msgspec.structs.replace(task.record, id=run.id, status=change.status, events=len(events),
                                     started=change.started, completed=change.completed)  # fmt: skip
    return record, events


def task_change(before: Run | None, after: Run, flow: Flow, offered: Collection[str] = (),
                was: str | None = None) -> TaskChange:  # fmt: skip
    """What a change of a task's run does to the task (its events empty: nothing to save). `offered`:
    the run's steps whose attempt is offered to a worker; `was`: the task's status before."""
    status = task_status(after, offered)
    started = after.updated if status == "running" else None
    rows = _rows(before, after, flow, offered, was)
    return TaskChange(status, rows, started, after.updated if status in TERMINAL_TASK else None)


def _rows(before: Run | None, after: Run, flow: Flow, offered: Collection[str] = (),
          was: str | None = None) -> list[tuple[str, bytes, float]]:  # fmt: skip
    events = task_events(before, after, lambda run: task_output(run, flow), offered=offered, was=was)
    return [(e.kind, _encode(e.data), e.at) for e in events]


async def refresh(tx: Queries, engine: Engine, run_id: str) -> None:
    """After an offer to a worker was made or taken back (the run itself unchanged): the task's
    status follows (`queued` while offered, `waiting` again when the offer went back to the queue).
    The run's row is locked here (if the caller has not yet), as for every change of the task."""
    row = await tx.load_run(run_id)
    if row is None or not row.run.task:
        return
    task = await tx.task(run_id)
    if task is None:
        return
    flow = await engine.flow_of(row.definition, tx)
    change = task_change(None, row.run, flow, await tx.offered_steps(run_id), task.status)
    if change.events:
        await tx.save_task(run_id, change)
