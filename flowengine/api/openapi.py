"""The OpenAPI 3.1 document, derived from what each route declares beside its handler.

A route of the service is an `ApiRoute`: a Starlette `Route`, matched and served exactly as one,
that carries one `Operation` per method: what it takes (path, query and header parameters, a
body) and every answer it can give, each with a msgspec type. `document` turns the app's routes
into the document, and its schemas come from `msgspec.json.schema_components`: they are the types
the API decodes and encodes, never a second description of them. What every route of a kind can
answer (a JSON body's 400/413/415/422, a browser's cross-site 403, the server's 408 and 503) is
added here, from the same rules the code applies, so no route has to repeat it.

An API with another error body declares it once per operation (`errors=`); a new kind of credential
is one more entry in SECURITY_SCHEMES, which operations then name in `security`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from flowengine.api import browser
from flowengine.api.errors import REFERENCE_PREFIXES, ErrorBody, ReferenceErrorBody
from flowengine.api.http import base_url, json_response

OPENAPI = "3.1.0"
JSON = "application/json"
_REFS = "#/components/schemas/{name}"

# How callers prove who they are, by name (an Operation's `security` names them).
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A team's API key (`sk-` integration, `dk-` device) or a user's session token (a JWT, "
        "from `flowengine token`, sent with `X-Team-ID`: the team the request is for). On an engine with "
        "`auth: open` the flow API also answers without one (the anonymous caller, whose runs belong to no team).",
    },
    "eventsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The engine's `events_token` setting, as `Authorization: Bearer <events_token>` "
        "(MinIO's webhook target sends it as its `auth_token`).",
    },
    "signedURL": {
        "type": "apiKey",
        "in": "query",
        "name": "X-Signature",
        "description": "A URL the engine signed (a WaitingURL's PutURL, an Artifact's GetURL, a webhook well's "
        "URL): `X-Signature` is an HMAC-SHA256 over the method, the resource, `X-Expires` and the values of the "
        "headers `X-SignedHeaders` lists, which the request must carry. The signature is the credential.",
    },
}


class Param(msgspec.Struct, frozen=True):
    """A parameter of a request, or a header of an answer. Constraints go in the type:
    `Annotated[int, msgspec.Meta(ge=1, le=500)]`."""

    name: str
    where: Literal["path", "query", "header"]
    type: Any = str
    description: str = ""
    required: bool = False


def in_path(name: str, type_: Any = str, description: str = "") -> Param:
    return Param(name, "path", type_, description, True)


def in_query(name: str, type_: Any = str, description: str = "", required: bool = False) -> Param:
    return Param(name, "query", type_, description, required)


def in_header(name: str, type_: Any = str, description: str = "", required: bool = False) -> Param:
    return Param(name, "header", type_, description, required)


class Body(msgspec.Struct, frozen=True):
    """A request's body: a msgspec type for JSON, `bytes` for any other media type (taken as is)."""

    type: Any
    description: str
    media_type: str = JSON
    required: bool = True


class Answer(msgspec.Struct, frozen=True):
    """One answer of an operation: `type` None has no body; `bytes` is any content of `media_type`."""

    description: str
    type: Any = None
    media_type: str = JSON
    headers: tuple[Param, ...] = ()


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    """What one method of a route takes and answers. An answer given as a string is an error
    answer: `errors` is its body."""

    summary: str
    tag: str
    answers: Mapping[int, Answer | str]
    description: str = ""
    params: tuple[Param, ...] = ()
    body: Body | None = None
    security: tuple[str, ...] = ()  # SECURITY_SCHEMES names, any one of which is accepted; none: open
    anonymous: bool = False  # also answered with no credential (the flow API on an engine with auth: open)
    errors: Any = ErrorBody


class ApiRoute(Route):
    """A Starlette route with an Operation per method: `ApiRoute(path, endpoint, get=Operation(...))`.
    Its methods are the operations'; its path parameters must be exactly the ones declared."""

    def __init__(
        self, path: str, endpoint: Callable[..., Any], *, name: str | None = None, **operations: Operation
    ) -> None:
        if not operations:  # Starlette would take every method
            raise ValueError(f"{path} declares no operation")
        super().__init__(path, endpoint, methods=[m.upper() for m in operations], name=name)
        self.operations = {method.upper(): op for method, op in operations.items()}
        for method, op in self.operations.items():
            declared = {p.name for p in op.params if p.where == "path"}
            if declared != set(self.param_convertors):
                found = sorted(self.param_convertors)
                raise ValueError(f"{method} {path} declares path parameters {sorted(declared)}, its path has {found}")
            unknown = [s for s in op.security if s not in SECURITY_SCHEMES]
            if unknown:
                raise ValueError(f"{method} {path}: no security scheme {unknown}")
            if path.startswith(REFERENCE_PREFIXES) and op.errors is not ReferenceErrorBody:
                # errors.error_response answers these paths in the reference's shape, whatever was declared
                raise ValueError(f"{method} {path} answers errors as ReferenceErrorBody: declare errors= so")


# Answers the server gives on any route: uvicorn's edge (server.py) answers these before the app.
_BUSY = "the engine holds its most connections at once (too_many_connections): retry after a moment"
_SERVER_ANSWERS = (
    (408, Answer("the request's headers or body did not arrive in time (request_timeout)", ErrorBody)),
    (503, Answer(_BUSY, ErrorBody, headers=(in_header("Retry-After", int, "seconds to wait"),))),
)
_CROSS_SITE = Answer(
    "a browser's request from another site (`Sec-Fetch-Site`, `Origin`) may not change anything (cross_site_request)",
    ErrorBody,
)
_JSON_BODY_ERRORS = {
    400: "the body is not valid JSON (malformed_json)",
    413: "the body is over its size limit (too_large)",
    415: "the body was not sent with `Content-Type: application/json` (unsupported_media_type)",
    422: "a field of the body is of the wrong type, unknown or missing (invalid_field); `Location` names it",
}


_CREDENTIAL_ERRORS = {
    400: "a session token came without `X-Team-ID`, or with one that is no UUID (team_required, invalid_header)",
    401: "no credential where one is needed, or one that is not valid, revoked, expired or of a kind this "
    "route does not take (unauthorized)",
    403: "the session token's user is not a member of the team `X-Team-ID` names (not_a_member)",
}
TEAM_HEADER = in_header("X-Team-ID", str, "the team a session token's request is for (ignored for keys)")


def implied_answers(method: str, route_path: str, op: Operation) -> list[tuple[int, Answer]]:
    """What an operation answers besides what it declares, by the rules every route of its kind follows."""
    found = list(_SERVER_ANSWERS)
    if method not in browser.SAFE_METHODS and not browser.is_presigned(route_path):
        found.append((403, _CROSS_SITE))  # HotRoutes refuses these for every route (browser.py)
    if "bearer" in op.security:  # api/auth.py
        found += [(status, Answer(text, op.errors)) for status, text in _CREDENTIAL_ERRORS.items()]
    if op.body is not None and op.body.media_type == JSON:  # http.read_json and spec.decode_json
        # The workflow/task API says 400 for a field of the wrong type (api/r/common.body_of), the flow API 422.
        shapes = (
            _JSON_BODY_ERRORS if op.errors is ErrorBody else {k: v for k, v in _JSON_BODY_ERRORS.items() if k != 422}
        )
        found += [(status, Answer(text, op.errors)) for status, text in shapes.items()]
    return found


def api_operations(routes: Iterable[BaseRoute]) -> list[tuple[ApiRoute, str, Operation]]:
    """(route, method, operation) for every method of every route; a route that is no ApiRoute is an error."""
    found = []
    for route in routes:
        if not isinstance(route, ApiRoute):
            raise TypeError(f"route {getattr(route, 'path', route)!r} is not an ApiRoute: it says nothing of its API")
        found += [(route, method, op) for method, op in route.operations.items()]
    return found


class _Schemas:
    """Schemas asked for while the document is built, filled in by one `schema_components` call at
    the end, so a type used in many places is defined once, under components.schemas."""

    def __init__(self) -> None:
        self._pending: list[tuple[Any, dict[str, Any]]] = []

    def of(self, type_: Any) -> dict[str, Any]:
        slot: dict[str, Any] = {}
        self._pending.append((type_, slot))
        return slot

    def components(self) -> dict[str, Any]:
        found, components = msgspec.json.schema_components([t for t, _ in self._pending], ref_template=_REFS)
        for (_, slot), schema in zip(self._pending, found, strict=True):
            slot.update(schema)
        return components


def document(routes: Iterable[BaseRoute], *, title: str, version: str, description: str) -> dict[str, Any]:
    """The OpenAPI document of `routes` (every one an ApiRoute), without `servers` (see `openapi_json`)."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    ids: set[str] = set()
    for route, method, op in api_operations(routes):
        operation_id = route.name if len(route.operations) == 1 else f"{route.name}_{method.lower()}"
        if operation_id in ids:
            raise ValueError(f"two operations are named {operation_id!r}: give one of their routes a name")
        ids.add(operation_id)
        paths.setdefault(route.path_format, {})[method.lower()] = _operation(schemas, route, method, op, operation_id)
    license_ = {"name": "Apache-2.0", "identifier": "Apache-2.0"}
    return {
        "openapi": OPENAPI,
        "info": {"title": title, "version": version, "description": description, "license": license_},
        "paths": paths,
        "components": {"schemas": schemas.components(), "securitySchemes": SECURITY_SCHEMES},
    }


def _operation(schemas: _Schemas, route: ApiRoute, method: str, op: Operation, operation_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {"tags": [op.tag], "summary": op.summary, "operationId": operation_id}
    if op.description:
        found["description"] = op.description
    if op.params:
        found["parameters"] = [_param(schemas, p) for p in op.params]
    if op.body is not None:
        body = op.body
        content = {body.media_type: _media(schemas, body.type, body.media_type)}
        found["requestBody"] = {"description": body.description, "required": body.required, "content": content}
    answers: dict[int, list[Answer]] = {}
    for status, answer in [*op.answers.items(), *implied_answers(method, route.path, op)]:
        answers.setdefault(status, []).append(answer if isinstance(answer, Answer) else Answer(answer, op.errors))
    found["responses"] = {str(status): _response(schemas, answers[status], method) for status in sorted(answers)}
    if op.security:
        found["security"] = [*([{}] if op.anonymous else []), *({name: []} for name in op.security)]
    if "bearer" in op.security:
        found.setdefault("parameters", []).append(_param(schemas, TEAM_HEADER))
    return found


def _param(schemas: _Schemas, param: Param) -> dict[str, Any]:
    return {"name": param.name, "in": param.where, **_header(schemas, param)}


def _header(schemas: _Schemas, param: Param) -> dict[str, Any]:
    """A parameter object without its name and place: what a response header is."""
    found = {"required": param.required, "schema": schemas.of(param.type)}
    if param.description:
        found["description"] = param.description
    return found


def _media(schemas: _Schemas, type_: Any, media_type: str) -> dict[str, Any]:
    if type_ is bytes and media_type != JSON:
        return {}  # any content (OpenAPI 3.1: binary content has no schema)
    return {"schema": schemas.of(type_)}


def _response(schemas: _Schemas, answers: list[Answer], method: str) -> dict[str, Any]:
    """One response object for all the answers a status stands for: their bodies as alternatives."""
    found: dict[str, Any] = {"description": "; or ".join(dict.fromkeys(a.description for a in answers))}
    bodies: dict[str, list[Any]] = {}
    for answer in answers:
        if answer.type is not None and method != "HEAD":  # an answer to HEAD has no body
            kinds = bodies.setdefault(answer.media_type, [])
            if answer.type not in kinds:
                kinds.append(answer.type)
    if bodies:
        found["content"] = {media: _alternatives(schemas, kinds, media) for media, kinds in bodies.items()}
    headers = {p.name: p for answer in answers for p in answer.headers}
    if headers:
        found["headers"] = {name: _header(schemas, p) for name, p in headers.items()}
    return found


def _alternatives(schemas: _Schemas, kinds: list[Any], media_type: str) -> dict[str, Any]:
    if len(kinds) == 1:
        return _media(schemas, kinds[0], media_type)
    return {"schema": {"anyOf": [schemas.of(kind) for kind in kinds]}}


async def openapi_json(request: Request) -> Response:
    """The app's document (made once, by create_app), its server the address this request was made to."""
    state = request.app.state
    server = (state.engine.config.public_url or base_url(request.scope)).rstrip("/")
    return json_response({**state.openapi, "servers": [{"url": server}]})
