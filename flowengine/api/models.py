"""`/api/v1/models*`: a team's model files (runtime/models.py), and the list agents sync from."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Annotated, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from flowengine.api.auth import AGENT_CALLERS, RUNTIME_CALLERS, Accepts, authenticate
from flowengine.api.errors import ReferenceErrorBody
from flowengine.api.http import engine_of, json_response
from flowengine.api.openapi import Answer, ApiRoute, Body, Operation, in_path, in_query
from flowengine.api.r.common import PageMeta, body_of, page_answer, page_params, public_base, query_choice
from flowengine.core.times import rfc3339
from flowengine.errors import bad_request
from flowengine.persistence.base import ModelRecord
from flowengine.runtime import models
from flowengine.runtime.engine import Engine

PRESIGN_CALLERS: Accepts = frozenset({"user", "device"})  # the reference: "Accepts JWT or dk-"
ModelType = Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
ModelPath = Annotated[
    str, msgspec.Meta(min_length=1, max_length=1024, extra_json_schema={"pattern": models.MODEL_PATH})
]
FileSize = Annotated[int, msgspec.Meta(ge=1)]
Status = Literal["active", "disabled"]
STATUSES: tuple[Status, ...] = ("active", "disabled")


class PresignModel(msgspec.Struct):
    file_name: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    file_size: FileSize
    model_type: ModelType  # the ComfyUI models folder it belongs in: checkpoints, loras, vae...
    model_path: ModelPath  # where in the models folder: relative, no '..', no backslash


class PresignedModel(msgspec.Struct):
    upload_url: str
    storage_key: str  # what POST /models (and a multipart upload) takes
    upload_headers: dict[str, str]  # send every one of them with the PUT, verbatim


class RegisterModel(msgspec.Struct):
    display_name: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    model_type: ModelType
    storage_key: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    file_size: FileSize
    file_hash: Annotated[str, msgspec.Meta(pattern=models.FILE_HASH)]  # sha256:<hex>, of the stored bytes
    model_path: ModelPath


class Registered(msgspec.Struct):
    id: str


class ModelDoc(msgspec.Struct):
    id: str
    display_name: str
    model_type: str
    storage_key: str
    file_size: int
    file_hash: str
    model_path: str
    model_status: Status
    created_at: str
    updated_at: str


class ModelList(msgspec.Struct):
    model_list: list[ModelDoc]
    page_meta: PageMeta


class AgentModel(msgspec.Struct):
    id: str
    display_name: str
    model_type: str
    model_path: str
    file_size: int
    file_hash: str  # check the download against it
    updated_at: str
    download_url: str
    expires_at: str  # when download_url stops working: ask again for a fresh one


class AgentModelList(msgspec.Struct):
    model_list: list[AgentModel]
    page_meta: PageMeta


def _doc(m: ModelRecord) -> ModelDoc:
    return ModelDoc(m.id, m.display_name, m.model_type, m.storage_key, m.file_size, m.file_hash, m.model_path,
                    m.status, rfc3339(m.created), rfc3339(m.updated))  # fmt: skip


def _check_path(path: str) -> None:
    if problem := models.model_path_problem(path):
        raise bad_request("invalid_model_path", f"model_path {problem}", "model_path")


async def presign(request: Request) -> Response:
    principal = await authenticate(request.scope, PRESIGN_CALLERS)
    body = await body_of(request, PresignModel)
    _check_path(body.model_path)
    key, presigned = await models.presign(
        engine_of(request), principal.team, body.file_name, body.file_size, public_base(request)
    )
    return json_response(PresignedModel(presigned.url, key, presigned.headers))


async def register(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    body = await body_of(request, RegisterModel)
    _check_path(body.model_path)
    model, new = await models.register(engine_of(request), principal.team, body.display_name, body.model_type,
                                       body.storage_key, body.file_size, body.file_hash, body.model_path)  # fmt: skip
    return json_response(Registered(model.id), 201 if new else 200)


async def list_models(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    status = query_choice(request, "model_status", STATUSES)
    return await page_answer(request, partial(_models, engine_of(request), principal.team, status), _doc, ModelList)


async def get_model(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    return json_response(
        _doc(await models.model_of(engine_of(request), principal.team, str(request.path_params["model_id"])))
    )


async def disable(request: Request) -> Response:
    return await _set_status(request, "disabled")


async def enable(request: Request) -> Response:
    return await _set_status(request, "active")


async def _set_status(request: Request, status: Status) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    model = await models.set_status(engine_of(request), principal.team, str(request.path_params["model_id"]), status)
    return json_response(_doc(model))


async def agent_models(request: Request) -> Response:
    """The active models of the agent's team, each with a fresh download URL."""
    principal = await authenticate(request.scope, AGENT_CALLERS)
    engine = engine_of(request)
    base, expires = public_base(request), engine.clock() + engine.config.download_ttl

    def listed(m: ModelRecord) -> AgentModel:
        url = engine.stores.resolve(None, m.store).presign_get(m.storage_key, expires, base)
        return AgentModel(m.id, m.display_name, m.model_type, m.model_path, m.file_size, m.file_hash,
                          rfc3339(m.updated), url.url, rfc3339(url.expires, False))  # fmt: skip

    return await page_answer(request, partial(_models, engine, principal.team, "active"), listed, AgentModelList)


async def _models(engine: Engine, team: str, status: Status | None, limit: int, offset: int
                  ) -> tuple[list[ModelRecord], int]:  # fmt: skip
    return await engine.db.models(team, status, limit, offset), await engine.db.count_models(team, status)


TAG = "models"
SECURITY = ("bearer",)
NO_MODEL = "no model of the team has this ID (not_found)"
MODEL_ID = in_path("model_id", uuid.UUID, "the model's ID")
PAGE = page_params("models")
UNAUTHORIZED = "no credential, or one this call does not take (unauthorized)"
PRESIGN = Operation(
    summary="A presigned PUT URL for a model file",
    description="A user session token (with `X-Team-ID`) or a `dk-` key; `sk-` is refused. PUT the file to "
    "`upload_url` with every header of `upload_headers`, or, over `max_upload_size`, send it in parts to "
    "`storage_key` (`/api/v1/uploads/multipart/*`, session token only). Then register it: `POST /api/v1/models`. "
    "An upload not registered within `input_retention` (a day) is deleted.",
    tag=TAG,
    body=Body(PresignModel, "the model file to come"),
    security=SECURITY,
    errors=ReferenceErrorBody,
    answers={
        200: Answer("where to PUT the file, and its key", PresignedModel),
        400: "a field is missing or wrong: model_type over 50 characters, a model_path that is absolute or holds "
        "'..' or a backslash (invalid_model_path), file_size over max_multipart_size (too_large)",
        401: UNAUTHORIZED,
        503: "the files store did not answer (store_unavailable)",
    },
)
REGISTER = Operation(
    summary="Register an uploaded model file",
    description="The file must be stored at `storage_key` already, of `file_size` bytes and the SHA-256 of "
    "`file_hash` (checked against the stored bytes). Registering a key again updates its model's metadata.",
    tag=TAG,
    body=Body(RegisterModel, "the model and its file"),
    security=SECURITY,
    errors=ReferenceErrorBody,
    answers={
        201: Answer("registered", Registered),
        200: Answer("the model at this key was registered already: its metadata is updated", Registered),
        400: "a field is missing or wrong, the key is not one this team presigned (unknown_storage_key) or holds "
        "nothing yet (not_uploaded), or the stored file is of another size (size_mismatch) or hash (hash_mismatch)",
        401: UNAUTHORIZED,
        503: "the files store did not answer (store_unavailable)",
    },
)
LIST = Operation(
    summary="The team's models, oldest first",
    tag=TAG,
    params=(*PAGE, in_query("model_status", Status, "only the active or the disabled ones")),
    security=SECURITY,
    errors=ReferenceErrorBody,
    answers={200: Answer("a page of models", ModelList), 400: "a query value is wrong", 401: UNAUTHORIZED},
)
GET = Operation(
    summary="A model",
    tag=TAG,
    params=(MODEL_ID,),
    security=SECURITY,
    errors=ReferenceErrorBody,
    answers={200: Answer("the model", ModelDoc), 401: UNAUTHORIZED, 404: NO_MODEL},
)
DISABLE = Operation(
    summary="Disable a model: agents stop syncing it (its file stays)",
    tag=TAG,
    params=(MODEL_ID,),
    security=SECURITY,
    errors=ReferenceErrorBody,
    answers={200: Answer("the model, disabled", ModelDoc), 401: UNAUTHORIZED, 404: NO_MODEL},
)
ENABLE = Operation(
    summary="Enable a disabled model again",
    tag=TAG,
    params=(MODEL_ID,),
    security=SECURITY,
    errors=ReferenceErrorBody,
    answers={200: Answer("the model, active", ModelDoc), 401: UNAUTHORIZED, 404: NO_MODEL},
)
AGENT_MODELS = Operation(
    summary="The active models of the agent's team, with download URLs (agents sync them)",
    description="An agent's `ak-` key only. Each `download_url` is a presigned GET, good until `expires_at`.",
    tag=TAG,
    params=PAGE,
    security=SECURITY,
    errors=ReferenceErrorBody,
    answers={200: Answer("a page of active models", AgentModelList), 401: UNAUTHORIZED},
)

routes = [
    ApiRoute("/api/v1/models/presign", presign, name="presign_model", post=PRESIGN),
    ApiRoute("/api/v1/models", register, name="register_model", post=REGISTER),
    ApiRoute("/api/v1/models", list_models, get=LIST),
    ApiRoute("/api/v1/models/{model_id:uuid}", get_model, get=GET),
    ApiRoute("/api/v1/models/{model_id:uuid}/disable", disable, name="disable_model", post=DISABLE),
    ApiRoute("/api/v1/models/{model_id:uuid}/enable", enable, name="enable_model", post=ENABLE),
    ApiRoute("/api/v1/agent/models", agent_models, get=AGENT_MODELS),
]
