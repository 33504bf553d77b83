"""The one small interface every store shares.

A presigned URL carries its own authority: whoever holds it may do exactly one thing (PUT or
GET one key) until it expires, and only with the headers that were signed into it. `Presigned`
names those headers so the caller can tell the client which to send.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import msgspec


class ObjectInfo(msgspec.Struct, frozen=True):
    size: int
    content_type: str
    etag: str
    modified: float  # epoch seconds


class Presigned(msgspec.Struct, frozen=True):
    url: str
    headers: dict[str, str]  # exactly the headers the request must carry (signed in)
    expires: float  # epoch seconds


LEASE_HEADER = "x-amz-meta-flowengine-lease"  # metadata to S3; to the embedded store, whose lease the PUT is


class PutConditions(msgspec.Struct, frozen=True):
    """What a presigned PUT pins down; each set field becomes a signed header."""

    size: int | None = None  # Content-Length
    content_type: str | None = None  # Content-Type
    no_overwrite: bool = False  # If-None-Match: *
    lease: str | None = None  # x-amz-meta-flowengine-lease: a step attempt's output, taken while its lease runs

    def headers(self) -> dict[str, str]:
        signed: dict[str, str] = {}
        if self.size is not None:
            signed["Content-Length"] = str(self.size)
        if self.content_type is not None:
            signed["Content-Type"] = self.content_type
        if self.no_overwrite:
            signed["If-None-Match"] = "*"
        if self.lease is not None:
            signed[LEASE_HEADER] = self.lease
        return signed


class KeyPage(msgspec.Struct, frozen=True):
    """One listing request's answer."""

    keys: list[str]  # in the server's order, which is byte order on S3 and MinIO, directory by directory elsewhere
    truncated: bool  # more keys follow the last one


class Part(msgspec.Struct, frozen=True):
    """One part of a multipart upload, as the store holds it."""

    number: int  # 1..10,000
    etag: str  # unquoted
    size: int


def multipart_etag(part_md5s: list[bytes]) -> str:
    """S3's ETag of an object assembled from parts: the MD5 of the parts' MD5s, then '-' and their number."""
    return f"{hashlib.md5(b''.join(part_md5s), usedforsecurity=False).hexdigest()}-{len(part_md5s)}"


class PartRefused(Exception):
    """Completing a multipart upload, the store found a named part's ETag not among its parts' (S3's
    InvalidPart): the part was sent again since it was listed."""


class StoreUnavailable(Exception):
    """The store did not answer (down, unreachable, credentials refused)."""


class Store(Protocol):
    name: str
    kind: str  # "local" | "s3"
    location: str  # what landing events name: "local:<store>" or "s3:<bucket>"

    def full_key(self, key: str) -> str:
        """The key as the location knows it (an S3 store's prefix in front)."""
        ...

    def presign_put(self, key: str, expires: float, conditions: PutConditions, base_url: str) -> Presigned: ...

    def presign_get(self, key: str, expires: float, base_url: str) -> Presigned: ...

    async def stat(self, key: str) -> ObjectInfo | None: ...

    async def list_keys(self, prefix: str, start_after: str = "", limit: int = 1000) -> KeyPage:
        """One request's worth of keys (at most `limit`) that start with `prefix` and come after
        `start_after`, in the server's order."""
        ...

    def read(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks, streamed; FileNotFoundError if it does not exist."""
        ...

    async def download(self, key: str, dest: Path) -> ObjectInfo:
        """Copy the object to a local file (streamed; never a link to the stored object, which must stay as stored)."""
        ...

    async def upload(self, key: str, src: Path, content_type: str) -> ObjectInfo:
        """Store a local file under `key` (streamed, atomic: readers never see half an object)."""
        ...

    async def delete(self, key: str) -> None: ...

    # Multipart uploads: an object sent in parts, each to a presigned URL, assembled when complete.
    async def create_multipart(self, key: str, content_type: str) -> str:
        """Start an upload to `key`; its ID as the store knows it."""
        ...

    def presign_part(
        self, key: str, upload_id: str, number: int, expires: float, conditions: PutConditions, base_url: str
    ) -> Presigned: ...

    async def list_parts(self, key: str, upload_id: str) -> list[Part] | None:
        """The parts received so far, by number; None if the store knows no such upload."""
        ...

    async def complete_multipart(self, key: str, upload_id: str, parts: list[Part]) -> ObjectInfo:
        """Assemble `parts` (each as `list_parts` gave it) into the object; streamed, never whole in memory.
        A part no longer there under its ETag: FileNotFoundError (the embedded store), PartRefused (S3,
        whose service checks every ETag)."""
        ...

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop the upload and its parts; an unknown upload is not an error."""
        ...

    async def check(self) -> None:
        """Raise StoreUnavailable when the store cannot be used right now (for /readyz)."""
        ...
