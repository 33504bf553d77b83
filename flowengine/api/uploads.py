"""`/api/v1/uploads/multipart/*`: a large file in parts, for a user's session only (runtime/multipart.py)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from flowengine.api.auth import Accepts, authenticate
from flowengine.api.errors import ReferenceErrorBody
from flowengine.api.http import engine_of, json_response
from flowengine.api.openapi import Answer, ApiRoute, Body, Operation, in_path
from flowengine.api.r.common import body_of, public_base
from flowengine.core.parts import MAX_PARTS
from flowengine.core.times import rfc3339
from flowengine.errors import bad_request
from flowengine.persistence.base import UploadRecord
from flowengine.runtime import multipart
from flowengine.stores.base import Store

# The reference: the multipart endpoints take a user session token only; sk- and dk- get 401.
MULTIPART_CALLERS: Accepts = frozenset({"user"})
PartNumber = Annotated[int, msgspec.Meta(ge=1, le=MAX_PARTS)]
UploadId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
StorageKey = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class Initiate(msgspec.Struct):
    storage_key: StorageKey  # from a file presign (/r/files/presign, /models/presign)
    file_size: Annotated[int, msgspec.Meta(ge=1)]  # the size that presign declared


class Initiated(msgspec.Struct):
    upload_id: str
    storage_key: str
    part_size: int  # every part's size but the last one's (which is what is left)
    part_count: int
    expires_at: str  # when the upload is aborted if it is not complete


class PresignParts(msgspec.Struct):
    upload_id: UploadId
    part_numbers: Annotated[list[PartNumber], msgspec.Meta(min_length=1, max_length=1000)]
    storage_key: StorageKey | None = None  # if given, the upload's (a check)


class PresignedPart(msgspec.Struct):
    part_number: int
    upload_url: str
    upload_headers: dict[str, str]  # send them verbatim: Content-Length is the part's exact size


class PresignedParts(msgspec.Struct):
    parts: list[PresignedPart]


class CompletedPart(msgspec.Struct):
    part_number: PartNumber
    etag: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]  # as the part's PUT answered it


class Complete(msgspec.Struct):
    upload_id: UploadId
    parts: Annotated[list[CompletedPart], msgspec.Meta(min_length=1, max_length=MAX_PARTS)]
    storage_key: StorageKey | None = None


class Completed(msgspec.Struct):
    storage_key: str
    file_key: str  # the same key: what a run's `file` parameter takes
    file_size: int
    expires_at: str  # when the file is deleted (input_retention from now), unless a model keeps it


class Abort(msgspec.Struct):
    upload_id: UploadId
    storage_key: StorageKey | None = None


class ReceivedPart(msgspec.Struct):
    part_number: int
    etag: str
    size: int


class UploadDoc(msgspec.Struct):
    upload_id: str
    storage_key: str
    file_size: int
    part_size: int
    part_count: int
    expires_at: str
    parts: list[ReceivedPart]  # received whole so far, by number: send the others to resume


async def _upload(request: Request, team: str, upload_id: str, key: str | None) -> tuple[UploadRecord, Store]:
    upload, store = await multipart.upload_of(engine_of(request), team, upload_id)
    if key is not None and key != upload.key:
        raise bad_request("storage_key_mismatch", f"upload {upload_id!r} is to {upload.key!r}", "storage_key")
    return upload, store


async def initiate(request: Request) -> Response:
    principal = await authenticate(request.scope, MULTIPART_CALLERS)
    body = await body_of(request, Initiate)
    upload = await multipart.initiate(engine_of(request), principal.team, body.storage_key, body.file_size)
    return json_response(
        Initiated(upload.id, upload.key, upload.part_size, upload.part_count, rfc3339(upload.expires, False))
    )


async def presign_parts(request: Request) -> Response:
    principal = await authenticate(request.scope, MULTIPART_CALLERS)
    body = await body_of(request, PresignParts)
    upload, store = await _upload(request, principal.team, body.upload_id, body.storage_key)
    signed = multipart.presign_parts(engine_of(request), upload, store, body.part_numbers, public_base(request))
    return json_response(PresignedParts([PresignedPart(n, p.url, p.headers) for n, p in signed]))


async def complete(request: Request) -> Response:
    principal = await authenticate(request.scope, MULTIPART_CALLERS)
    body = await body_of(request, Complete)
    upload, store = await _upload(request, principal.team, body.upload_id, body.storage_key)
    named = [multipart.Named(p.part_number, p.etag) for p in body.parts]
    file = await multipart.complete(engine_of(request), upload, store, named)
    return json_response(Completed(file.key, file.key, file.size, rfc3339(file.expires, False)))


async def abort(request: Request) -> Response:
    principal = await authenticate(request.scope, MULTIPART_CALLERS)
    body = await body_of(request, Abort)
    upload, store = await _upload(request, principal.team, body.upload_id, body.storage_key)
    await multipart.abort(engine_of(request), upload, store)
    return Response(status_code=204)


async def describe(request: Request) -> Response:
    principal = await authenticate(request.scope, MULTIPART_CALLERS)
    upload, store = await _upload(request, principal.team, request.path_params["upload_id"], None)
    parts = [ReceivedPart(p.number, p.etag, p.size) for p in await multipart.received(store, upload)]
    doc = UploadDoc(upload.id, upload.key, upload.file_size, upload.part_size, upload.part_count,
                    rfc3339(upload.expires, False), parts)  # fmt: skip
    return json_response(doc)


TAG = "uploads"
SECURITY = ("bearer",)
JWT_ONLY = "A user session token (with `X-Team-ID`) only: `sk-` and `dk-` keys are refused with 401."
UNAUTHORIZED = "no credential, or not a user session token (sk-, dk- and ak- keys are refused) (unauthorized)"
NO_UPLOAD = "no upload under way has this ID for the team: another team's, completed, aborted or expired (not_found)"
STORE_DOWN = "the files store did not answer (store_unavailable)"
INITIATE = Operation(
    summary="Start a multipart upload to a presigned file's key",
    description="`storage_key` is a key a file presign gave (`POST /api/v1/r/files/presign`, "
    "`POST /api/v1/models/presign`), with the `file_size` it declared. Parts are `part_size` bytes (100 MiB by "
    f"default; the last one what is left). {JWT_ONLY} An upload not completed by `expires_at` (a day) is aborted.",
    tag=TAG,
    body=Body(Initiate, "the presigned key and the file's exact size"),
    security=SECURITY,
    errors=ReferenceErrorBody,
    answers={
        200: Answer("the upload: its ID and how the file is cut into parts", Initiated),
        400: "a field is missing or wrong, the key was not presigned for this team (unknown_storage_key), or "
        "file_size is not the presign's (size_mismatch)",
        401: UNAUTHORIZED,
        409: "the key has a multipart upload under way already (upload_in_progress)",
        412: "an object is stored at the key already: uploads never overwrite (precondition_failed)",
        503: STORE_DOWN,
    },
)
PRESIGN_PARTS = Operation(
    summary="Presigned PUT URLs for parts of a multipart upload",
    description="PUT each part's bytes to its `upload_url` with its `upload_headers` (`Content-Length`: the "
    f"part's exact size); the answer's `ETag` is what `complete` takes. A part sent again replaces it. {JWT_ONLY}",
    tag=TAG,
    body=Body(PresignParts, "the upload and the numbers of the parts to sign (from 1, at most 1,000 at once)"),
    security=SECURITY,
    errors=ReferenceErrorBody,
    answers={
        200: Answer("a URL per part number", PresignedParts),
        400: "a field is missing or wrong, or a part number is not one of the upload's (invalid_part_number)",
        401: UNAUTHORIZED,
        404: NO_UPLOAD,
    },
)
COMPLETE = Operation(
    summary="Complete a multipart upload: its parts become the file, at its key",
    description="Name every part, in order, with the ETag its PUT answered. The file is then at `storage_key` "
    f"(the same `file_key` a single-part presign gives: a run's `file` parameter takes it). {JWT_ONLY}",
    tag=TAG,
    body=Body(Complete, "the upload and its parts with their ETags"),
    security=SECURITY,
    errors=ReferenceErrorBody,
    answers={
        200: Answer("the file, stored", Completed),
        400: "a field is missing or wrong, a part is not named or out of order (invalid_parts), not received "
        "whole (part_missing), or its ETag is not the one received (etag_mismatch)",
        401: UNAUTHORIZED,
        404: NO_UPLOAD,
        412: "an object is stored at the key already (precondition_failed)",
        503: STORE_DOWN,
    },
)
ABORT = Operation(
    summary="Abort a multipart upload: its parts are deleted",
    description=JWT_ONLY,
    tag=TAG,
    body=Body(Abort, "the upload"),
    security=SECURITY,
    errors=ReferenceErrorBody,
    answers={204: Answer("aborted"), 401: UNAUTHORIZED, 404: NO_UPLOAD, 503: STORE_DOWN},
)
DESCRIBE = Operation(
    summary="A multipart upload and the parts received so far (to resume it)",
    description="Parts listed are stored whole; send the others (presign them again if their URLs expired). "
    + JWT_ONLY,
    tag=TAG,
    params=(in_path("upload_id", str, "the upload's ID, from initiate"),),
    security=SECURITY,
    errors=ReferenceErrorBody,
    answers={200: Answer("the upload", UploadDoc), 401: UNAUTHORIZED, 404: NO_UPLOAD, 503: STORE_DOWN},
)

PREFIX = "/api/v1/uploads/multipart"
routes = [
    ApiRoute(f"{PREFIX}/initiate", initiate, name="multipart_initiate", post=INITIATE),
    ApiRoute(f"{PREFIX}/presign-parts", presign_parts, name="multipart_presign_parts", post=PRESIGN_PARTS),
    ApiRoute(f"{PREFIX}/complete", complete, name="multipart_complete", post=COMPLETE),
    ApiRoute(f"{PREFIX}/abort", abort, name="multipart_abort", post=ABORT),
    ApiRoute(f"{PREFIX}/{{upload_id}}/parts", describe, name="multipart_upload", get=DESCRIBE),
]
