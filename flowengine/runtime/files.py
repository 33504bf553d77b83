"""Files a team uploads for the workflow/task API: presigned once, kept `input_retention` (1 day).

`POST /api/v1/r/files/presign` records the file (its team, name, declared size and type) and
hands out a PUT URL that signs `Content-Length` (the declared size) and `If-None-Match: *` (no
overwrite). The key it returns (`file_key`) is what a `file` parameter of a run takes; the engine
checks then that the object is there, is the team's, and is of a type the parameter accepts. A file
over `max_upload_size` goes up in parts instead (runtime/multipart.py), to the same key.
"""

from __future__ import annotations

import base64
import re
import secrets
from typing import TYPE_CHECKING

from flowengine.errors import bad_request
from flowengine.persistence.base import FileRecord
from flowengine.stores.base import Presigned, PutConditions, Store

if TYPE_CHECKING:
    from flowengine.runtime.engine import Engine

MAX_NAME = 128  # characters of a file name kept in its key
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A file name fit for a key: letters, digits, '.', '_', '-' (runs of anything else become one
    '_'), no leading dots, at most MAX_NAME characters keeping the extension."""
    cleaned = _UNSAFE.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1]).lstrip(".") or "file"
    if len(cleaned) <= MAX_NAME:
        return cleaned
    stem, dot, ext = cleaned.rpartition(".")
    ext = ext[:16] if dot and stem else ""
    return cleaned[: MAX_NAME - len(ext) - 1].rstrip(".") + ("." + ext if ext else "")


def file_key(team: str, name: str, content_type: str) -> str:
    """`inputs/<team>/<random>/<base64 of the type>/<name>`, the reference's layout: a new key for
    every presign, under the prefix the input retention rules cover."""
    kind = base64.urlsafe_b64encode(content_type.encode()).decode().rstrip("=")
    return f"inputs/{team}/{secrets.token_hex(6)}/{kind}/{safe_name(name)}"


def files_store(engine: Engine) -> Store:
    return engine.stores.resolve(None, engine.config.files_store)


async def presign_upload(
    engine: Engine, team: str, name: str, size: int, content_type: str, base_url: str
) -> tuple[FileRecord, Presigned]:
    limit = engine.config.max_multipart_size  # over max_upload_size, the key is for a multipart upload
    if size > limit:
        raise bad_request("too_large", f"file_size {size} is over this engine's limit of {limit} bytes", "file_size")
    store = files_store(engine)
    await engine.stores.prepare(store)
    now = engine.clock()
    record = FileRecord(store.name, file_key(team, name, content_type), team, name, size, content_type, now,
                        now + engine.config.input_retention)  # fmt: skip
    async with engine.db.transaction() as tx:
        await tx.insert_file(record)
    conditions = PutConditions(size=size, no_overwrite=True)
    return record, store.presign_put(record.key, now + engine.config.upload_ttl, conditions, base_url)
