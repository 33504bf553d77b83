"""Objects through the engine: embedded-store URLs, webhook wells, and direct upload to a run."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from flowengine.api.auth import FLOW_CALLERS, authenticate
from flowengine.api.documents import RunDoc
from flowengine.api.flow import run_response
from flowengine.api.http import engine_of, whole_number
from flowengine.api.openapi import Answer, ApiRoute, Body, Operation, in_header, in_path, in_query
from flowengine.core.keys import MAX_KEY_BYTES, key_problem
from flowengine.core.parts import MAX_PARTS
from flowengine.errors import Error, already_exists, bad_request, conflict, not_found
from flowengine.runtime.ingest import DEFAULT_TYPE, Upload, receive, receive_object, receive_part
from flowengine.stores.base import LEASE_HEADER
from flowengine.stores.local import LocalStore
from flowengine.stores.signing import SignatureError, hook_resource, local_part_resource, local_resource


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
    """A presigned PUT to the embedded store (what a WaitingURL's PutURL points at), or of one part of
    a multipart upload to it (S3's `?partNumber=N&uploadId=ID`)."""
    if "uploadId" in request.query_params:
        return await _put_part(request)
    engine = engine_of(request)
    store, key, signed = _signed_object(request, "PUT")
    no_overwrite = signed.get("if-none-match") == "*"
    if no_overwrite and store.stat_now(key) is not None:
        raise already_exists(key)
    declared = int(signed["content-length"]) if "content-length" in signed else None
    upload = Upload(_content_type(request), _length(request), declared, no_overwrite)
    wait = await engine.db.wait_for(store.location, key)
    if wait is not None:
        await receive(engine, wait.run_id, wait.edge, request.stream(), upload)
    elif await engine.db.file(store.name, key) is not None:  # a file presigned for the workflow/task API
        await receive_object(engine, store, key, request.stream(), upload)
    elif LEASE_HEADER in signed:  # a step's output, from the worker that holds the attempt's lease
        await engine.queue.running_lease(signed[LEASE_HEADER])
        await receive_object(engine, store, key, request.stream(), upload)
    else:
        raise conflict(f"no run is waiting for {key!r}: its edge is already filled or its run has ended", "path.key")
    info = store.stat_now(key)
    return Response(status_code=200, headers={"ETag": f'"{info.etag}"'} if info else {})


async def _put_part(request: Request) -> Response:
    name, key, upload_id = request.path_params["store"], request.path_params["key"], request.query_params["uploadId"]
    number = whole_number(request.query_params.get("partNumber"))
    if number is None or not 1 <= number <= MAX_PARTS:
        raise bad_request("invalid_part_number", f"partNumber must be a whole number from 1 to {MAX_PARTS}",
                          "query.partNumber")  # fmt: skip
    signed = _verify(request, "PUT", local_part_resource(name, key, upload_id, number))
    declared = int(signed["content-length"]) if "content-length" in signed else None
    upload = Upload(_content_type(request), _length(request), declared)
    engine = engine_of(request)
    etag = await receive_part(engine, engine.stores.local(name), upload_id, number, request.stream(), upload)
    return Response(status_code=200, headers={"ETag": f'"{etag}"'})


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
    principal = await authenticate(request.scope, FLOW_CALLERS)
    await engine_of(request).get_run(request.path_params["run_id"], principal.team)  # another team's: 404
    return await _ingest(request, request.path_params["run_id"], request.path_params["edge"])


async def webhook(request: Request) -> Response:
    """A webhook well's signed URL: the callback POSTs (or PUTs) the data as its body."""
    run_id, edge = request.path_params["run_id"], request.path_params["edge"]
    _verify(request, "PUT", hook_resource(run_id, edge))
    return await _ingest(request, run_id, edge)


OBJECTS = "objects"
SIGNED = ("signedURL",)
EXPIRES = in_query("X-Expires", int, "when the URL stops working (epoch seconds), as signed", required=True)
SIGNED_HEADERS = in_query("X-SignedHeaders", str, "the signed headers' names, lower case, separated by ';'")
# A key, as far as a pattern can tell (keys.key_problem says the rest: no empty, '.' or '..' segment).
Key = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_KEY_BYTES, pattern=r"^[^/\x00-\x1f\x7f\\][^\x00-\x1f\x7f\\]*$")
]
STORE_KEY = (
    in_path("store", str, "the embedded store's name"),
    in_path("key", Key, f"the object's key: '/' separates its segments, at most {MAX_KEY_BYTES} bytes"),
)
WELL = (in_path("run_id", str, "the run's ID"), in_path("edge", str, "the well's edge"))
ETAG = in_header("ETag", str, "the object's ETag (the MD5 of its content, quoted)", required=True)
STORED_ETAG = in_header("ETag", str, "the stored object's ETag (absent only when the object was deleted at once)")
UPLOAD_BODY = Body(
    bytes,
    "the object, streamed: any Content-Type (the well's ContentType and Accept rules apply)",
    "application/octet-stream",
)
SIGNATURE = "the URL's signature is missing, expired, tampered or lacks a signed header (signature_rejected)"
# What receiving an object into a well can answer (runtime/ingest.py), whichever way it comes.
INGEST: dict[int, Answer | str] = {
    400: "Content-Length is not a whole number, or the body's size is not the signed one (size_mismatch)",
    409: "the run has ended, the edge is filled (by a step, or by another upload that finished first) (conflict)",
    413: "the body is over the well's MaxSize or the engine's max_upload_size (too_large)",
    415: "the well does not accept the body's Content-Type (unsupported_media_type)",
    503: "the well's store did not answer (store_unavailable)",
    507: "the engine's disk is full: the object was not stored (insufficient_storage)",
}
NO_WELL = "no run has this ID, or the run has no such edge (not_found)"
RUN_ANSWER = Answer("the run document, with the edge filled", RunDoc)

PUT_OBJECT = Operation(
    summary="Upload an object to the embedded store: a WaitingURL's PutURL",
    tag=OBJECTS,
    params=(
        *STORE_KEY,
        EXPIRES,
        SIGNED_HEADERS,
        in_header(
            "If-None-Match",
            str,
            "`*` when the URL signs it (see the WaitingURL's Headers): the object must not exist yet",
        ),
        in_query(
            "partNumber",
            Annotated[int, msgspec.Meta(ge=1, le=MAX_PARTS)],
            "a part of a multipart upload (`/api/v1/uploads/multipart/presign-parts`): its number, signed",
        ),
        in_query("uploadId", str, "a part of a multipart upload: the upload's ID in the store, signed"),
    ),
    body=UPLOAD_BODY,
    security=SIGNED,
    answers={
        **INGEST,
        200: Answer(
            "the object is stored and its run advanced (or, for a file presigned for the workflow/task API or a "
            "part of a multipart upload, stored)",
            headers=(STORED_ETAG,),
        ),
        400: f"{INGEST[400]}, or the key is not valid (invalid_key)",
        403: SIGNATURE,
        409: "no run is waiting for this key and no file was presigned at it, or another upload to its well "
        "finished first (conflict)",
        404: "a part's multipart upload was completed or aborted (not_found)",
        412: "`If-None-Match: *` is signed and the object exists (precondition_failed)",
    },
)
GET_OBJECT = Operation(
    summary="Download an object of the embedded store: an Artifact's GetURL",
    tag=OBJECTS,
    params=(*STORE_KEY, EXPIRES, SIGNED_HEADERS),
    security=SIGNED,
    answers={
        200: Answer("the object, with the Content-Type it was stored with", bytes, "*/*", (ETAG,)),
        400: "the key is not valid (invalid_key)",
        403: SIGNATURE,
        404: "the object does not exist (not_found)",
    },
)
DIRECT_UPLOAD = Operation(
    security=("bearer",),
    anonymous=True,
    summary="Upload an object straight into a run's well, without a presigned URL",
    tag=OBJECTS,
    params=WELL,
    body=UPLOAD_BODY,
    answers={**INGEST, 200: RUN_ANSWER, 404: NO_WELL},
)
WEBHOOK = Operation(
    summary="A webhook well's signed URL: the callback sends the object as its body",
    tag=OBJECTS,
    params=(*WELL, EXPIRES, SIGNED_HEADERS),
    body=UPLOAD_BODY,
    security=SIGNED,
    answers={**INGEST, 200: RUN_ANSWER, 403: SIGNATURE, 404: NO_WELL},
)

routes = [
    ApiRoute("/store/{store}/{key:path}", put_object, put=PUT_OBJECT),
    ApiRoute("/store/{store}/{key:path}", get_object, get=GET_OBJECT, head=GET_OBJECT),
    ApiRoute("/api/v1/upload/{run_id}/{edge}", direct_upload, post=DIRECT_UPLOAD, put=DIRECT_UPLOAD),
    ApiRoute("/api/v1/hook/{run_id}/{edge}", webhook, post=WEBHOOK, put=WEBHOOK),
]
