"""Sending files to a server's files store, as the multipart and model tests do: a user's session, files
made as they are sent, and what the store holds, read around the engine."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from live import Server, admin
from minio import Minio

MIB = 1024 * 1024
GIB = 1024 * MIB
PART = 5 * MIB  # the least part size: small files still come in several parts
MULTIPART = "/api/v1/uploads/multipart"


class Session:
    """A user's session token on a team of a server, and the calls the tests make with it."""

    def __init__(self, server: Server, team: str, email: str = "ann@example.com") -> None:
        self.team = admin(server, "teams", "create", team)
        admin(server, "users", "add", email, "--team", team)
        self.headers = {"Authorization": f"Bearer {admin(server, 'token', '--user', email)}", "X-Team-ID": self.team}
        self.client = httpx.Client(base_url=server.url, timeout=60, headers=self.headers)

    def presign(self, size: int, name: str = "big.bin", content_type: str = "application/octet-stream") -> str:
        body = {"file_name": name, "file_size": size, "content_type": content_type}
        answer = self.client.post("/api/v1/r/files/presign", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()["file_key"]

    def post(self, action: str, **body: Any) -> httpx.Response:
        return self.client.post(f"{MULTIPART}/{action}", json=body)

    def initiate(self, key: str, size: int) -> dict[str, Any]:
        answer = self.post("initiate", storage_key=key, file_size=size)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def part_urls(self, upload_id: str, numbers: list[int]) -> dict[int, dict[str, Any]]:
        answer = self.post("presign-parts", upload_id=upload_id, part_numbers=numbers)
        assert answer.status_code == 200, answer.text
        return {p["part_number"]: p for p in answer.json()["parts"]}


def content(size: int, seed: int = 0) -> Iterator[bytes]:
    """`size` bytes, made as they are read: every MiB differs (its index in front of a shared random block),
    so parts put in the wrong place or twice are seen, and nothing of the size is ever held."""
    block = hashlib.sha256(str(seed).encode()).digest() * (MIB // 32)
    for offset in range(0, size, MIB):
        chunk = offset.to_bytes(8, "big") + block[8:]
        yield chunk[: min(MIB, size - offset)]


def part_content(size: int, part_size: int, number: int, seed: int = 0) -> Iterator[bytes]:
    """Part `number`'s bytes of `content(size)` (parts are whole MiB)."""
    start = (number - 1) * part_size
    end = min(size, start + part_size)
    for chunk_start, chunk in zip(range(0, size, MIB), content(size, seed), strict=False):
        if chunk_start >= end:
            return
        if chunk_start >= start:
            yield chunk


def md5_of(chunks: Iterator[bytes]) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def put_part(part: dict[str, Any], body: Iterator[bytes] | bytes) -> httpx.Response:
    return httpx.put(part["upload_url"], content=body, headers=part["upload_headers"], timeout=120)


def upload_parts(session: Session, initiated: dict[str, Any], size: int, numbers: list[int]) -> dict[int, str]:
    """PUT the given parts with plain HTTP; their ETags by number."""
    urls = session.part_urls(initiated["upload_id"], numbers)
    etags = {}
    for n in numbers:
        answer = put_part(urls[n], part_content(size, initiated["part_size"], n))
        assert answer.status_code == 200, answer.text
        etags[n] = answer.headers["ETag"]
    return etags


def complete(session: Session, upload_id: str, etags: dict[int, str]) -> httpx.Response:
    parts = [{"part_number": n, "etag": etags[n]} for n in sorted(etags)]
    return session.post("complete", upload_id=upload_id, parts=parts)


def start_on(store: str, start_server, tmp_path: Path, s3: dict[str, Any] | None, **settings: Any) -> Server:
    settings = {"multipart_part_size": PART, **settings}
    if store == "local":
        return start_server(**settings)
    assert s3 is not None
    config = tmp_path / "config.yaml"
    config.write_text(
        f"files_store: media\nstores:\n  - Name: media\n    Type: s3\n    Params: {{endpoint: '{s3['endpoint']}', "
        f"bucket: {s3['bucket']}, prefix: mp-{uuid.uuid4().hex[:8]}, secure: false, "
        f"access_key: {s3['access_key']}, secret_key: {s3['secret_key']}}}\n"
    )
    return start_server(config=str(config), **settings)


class Stored:
    """What a server's files store holds, read around the engine: the files on disk, or the minio client on S3."""

    def __init__(self, server: Server, s3: dict[str, Any] | None) -> None:
        self.server = server
        self.minio = Minio(s3["endpoint"], s3["access_key"], s3["secret_key"], secure=False) if s3 else None
        self.bucket = s3["bucket"] if s3 else ""
        self.prefix = ""
        if server.config:
            self.prefix = Path(server.config).read_text().split("prefix: ")[1].split(",")[0] + "/"

    def md5(self, key: str) -> str | None:
        if self.minio is None:
            path = self.server.data_dir / "objects" / "default" / key
            if not path.exists():
                return None
            with open(path, "rb") as f:
                return md5_of(iter(lambda: f.read(MIB), b""))
        try:
            response = self.minio.get_object(self.bucket, self.prefix + key)
        except Exception:
            return None
        try:
            return md5_of(response.stream(MIB))
        finally:
            response.close()
            response.release_conn()

    def info(self, key: str) -> tuple[int, str]:
        """(size, ETag)."""
        if self.minio is None:
            meta = json.loads((self.server.data_dir / "meta" / "default" / f"{key}.meta").read_text())
            return (self.server.data_dir / "objects" / "default" / key).stat().st_size, meta["etag"]
        stat = self.minio.stat_object(self.bucket, self.prefix + key)
        return stat.size or 0, (stat.etag or "").strip('"')

    def read(self, key: str, offset: int, length: int) -> bytes:
        if self.minio is None:
            with open(self.server.data_dir / "objects" / "default" / key, "rb") as f:
                f.seek(offset)
                return f.read(length)
        response = self.minio.get_object(self.bucket, self.prefix + key, offset, length)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def delete(self, key: str) -> None:
        if self.minio is None:
            (self.server.data_dir / "objects" / "default" / key).unlink()
        else:
            self.minio.remove_object(self.bucket, self.prefix + key)

    def uploads_under_way(self) -> int:
        """Multipart uploads the store holds (S3's list, or the embedded store's part folders)."""
        if self.minio is None:
            parts = self.server.data_dir / "multipart" / "default"
            return len(list(parts.iterdir())) if parts.exists() else 0
        listed = self.minio._list_multipart_uploads(self.bucket, prefix=self.prefix)
        return len(listed.uploads)
