"""S3Store and presigned URLs against a real S3 server (SeaweedFS on loopback), with a plain HTTP client."""

import hashlib
import http.server
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import s3server
from minio import Minio

from flowengine.stores.base import KeyPage, Part, PartRefused, PutConditions, StoreUnavailable
from flowengine.stores.s3 import S3Store

pytestmark = pytest.mark.anyio
BODY = b"hello"
PNG = PutConditions(size=len(BODY), content_type="image/png", no_overwrite=True)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> Any:
    async with httpx.AsyncClient(timeout=10) as http_client:
        yield http_client


def store_on(s3: dict[str, Any], **overrides: Any) -> S3Store:
    args: dict[str, Any] = {
        "name": "s3",
        "endpoint": s3["endpoint"],
        "bucket": s3["bucket"],
        "prefix": f"t-{uuid.uuid4().hex[:12]}",
        "secure": False,
        "access_key": s3["access_key"],
        "secret_key": s3["secret_key"],
    }
    args.update(overrides)
    return S3Store(**args)


def minio_client(s3: dict[str, Any]) -> Minio:
    return Minio(s3["endpoint"], s3["access_key"], s3["secret_key"], secure=False, region="us-east-1")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for offset in range(0, size, 1 << 20):
            block = os.urandom(min(1 << 20, size - offset))
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while block := src.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# -- presigned PUT: every signed header is enforced by the server -------------------------------------


async def test_presigned_put_with_signed_headers_is_accepted(s3_store: S3Store, client: httpx.AsyncClient) -> None:
    signed = s3_store.presign_put("in/photo.png", time.time() + 300, PNG, "http://unused")
    assert signed.headers == {"Content-Length": "5", "Content-Type": "image/png", "If-None-Match": "*"}
    resp = await client.put(signed.url, content=BODY, headers=signed.headers)
    assert resp.status_code == 200, resp.text
    info = await s3_store.stat("in/photo.png")
    assert info is not None
    assert (info.size, info.content_type) == (5, "image/png")
    assert info.etag == hashlib.md5(BODY).hexdigest()  # single PUT: the MD5, without quotes
    assert abs(info.modified - time.time()) < 60


@pytest.mark.parametrize("missing", ["If-None-Match", "Content-Type"])
async def test_presigned_put_without_a_signed_header_is_refused(
    s3_store: S3Store, client: httpx.AsyncClient, missing: str
) -> None:
    signed = s3_store.presign_put("in/photo.png", time.time() + 300, PNG, "http://unused")
    headers = {k: v for k, v in signed.headers.items() if k != missing}
    resp = await client.put(signed.url, content=BODY, headers=headers)
    assert resp.status_code == 403, resp.text
    assert "SignatureDoesNotMatch" in resp.text
    assert await s3_store.stat("in/photo.png") is None


async def test_presigned_put_with_another_length_is_refused(s3_store: S3Store, client: httpx.AsyncClient) -> None:
    signed = s3_store.presign_put("in/photo.png", time.time() + 300, PNG, "http://unused")
    headers = {k: v for k, v in signed.headers.items() if k != "Content-Length"}  # httpx sends the true one
    resp = await client.put(signed.url, content=BODY + b"!", headers=headers)
    assert resp.status_code == 403, resp.text
    assert await s3_store.stat("in/photo.png") is None


async def test_presigned_put_does_not_overwrite(s3_store: S3Store, client: httpx.AsyncClient) -> None:
    signed = s3_store.presign_put("in/photo.png", time.time() + 300, PNG, "http://unused")
    assert (await client.put(signed.url, content=BODY, headers=signed.headers)).status_code == 200
    again = await client.put(signed.url, content=b"HELLO", headers=signed.headers)
    assert again.status_code == 412, again.text
    got = await client.get(s3_store.presign_get("in/photo.png", time.time() + 60, "http://unused").url)
    assert got.content == BODY


async def test_expired_presigned_put_is_refused(s3: dict[str, Any], client: httpx.AsyncClient) -> None:
    an_hour_ago = store_on(s3, clock=lambda: time.time() - 3600)
    signed = an_hour_ago.presign_put("in/photo.png", time.time() - 3600 + 60, PNG, "http://unused")
    assert signed.expires < time.time()
    resp = await client.put(signed.url, content=BODY, headers=signed.headers)
    assert resp.status_code == 403, resp.text
    assert "expired" in resp.text


async def test_tampered_presigned_put_is_refused(s3_store: S3Store, client: httpx.AsyncClient) -> None:
    signed = s3_store.presign_put("in/photo.png", time.time() + 300, PNG, "http://unused")
    last = signed.url[-1]
    tampered = signed.url[:-1] + ("0" if last != "0" else "1")
    resp = await client.put(tampered, content=BODY, headers=signed.headers)
    assert resp.status_code == 403, resp.text
    longer = signed.url.replace("X-Amz-Expires=300", "X-Amz-Expires=3000")
    assert longer != signed.url
    assert (await client.put(longer, content=BODY, headers=signed.headers)).status_code == 403
    assert (await client.get(signed.url)).status_code == 403  # the method is signed too


async def test_presigned_get_returns_the_bytes(s3_store: S3Store, client: httpx.AsyncClient) -> None:
    key = "odd names/ü+~ & = %20.txt"  # every segment percent-encoded, '/' kept
    put = s3_store.presign_put(key, time.time() + 60, PutConditions(size=len(BODY)), "http://unused")
    assert (await client.put(put.url, content=BODY, headers=put.headers)).status_code == 200
    get = s3_store.presign_get(key, time.time() + 60, "http://unused")
    assert get.headers == {}
    resp = await client.get(get.url)
    assert (resp.status_code, resp.content) == (200, BODY)
    assert key in await s3_store.list("odd names/")


def test_presign_expiry_is_exact_and_bounded(s3: dict[str, Any]) -> None:
    store = store_on(s3, clock=lambda: 1_700_000_000.7)
    signed = store.presign_get("a.txt", 1_700_000_900.5, "http://unused")
    # Signed at the whole second 1_700_000_000 for 900 s: never later than asked.
    assert signed.expires == 1_700_000_900.0
    assert "X-Amz-Expires=900&" in signed.url
    assert f"/{s3['bucket']}/{store.prefix}/a.txt?" in signed.url
    with pytest.raises(ValueError):
        store.presign_get("a.txt", 1_700_000_000.0, "http://unused")
    with pytest.raises(ValueError):
        store.presign_get("a.txt", 1_700_000_000 + 7 * 86400 + 1, "http://unused")


# -- object operations -----------------------------------------------------------------------------


async def test_stat_of_a_missing_object_is_none(s3_store: S3Store) -> None:
    assert await s3_store.stat("no/such/object") is None


async def test_bad_keys_are_refused(s3_store: S3Store, tmp_path: Path) -> None:
    for key in ("", "../escape", "/abs", "a//b", "a/./b", "back\\slash", "x" * 1025):
        with pytest.raises(ValueError):
            await s3_store.stat(key)
        with pytest.raises(ValueError):
            s3_store.presign_put(key, time.time() + 60, PNG, "http://unused")
    with pytest.raises(ValueError):
        await s3_store.list("../")


async def test_list_by_prefix(s3_store: S3Store, tmp_path: Path) -> None:
    src = tmp_path / "small.txt"
    src.write_bytes(BODY)
    for key in ("a/1.txt", "a/sub/2.txt", "ab/3.txt", "b/4.txt"):
        await s3_store.upload(key, src, "text/plain")
    assert set(await s3_store.list("a/")) == {"a/1.txt", "a/sub/2.txt"}
    assert set(await s3_store.list("a")) == {"a/1.txt", "a/sub/2.txt", "ab/3.txt"}  # a string prefix
    everything = await s3_store.list("")
    assert set(everything) == {"a/1.txt", "a/sub/2.txt", "ab/3.txt", "b/4.txt"}
    assert everything["b/4.txt"].size == 5
    assert everything["b/4.txt"].etag == hashlib.md5(BODY).hexdigest()
    assert await s3_store.list("c/") == {}


async def test_list_keys_is_one_page_after_a_key_in_the_servers_order(s3_store: S3Store, tmp_path: Path) -> None:
    src = tmp_path / "small.txt"
    src.write_bytes(BODY)
    odd = "a/x & <y> 'ü' \"z\".txt"  # XML-escaped in the listing
    keys = ["a/1.txt", "a/2.txt", "a/3.txt", "a/sub/4.txt", odd, "b/5.txt"]
    for key in keys:
        await s3_store.upload(key, src, "text/plain")
    page = await s3_store.list_keys("a/", limit=2)
    assert page.keys == ["a/1.txt", "a/2.txt"] and page.truncated  # without the store's prefix
    rest = await s3_store.list_keys("a/", start_after="a/2.txt")
    assert set(rest.keys) == {"a/3.txt", "a/sub/4.txt", odd} and not rest.truncated
    assert (await s3_store.list_keys("a/3")).keys == ["a/3.txt"]  # a string prefix
    assert (await s3_store.list_keys("", start_after="a/x")).keys[-1] == "b/5.txt"
    assert await s3_store.list_keys("c/") == KeyPage([], False)
    with pytest.raises(ValueError):
        await s3_store.list_keys("../")


async def test_upload_download_and_read_a_multi_mib_file(s3_store: S3Store, tmp_path: Path) -> None:
    size = 12 * 1024 * 1024 + 7  # above minio's 5 MiB part size: a multipart upload
    src = tmp_path / "big.bin"
    digest = write_random_file(src, size)

    up = await s3_store.upload("out/big.bin", src, "application/x-test")
    assert (up.size, up.content_type) == (size, "application/x-test")
    assert '"' not in up.etag

    dest = tmp_path / "copy" / "big.bin"
    down = await s3_store.download("out/big.bin", dest)
    assert file_sha256(dest) == digest
    assert (down.size, down.content_type, down.etag) == (size, "application/x-test", up.etag)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["big.bin"]  # no temporary left behind

    streamed, chunks = hashlib.sha256(), 0
    async for chunk in s3_store.read("out/big.bin"):
        streamed.update(chunk)
        chunks += 1
    assert streamed.hexdigest() == digest
    assert chunks > 1


async def test_empty_file_round_trip(s3_store: S3Store, tmp_path: Path) -> None:
    src = tmp_path / "empty"
    src.touch()
    assert (await s3_store.upload("empty", src, "text/plain")).size == 0
    assert (await s3_store.download("empty", tmp_path / "back")).size == 0
    assert (tmp_path / "back").read_bytes() == b""


async def test_download_and_read_of_a_missing_object(s3_store: S3Store, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await s3_store.download("missing", tmp_path / "dest")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        async for _ in s3_store.read("missing"):
            pass


async def test_delete(s3_store: S3Store, tmp_path: Path) -> None:
    src = tmp_path / "small.txt"
    src.write_bytes(BODY)
    await s3_store.upload("gone.txt", src, "text/plain")
    await s3_store.delete("gone.txt")
    assert await s3_store.stat("gone.txt") is None
    await s3_store.delete("gone.txt")  # deleting twice is fine


# -- availability ----------------------------------------------------------------------------------


async def test_check_passes_on_a_live_store(s3_store: S3Store) -> None:
    await s3_store.check()


async def test_dead_endpoint_is_unavailable_quickly(s3: dict[str, Any]) -> None:
    dead = store_on(s3, endpoint=f"127.0.0.1:{closed_port()}", connect_timeout=0.5, retries=1)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await dead.check()
    with pytest.raises(StoreUnavailable):
        await dead.stat("a.txt")
    with pytest.raises(StoreUnavailable):
        await dead.list("")
    with pytest.raises(StoreUnavailable):
        await dead.list_keys("")
    assert time.monotonic() - started < 5


async def test_hung_endpoint_is_unavailable_quickly(s3: dict[str, Any]) -> None:
    # A socket that listens but never answers: the kernel accepts the connection, then silence.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        endpoint = f"127.0.0.1:{hung.getsockname()[1]}"
        store = store_on(s3, endpoint=endpoint, connect_timeout=0.3, read_timeout=0.3, retries=1)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.check()
        assert time.monotonic() - started < 3


async def test_refused_credentials_are_unavailable(s3: dict[str, Any]) -> None:
    wrong = store_on(s3, secret_key="not-the-secret", retries=0)
    with pytest.raises(StoreUnavailable):
        await wrong.check()
    with pytest.raises(StoreUnavailable):
        await wrong.stat("a.txt")


async def test_missing_bucket_fails_check_until_ensured(s3: dict[str, Any]) -> None:
    store = store_on(s3, bucket=f"tmp-{uuid.uuid4().hex[:12]}")
    with pytest.raises(StoreUnavailable):
        await store.check()
    await store.ensure_bucket()
    await store.ensure_bucket()  # already there: nothing to do
    await store.check()


async def test_set_lifecycle_answers_without_raising(s3: dict[str, Any]) -> None:
    # A bucket of its own: a lifecycle configuration belongs to the whole bucket.
    store = store_on(s3, bucket=f"lc-{uuid.uuid4().hex[:12]}")
    await store.ensure_bucket()
    installed = await store.set_lifecycle([("inputs/", 1), ("outputs/", 7)])
    assert installed in (True, False)
    if not installed:
        return
    config = minio_client(s3).get_bucket_lifecycle(store.bucket)
    assert config is not None
    by_prefix = {r.rule_filter.prefix: r for r in config.rules if r.rule_filter}
    assert by_prefix[f"{store.prefix}/inputs/"].expiration.days == 1
    assert by_prefix[f"{store.prefix}/outputs/"].expiration.days == 7
    assert by_prefix[f"{store.prefix}/"].abort_incomplete_multipart_upload.days_after_initiation == 1

    # Installing again replaces this store's rules and keeps another store's.
    neighbour = store_on(s3, bucket=store.bucket)
    assert await neighbour.set_lifecycle([("tmp/", 2)])
    assert await store.set_lifecycle([("inputs/", 3)])
    config = minio_client(s3).get_bucket_lifecycle(store.bucket)
    assert config is not None
    prefixes = {r.rule_filter.prefix: r for r in config.rules if r.rule_filter}
    assert set(prefixes) == {
        f"{store.prefix}/inputs/",
        f"{store.prefix}/",
        f"{neighbour.prefix}/tmp/",
        f"{neighbour.prefix}/",
    }
    assert prefixes[f"{store.prefix}/inputs/"].expiration.days == 3


# -- the test server's filer webhook -----------------------------------------------------------------


class _Events(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str | None, dict[str, Any]]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.headers.get("Authorization"), json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def event_sink() -> Iterator[tuple[str, list[tuple[str | None, dict[str, Any]]]]]:
    received: list[tuple[str | None, dict[str, Any]]] = []
    handler = type("Events", (_Events,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/events", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_server_helper_wires_the_filer_webhook(
    event_sink: tuple[str, list[tuple[str | None, dict[str, Any]]]], tmp_path: Path
) -> None:
    url, received = event_sink
    with s3server.serve(bucket="hooked", webhook_url=url, webhook_token="tok-123") as info:
        store = store_on(info, prefix="")
        src = tmp_path / "small.txt"
        src.write_bytes(BODY)
        await store.upload("x/y.txt", src, "text/plain")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            created = [e for _, e in received if e.get("key") == "/buckets/hooked/x/y.txt"]
            if created:
                break
            await anyio.sleep(0.05)
    assert created, f"no event for the upload among {len(received)}"
    assert created[0]["event_type"] == "create"
    assert created[0]["message"]["new_entry"]["attributes"]["file_size"] == len(BODY)
    assert {auth for auth, _ in received} == {"Bearer tok-123"}


async def test_completing_with_an_etag_the_store_does_not_hold_is_part_refused(s3: dict[str, Any], client) -> None:
    store = store_on(s3)
    upload = await store.create_multipart("big", "application/octet-stream")
    signed = store.presign_part("big", upload, 1, time.time() + 60, PutConditions(size=len(BODY)), "")
    assert (await client.put(signed.url, content=BODY, headers=signed.headers)).status_code == 200
    (part,) = await store.list_parts("big", upload) or []
    with pytest.raises(PartRefused):  # S3's InvalidPart: the service checks every ETag named
        await store.complete_multipart("big", upload, [Part(1, "0" * 32, len(BODY))])
    assert (await store.complete_multipart("big", upload, [part])).size == len(BODY)
