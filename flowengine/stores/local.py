"""The embedded store: objects are files under the data dir; the engine signs and serves their URLs.

A URL is `{base}/store/{name}/{key}?X-Expires=..&X-SignedHeaders=..&X-Signature=..` (see
signing.py). Writes go to a temp file and are renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import anyio
import msgspec

from flowengine.core.keys import is_name, key_problem
from flowengine.errors import disk_full_is_insufficient_storage
from flowengine.stores.base import KeyPage, ObjectInfo, Part, Presigned, PutConditions, multipart_etag
from flowengine.stores.signing import Signer, local_part_resource, local_resource

CHUNK = 1 << 20
_TYPE = "content-type"  # beside an upload's parts: the Content-Type its object will have
_PART = re.compile(r"(\d{5})\.([0-9a-f]{32})")
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_meta_encode = msgspec.json.Encoder().encode
_meta_decode = msgspec.json.Decoder(ObjectInfo).decode


class LocalStore:
    kind = "local"

    def __init__(self, name: str, root: Path, signer: Signer) -> None:
        if not is_name(name):
            raise ValueError(f"store name {name!r} cannot name a directory")
        self.name = name
        self.location = f"local:{name}"
        self.root = root / "objects" / name
        self.meta_root = root / "meta" / name
        self.tmp_root = root / "tmp"
        self.parts_root = root / "multipart" / name  # an upload's parts: <upload id>/<number>.<md5>
        for d in (self.root, self.meta_root, self.tmp_root, self.parts_root):
            d.mkdir(parents=True, exist_ok=True)
        self.signer = signer
        self._quoted_name = quote(name, safe="")

    def full_key(self, key: str) -> str:
        return key

    def resource(self, key: str) -> str:
        return local_resource(self.name, key)

    def _presign(self, method: str, key: str, expires: float, headers: dict[str, str], base: str) -> Presigned:
        query = self.signer.query(method, self.resource(key), expires, headers)
        return Presigned(f"{base}/store/{self._quoted_name}/{quote(key)}?{query}", headers, int(expires))

    def presign_put(self, key: str, expires: float, conditions: PutConditions, base_url: str) -> Presigned:
        return self._presign("PUT", key, expires, conditions.headers(), base_url)

    def presign_get(self, key: str, expires: float, base_url: str) -> Presigned:
        return self._presign("GET", key, expires, {}, base_url)

    def presign_part(
        self, key: str, upload_id: str, number: int, expires: float, conditions: PutConditions, base_url: str
    ) -> Presigned:
        """The object's URL with S3's `partNumber` and `uploadId`, both signed: a URL for one part of one upload."""
        headers = conditions.headers()
        resource = local_part_resource(self.name, key, upload_id, number)
        query = self.signer.query("PUT", resource, expires, headers)
        url = f"{base_url}/store/{self._quoted_name}/{quote(key)}?partNumber={number}&uploadId={upload_id}&{query}"
        return Presigned(url, headers, int(expires))

    # files

    def path(self, key: str) -> Path:
        problem = key_problem(key)
        if problem:
            raise ValueError(f"key {key!r} {problem}")
        return self.root / key

    def _meta_path(self, key: str) -> Path:
        return self.meta_root / f"{key}.meta"

    def stat_now(self, key: str) -> ObjectInfo | None:
        try:
            return _meta_decode(self._meta_path(key).read_bytes()) if self.path(key).is_file() else None
        except FileNotFoundError:
            return None

    def commit(self, temp: Path, key: str, info: ObjectInfo, overwrite: bool = True) -> bool:
        """Move a finished temp file into place with its metadata; False if it exists and `overwrite`
        is off. All or nothing: a full disk leaves no object without metadata, nor metadata without one."""
        dest, meta = self.path(key), self._meta_path(key)
        meta_tmp = temp.with_suffix(".meta")
        placed = False
        with disk_full_is_insufficient_storage(f"object {key!r}", "body"):
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                meta.parent.mkdir(parents=True, exist_ok=True)
                meta_tmp.write_bytes(_meta_encode(info))
                if overwrite:
                    os.replace(temp, dest)
                else:
                    try:
                        os.link(temp, dest)  # atomic create-if-absent
                    except FileExistsError:
                        return False
                placed = True
                os.replace(meta_tmp, meta)
            except OSError:
                if placed:
                    dest.unlink(missing_ok=True)
                raise
            finally:
                meta_tmp.unlink(missing_ok=True)
                temp.unlink(missing_ok=True)
        return True

    # the Store interface

    async def stat(self, key: str) -> ObjectInfo | None:
        return self.stat_now(key)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        if self.stat_now(key) is None:
            raise FileNotFoundError(f"{self.location}/{key}")
        with open(self.path(key), "rb") as f:
            while chunk := await anyio.to_thread.run_sync(f.read, CHUNK << 2):
                yield chunk

    async def download(self, key: str, dest: Path) -> ObjectInfo:
        info = self.stat_now(key)
        if info is None:
            raise FileNotFoundError(f"{self.location}/{key}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        # A copy, never a hard link: whoever gets `dest` (a step) must not be able to change the stored object.
        await anyio.to_thread.run_sync(copy_file, self.path(key), dest)
        return info

    async def upload(self, key: str, src: Path, content_type: str) -> ObjectInfo:
        temp, info = await anyio.to_thread.run_sync(self._copy, src, content_type, key)
        self.commit(temp, key, info)  # on the event loop, like every other change to the store's directories
        return info

    def _copy(self, src: Path, content_type: str, key: str) -> tuple[Path, ObjectInfo]:
        digest = hashlib.md5(usedforsecurity=False)
        fd, name = tempfile.mkstemp(dir=self.tmp_root, prefix="copy-")
        size = 0
        with disk_full_is_insufficient_storage(f"object {key!r}"):
            try:
                with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                    while chunk := f.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            except BaseException:
                os.unlink(name)
                raise
        return Path(name), ObjectInfo(size, content_type, digest.hexdigest(), os.path.getmtime(name))

    async def delete(self, key: str) -> None:
        for path, root in ((self._meta_path(key), self.meta_root), (self.path(key), self.root)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            _prune(path.parent, root)

    async def check(self) -> None:
        return None

    # multipart uploads: each part a file of its own, assembled by the kernel's copy when complete

    async def create_multipart(self, key: str, content_type: str) -> str:
        self.path(key)  # a valid key, or ValueError now rather than at completion
        upload_id = secrets.token_hex(16)
        directory = self.parts_root / upload_id
        with disk_full_is_insufficient_storage(f"multipart upload of {key!r}"):
            directory.mkdir()
            (directory / _TYPE).write_text(content_type)
        return upload_id

    def _parts_dir(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise ValueError(f"{upload_id!r} is not an upload ID of this store")
        return self.parts_root / upload_id

    def place_part(self, upload_id: str, number: int, temp: Path, md5: str) -> bool:
        """Move a received part into its upload, replacing an earlier one of that number; False if the
        upload is gone (completed or aborted meanwhile)."""
        directory = self._parts_dir(upload_id)
        name = f"{number:05d}.{md5}"
        try:
            os.replace(temp, directory / name)
        except FileNotFoundError:
            return False
        for older in directory.glob(f"{number:05d}.*"):
            if older.name != name:
                older.unlink(missing_ok=True)
        return True

    async def list_parts(self, key: str, upload_id: str) -> list[Part] | None:
        return await anyio.to_thread.run_sync(self._list_parts, upload_id)

    def _list_parts(self, upload_id: str) -> list[Part] | None:
        try:
            entries = list(os.scandir(self._parts_dir(upload_id)))
        except FileNotFoundError:
            return None
        parts = []
        for entry in entries:
            match = _PART.fullmatch(entry.name)
            if match:
                with contextlib.suppress(FileNotFoundError):  # replaced meanwhile by a newer upload of it
                    parts.append(Part(int(match[1]), match[2], entry.stat().st_size))
        return sorted(parts, key=lambda p: p.number)

    async def complete_multipart(self, key: str, upload_id: str, parts: list[Part]) -> ObjectInfo:
        """Append the parts' files into one temp file (in the kernel, never through memory) and commit it;
        FileExistsError if the key exists by then (uploads never overwrite)."""
        temp, info = await anyio.to_thread.run_sync(self._assemble, key, upload_id, parts)
        if not self.commit(temp, key, info, overwrite=False):
            raise FileExistsError(key)
        await self.abort_multipart(key, upload_id)
        return info

    def _assemble(self, key: str, upload_id: str, parts: list[Part]) -> tuple[Path, ObjectInfo]:
        directory = self._parts_dir(upload_id)
        content_type = (directory / _TYPE).read_text()
        fd, name = tempfile.mkstemp(dir=self.tmp_root, prefix="parts-")
        with disk_full_is_insufficient_storage(f"object {key!r}"):
            try:
                with os.fdopen(fd, "wb") as out:
                    for part in parts:
                        with open(directory / f"{part.number:05d}.{part.etag}", "rb") as f:
                            append_file(f, out)
            except BaseException:
                os.unlink(name)
                raise
        etag = multipart_etag([bytes.fromhex(p.etag) for p in parts])
        return Path(name), ObjectInfo(os.path.getsize(name), content_type, etag, os.path.getmtime(name))

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await anyio.to_thread.run_sync(shutil.rmtree, self._parts_dir(upload_id), True)

    async def list_keys(self, prefix: str, start_after: str = "", limit: int = 1000) -> KeyPage:
        """Keys directory by directory, each directory's entries by name (so 'a/b' before 'a-b')."""
        return await anyio.to_thread.run_sync(self._list_keys, prefix, start_after, limit)

    def _list_keys(self, prefix: str, start_after: str, limit: int) -> KeyPage:
        after = start_after.split("/") if start_after else []
        found: list[str] = []

        def walk(directory: Path, parts: list[str]) -> None:
            for entry in sorted(os.scandir(directory), key=lambda e: e.name):
                path = [*parts, entry.name]
                key = "/".join(path)
                if entry.is_dir(follow_symlinks=False):
                    # Only into a directory that can hold a key under `prefix`, after `start_after`.
                    if (prefix.startswith(key + "/") or (key + "/").startswith(prefix)) and path >= after[: len(path)]:
                        walk(Path(entry.path), path)
                elif key.startswith(prefix) and path > after:
                    found.append(key)
                if len(found) > limit:
                    return

        walk(self.root, [])
        return KeyPage(found[:limit], len(found) > limit)


def copy_file(src: Path, dest: Path) -> None:
    with open(src, "rb") as s, open(dest, "wb") as d:
        append_file(s, d)


def append_file(src: BinaryIO, dest: BinaryIO) -> None:
    """Copy the rest of `src` to the end of `dest` in the kernel: copy_file_range shares the blocks where
    the filesystem can (a reflink on XFS or Btrfs), and copies them without passing through Python
    elsewhere."""
    start, at = src.tell(), dest.tell()
    try:
        while os.copy_file_range(src.fileno(), dest.fileno(), CHUNK << 4):
            pass
    except OSError:  # a kernel or filesystem without it (or across filesystems on an old kernel)
        dest.seek(at)
        dest.truncate()
        src.seek(start)
        shutil.copyfileobj(src, dest, CHUNK)


def _prune(directory: Path, root: Path) -> None:
    """Remove directories left empty, up to (not including) the store's root."""
    while directory != root and directory.is_relative_to(root):
        try:
            directory.rmdir()
        except OSError:  # not empty (or already gone with a racing delete): stop here
            return
        directory = directory.parent
