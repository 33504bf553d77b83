"""The one place domain errors become HTTP answers: a status per kind, and a body."""

from __future__ import annotations

import logging

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match

from flowengine.errors import Error, Kind, Problem
from flowengine.stores.base import StoreUnavailable

log = logging.getLogger("flowengine")
_encode = msgspec.json.Encoder().encode

STATUS: dict[Kind, int] = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "request_timeout": 408,
    "conflict": 409,
    "precondition_failed": 412,
    "too_large": 413,
    "unsupported_media_type": 415,
    "invalid": 422,
    "too_many_requests": 429,
    "internal": 500,
    "unavailable": 503,
    "insufficient_storage": 507,
}
_KIND_OF_STATUS = {status: kind for kind, status in STATUS.items()}


class ErrorBody(msgspec.Struct, rename="pascal", omit_defaults=True):
    """The flow API's error body: `{"Code", "Message", "Location", "Problems"}`."""

    code: str
    message: str
    location: str = ""
    problems: list[Problem] = []


class ReferenceProblem(msgspec.Struct):
    field: str
    message: str


class ReferenceErrorBody(msgspec.Struct, omit_defaults=True):
    """The workflow/task API's error body: the reference's `error_message`, and which error and field;
    where a body had several problems (a workflow's), `problems` lists every one."""

    error_message: str
    error_code: str
    field: str = ""
    problems: list[ReferenceProblem] = []


# The workflow/task API and its management endpoints answer errors in the reference's shape.
REFERENCE_PREFIXES = ("/api/v1/r/", "/api/v1/workflows", "/api/v1/credentials", "/api/v1/webhooks",
                      "/api/v1/models", "/api/v1/uploads/", "/api/v1/desktop/", "/api/v1/agents",
                      "/api/v1/agent/")  # fmt: skip


def error_response(error: Error, path: str = "") -> Response:
    status = STATUS[error.kind]
    if path.startswith(REFERENCE_PREFIXES):
        problems = [ReferenceProblem(p.path, p.message) for p in error.problems]
        body: msgspec.Struct = ReferenceErrorBody(error.message, error.code, error.location, problems)
        status = 400 if error.kind == "invalid" else status  # the reference says 400 for every invalid field
    else:
        body = ErrorBody(error.code, error.message, error.location, error.problems)
    headers = {"WWW-Authenticate": "Bearer"} if error.kind == "unauthorized" else {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return Response(_encode(body), status, headers=headers, media_type="application/json")


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Error)
    return error_response(exc, request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = _KIND_OF_STATUS.get(exc.status_code, "bad_request")
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    response = error_response(Error(kind, code, str(exc.detail), "path"), request.url.path)
    response.status_code = exc.status_code
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:
        response.headers["Allow"] = ", ".join(_allowed(request))
    return response


def _allowed(request: Request) -> list[str]:
    """Every method the request's path takes: Starlette's 405 names only those of the first route
    on the path, where a path may have several (one per handler)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if route.matches(request.scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


async def _store_down(request: Request, exc: Exception) -> Response:
    return error_response(Error("unavailable", "store_unavailable", f"a store did not answer: {exc}"), request.url.path)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody reads this answer; what matters is that a client hanging up is not logged as a failure.
    return error_response(Error("bad_request", "client_disconnected", "the client went away mid-request", "body"))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(Error("internal", "internal_error", "the server failed; see its log"), request.url.path)


# The most specific first: HotRoutes takes the first that fits, as Starlette would.
ERROR_HANDLERS = {
    Error: _domain_error,
    HTTPException: _http_error,
    StoreUnavailable: _store_down,
    ClientDisconnect: _client_gone,
    Exception: _unexpected,
}
