"""The HTTP edge: JSON in and out, body limits, and the one place errors become responses."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from flowengine.engine import Engine
from flowengine.errors import ApiError
from flowengine.spec import decode_json

_encode = msgspec.json.Encoder().encode


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


def json_response(value: Any, status: int = 200) -> Response:
    return Response(_encode(value), status, media_type="application/json")


def error_response(error: ApiError) -> Response:
    return json_response(error.body(), error.status)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body of a small (JSON) request, refused with 413 past `limit` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, "too_large", f"the body is over the limit of {limit} bytes", "body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"the body is over the limit of {limit} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, type_: type, limit: int, empty: Any = None) -> Any:
    body = await read_body(request, limit)
    if not body.strip() and empty is not None:
        return empty
    return decode_json(body, type_)


def base_url(request: Request) -> str:
    """scheme://host[:port][root_path] as the client addressed us (Starlette's request.base_url,
    without building a URL object on every status poll)."""
    scope = request.scope
    host = request.headers.get("host")
    if host is None:
        server = scope.get("server") or ("localhost", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope['scheme']}://{host}{scope.get('root_path', '')}".rstrip("/")


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.lstrip("-").isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, "invalid_query", f"{name} must be a whole number from {low} to {high}", f"query.{name}")
    return int(raw)
