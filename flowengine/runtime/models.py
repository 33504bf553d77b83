"""Model files: a team uploads one (presign, then a PUT or a multipart upload), registers it, and agents
sync the active ones before taking work that needs them.

`presign` records the key like any file presign (runtime/files.py), so an upload nobody registers is
deleted after `input_retention`. `register` checks the stored object against what the caller says
(size, SHA-256, read through once, streamed) and takes the key out of that retention: a registered
model's bytes stay until the operator removes them. Registering a key again changes the model's
metadata (the bytes never change: uploads never overwrite).
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Literal

from flowengine.core.ids import uuid7
from flowengine.errors import bad_request, not_found
from flowengine.persistence.base import FileRecord, ModelRecord
from flowengine.runtime.files import files_store
from flowengine.stores.base import Presigned, PutConditions, Store

if TYPE_CHECKING:
    from flowengine.runtime.engine import Engine

PREFIX = "models/"
CONTENT_TYPE = "application/octet-stream"
# The reference's pattern: relative, no '..', no backslash (Python's \w is Unicode-aware, as the reference's is).
MODEL_PATH = r"^(?!/)(?!.*\.\.)(?!.*\\)[\w./ -]+$"
FILE_HASH = r"^sha256:[0-9a-fA-F]{64}$"
_MODEL_PATH = re.compile(MODEL_PATH)


def model_path_problem(path: str) -> str | None:
    """Why `path` is not a path inside the models folder, if it is not."""
    if path.startswith("/"):
        return "must be relative, not start with '/'"
    if ".." in path:
        return "must not contain '..'"
    if "\\" in path:
        return "must not contain a backslash"
    if not _MODEL_PATH.fullmatch(path):
        return "may hold only letters, digits, '_', '.', '/', ' ' and '-'"
    return None


async def presign(engine: Engine, team: str, name: str, size: int, base_url: str) -> tuple[str, Presigned]:
    limit = engine.config.max_multipart_size  # over max_upload_size, the key is for a multipart upload
    if size > limit:
        raise bad_request("too_large", f"file_size {size} is over this engine's limit of {limit} bytes", "file_size")
    store = files_store(engine)
    await engine.stores.prepare(store)
    now = engine.clock()
    key = f"{PREFIX}{team}/{uuid7()}"
    file = FileRecord(store.name, key, team, name, size, CONTENT_TYPE, now, now + engine.config.input_retention)
    async with engine.db.transaction() as tx:
        await tx.insert_file(file)
    conditions = PutConditions(size=size, no_overwrite=True)
    return key, store.presign_put(key, now + engine.config.upload_ttl, conditions, base_url)


async def register(
    engine: Engine, team: str, name: str, model_type: str, key: str, size: int, file_hash: str, path: str
) -> tuple[ModelRecord, bool]:
    """The model as stored, and whether it is new (else: an earlier registration of the key, updated)."""
    store = files_store(engine)
    if not key.startswith(f"{PREFIX}{team}/"):  # only keys /models/presign gave this team
        raise bad_request("unknown_storage_key", f"{key!r} is not a model file this team presigned", "storage_key")
    file = await engine.db.file(store.name, key)
    existing = await engine.db.model_at(store.name, key)
    if file is None and existing is None:
        raise bad_request("unknown_storage_key", f"{key!r} is not a model file this team presigned", "storage_key")
    info = await store.stat(key)
    if info is None:
        raise bad_request("not_uploaded", f"nothing is stored at {key!r}: upload the file first", "storage_key")
    if info.size != size:
        raise bad_request("size_mismatch", f"the stored file is {info.size} bytes, not {size}", "file_size")
    want = file_hash.lower()
    if existing is None or existing.file_hash != want:  # the bytes of a registered key never change
        stored = "sha256:" + await _sha256(store, key)
        if stored != want:
            raise bad_request("hash_mismatch", f"the stored file's hash is {stored}", "file_hash")
    now = engine.clock()
    model = ModelRecord(uuid7(), team, name, model_type, store.name, key, size, want, path, "active", now, now)
    async with engine.db.transaction() as tx:
        stored_model = await tx.put_model(model)
        await tx.drop_file(store.name, key)  # registered: no longer deleted after input_retention
    return stored_model, stored_model.id == model.id


async def _sha256(store: Store, key: str) -> str:
    digest = hashlib.sha256()
    async for chunk in store.read(key):
        digest.update(chunk)
    return digest.hexdigest()


async def model_of(engine: Engine, team: str, model_id: str) -> ModelRecord:
    model = await engine.db.model(model_id)
    if model is None or model.team != team:
        raise not_found("model", model_id, "path.model_id")
    return model


async def set_status(engine: Engine, team: str, model_id: str, status: Literal["active", "disabled"]) -> ModelRecord:
    model = await model_of(engine, team, model_id)
    await engine.db.set_model_status(model.id, status, engine.clock())
    return await model_of(engine, team, model_id)
