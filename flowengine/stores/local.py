"""The embedded store: objects are files under the data dir; the engine signs and serves their URLs.

A URL is `{base}/store/{name}/{key}?X-Expires=..&X-SignedHeaders=..&X-Signature=..` (see
signing.py). Writes go to a temp file and are renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import quote

import anyio
import msgspec

from flowengine.core.keys import is_name, key_problem
from flowengine.errors import disk_full_is_insufficient_storage
from flowengine.stores.base import KeyPage, ObjectInfo, Presigned, PutConditions
from flowengine.stores.signing import Signer, local_resource

CHUNK = 1 << 20
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
        for d in (self.root, self.meta_root, self.tmp_root):
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
    """Copy in the kernel: copy_file_range shares the blocks where the filesystem can (a reflink on
    XFS or Btrfs), and copies them without passing through Python elsewhere."""
    with open(src, "rb") as s, open(dest, "wb") as d:
        try:
            while os.copy_file_range(s.fileno(), d.fileno(), CHUNK << 4):
                pass
        except OSError:  # a kernel or filesystem without it (or across filesystems on an old kernel)
            d.seek(0)
            d.truncate()
            s.seek(0)
            shutil.copyfileobj(s, d, CHUNK)


def _prune(directory: Path, root: Path) -> None:
    """Remove directories left empty, up to (not including) the store's root."""
    while directory != root and directory.is_relative_to(root):
        try:
            directory.rmdir()
        except OSError:  # not empty (or already gone with a racing delete): stop here
            return
        directory = directory.parent
