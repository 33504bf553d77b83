"""Receiving an object into a run's well through the engine: embedded-store PUTs, webhooks, direct uploads.

One path for all three: the body streams to a temp file (never into memory) under the size
limit, is checked against the well before it is stored, and only then advances the run. An
object the well cannot take is refused with a 4xx and the run keeps waiting for a good one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from flowengine.core import machine
from flowengine.core.machine import ObjectMeta, Run
from flowengine.errors import Error, Kind, already_exists, bad_request, conflict, not_found
from flowengine.runtime.engine import Engine
from flowengine.stores.base import ObjectInfo
from flowengine.stores.local import LocalStore

DEFAULT_TYPE = "application/octet-stream"


class Upload(msgspec.Struct, frozen=True):
    """What the client sent besides the body."""

    content_type: str
    length: int | None  # the Content-Length header, if any
    declared_length: int | None = None  # a signed Content-Length the body must match
    no_overwrite: bool = False


def too_large(limit: int) -> Error:
    return Error("too_large", "too_large", f"the body is over the size limit of {limit} bytes", "body")


async def spool(body: AsyncIterator[bytes], limit: int, directory: Path) -> tuple[Path, int, str]:
    """Stream a body to a temp file, refusing it past `limit` bytes; returns (path, size, md5)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix="in-")
    path, size, digest = Path(name), 0, hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
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


async def receive(engine: Engine, run_id: str, edge_name: str, body: AsyncIterator[bytes], upload: Upload) -> Run:
    run, flow = engine.get_run(run_id)
    edge = run.edges.get(edge_name)
    if edge is None:
        raise not_found("edge", edge_name, "path.edgeName")
    if run.status in machine.TERMINAL:
        raise conflict(f"run {run_id!r} is {run.status}: it takes no more uploads", "path.runID")
    if edge.source == machine.FROM_STEP:
        raise conflict(f"edge {edge_name!r} is filled by a step's output, not by an upload", "path.edgeName")
    if edge.object is not None:
        raise conflict(f"edge {edge_name!r} is already filled", "path.edgeName")
    limit = min(edge.max_size or engine.config.max_upload_size, engine.config.max_upload_size)
    if upload.length is not None and upload.length > limit:
        raise too_large(limit)
    store = engine.store_of(flow, edge)
    path, size, md5 = await spool(body, limit, engine.config.data_path / "tmp")
    try:
        if upload.declared_length is not None and size != upload.declared_length:
            raise bad_request("size_mismatch",
                           f"the body is {size} bytes, the signed Content-Length says {upload.declared_length}",
                           "header.Content-Length")  # fmt: skip
        meta = ObjectMeta(size, upload.content_type, md5)
        problem = machine.landing_problem(edge_name, edge, meta)
        if problem:
            raise _refusal(problem)
        info = ObjectInfo(size, upload.content_type, md5, engine.clock())
        if isinstance(store, LocalStore):
            if not store.commit(path, edge.key, info, overwrite=not upload.no_overwrite):
                raise already_exists(edge.key)
        else:
            info = await store.upload(edge.key, path, upload.content_type)
            meta = ObjectMeta(info.size, info.content_type, info.etag)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return engine.apply(run_id, machine.Landed(edge_name, meta))
