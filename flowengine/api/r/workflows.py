"""`GET /api/v1/r/workflows[/{id}]` and `GET /api/v1/r/workflows/slug/{slug}[@version]`: the workflows a
team sees (the operator's and its own; another team's is not found), in the reference's shape. The
management API (`api/workflows.py`) answers its reads with the same handlers."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from flowengine.api.auth import RUNTIME_CALLERS, RUNTIME_SECURITY, authenticate
from flowengine.api.errors import ReferenceErrorBody
from flowengine.api.http import engine_of, json_response
from flowengine.api.openapi import Answer, ApiRoute, Operation, in_path
from flowengine.api.r.common import PageMeta, page_answer, page_params
from flowengine.core.workflows import WorkflowDetail, detail
from flowengine.identity.directory import Principal
from flowengine.runtime.workflows import Stored

TAG = "workflows"


class WorkflowList(msgspec.Struct):
    workflow_list: list[WorkflowDetail]  # by slug
    page_meta: PageMeta


def workflow_detail(stored: Stored, principal: Principal) -> WorkflowDetail:
    """The reference's workflow object; `workflow_json` is left out for `sk-` callers, as the reference has it."""
    record = stored.record
    return detail(
        stored.workflow,
        id=record.id,
        version=stored.version,
        status=record.status,
        created_at=datetime.fromtimestamp(record.created, UTC),
        updated_at=datetime.fromtimestamp(record.updated, UTC),
        with_json=principal.kind != "integration",
    )


async def list_workflows(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    found = partial(engine_of(request).workflows.page, principal.team)
    return await page_answer(request, found, lambda s: workflow_detail(s, principal), WorkflowList)


async def get_workflow(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    stored = await engine_of(request).workflows.get(principal.team, id=request.path_params["workflowId"])
    return json_response(workflow_detail(stored, principal))


async def get_workflow_by_slug(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    stored = await engine_of(request).workflows.get(principal.team, slug=request.path_params["workflowSlug"])
    return json_response(workflow_detail(stored, principal))


WORKFLOW_ID = in_path("workflowId", str, "the workflow's id")
WORKFLOW_SLUG = in_path("workflowSlug", str, "the workflow's slug; `slug@version` (`resize@2`) pins that version")
_JSON_NOTE = "`workflow_json` is left out for `sk-` callers."
LIST = Operation(
    summary="The workflows the team sees: the operator's and its own, by slug, each at its current version",
    description=_JSON_NOTE,
    tag=TAG,
    params=page_params("workflows"),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={
        200: Answer("a page of workflows, and how many there are", WorkflowList),
        400: "current_page or per_page is not a whole number in its range (invalid_query)",
    },
)
GET = Operation(
    summary="A workflow, at its current version: its parameters, labels and limits",
    description=_JSON_NOTE,
    tag=TAG,
    params=(WORKFLOW_ID,),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={
        200: Answer("the workflow", WorkflowDetail),
        404: "no workflow of that id that the team sees (another team's is not found either)",
    },
)
GET_BY_SLUG = Operation(
    summary="A workflow by its slug, at its current version or at the one `slug@version` pins",
    description=f"Every version stays readable: a version is never changed, only followed by another. {_JSON_NOTE}",
    tag=TAG,
    params=(WORKFLOW_SLUG,),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={
        200: Answer("the workflow at that version", WorkflowDetail),
        400: "the version after `@` is not a whole number (invalid_version)",
        404: "no workflow of that slug that the team sees, or no such version of it",
    },
)

routes = [
    ApiRoute("/api/v1/r/workflows", list_workflows, get=LIST),
    ApiRoute("/api/v1/r/workflows/{workflowId}", get_workflow, get=GET),
    ApiRoute("/api/v1/r/workflows/slug/{workflowSlug}", get_workflow_by_slug, get=GET_BY_SLUG),
]
