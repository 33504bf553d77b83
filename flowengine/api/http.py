"""The HTTP edge: JSON in and out, body limits, and the one place errors become responses."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from flowengine.errors import Error, bad_request
from flowengine.runtime.engine import Engine

_encode = msgspec.json.Encoder().encode


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


def json_response(value: Any, status: int = 200) -> Response:
    return Response(_encode(value), status, media_type="application/json")


JsonHandler = Callable[[Scope, Receive], Awaitable[tuple[int, bytes]]]


class JsonEndpoint:
    """A route answered as plain ASGI by `handler(scope, receive) -> (status, JSON bytes)`, for
    the busiest routes (see app.HotRoutes): no Request or Response objects on the way. Errors still
    reach the app's exception handlers, since nothing is sent before the handler returns."""

    def __init__(self, handler: JsonHandler) -> None:
        self.handler = handler
        self.__name__ = handler.__name__  # the route's name (Starlette's), and its OpenAPI operation's

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body = await self.handler(scope, receive)
        await send_json(send, status, body)


async def send_json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> str | None:
    """A request header's value by its lower-case name, straight from the ASGI scope."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_json(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body of a JSON request, refused with 413 past `limit` bytes, and with 415 when it
    is not sent as `application/json`: a browser may post text/plain or a form to any site without
    asking first (no CORS preflight), so a JSON API that took those could be driven by any web page.
    An empty body needs no type (a POST that runs a flow file)."""
    length = whole_number(header(scope, b"content-length"))
    if length is not None and length > limit:
        raise Error("too_large", "too_large", f"the body is over the limit of {limit} bytes", "body")
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise bad_request("client_disconnected", "the client went away before sending the whole body", "body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Error("too_large", "too_large", f"the body is over the limit of {limit} bytes", "body")
        chunks.append(chunk)
        more = message.get("more_body", False)
    if size:
        require_json(header(scope, b"content-type"))
    return b"".join(chunks)


def require_json(content_type: str | None) -> None:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        sent = f"got {content_type!r}" if content_type else "there is none"
        message = f"the body must be sent with 'Content-Type: application/json' ({sent})"
        raise Error("unsupported_media_type", "unsupported_media_type", message, "header.Content-Type")


def base_url(scope: Scope) -> str:
    """scheme://host[:port][root_path] as the client addressed us (Starlette's request.base_url,
    without building a URL object on every status poll)."""
    host = header(scope, b"host")
    if host is None:
        server = scope.get("server") or ("localhost", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope['scheme']}://{host}{scope.get('root_path', '')}".rstrip("/")


# ASCII digits only, and few enough for int(): str.isdigit() is true for '²', which int() refuses,
# and int() refuses more than 4,300 digits.
_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,18}")


def whole_number(raw: str | None) -> int | None:
    """A whole number written in ASCII digits (at most 18 of them), or None."""
    return int(raw) if raw is not None and _WHOLE_NUMBER.fullmatch(raw) else None


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = whole_number(raw)
    if value is None or not low <= value <= high:
        raise bad_request("invalid_query", f"{name} must be a whole number from {low} to {high}", f"query.{name}")
    return value
