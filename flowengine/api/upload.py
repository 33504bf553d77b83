"""Objects through the engine: embedded-store URLs, webhook wells, and direct upload to a run."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from flowengine.api.flow import run_response
from flowengine.api.http import engine_of, whole_number
from flowengine.core.keys import key_problem
from flowengine.errors import Error, already_exists, bad_request, conflict, not_found
from flowengine.runtime.ingest import DEFAULT_TYPE, Upload, receive
from flowengine.stores.local import LocalStore
from flowengine.stores.signing import SignatureError, hook_resource, local_resource


def _length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    length = whole_number(raw)
    if length is None or length < 0:
        raise bad_request("invalid_header", "Content-Length must be a whole number", "header.Content-Length")
    return length


def _content_type(request: Request) -> str:
    return request.headers.get("content-type") or DEFAULT_TYPE


def _verify(request: Request, method: str, resource: str) -> dict[str, str]:
    engine = engine_of(request)
    try:
        return engine.stores.signer.verify(method, resource, request.query_params, request.headers, engine.clock())
    except SignatureError as exc:
        raise Error("forbidden", "signature_rejected", str(exc), "query.X-Signature") from None


def _signed_object(request: Request, method: str) -> tuple[LocalStore, str, dict[str, str]]:
    """The store, key and signed headers of a presigned embedded-store request. The signature is
    checked first: a store is looked up (or opened after a restart) only for a URL the engine made."""
    name, key = request.path_params["store"], request.path_params["key"]
    problem = key_problem(key)
    if problem:
        raise bad_request("invalid_key", f"key {key!r} {problem}", "path.key")
    signed = _verify(request, method, local_resource(name, key))
    return engine_of(request).stores.local(name), key, signed


async def put_object(request: Request) -> Response:
    """A presigned PUT to the embedded store (what a WaitingURL's PutURL points at)."""
    engine = engine_of(request)
    store, key, signed = _signed_object(request, "PUT")
    no_overwrite = signed.get("if-none-match") == "*"
    if no_overwrite and store.stat_now(key) is not None:
        raise already_exists(key)
    wait = await engine.db.wait_for(store.location, key)
    if wait is None:
        raise conflict(f"no run is waiting for {key!r}: its edge is already filled or its run has ended", "path.key")
    declared = int(signed["content-length"]) if "content-length" in signed else None
    upload = Upload(_content_type(request), _length(request), declared, no_overwrite)
    await receive(engine, wait.run_id, wait.edge, request.stream(), upload)
    info = store.stat_now(key)
    return Response(status_code=200, headers={"ETag": f'"{info.etag}"'} if info else {})


async def get_object(request: Request) -> Response:
    store, key, _ = _signed_object(request, "GET")
    info = store.stat_now(key)
    if info is None:
        raise not_found("object", key, "path.key")
    return FileResponse(store.path(key), media_type=info.content_type, headers={"ETag": f'"{info.etag}"'})


async def _ingest(request: Request, run_id: str, edge: str) -> Response:
    engine = engine_of(request)
    upload = Upload(_content_type(request), _length(request))
    await receive(engine, run_id, edge, request.stream(), upload)
    return run_response(request, *await engine.get_run(run_id))


async def direct_upload(request: Request) -> Response:
    """POST /api/v1/upload/{run_id}/{edge}: stream the body into the well, no presigning."""
    return await _ingest(request, request.path_params["run_id"], request.path_params["edge"])


async def webhook(request: Request) -> Response:
    """A webhook well's signed URL: the callback POSTs (or PUTs) the data as its body."""
    run_id, edge = request.path_params["run_id"], request.path_params["edge"]
    _verify(request, "PUT", hook_resource(run_id, edge))
    return await _ingest(request, run_id, edge)


routes = [
    Route("/store/{store}/{key:path}", put_object, methods=["PUT"]),
    Route("/store/{store}/{key:path}", get_object, methods=["GET", "HEAD"]),
    Route("/api/v1/upload/{run_id}/{edge}", direct_upload, methods=["POST", "PUT"]),
    Route("/api/v1/hook/{run_id}/{edge}", webhook, methods=["POST", "PUT"]),
]
