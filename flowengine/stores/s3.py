"""A store on any S3-compatible server (AWS S3, MinIO, SeaweedFS, ...).

Object operations go through the `minio` client, which is synchronous: each call runs in a worker
thread. Presigned URLs come from `flowengine.stores.sigv4`, because they must sign more than `host`.
"""

from __future__ import annotations

import functools
import hashlib
import html
import math
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.datatypes import Object
from minio.datatypes import Part as MinioPart
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, Expiration, LifecycleConfig, Rule
from urllib3 import BaseHTTPResponse, HTTPHeaderDict

from flowengine.core.keys import key_problem
from flowengine.stores import sigv4
from flowengine.stores.base import KeyPage, ObjectInfo, Part, PartRefused, Presigned, PutConditions, StoreUnavailable

T = TypeVar("T")

CHUNK = 256 * 1024
# Codes meaning "this store cannot be used right now", as opposed to "this object is not there".
# (5xx answers count too, see _is_outage.)
_UNAVAILABLE_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "NoSuchBucket",
        "RequestTimeTooSkewed",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject"})
# A ListObjectsV2 answer, read for its keys only. Keys are XML-escaped (no encoding-type asked for);
# only <Contents> elements have a <Key>.
_LISTED_KEY = re.compile(r"<Key>([^<]*)</Key>")
_TRUNCATED = re.compile(r"<IsTruncated>\s*true\s*</IsTruncated>", re.IGNORECASE)


class S3Store:
    kind = "s3"

    def __init__(
        self,
        name: str,
        endpoint: str,
        bucket: str,
        *,
        region: str = "us-east-1",
        prefix: str = "",
        secure: bool = True,
        access_key: str,
        secret_key: str,
        clock: Callable[[], float] = time.time,
        public_url: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        retries: int = 3,
        create_bucket: bool = False,
    ) -> None:
        """`endpoint` is host:port. `public_url` (scheme://host[:port]) is where clients reach the
        server, if not at the endpoint; the host is signed into presigned URLs, so it must be the
        host the client will send."""
        prefix = prefix.strip("/")
        if prefix and (problem := key_problem(prefix)):
            raise ValueError(f"store {name!r}: prefix {prefix!r} {problem}")
        self.name = name
        self.bucket = bucket
        self.location = f"s3:{bucket}"  # how bucket notifications name it
        self.create_bucket = create_bucket  # the engine creates the bucket on first use
        self.region = region
        self.prefix = prefix
        self._clock = clock
        self._access_key = access_key
        self._secret_key = secret_key
        self._url_base = public_url or f"{'https' if secure else 'http'}://{endpoint}"
        # minio's default pool waits 5 minutes and retries 5 times: far too long to notice that the
        # store is down (readiness checks, request handlers). Retries cover 5xx and dropped connections.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=urllib3.Retry(total=retries, backoff_factor=0.1, status_forcelist=(500, 502, 503, 504)),
            maxsize=16,
        )
        # A known region spares minio a GetBucketLocation round trip before the first request.
        self._client = Minio(endpoint, access_key, secret_key, secure=secure, region=region, http_client=http)

    # -- presigning (pure, no network) ------------------------------------------------------------

    def presign_put(self, key: str, expires: float, conditions: PutConditions, base_url: str) -> Presigned:
        """A PUT URL that S3 accepts only with exactly `conditions.headers()`.

        `base_url` is for stores the engine serves itself; S3 URLs point at the S3 server.
        """
        headers = conditions.headers()
        return self._presign("PUT", key, expires, headers)

    def presign_get(self, key: str, expires: float, base_url: str) -> Presigned:
        return self._presign("GET", key, expires, {})

    def presign_part(
        self, key: str, upload_id: str, number: int, expires: float, conditions: PutConditions, base_url: str
    ) -> Presigned:
        """An UploadPart URL: S3's own multipart upload, the part's bytes never pass through the engine."""
        query = {"partNumber": str(number), "uploadId": upload_id}
        return self._presign("PUT", key, expires, conditions.headers(), query)

    def _presign(
        self, method: str, key: str, expires: float, headers: dict[str, str], query: dict[str, str] | None = None
    ) -> Presigned:
        # X-Amz-Date has whole seconds: count from the truncated time so the URL never outlives `expires`.
        signed_at = math.floor(self._clock())
        expires_in = math.floor(expires - signed_at)
        if expires_in < 1:
            raise ValueError(f"expires {expires} is not in the future")
        if expires_in > sigv4.MAX_EXPIRES:
            raise ValueError(f"S3 presigned URLs live at most {sigv4.MAX_EXPIRES} s, asked for {expires_in} s")
        url = sigv4.presign(
            method,
            self._url_base,
            self.bucket,
            self._full(key),
            self.region,
            self._access_key,
            self._secret_key,
            expires_in,
            signed_at,
            headers,
            query=query,
        )
        return Presigned(url=url, headers=dict(headers), expires=float(signed_at + expires_in))

    # -- objects ------------------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo | None:
        full = self._full(key)
        try:
            obj = await self._run(self._client.stat_object, self.bucket, full)
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                return None
            raise
        return _info(obj)

    async def list(self, prefix: str) -> dict[str, ObjectInfo]:
        """Every object under `prefix` (a plain string prefix of keys), keyed without the store prefix.

        ListObjects carries no Content-Type, so `content_type` is "" here; `stat` has it.
        """
        # Any prefix of a valid key is acceptable; appending one character lets key_problem judge it.
        if prefix and (problem := key_problem(prefix + "x")):
            raise ValueError(f"prefix {prefix!r} {problem}")
        full = self._full_prefix(prefix)
        cut = len(self.prefix) + 1 if self.prefix else 0

        def collect() -> dict[str, ObjectInfo]:
            found: dict[str, ObjectInfo] = {}
            for obj in self._client.list_objects(self.bucket, prefix=full, recursive=True):
                name = obj.object_name or ""
                if obj.is_dir or name.endswith("/"):  # directory markers some servers report
                    continue
                found[name[cut:]] = _info(obj)
            return found

        return await self._run(collect)

    async def list_keys(self, prefix: str, start_after: str = "", limit: int = 1000) -> KeyPage:
        """One ListObjectsV2 request (S3 answers at most 1,000 keys), keys only, without the store prefix.

        Not minio's list_objects: it reads on into the next page by itself, and it parses every
        object's metadata (about 60 ms a page of 1,000, against half a millisecond for the keys alone)."""
        if prefix and (problem := key_problem(prefix + "x")):
            raise ValueError(f"prefix {prefix!r} {problem}")
        query = {"list-type": "2", "delimiter": "", "max-keys": str(limit), "prefix": self._full_prefix(prefix)}
        if start_after:
            query["start-after"] = self._full_prefix(start_after)
        response = await self._run(self._client._execute, "GET", self.bucket, query_params=query)
        body = response.data.decode()
        cut = len(self.prefix) + 1 if self.prefix else 0
        keys = [(html.unescape(k) if "&" in k else k)[cut:] for k in _LISTED_KEY.findall(body)]
        return KeyPage(keys, bool(_TRUNCATED.search(body)))

    async def read(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks; FileNotFoundError if it does not exist."""
        response = await self._open(key)
        try:
            chunks = response.stream(CHUNK)
            while chunk := await self._run(next, chunks, b""):
                yield chunk
        finally:
            response.close()
            response.release_conn()

    async def download(self, key: str, dest: Path) -> ObjectInfo:
        """Stream the object into `dest`, through a temporary file beside it that replaces `dest` at the end.

        Not minio's fget_object: that stats and then GETs (the two can describe different versions),
        deletes `dest` before renaming, and leaves its temporary file behind when the transfer fails.
        """
        response = await self._open(key)
        try:
            info = _info_from_headers(response.headers)
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as out:
                    chunks = response.stream(CHUNK)

                    def pump() -> bool:
                        chunk = next(chunks, b"")
                        out.write(chunk)
                        return bool(chunk)

                    # One chunk per thread hop, so that cancelling the task stops the transfer.
                    while await self._run(pump):
                        pass
                tmp.replace(dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        finally:
            response.close()
            response.release_conn()
        return info

    async def upload(self, key: str, src: Path, content_type: str) -> ObjectInfo:
        """Stream `src` up (multipart above 5 MiB: memory stays at a few parts, whatever the size).

        A PUT or a completed multipart upload appears at once, so readers never see half an object.
        """
        full = self._full(key)
        await self._run(self._client.fput_object, self.bucket, full, str(src), content_type=content_type)
        info = await self.stat(key)
        if info is None:  # deleted by someone else in between
            raise FileNotFoundError(f"{self.name}: {key} vanished right after upload")
        return info

    async def delete(self, key: str) -> None:
        """Remove the object; deleting a missing object is not an error (S3 semantics)."""
        await self._run(self._client.remove_object, self.bucket, self._full(key))

    # -- multipart uploads -------------------------------------------------------------------------

    async def create_multipart(self, key: str, content_type: str) -> str:
        return await self._run(self._client._create_multipart_upload, self.bucket, self._full(key),
                               {"Content-Type": content_type})  # fmt: skip

    async def list_parts(self, key: str, upload_id: str) -> list[Part] | None:
        full = self._full(key)

        def collect() -> list[Part]:
            parts: list[Part] = []
            marker: str | None = None
            while True:
                page = self._client._list_parts(self.bucket, full, upload_id, 1000, marker)
                parts += [Part(p.part_number, (p.etag or "").strip('"'), p.size or 0) for p in page.parts]
                if not page.is_truncated:
                    return parts
                marker = str(page.next_part_number_marker)

        try:
            return await self._run(collect)
        except S3Error as exc:
            if exc.code == "NoSuchUpload":
                return None
            raise

    async def complete_multipart(self, key: str, upload_id: str, parts: list[Part]) -> ObjectInfo:
        full = self._full(key)
        listed = [MinioPart(p.number, p.etag) for p in parts]
        try:
            await self._run(self._client._complete_multipart_upload, self.bucket, full, upload_id, listed)
        except S3Error as exc:
            if exc.code == "InvalidPart":
                raise PartRefused(f"{self.name}: {exc.message}") from None
            raise
        info = await self.stat(key)
        if info is None:  # deleted by someone else in between
            raise FileNotFoundError(f"{self.name}: {key} vanished right after its multipart upload completed")
        return info

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            await self._run(self._client._abort_multipart_upload, self.bucket, self._full(key), upload_id)
        except S3Error as exc:
            if exc.code != "NoSuchUpload":
                raise

    # -- the bucket ---------------------------------------------------------------------------------

    async def check(self) -> None:
        if not await self._run(self._client.bucket_exists, self.bucket):
            raise StoreUnavailable(f"store {self.name!r}: bucket {self.bucket!r} does not exist")

    async def ensure_bucket(self) -> None:
        def create() -> None:
            if self._client.bucket_exists(self.bucket):
                return
            try:
                self._client.make_bucket(self.bucket, location=self.region)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        await self._run(create)

    async def set_lifecycle(self, rules: list[tuple[str, int]]) -> bool:
        """Expire objects under each (prefix, days) and abort multipart uploads left open for a day.

        The bucket has one lifecycle configuration, possibly shared with other stores or tools: rules
        this store installed earlier (recognised by their ID) are replaced, all others kept. Returns
        False when the server refuses lifecycle configuration.
        """
        for prefix, days in rules:
            if prefix and (problem := key_problem(prefix + "x")):
                raise ValueError(f"lifecycle prefix {prefix!r} {problem}")
            if days < 1:
                raise ValueError(f"lifecycle days must be at least 1, got {days}")
        # IDs are at most 255 characters, prefixes up to 1024 bytes: identify ours by a digest.
        tag = "flowengine-" + hashlib.sha256(self.prefix.encode()).hexdigest()[:16]
        ours = [
            Rule(
                ENABLED,
                rule_filter=Filter(prefix=self._full_prefix(prefix)),
                rule_id=f"{tag}-expire-{i}",
                expiration=Expiration(days=days),
            )
            for i, (prefix, days) in enumerate(rules)
        ]
        ours.append(
            Rule(
                ENABLED,
                rule_filter=Filter(prefix=self._full_prefix("")),
                rule_id=f"{tag}-abort-multipart",
                abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(days_after_initiation=1),
            )
        )

        def install() -> None:
            current = self._client.get_bucket_lifecycle(self.bucket)
            others = [r for r in (current.rules if current else []) if not (r.rule_id or "").startswith(tag)]
            self._client.set_bucket_lifecycle(self.bucket, LifecycleConfig(others + ours))

        try:
            await self._run(install)
        except S3Error:  # NotImplemented, MalformedXML, ...: refused, while the store itself works
            return False
        return True

    # -- helpers ------------------------------------------------------------------------------------

    async def _open(self, key: str) -> BaseHTTPResponse:
        """A streaming GET response; the caller must close it."""
        full = self._full(key)
        try:
            return await self._run(self._client.get_object, self.bucket, full)
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                raise FileNotFoundError(f"{self.name}: {key}") from exc
            raise

    def full_key(self, key: str) -> str:
        """The object's key in the bucket, as notifications report it."""
        return self._full(key)

    def _full(self, key: str) -> str:
        if problem := key_problem(key):
            raise ValueError(f"key {key!r} {problem}")
        full = f"{self.prefix}/{key}" if self.prefix else key
        if problem := key_problem(full):  # the store prefix may push it over the length limit
            raise ValueError(f"key {full!r} {problem}")
        return full

    def _full_prefix(self, prefix: str) -> str:
        return f"{self.prefix}/{prefix}" if self.prefix else prefix

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking minio call in a worker thread; an unusable store becomes StoreUnavailable."""
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
        except S3Error as exc:
            if exc.code in _UNAVAILABLE_CODES or _is_outage(exc.response.status):
                raise StoreUnavailable(f"store {self.name!r}: {exc.code}: {exc.message}") from exc
            raise
        except (ServerError, InvalidResponseError) as exc:
            # ServerError: a 5xx without an S3 error body. InvalidResponseError: something that is not
            # S3 answered (a proxy's HTML page, a wrong port).
            raise StoreUnavailable(f"store {self.name!r}: {exc}") from exc
        except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
            raise StoreUnavailable(f"store {self.name!r} unreachable: {exc}") from exc


def _is_outage(status: int) -> bool:
    # 501 Not Implemented refuses this one kind of request; the store itself works.
    return 500 <= status <= 599 and status != 501


def _info_from_headers(headers: HTTPHeaderDict) -> ObjectInfo:
    modified = headers.get("last-modified")
    return ObjectInfo(
        size=int(headers.get("content-length", 0)),
        content_type=headers.get("content-type", ""),
        etag=headers.get("etag", "").strip('"'),
        modified=parsedate_to_datetime(modified).timestamp() if modified else 0.0,
    )


def _info(obj: Object) -> ObjectInfo:
    return ObjectInfo(
        size=obj.size or 0,
        content_type=obj.content_type or "",
        etag=(obj.etag or "").strip('"'),
        modified=obj.last_modified.timestamp() if obj.last_modified else 0.0,
    )
