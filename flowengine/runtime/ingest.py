"""Receiving an object into a run's well through the engine: embedded-store PUTs, webhooks, direct uploads.

One path for all three: the body streams to a temp file (never into memory) under the size
limit, is checked against the well before it is stored, and only then advances the run. An
object the well cannot take is refused with a 4xx and the run keeps waiting for a good one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from flowengine.core import machine
from flowengine.core.machine import EdgeState, ObjectMeta, Run
from flowengine.core.spec import Flow
from flowengine.errors import (
    Error,
    Kind,
    already_exists,
    bad_request,
    conflict,
    disk_full_is_insufficient_storage,
    not_found,
)
from flowengine.runtime.engine import Engine
from flowengine.stores.base import ObjectInfo, Store
from flowengine.stores.local import LocalStore

DEFAULT_TYPE = "application/octet-stream"
log = logging.getLogger("flowengine.ingest")


class Upload(msgspec.Struct, frozen=True):
    """What the client sent besides the body."""

    content_type: str
    length: int | None  # the Content-Length header, if any
    declared_length: int | None = None  # a signed Content-Length the body must match
    no_overwrite: bool = False


class Stored(msgspec.Struct, frozen=True):
    """A spooled upload on its way into the store."""

    path: Path
    key: str
    meta: ObjectMeta
    no_overwrite: bool


def too_large(limit: int) -> Error:
    return Error("too_large", "too_large", f"the body is over the size limit of {limit} bytes", "body")


async def spool(body: AsyncIterator[bytes], limit: int, directory: Path) -> tuple[Path, int, str]:
    """Stream a body to a temp file, refusing it past `limit` bytes; returns (path, size, md5)."""
    path, size, digest = None, 0, hashlib.md5(usedforsecurity=False)
    with disk_full_is_insufficient_storage("the upload", "body"):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=directory, prefix="in-")
            path = Path(name)
            with os.fdopen(fd, "wb") as out:
                async for chunk in body:
                    size += len(chunk)
                    if size > limit:
                        raise too_large(limit)
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            if path is not None:
                path.unlink(missing_ok=True)
            raise
    return path, size, digest.hexdigest()


_REFUSALS: dict[str, tuple[Kind, str]] = {
    "size": ("bad_request", "size_mismatch"),
    "too_large": ("too_large", "too_large"),
    "type": ("unsupported_media_type", "unsupported_media_type"),
}


def _refusal(problem: machine.LandingProblem) -> Error:
    kind, code = _REFUSALS[problem.kind]
    return Error(kind, code, problem.message, "body")


# The wells an upload is being stored into right now, by (run ID, edge). Uploads to one well may
# arrive at once: each spools its body, and the first to finish claims the well, stores its object
# and fills the edge; the others get 409 and never touch the stored object. (Run IDs are unique, so
# one set serves every engine in the process.)
_storing: set[tuple[str, str]] = set()


async def _open_well(engine: Engine, run_id: str, edge_name: str) -> tuple[Run, Flow, EdgeState]:
    """The run, its flow and the edge, if the edge takes an upload now; else the 404 / 409 saying why not."""
    run, flow = await engine.get_run(run_id)
    edge = run.edges.get(edge_name)
    if edge is None:
        raise not_found("edge", edge_name, "path.edgeName")
    if run.status in machine.TERMINAL:
        raise conflict(f"run {run_id!r} is {run.status}: it takes no more uploads", "path.runID")
    if edge.source == machine.FROM_STEP:
        raise conflict(f"edge {edge_name!r} is filled by a step's output, not by an upload", "path.edgeName")
    if edge.object is not None:
        raise conflict(f"edge {edge_name!r} is already filled", "path.edgeName")
    if (run_id, edge_name) in _storing:
        raise conflict(f"another upload to edge {edge_name!r} finished first and is being stored", "path.edgeName")
    return run, flow, edge


async def receive(engine: Engine, run_id: str, edge_name: str, body: AsyncIterator[bytes], upload: Upload) -> Run:
    _, flow, edge = await _open_well(engine, run_id, edge_name)
    limit = min(edge.max_size or engine.config.max_upload_size, engine.config.max_upload_size)
    if upload.length is not None and upload.length > limit:
        raise too_large(limit)
    store = engine.store_of(flow, edge)
    path, meta = await _spool_declared(engine, body, upload, limit)
    try:
        problem = machine.landing_problem(edge_name, edge, meta)
        if problem:
            raise _refusal(problem)
        await _open_well(engine, run_id, edge_name)  # again: another upload may have filled it while this one spooled
        _storing.add((run_id, edge_name))
        try:
            return await _store(engine, store, run_id, edge_name, Stored(path, edge.key, meta, upload.no_overwrite))
        finally:
            _storing.discard((run_id, edge_name))
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def receive_object(
    engine: Engine, store: LocalStore, key: str, body: AsyncIterator[bytes], upload: Upload
) -> ObjectInfo:
    """A presigned PUT of an object no run waits for (a file for the workflow/task API): the
    signature is its authority; stored whole or not at all, under the same limits as a well's."""
    limit = engine.config.max_upload_size
    if upload.length is not None and upload.length > limit:
        raise too_large(limit)
    path, meta = await _spool_declared(engine, body, upload, limit)
    try:
        info = ObjectInfo(meta.size, meta.content_type, meta.etag, engine.clock())
        if not store.commit(path, key, info, overwrite=not upload.no_overwrite):
            raise already_exists(key)
        return info
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def receive_part(
    engine: Engine, store: LocalStore, upload_id: str, number: int, body: AsyncIterator[bytes], upload: Upload
) -> str:
    """A part of a multipart upload to the embedded store, as long as its URL signed; its ETag (MD5)."""
    limit = upload.declared_length if upload.declared_length is not None else engine.config.multipart_part_size
    if upload.length is not None and upload.length > limit:
        raise too_large(limit)
    path, meta = await _spool_declared(engine, body, upload, limit)
    try:
        if not store.place_part(upload_id, number, path, meta.etag):
            raise not_found("multipart upload", upload_id, "query.uploadId")
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return meta.etag


async def _spool_declared(
    engine: Engine, body: AsyncIterator[bytes], upload: Upload, limit: int
) -> tuple[Path, ObjectMeta]:
    """The body spooled to a temp file (the caller removes it), refused unless it is as long as a
    signed Content-Length says."""
    path, size, md5 = await spool(body, limit, engine.config.data_path / "tmp")
    if upload.declared_length is not None and size != upload.declared_length:
        path.unlink(missing_ok=True)
        message = f"the body is {size} bytes, the signed Content-Length says {upload.declared_length}"
        raise bad_request("size_mismatch", message, "header.Content-Length")
    return path, ObjectMeta(size, upload.content_type, md5)


async def _store(engine: Engine, store: Store, run_id: str, edge_name: str, upload: Stored) -> Run:
    """Store a spooled upload and fill the edge with it. What the run records is what is stored: if
    the run does not take the object (the database is full, the run ended meanwhile), it is deleted."""
    meta = upload.meta
    if isinstance(store, LocalStore):
        info = ObjectInfo(meta.size, meta.content_type, meta.etag, engine.clock())
        if not store.commit(upload.path, upload.key, info, overwrite=not upload.no_overwrite):
            raise already_exists(upload.key)
    else:
        info = await store.upload(upload.key, upload.path, meta.content_type)
        meta = ObjectMeta(info.size, info.content_type, info.etag)
    try:
        run = await engine.apply(run_id, machine.Landed(edge_name, meta))
    except BaseException:
        await _discard(store, upload.key)
        raise
    if run.edges[edge_name].object != meta:
        await _discard(store, upload.key)
        raise conflict(f"run {run_id!r} is {run.status}: it did not take the upload", "path.runID")
    return run


async def _discard(store: Store, key: str) -> None:
    try:
        await store.delete(key)
    except Exception:  # the upload is refused either way: say which object is left over
        log.exception("could not delete %s/%s, which its run did not take", store.location, key)
