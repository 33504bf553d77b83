"""`POST /api/v1/r/files/presign`: a presigned PUT for a file a run's `file` parameter will take."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from flowengine.api.auth import RUNTIME_CALLERS, RUNTIME_SECURITY, authenticate
from flowengine.api.errors import ReferenceErrorBody
from flowengine.api.http import engine_of, json_response
from flowengine.api.openapi import Answer, ApiRoute, Body, Operation
from flowengine.api.r.common import body_of, public_base
from flowengine.core.validate import is_mime_type
from flowengine.errors import bad_request
from flowengine.runtime.files import presign_upload


class PresignFile(msgspec.Struct):
    file_name: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    file_size: Annotated[int, msgspec.Meta(ge=0)]  # exact: signed into the URL as Content-Length
    content_type: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class PresignedFile(msgspec.Struct):
    file_key: str  # pass it as the value of a `file` parameter
    upload_url: str
    upload_headers: dict[str, str]  # send every one of them with the PUT, verbatim


async def presign(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    body = await body_of(request, PresignFile)
    if not is_mime_type(body.content_type):
        raise bad_request("invalid_field", f"{body.content_type!r} is not a MIME type like 'image/png'", "content_type")
    record, presigned = await presign_upload(
        engine_of(request), principal.team, body.file_name, body.file_size, body.content_type, public_base(request)
    )
    return json_response(PresignedFile(record.key, presigned.url, presigned.headers))


PRESIGN = Operation(
    summary="A presigned PUT URL for a file a run's `file` parameter will take",
    description="Upload the file with a PUT to `upload_url`, sending every header of `upload_headers` verbatim "
    "(`Content-Length`: exactly `file_size`; `If-None-Match: *`: no overwrite). Then pass `file_key` as the "
    "parameter's value. Files are kept for `input_retention` (1 day). A file over `max_upload_size` (500 MB) goes "
    "up in parts to the same key (`/api/v1/uploads/multipart/*`): the embedded store refuses it as one PUT.",
    tag="files",
    body=Body(PresignFile, "the file to come: its name, exact size and type"),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={
        200: Answer("where to PUT the file, and its key", PresignedFile),
        400: "a field is missing or of the wrong type, the type is no MIME type, or file_size is over the "
        "engine's limit (max_multipart_size)",
        503: "the files store did not answer (store_unavailable)",
    },
)

routes = [ApiRoute("/api/v1/r/files/presign", presign, post=PRESIGN)]
