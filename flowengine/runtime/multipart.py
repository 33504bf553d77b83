"""Multipart uploads: a large file sent in parts, each straight to the store, to a key a presign gave.

The key comes from a file presign (`/api/v1/r/files/presign`, `/api/v1/models/presign`), which
recorded the team, the exact size and the type. `initiate` starts the store's own multipart upload
(S3's; on the embedded store, a folder of part files), `presign_parts` signs one PUT per part with
the part's exact Content-Length, and `complete` assembles the parts the client names into the
object, which then is what the presign said: the same key, the same size, never an overwrite.
An upload left incomplete for `multipart_ttl` (a day) is aborted by the sweeper.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from flowengine.core.ids import uuid7
from flowengine.core.parts import part_length, part_plan
from flowengine.errors import Error, already_exists, bad_request, not_found
from flowengine.persistence.base import FileRecord, UploadRecord
from flowengine.runtime.files import files_store
from flowengine.stores.base import Part, PartRefused, Presigned, PutConditions, Store, StoreUnavailable

if TYPE_CHECKING:
    from flowengine.runtime.engine import Engine

log = logging.getLogger("flowengine.multipart")
BATCH = 100


class Named(msgspec.Struct, frozen=True):
    """A part as the client names it when completing: its number and the ETag its PUT answered."""

    number: int
    etag: str


async def initiate(engine: Engine, team: str, key: str, file_size: int) -> UploadRecord:
    store = files_store(engine)
    file = await engine.db.file(store.name, key)
    if file is None or file.team != team:  # another team's key is as unknown as one never given out
        raise bad_request("unknown_storage_key", f"no file was presigned at {key!r} for this team", "storage_key")
    if file_size != file.size:
        message = f"file_size {file_size} is not the {file.size} bytes the presign of {key!r} declared"
        raise bad_request("size_mismatch", message, "file_size")
    if await store.stat(key) is not None:
        raise already_exists(key)
    part_size, part_count = part_plan(file_size, engine.config.multipart_part_size)
    native = await store.create_multipart(key, file.content_type)
    now = engine.clock()
    upload = UploadRecord(uuid7(), team, store.name, key, native, file_size, part_size, part_count, now,
                          now + engine.config.multipart_ttl)  # fmt: skip
    try:
        async with engine.db.transaction() as tx:
            await tx.insert_upload(upload)
            await tx.keep_file(store.name, key, max(file.expires, upload.expires))  # not swept while it goes up
    except Error as exc:
        await store.abort_multipart(key, native)
        if exc.kind == "conflict":
            raise Error("conflict", "upload_in_progress", f"{key!r} has a multipart upload under way: complete "
                        "or abort it first", "storage_key") from None  # fmt: skip
        raise
    return upload


async def upload_of(engine: Engine, team: str, upload_id: str) -> tuple[UploadRecord, Store]:
    """The team's upload under way, with its store; 404 for one that is another team's, done or expired."""
    upload = await engine.db.upload(upload_id)
    if upload is None or upload.team != team or upload.expires <= engine.clock():
        raise not_found("multipart upload", upload_id, "upload_id")
    return upload, engine.stores.resolve(None, upload.store)


def presign_parts(
    engine: Engine, upload: UploadRecord, store: Store, numbers: list[int], base_url: str
) -> list[tuple[int, Presigned]]:
    """One PUT URL per part, signing the part's exact size; they expire with the upload at the latest."""
    for i, number in enumerate(numbers):
        if not 1 <= number <= upload.part_count:
            message = f"part {number} is not one of this upload's parts, 1 to {upload.part_count}"
            raise bad_request("invalid_part_number", message, f"part_numbers[{i}]")
    expires = min(engine.clock() + engine.config.upload_ttl, upload.expires)
    return [
        (n, store.presign_part(upload.key, upload.native_id, n, expires, _conditions(upload, n), base_url))
        for n in dict.fromkeys(numbers)
    ]


def _conditions(upload: UploadRecord, number: int) -> PutConditions:
    return PutConditions(size=part_length(upload.file_size, upload.part_size, number))


async def received(store: Store, upload: UploadRecord) -> list[Part]:
    """The parts the store holds, each of the size its URL signed (a client resumes from the others)."""
    parts = await store.list_parts(upload.key, upload.native_id)
    if parts is None:  # the store dropped it (S3's lifecycle rule, an operator)
        raise not_found("multipart upload", upload.id, "upload_id")
    return parts


async def complete(engine: Engine, upload: UploadRecord, store: Store, named: list[Named]) -> FileRecord:
    """Assemble the named parts (every part of the file, in order) into the presigned key."""
    if [p.number for p in named] != list(range(1, upload.part_count + 1)):
        message = f"parts must name each of this upload's {upload.part_count} parts once, in order (1, 2, ...)"
        raise bad_request("invalid_parts", message, "parts")
    # By number, every version the store holds: S3 and the embedded store keep a re-sent part's last
    # one only; SeaweedFS keeps each, and assembles the one whose ETag the client names.
    held: dict[int, dict[str, Part]] = {}
    for part in await received(store, upload):
        held.setdefault(part.number, {})[part.etag] = part
    parts = []
    for i, want in enumerate(named):
        size = part_length(upload.file_size, upload.part_size, want.number)
        versions = {etag: p for etag, p in held.get(want.number, {}).items() if p.size == size}
        if not versions:
            raise bad_request("part_missing", f"part {want.number} has not been received whole", f"parts[{i}]")
        part = versions.get(want.etag.strip('"'))
        if part is None:
            message = (f"part {want.number}'s ETag is {' or '.join(map(repr, versions))}, not {want.etag!r}: it was "
                       "sent again since, or this is another's")  # fmt: skip
            raise bad_request("etag_mismatch", message, f"parts[{i}].etag")
        parts.append(part)
    if await store.stat(upload.key) is not None:
        raise already_exists(upload.key)
    try:
        await store.complete_multipart(upload.key, upload.native_id, parts)
    except FileExistsError:
        raise already_exists(upload.key) from None
    except (FileNotFoundError, PartRefused):  # a part was sent again after the listing above
        message = "a part was sent again while the upload was completing: list its parts and complete it again"
        raise bad_request("part_missing", message, "parts") from None
    now = engine.clock()
    async with engine.db.transaction() as tx:
        await tx.drop_upload(upload.id)
        await tx.keep_file(store.name, upload.key, now + engine.config.input_retention)  # counted from now
    file = await engine.db.file(store.name, upload.key)
    if file is None:  # swept this very moment, with the upload's time up
        raise not_found("multipart upload", upload.id, "upload_id")
    return file


async def abort(engine: Engine, upload: UploadRecord, store: Store) -> None:
    await store.abort_multipart(upload.key, upload.native_id)
    await engine.db.drop_upload(upload.id)


async def sweep(engine: Engine, lease: float) -> int:
    """Abort uploads left incomplete past their time, claimed as the run objects are (retention.py):
    engines sweeping at once never abort one twice; one not aborted comes due again after `lease`.
    One whose store does not answer waits for a later sweep."""
    aborted = 0
    down: set[str] = set()
    while due := await engine.db.claim_uploads(engine.clock(), lease, BATCH):
        for upload in due:
            if upload.store in down:
                continue
            try:
                await abort(engine, upload, engine.stores.resolve(None, upload.store))
            except StoreUnavailable as exc:
                log.warning("sweeper: store %r unavailable, its uploads wait for a later sweep: %s", upload.store, exc)
                down.add(upload.store)
                continue
            except Error:  # the store is no longer configured: nothing left to abort
                await engine.db.drop_upload(upload.id)
            aborted += 1
    return aborted
