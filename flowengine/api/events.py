"""Object-created notifications: MinIO / AWS S3 bucket notifications and SeaweedFS filer events.

Authenticated with the bearer token from config (`events_token`; MinIO's webhook target sends
it as `auth_token`). Each record that names a waiting key advances its run; other records are
ignored, so duplicates and unrelated objects are harmless.
"""

from __future__ import annotations

import hmac
from urllib.parse import unquote_plus

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from flowengine.api.http import engine_of, json_response, read_json
from flowengine.api.openapi import Answer, ApiRoute, Body, Operation
from flowengine.core.spec import decode_json
from flowengine.errors import Error
from flowengine.runtime.engine import Engine
from flowengine.runtime.landing import notify

MAX_EVENT_BODY = 8 << 20  # a MinIO batch can carry many records


class S3Bucket(msgspec.Struct):
    name: str


class S3Object(msgspec.Struct, rename="camel"):
    key: str
    size: int | None = None
    e_tag: str | None = None


class S3Entity(msgspec.Struct):
    bucket: S3Bucket
    object: S3Object


class S3Record(msgspec.Struct, rename="camel"):
    event_name: str
    s3: S3Entity
    event_source: str = ""  # "minio:s3" or "aws:s3": both shapes are the same where it matters


class S3Notification(msgspec.Struct, rename="pascal"):
    records: list[S3Record] | None = None  # a Go sender's nil slice arrives as null


class Attributes(msgspec.Struct):
    file_size: int | None = None
    mime: str | None = None


class Entry(msgspec.Struct):
    name: str = ""
    is_directory: bool = False
    attributes: Attributes | None = None


class FilerMessage(msgspec.Struct):
    new_entry: Entry | None = None


class FilerEvent(msgspec.Struct):
    event_type: str
    key: str
    message: FilerMessage | None = None


class Received(msgspec.Struct, rename="pascal"):
    received: int
    matched: int


def _authorize(request: Request) -> Engine:
    engine = engine_of(request)
    token = engine.config.events_token
    if not token:
        raise Error("forbidden", "events_disabled", "set events_token in the config to accept notifications", "")
    sent = request.headers.get("authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        raise Error("unauthorized", "unauthorized", "a valid 'Authorization: Bearer <events_token>' header is required",
                       "header.Authorization")  # fmt: skip
    return engine


def is_object_created(event_name: str) -> bool:
    return event_name.removeprefix("s3:").startswith("ObjectCreated:")


async def s3_events(request: Request) -> Response:
    engine = _authorize(request)
    body = decode_json(await read_json(request.scope, request.receive, MAX_EVENT_BODY), S3Notification)
    records = body.records or []
    matched = 0
    for record in records:
        if is_object_created(record.event_name):
            key = unquote_plus(record.s3.object.key)  # MinIO and AWS send keys URL-encoded, '+' for space
            matched += await notify(engine, f"s3:{record.s3.bucket.name}", key)
    return json_response(Received(len(records), matched))


def filer_object(event: FilerEvent) -> tuple[str, str] | None:
    """(bucket, key) of an object a SeaweedFS filer event created; None for anything else."""
    entry = event.message.new_entry if event.message else None
    if event.event_type not in ("create", "update") or entry is None or entry.is_directory:
        return None
    parts = event.key.split("/", 3)  # "", "buckets", bucket, key
    if len(parts) < 4 or parts[1] != "buckets" or parts[2].startswith(".") or not parts[3]:
        return None
    return parts[2], parts[3]


async def seaweedfs_events(request: Request) -> Response:
    engine = _authorize(request)
    event = decode_json(await read_json(request.scope, request.receive, MAX_EVENT_BODY), FilerEvent)
    found = filer_object(event)
    matched = await notify(engine, f"s3:{found[0]}", found[1]) if found else False
    return json_response(Received(1, int(matched)))


async def probe(request: Request) -> Response:
    return Response(status_code=200)  # MinIO checks that a webhook target is alive with HEAD


EVENTS = "events"
RECEIVED = Answer("the records received, and how many named an object a run was waiting for", Received)
NOTIFIED: dict[int, Answer | str] = {
    200: RECEIVED,
    401: "no `Authorization: Bearer <events_token>` header, or another token (unauthorized)",
    403: "the engine has no events_token: it takes no notifications (events_disabled)",
    507: "the engine's disk is full: the run that waited for the object was not advanced (insufficient_storage)",
}
S3_EVENTS = Operation(
    summary="MinIO / AWS S3 bucket notifications: each ObjectCreated record may advance the run waiting for it",
    tag=EVENTS,
    body=Body(S3Notification, "a bucket notification (keys URL-encoded)"),
    security=("eventsToken",),
    answers=NOTIFIED,
)
SEAWEEDFS_EVENTS = Operation(
    summary="A SeaweedFS filer event: a file created under /buckets/ may advance the run waiting for it",
    tag=EVENTS,
    body=Body(FilerEvent, "one filer event"),
    security=("eventsToken",),
    answers=NOTIFIED,
)
PROBE = Operation(
    summary="Liveness probe of a webhook target (MinIO sends HEAD)",
    tag=EVENTS,
    answers={200: Answer("the endpoint takes notifications")},
)

routes = [
    ApiRoute("/api/v1/events/s3", s3_events, post=S3_EVENTS),
    ApiRoute("/api/v1/events/s3", probe, name="s3_probe", head=PROBE),
    ApiRoute("/api/v1/events/seaweedfs", seaweedfs_events, post=SEAWEEDFS_EVENTS),
    ApiRoute("/api/v1/events/seaweedfs", probe, name="seaweedfs_probe", head=PROBE),
]
