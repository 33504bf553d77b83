"""The flow API: /api/v1/flow/..."""

from __future__ import annotations

import base64
import reprlib
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.types import Receive, Scope

from flowengine.api.auth import FLOW_CALLERS, authenticate
from flowengine.api.documents import RunDoc, RunPage, RunStatus, run_summary
from flowengine.api.http import JsonEndpoint, JsonHandler, base_url, engine_of, json_response, query_int, read_json
from flowengine.api.openapi import Answer, ApiRoute, Body, Operation, in_path, in_query
from flowengine.core import machine
from flowengine.core.keys import MAX_NAME, NAME_RULE, is_name
from flowengine.core.spec import FlagDef, Flow, FlowBody, Slot, decode_flow_body
from flowengine.core.webhooks import url_problem
from flowengine.errors import Error, Problem, bad_request
from flowengine.runtime.engine import Engine

INLINE_PLANS = 1024  # inline definitions remembered by the bytes posted, with their plans
INLINE_PLAN_BYTES = 16_384  # bigger bodies are decoded each time, which keeps that memory small
MAX_CURSOR_ID = 100  # characters of a run ID in a cursor (UUIDs have 36)
STATUSES = (machine.STOPPED, machine.WAITING, machine.RUNNING, machine.COMPLETE, machine.ERROR)


class FlowInfo(msgspec.Struct, rename="pascal", omit_defaults=True):
    name: str
    file: str
    valid: bool
    description: str = ""
    inputs: list[str] = []  # edges a client fills (upload and webhook wells)
    steps: list[str] = []
    problems: list[Problem] = []


class FlowList(msgspec.Struct, rename="pascal"):
    flows: list[FlowInfo]


class TaskInfo(msgspec.Struct, rename="pascal", omit_defaults=True):
    name: str
    file: str
    runs: str  # exec | python
    inputs: list[Slot]
    outputs: list[Slot]
    flags: list[FlagDef]
    description: str = ""


class TaskList(msgspec.Struct, rename="pascal"):
    """GET /api/v1/tasks: the operator's task library, which inline flows may use by name."""

    tasks: list[TaskInfo]
    problems: list[Problem]  # of library files, each path prefixed with its file name


def run_json(scope: Scope, run: machine.Run, flow: Flow) -> bytes:
    """The run document, from the one cache of rendered documents (a poll right after this reuses it)."""
    return scope["app"].state.documents.get(run, flow, base_url(scope))


def run_response(request: Request, run: machine.Run, flow: Flow) -> Response:
    """The run document as the answer to a request that changed a run."""
    return Response(run_json(request.scope, run, flow), media_type="application/json")


async def list_flows(request: Request) -> Response:
    await authenticate(request.scope, FLOW_CALLERS, team_scoped=False)  # the operator's flows: every team's to see
    flows = []
    for entry in await engine_of(request).catalog.entries():
        flow = entry.flow
        inputs = [w.edge for w in flow.data_wells if w.source in machine.WAITING_SOURCES] if flow else []
        flows.append(FlowInfo(
            entry.name, entry.path.name, flow is not None and not entry.problems,
            flow.description if flow else "", inputs, [s.id for s in flow.steps] if flow else [], entry.problems,
        ))  # fmt: skip
    return json_response(FlowList(flows))


async def list_tasks(request: Request) -> Response:
    await authenticate(request.scope, FLOW_CALLERS, team_scoped=False)
    library = await engine_of(request).catalog.library()
    tasks = [
        TaskInfo(t.name, f.path.name, "exec" if t.exec is not None else "python", t.inputs, t.outputs, t.flags,
                 f.description)
        for f in library.files
        for t in f.tasks
        if library.tasks.get(t.name) is t
    ]  # fmt: skip
    problems = [Problem(f"{f.path.name}: {p.path}", p.message) for f in library.files for p in f.problems]
    return json_response(TaskList(tasks, problems))


async def start_run(scope: Scope, receive: Receive) -> tuple[int, bytes]:
    state = scope["app"].state
    engine: Engine = state.engine
    principal = await authenticate(scope, FLOW_CALLERS)
    name = scope["path_params"]["name"]
    if not is_name(name):
        raise bad_request("invalid_name", f"flow name {reprlib.repr(name)} {NAME_RULE}", "path.name")
    body = await read_json(scope, receive, engine.config.max_body_size)
    # A client posting one definition again and again: no decoding or hashing it each time.
    library = await engine.catalog.library()
    started = state.inline_plans.get((name, body, library.stamp))
    if started is None:
        posted = decode_flow_body(body) if body.strip() else FlowBody()
        flow = _inline_flow(name, posted.flow)
        plan = engine.plan(flow, inline=True) if flow is not None else engine.plan(await engine.catalog.get(name))
        started = plan, _webhook(engine, posted.webhook) if posted.webhook is not None else plan.flow.webhook
        if flow is not None and len(body) <= INLINE_PLAN_BYTES:
            state.inline_plans.put((name, body, library.stamp), started)
    plan, webhook = started
    run = await engine.create_run(plan, principal.team, webhook=webhook)
    return 201, run_json(scope, run, plan.flow)


def _inline_flow(name: str, flow: Flow | None) -> Flow | None:
    """The flow a body defines (named after the URL unless it has a Name), or None to run the flow file."""
    if flow is None:
        return None
    return flow if flow.name else msgspec.structs.replace(flow, name=name)


def _webhook(engine: Engine, url: str) -> str:
    """A body's Webhook, which replaces the flow's for this run ("": none), checked as a flow's is."""
    problem = url and url_problem(url, engine.config.webhook_allow_private)
    if problem:
        raise Error("invalid", "invalid_field", f"Webhook {problem}", "body.Webhook")
    return url


async def run_status(scope: Scope, receive: Receive) -> tuple[int, bytes]:
    principal = await authenticate(scope, FLOW_CALLERS)
    run, flow = await scope["app"].state.engine.get_run(scope["path_params"]["run_id"], principal.team)
    return 200, run_json(scope, run, flow)


async def list_runs(request: Request) -> Response:
    """A page of runs, newest first. `Next` is the cursor of the page after it (null on the last page);
    `Total` counts every run the filters match, from counters rather than a scan."""
    principal = await authenticate(request.scope, FLOW_CALLERS)
    status = request.query_params.get("status")
    if status is not None and status.upper() not in STATUSES:
        raise bad_request("invalid_query", f"status must be one of {', '.join(STATUSES)}", "query.status")
    status = status.upper() if status else None
    flow = request.query_params.get("flow") or None
    limit = query_int(request, "limit", 50, 1, 500)
    offset = query_int(request, "offset", 0, 0, 10**9)
    cursor = request.query_params.get("cursor")
    before = decode_cursor(cursor) if cursor else None
    if before is not None and offset:
        raise bad_request("invalid_query", "give either cursor or offset, not both", "query.offset")
    db = engine_of(request).db
    runs = await db.list_runs(principal.team, status, flow, limit + 1, before=before, offset=offset)
    after = encode_cursor(runs[limit - 1].id) if len(runs) > limit else None
    summaries = [run_summary(r) for r in runs[:limit]]
    total = await db.count_runs(principal.team, status, flow)
    return json_response(RunPage(summaries, total, limit, offset, after))


def encode_cursor(run_id: str) -> str:
    return base64.urlsafe_b64encode(run_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The run ID a page ended at. Cursors are opaque to clients: anything not made by
    `encode_cursor` is refused."""
    try:
        run_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, UnicodeError):
        run_id = ""
    if not (0 < len(run_id) <= MAX_CURSOR_ID and run_id.isprintable()) or encode_cursor(run_id) != cursor:
        raise bad_request("invalid_query", "cursor is not one this API handed out (take Next from a page)",
                          "query.cursor")  # fmt: skip
    return run_id


async def step_log(request: Request) -> Response:
    """A step's whole output (the run document keeps only its last lines): ?attempt=N, default the last."""
    engine = engine_of(request)
    principal = await authenticate(request.scope, FLOW_CALLERS)
    run, _ = await engine.get_run(request.path_params["run_id"], principal.team)
    step_id = request.path_params["step_id"]
    state = run.steps.get(step_id)
    if state is None:
        raise Error("not_found", "not_found", f"run {run.id!r} has no step {step_id!r}", "path.stepID")
    attempt = query_int(request, "attempt", state.attempts, 1, max(state.attempts, 1))
    path = engine.log_root / run.id / f"{step_id}.{attempt}.log"
    if not path.is_file():
        raise Error("not_found", "not_found", f"step {step_id!r} has no log for attempt {attempt} yet", "query.attempt")
    return FileResponse(path, media_type="text/plain; charset=utf-8")


async def cancel_run(request: Request) -> Response:
    engine, run_id = engine_of(request), request.path_params["run_id"]
    team = (await authenticate(request.scope, FLOW_CALLERS)).team
    await engine.cancel(run_id, team)
    return run_response(request, *await engine.get_run(run_id, team))


async def refresh_run(request: Request) -> Response:
    engine, run_id = engine_of(request), request.path_params["run_id"]
    team = (await authenticate(request.scope, FLOW_CALLERS)).team
    await engine.refresh(run_id, team)
    return run_response(request, *await engine.get_run(run_id, team))


FLOW_PREFIX = "/api/v1/flow/"


def hot_route(scope: Scope) -> JsonHandler | None:
    """The handler for a request to one of the two busiest routes, matched exactly as `routes`
    would match it (its path parameters put in the scope), or None: the router then decides."""
    path = scope["path"]
    if scope.get("root_path") or not path.startswith(FLOW_PREFIX):
        return None
    rest = path[len(FLOW_PREFIX) :]
    if scope["method"] == "POST" and rest and "/" not in rest:
        scope["path_params"] = {"name": rest}
        return start_run
    run_id = rest.removeprefix("status/")
    if scope["method"] == "GET" and rest.startswith("status/") and run_id and "/" not in run_id:
        scope["path_params"] = {"run_id": run_id}
        return run_status
    return None


FLOW = "flow"
RUN_ID = in_path("run_id", str, "the run's ID")
CALLERS = ("bearer",)
RUN = Answer("the run document", RunDoc)
NO_RUN = "no run has this ID (not_found)"
DISK_FULL = "the engine's disk is full: nothing was changed or stored (insufficient_storage)"
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]+$", max_length=MAX_NAME)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=500, extra_json_schema={"default": 50})]
Offset = Annotated[int, msgspec.Meta(ge=0, le=10**9, extra_json_schema={"default": 0})]
Attempt = Annotated[int, msgspec.Meta(ge=1)]

RUN_STATUS = Operation(
    security=CALLERS,
    anonymous=True,
    summary="A run's document: its status, upload URLs, steps and artifacts",
    tag=FLOW,
    params=(RUN_ID,),
    answers={200: RUN, 404: NO_RUN},
)
START_RUN = Operation(
    security=CALLERS,
    anonymous=True,
    summary="Start a run: of the flow in the body, or of the flow file `flows/{name}` when there is no body",
    tag=FLOW,
    params=(in_path("name", Name, f"the flow file's name, or the inline flow's unless it has a Name: it {NAME_RULE}"),),
    body=Body(
        FlowBody,
        '`{"Flow": {...}}`, an inline flow; no body (or no Flow) runs the flow file. `Webhook`: '
        'the URL notified when this run ends, over the flow\'s own ("" for none)',
        required=False,
    ),
    answers={
        201: Answer("the new run's document: WAITING, with an upload URL per input", RunDoc),
        400: f"the name is not valid: it {NAME_RULE} (invalid_name)",
        403: "inline flows are off (inline_flows_disabled), or the inline flow defines commands of its own and "
        "inline_commands is off (inline_commands_disabled)",
        404: "no body, and no flow file has this name (not_found)",
        409: "another waiting run uses the same key in a store (conflict)",
        422: "the flow is not valid (invalid_flow, every problem under `Problems`), is over a limit, or a static "
        "object is missing or not accepted",
        503: "a store did not answer (store_unavailable)",
        507: DISK_FULL,
    },
)
LIST_FLOWS = Operation(
    security=CALLERS,
    anonymous=True,
    summary="The flow files, with their inputs and any problems",
    tag=FLOW,
    answers={200: Answer("the flows dir's flows", FlowList)},
)
LIST_TASKS = Operation(
    security=CALLERS,
    anonymous=True,
    summary="The task library: the tasks inline flows may use by name, and any problems of its files",
    tag=FLOW,
    answers={200: Answer("the tasks of `flows/tasks/`", TaskList)},
)
LIST_RUNS = Operation(
    security=CALLERS,
    anonymous=True,
    summary="Runs, newest first",
    tag=FLOW,
    params=(
        in_query("status", RunStatus, "only runs with this status (any case)"),
        in_query("flow", str, "only runs of this flow"),
        in_query("limit", Limit, "at most this many runs"),
        in_query("offset", Offset, "skip this many runs first"),
    ),
    answers={
        200: Answer("a page of runs, with the total that match", RunPage),
        400: "a query value is not valid (invalid_query): `Location` names it",
    },
)
STEP_LOG = Operation(
    security=CALLERS,
    anonymous=True,
    summary="A step's whole output, as text",
    tag=FLOW,
    params=(
        RUN_ID,
        in_path("step_id", str, "the step's ID"),
        in_query("attempt", Attempt, "which attempt (1 is the first); default: the last"),
    ),
    answers={
        200: Answer("the attempt's output (standard output and error)", str, "text/plain"),
        400: "attempt is not a whole number from 1 to the step's attempts (invalid_query)",
        404: "no run has this ID, the run has no such step, or the attempt has no log yet (not_found)",
    },
)
CANCEL_RUN = Operation(
    security=CALLERS,
    anonymous=True,
    summary="Stop a run (STOPPED): running steps are killed; idempotent",
    tag=FLOW,
    params=(RUN_ID,),
    answers={200: RUN, 404: NO_RUN, 507: DISK_FULL},
)
REFRESH_RUN = Operation(
    security=CALLERS,
    anonymous=True,
    summary="Fresh upload URLs, with a new TTL, for the wells still empty",
    tag=FLOW,
    params=(RUN_ID,),
    answers={200: RUN, 404: NO_RUN, 409: "the run waits for no upload (conflict)", 507: DISK_FULL},
)

# The two hot routes first: HotRoutes answers them ahead of the router, which matches them only
# when hot_route declines (a HEAD, a root_path). No path here shadows another for the same method.
routes = [
    ApiRoute("/api/v1/flow/status/{run_id}", JsonEndpoint(run_status), get=RUN_STATUS),
    ApiRoute("/api/v1/flow/{name}", JsonEndpoint(start_run), post=START_RUN),
    ApiRoute("/api/v1/flow", list_flows, get=LIST_FLOWS),
    ApiRoute("/api/v1/tasks", list_tasks, get=LIST_TASKS),
    ApiRoute("/api/v1/flow/runs", list_runs, get=LIST_RUNS),
    ApiRoute("/api/v1/flow/{run_id}/logs/{step_id}", step_log, get=STEP_LOG),
    ApiRoute("/api/v1/flow/{run_id}/cancel", cancel_run, post=CANCEL_RUN),
    ApiRoute("/api/v1/flow/{run_id}/refresh", refresh_run, post=REFRESH_RUN),
]
