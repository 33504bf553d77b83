"""The workflow/task API's tasks: running a workflow (`POST /r/workflows/{id}/run`, by slug too) and
what follows (`GET /r/tasks`, `/r/tasks/{id}`, its result, its cancel, its server-sent events).

A task is a run (runtime/tasks.py): these routes only decode, authenticate and encode. Another
team's task is not found, exactly as one that does not exist.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, cast

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from flowengine.api import sse
from flowengine.api.auth import RUNTIME_CALLERS, RUNTIME_SECURITY, authenticate
from flowengine.api.errors import ReferenceErrorBody
from flowengine.api.http import engine_of, json_response
from flowengine.api.openapi import Answer, ApiRoute, Body, Operation, Param, in_header, in_path, in_query
from flowengine.api.r.common import PageMeta, body_of, page_answer, page_params, public_base, query_choice
from flowengine.core.machine import Run
from flowengine.core.spec import Flow
from flowengine.core.tasks import (
    TASK_STATUSES,
    TERMINAL_TASK,
    TaskOutput,
    TaskStatus,
    output_edges,
    retry_count,
    task_output,
    task_status,
)
from flowengine.core.workflows import RunRequest, TaskSubmitted
from flowengine.errors import bad_request, not_found
from flowengine.persistence.base import TaskRecord, TaskRow
from flowengine.runtime.agents import gpu_type
from flowengine.runtime.engine import Engine
from flowengine.runtime.notifier import run_topic
from flowengine.runtime.tasks import MAX_IDEMPOTENCY_KEY, submit

TAG = "tasks"
_IDEMPOTENCY_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_IDEMPOTENCY_KEY}}}")  # printable ASCII, no spaces


class TaskDetail(msgspec.Struct, omit_defaults=False):
    """A task as `GET /r/tasks/{id}` and `GET /r/tasks` show it (the reference's fields). `agent_id`,
    `agent_labels`, `gateway_id` and `gpu_type` say where it ran: null (and []) for a task the engine
    ran itself."""

    id: str
    workflow_id: str
    workflow_version: int  # the exact version the task runs
    task_status: TaskStatus
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    task_error: str  # "" unless failed
    retry_count: int
    agent_id: str | None
    agent_labels: list[str]
    gateway_id: str | None
    gpu_type: str | None
    dispatch_target: str
    target_pool: str
    submitter_region: str
    tool_type: str
    created_via: str  # jwt (a user's session) | api_key (sk-) | device (dk-)


class TaskList(msgspec.Struct):
    task_list: list[TaskDetail]
    page_meta: PageMeta


class TaskResult(msgspec.Struct, omit_defaults=False):
    """`GET /r/tasks/{id}/result`. Completed: `task_output`, and a presigned URL per output edge
    (`download_urls`; `download_url` is the first), minted on every call, valid until `expires_at`.
    Failed: `task_error`, the rest null. Cancelled or not finished: all null, `task_error` ""."""

    id: str
    task_status: TaskStatus
    task_output: TaskOutput | None
    download_url: str | None
    download_urls: dict[str, str] | None
    expires_at: datetime | None
    task_error: str
    completed_at: datetime | None


class Cancelled(msgspec.Struct):
    success: bool  # always true: cancelling a task that has ended changes nothing, and succeeds


def _time(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


def _error_of(run: Run) -> str:
    return (run.error or "") if task_status(run) == "failed" else ""


def task_detail(row: TaskRow) -> TaskDetail:
    task, run, agent = row.task, row.run, row.agent
    return TaskDetail(
        id=task.id, workflow_id=task.workflow, workflow_version=task.version, task_status=_status(task),
        created_at=datetime.fromtimestamp(task.created, UTC), started_at=_time(task.started),
        completed_at=_time(task.completed), task_error=_error_of(run), retry_count=retry_count(run),
        agent_id=agent.name if agent else None, agent_labels=agent.labels if agent else [], gateway_id=None,
        gpu_type=gpu_type(agent.system) if agent else None, dispatch_target=task.dispatch_target,
        target_pool=task.target_pool, submitter_region=task.submitter_region, tool_type=task.tool_type,
        created_via=task.created_via,
    )  # fmt: skip


def _status(task: TaskRecord) -> TaskStatus:
    """The task's status as its row keeps it: it follows the run and the queue's offers, in their transactions."""
    return cast(TaskStatus, task.status)


def _visible(task: TaskRecord | None, team: str | None) -> bool:
    return task is not None and team in (None, task.team)


async def team_task(engine: Engine, task_id: str, team: str | None) -> TaskRecord:
    """The team's task (None: any team's, the dashboard's operator); another team's is not found, as
    one that does not exist."""
    task = await engine.db.task(task_id)
    if task is None or not _visible(task, team):
        raise not_found("task", task_id, "path.taskId")
    return task


async def team_task_row(engine: Engine, task_id: str, team: str | None) -> TaskRow:
    """The team's task with its run and its agent (team_task's rules)."""
    row = await engine.db.task_row(task_id)
    if row is None or not _visible(row.task, team):
        raise not_found("task", task_id, "path.taskId")
    return row


def _idempotency_key(request: Request) -> str | None:
    raw = request.headers.get("idempotency-key")
    if raw is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(raw):
        message = f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters, no spaces"
        raise bad_request("invalid_header", message, "header.Idempotency-Key")
    return raw


async def _run(request: Request, *, id: str | None = None, slug: str | None = None) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    engine = engine_of(request)
    stored = await engine.workflows.get(principal.team, id=id, slug=slug)
    body = await body_of(request, RunRequest)
    task_id, replayed = await submit(engine, principal, stored, body, _idempotency_key(request))
    response = json_response(TaskSubmitted(task_id), 202)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


async def run_workflow(request: Request) -> Response:
    return await _run(request, id=request.path_params["workflowId"])


async def run_workflow_by_slug(request: Request) -> Response:
    return await _run(request, slug=request.path_params["workflowSlug"])


async def list_tasks(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    status = query_choice(request, "status", TASK_STATUSES)
    db = engine_of(request).db

    async def rows(limit: int, offset: int) -> tuple[list[TaskRow], int]:
        return await db.list_tasks(principal.team, status, limit, offset), await db.count_tasks(principal.team, status)

    return await page_answer(request, rows, task_detail, TaskList)


async def get_task(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    engine = engine_of(request)
    return json_response(task_detail(await team_task_row(engine, request.path_params["taskId"], principal.team)))


async def get_task_result(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    engine = engine_of(request)
    task = await team_task(engine, request.path_params["taskId"], principal.team)
    run, flow = await engine.get_run(task.id)
    return json_response(task_result(engine, task, run, flow, public_base(request)))


def task_result(engine: Engine, task: TaskRecord, run: Run, flow: Flow, base_url: str) -> TaskResult:
    status = _status(task)
    if status != "completed":
        return TaskResult(task.id, status, None, None, None, None, _error_of(run), _time(task.completed))
    now = engine.clock()
    expires = math.ceil(now + engine.config.download_ttl)
    urls = {}
    for name in output_edges(run, flow):
        edge = run.edges[name]
        if edge.object is not None and now < engine.expires_at(edge):  # past output_retention: gone
            urls[name] = engine.store_of(flow, edge).presign_get(edge.key, expires, base_url).url
    first = next(iter(urls.values()), None)
    output = task_output(run, flow)
    return TaskResult(task.id, status, output, first, urls, _time(expires), "", _time(task.completed))


async def cancel_task(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    engine = engine_of(request)
    task = await team_task(engine, request.path_params["taskId"], principal.team)
    await engine.cancel(task.id)  # a task that has ended stays as it ended
    return json_response(Cancelled(True))


async def task_events(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    engine = engine_of(request)
    task = await team_task(engine, request.path_params["taskId"], principal.team)
    after = sse.last_event_id(request)
    given = (request.headers.get("last-event-id"), request.query_params.get("last_event_id"))
    if not any(value and value.strip() for value in given):  # a new stream starts with the task's current status
        after = max(0, await engine.db.task_state_seq(task.id) - 1)
    elif task.status in TERMINAL_TASK and after >= task.events:
        return Response(status_code=204)  # the stream has ended: an EventSource stops reconnecting

    async def read_after(seq: int) -> list[sse.Event]:
        return [sse.Event(e.seq, e.kind, e.data) for e in await engine.db.task_events(task.id, seq)]

    events = sse.follow(read_after, run_topic(task.id), engine.notifier, lambda e: e.event in TERMINAL_TASK,
                        after=after)  # fmt: skip
    return sse.EventStream(events)


TASK_ID = in_path("taskId", str, "the task's ID (task_id, as the run answered)")
NOT_FOUND = "no task of the caller's team has this ID (not_found)"
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_IDEMPOTENCY_KEY, pattern=r"^[!-~]+$")]
_RUN_PARAMS: tuple[Param, ...] = (
    in_header(
        "Idempotency-Key",
        IdempotencyKey,
        "a retry with the same key (within 24 hours, by the same team) answers the task the first request "
        "started, with `Idempotent-Replayed: true`",
    ),
)
_RUN_ANSWERS: dict[int, Answer | str] = {
    202: Answer("the task is started: poll GET /r/tasks/{taskId}, or follow its events", TaskSubmitted),
    400: "a rule of the run is broken, the error naming the key (`field`: `parameters.<key>`, `dispatch_target`, "
    "`submitter_region`, `tool_type`): an unknown key (unknown_parameter), a required one missing "
    "(missing_parameter), a value of the wrong type (type_mismatch), out of range (out_of_range), not one of "
    "the options (invalid_option), a file not uploaded or another team's (file_not_found), of a type not accepted "
    "(file_type_rejected), over 100 keys (too_many_parameters), comfy_cloud while no cloud is configured "
    "(cloud_unavailable) or for a workflow that is no ComfyUI one (bad_dispatch_target), another tool_type"
    " (tool_type_mismatch), a submitter_region over 64 characters "
    "(bad_region), a disabled workflow (workflow_disabled); or a malformed Idempotency-Key",
    404: "no workflow the caller's team sees has this ID, slug or version (not_found)",
    409: "the Idempotency-Key came with another request in the last 24 hours (idempotency_key_reused)",
    503: "the files store did not answer (store_unavailable)",
}
_RUN_BODY = Body(RunRequest, "the parameters (by ParameterDef key) and where to run", required=False)
_RUN_DESCRIPTION = (
    "Each `file` parameter takes a `file_key` from POST /r/files/presign, uploaded and of a type the parameter "
    "accepts (the type the object was stored with; if the upload sent none, the type declared at presign). "
    "Omitted optional parameters take their defaults; `{}` (or no body) is valid when none is required."
)
RUN = Operation(
    summary="Run a workflow by ID", description=_RUN_DESCRIPTION, tag=TAG,
    params=(in_path("workflowId", str, "the workflow's ID"), *_RUN_PARAMS),
    body=_RUN_BODY, security=RUNTIME_SECURITY, errors=ReferenceErrorBody, answers=_RUN_ANSWERS,
)  # fmt: skip
RUN_BY_SLUG = Operation(
    summary="Run a workflow by slug (`slug@version` pins a version)", description=_RUN_DESCRIPTION, tag=TAG,
    params=(in_path("workflowSlug", str, "the workflow's slug, or `slug@version`"), *_RUN_PARAMS),
    body=_RUN_BODY, security=RUNTIME_SECURITY, errors=ReferenceErrorBody, answers=_RUN_ANSWERS,
)  # fmt: skip
LIST = Operation(
    summary="The team's tasks, newest first", tag=TAG,
    params=(*page_params("tasks"), in_query("status", TaskStatus, "only tasks with this status")),
    security=RUNTIME_SECURITY, errors=ReferenceErrorBody,
    answers={200: Answer("a page of tasks, and how many there are", TaskList),
             400: "current_page, per_page or status out of its range (invalid_query)"},
)  # fmt: skip
GET = Operation(
    summary="A task: its status (pending, waiting, queued, running, completed, failed, cancelled) and details",
    description="`waiting`: its step is in the queue and no eligible worker took it yet (or an input is awaited); "
    "`queued`: offered to an agent that has not acknowledged it; `running`: from the acknowledgement. `agent_id`, "
    "`agent_labels` and `gpu_type` are those of the agent that runs or ran its step (null and [] for a step the "
    "engine ran itself).",
    tag=TAG, params=(TASK_ID,), security=RUNTIME_SECURITY, errors=ReferenceErrorBody,
    answers={200: Answer("the task", TaskDetail), 404: NOT_FOUND},
)  # fmt: skip
RESULT = Operation(
    summary="A task's result: its output and download URLs (fresh on every call), or its error",
    tag=TAG, params=(TASK_ID,), security=RUNTIME_SECURITY, errors=ReferenceErrorBody,
    answers={200: Answer("the result; null fields where the task has none (failed, cancelled, not finished)",
                         TaskResult), 404: NOT_FOUND},
)  # fmt: skip
CANCEL = Operation(
    summary="Cancel a task (a running step is stopped); a task that has ended is left as it is",
    tag=TAG, params=(TASK_ID,), security=RUNTIME_SECURITY, errors=ReferenceErrorBody,
    answers={200: Answer("cancelled, or had already ended", Cancelled), 404: NOT_FOUND},
)  # fmt: skip
EVENTS = Operation(
    summary="A task's server-sent events, until it ends",
    description="`text/event-stream`: `status` (each change, pending to running), `progress`, then one of "
    "`completed`, `failed`, `cancelled`, after which the stream closes. Each event has an `id:` and one line of "
    "JSON `data:` with `task_id`, `status` and `timestamp` (`output` on completed, `error` on failed; a "
    "`progress` event, one per new report of the agent running a step, adds `progress` (the fraction done, 0 to 1, "
    "or null), `current_node` (what runs now: a ComfyUI node's id), `message` and `step`). The "
    "current status comes at once; a `: keepalive` comment after 15 s of silence. Reconnect with "
    "`Last-Event-ID` (or `?last_event_id=`) to resume after the last event seen, nothing lost or repeated.",
    tag=TAG, security=RUNTIME_SECURITY, errors=ReferenceErrorBody,
    params=(TASK_ID, in_header("Last-Event-ID", str, "resume after this event (its id)"),
            in_query("last_event_id", str, "resume after this event, where a header cannot be set")),
    answers={200: Answer("the stream", str, "text/event-stream"),
             204: Answer("the task has ended and the stream has nothing after Last-Event-ID"),
             400: "Last-Event-ID is not an event's id (invalid_last_event_id)", 404: NOT_FOUND},
)  # fmt: skip

routes = [
    ApiRoute("/api/v1/r/workflows/{workflowId}/run", run_workflow, post=RUN),
    ApiRoute("/api/v1/r/workflows/slug/{workflowSlug}/run", run_workflow_by_slug, post=RUN_BY_SLUG),
    ApiRoute("/api/v1/r/tasks", list_tasks, get=LIST, name="list_team_tasks"),  # list_tasks: the task library's
    ApiRoute("/api/v1/r/tasks/{taskId}", get_task, get=GET),
    ApiRoute("/api/v1/r/tasks/{taskId}/result", get_task_result, get=RESULT),
    ApiRoute("/api/v1/r/tasks/{taskId}/cancel", cancel_task, post=CANCEL),
    ApiRoute("/api/v1/r/tasks/{taskId}/events", task_events, get=EVENTS),
]
