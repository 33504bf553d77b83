"""The management API of a team's workflows (`/api/v1/workflows`, cyberun-api.md §4): create, update
(every change a new immutable version), read, disable and enable. The operator's workflows (from
flow files) are read-only here. The reference's workflow pages take a session token with
`X-Team-ID`, an `sk-` or a `dk-` key; reads answer as `/api/v1/r/workflows` does."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from flowengine.api.auth import RUNTIME_CALLERS, RUNTIME_SECURITY, authenticate
from flowengine.api.errors import ReferenceErrorBody
from flowengine.api.http import engine_of, json_response, read_json
from flowengine.api.openapi import Answer, ApiRoute, Body, Operation
from flowengine.api.r import workflows as r
from flowengine.core.workflows import WorkflowDetail, WorkflowStatus, WorkflowWrite, decode_workflow
from flowengine.errors import Error, Problem

MANAGERS = RUNTIME_CALLERS  # the reference's workflow pages are "dual-auth": a session token, sk- or dk-


class WorkflowSaved(msgspec.Struct):
    """The reference answers `{"id"}`; the version is what a client pins (`slug@version`)."""

    id: str
    version: int


async def _body(request: Request) -> WorkflowWrite:
    """The workflow a body holds, or every problem of it, each at its field (`parameters[2].type`); one
    of the body as a whole (an unknown key) at `body`, as the workflow/task API names it."""
    raw = await read_json(request.scope, request.receive, engine_of(request).config.max_body_size)
    try:
        return decode_workflow(raw or b"{}", WorkflowWrite)
    except Error as exc:
        exc.location = exc.location or "body"
        exc.problems = [Problem(p.path or "body", p.message) for p in exc.problems]
        raise


async def create_workflow(request: Request) -> Response:
    principal = await authenticate(request.scope, MANAGERS)
    workflow, status = (await _body(request)).split()
    stored = await engine_of(request).workflows.create(principal.team, workflow, status)
    return json_response(WorkflowSaved(stored.record.id, stored.version), 201)


async def update_workflow(request: Request) -> Response:
    principal = await authenticate(request.scope, MANAGERS)
    workflow, status = (await _body(request)).split()
    workflows = engine_of(request).workflows
    stored = await workflows.update(principal.team, request.path_params["workflowId"], workflow, status)
    return json_response(WorkflowSaved(stored.record.id, stored.version))


async def _set_status(request: Request, status: WorkflowStatus) -> Response:
    principal = await authenticate(request.scope, MANAGERS)
    stored = await engine_of(request).workflows.set_status(principal.team, request.path_params["workflowId"], status)
    return json_response(r.workflow_detail(stored, principal))


async def disable_workflow(request: Request) -> Response:
    return await _set_status(request, "disabled")


async def enable_workflow(request: Request) -> Response:
    return await _set_status(request, "active")


TAG = "workflow management"
_OWN = {
    403: "the workflow is the operator's (a flow file's): it changes with that file only (read_only)",
    404: "no workflow of that id that the team sees (another team's is not found either)",
}
_BODY_PROBLEMS = (
    "the body has problems, every one listed in `problems` with its `field` (`parameters[2].flag`, "
    "`flow.Steps[0].Uses`): a field missing or of the wrong type (invalid_field), or a workflow that does not "
    "hold together (invalid_workflow)"
)
_FLOW_RULES = (
    "A workflow has a `flow` (a flow definition, PascalCase inside, as `POST /api/v1/flow/{name}` takes) or, "
    "for `tool_type: comfyui`, none (one is made: a step running `workflow_json` on an agent). Its flow follows "
    "the rules of inline flows: the operator's tasks and stores by name, steps that run on agents (`Tool` tasks), "
    "no commands or stores of its own."
)
CREATE = Operation(
    summary="A new workflow of the team, at version 1",
    description=f"{_FLOW_RULES} The slug is unique among every team's workflows and the operator's. "
    "`workflow_status` (default `active`) may be `disabled`.",
    tag=TAG,
    body=Body(WorkflowWrite, "the workflow"),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={
        201: Answer("the new workflow's id and version (1)", WorkflowSaved),
        400: _BODY_PROBLEMS,
        403: "the engine takes no flow of a client's (inline_flows_disabled), or the flow defines a command "
        "(inline_commands_disabled) or a store (inline_stores_disabled)",
        409: "the slug is taken, by a workflow of this team, another team's or the operator's (slug_taken)",
    },
)
UPDATE = Operation(
    summary="A new version of the team's workflow: the body replaces the workflow as a whole",
    description=f"{_FLOW_RULES} Versions are immutable: a body that differs from the current version makes the "
    "next one (tasks and `slug@version` keep naming the old ones); the same body again makes none. The slug "
    "cannot change (empty: the workflow's). `workflow_status`, if given, sets the status.",
    tag=TAG,
    params=(r.WORKFLOW_ID,),
    body=Body(WorkflowWrite, "the workflow as it is to be"),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={
        200: Answer("the workflow's id and its current version", WorkflowSaved),
        400: f"{_BODY_PROBLEMS}; or the slug is another (slug_immutable)",
        **_OWN,
        409: "another update made the next version meanwhile: read the workflow and try again (workflow_changed)",
    },
)
_STATUS_NOTE = "Its versions stay as they are; the status is the workflow's, whichever version a task names."
DISABLE = Operation(
    summary="Disable the team's workflow: new tasks of it are refused",
    description=_STATUS_NOTE,
    tag=TAG,
    params=(r.WORKFLOW_ID,),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={200: Answer("the workflow, disabled", WorkflowDetail), **_OWN},
)
ENABLE = Operation(
    summary="Enable the team's workflow again: it takes new tasks",
    description=_STATUS_NOTE,
    tag=TAG,
    params=(r.WORKFLOW_ID,),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={200: Answer("the workflow, active", WorkflowDetail), **_OWN},
)

routes = [
    ApiRoute("/api/v1/workflows", create_workflow, post=CREATE),
    ApiRoute("/api/v1/workflows", r.list_workflows, name="list_managed_workflows", get=r.LIST),
    ApiRoute("/api/v1/workflows/{workflowId}", update_workflow, put=UPDATE),
    ApiRoute("/api/v1/workflows/{workflowId}", r.get_workflow, name="get_managed_workflow", get=r.GET),
    ApiRoute("/api/v1/workflows/{workflowId}/disable", disable_workflow, post=DISABLE),
    ApiRoute("/api/v1/workflows/{workflowId}/enable", enable_workflow, post=ENABLE),
]
