"""Credential management: `POST /api/v1/credentials`, `GET /api/v1/credentials`,
`DELETE /api/v1/credentials/{credentialId}`.

A signed-in user's session token (with `X-Team-ID`) only: API keys, `dk-` ones above all, are
refused, so a stolen key cannot mint keys that would outlive its own revocation. `dk-` keys are not
made here but by pairing a device (api/pairing.py).
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Annotated, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from flowengine.api.auth import RUNTIME_SECURITY, SESSION_CALLERS, authenticate
from flowengine.api.errors import ReferenceErrorBody
from flowengine.api.http import engine_of, json_response
from flowengine.api.openapi import Answer, ApiRoute, Body, Operation, in_path, in_query
from flowengine.api.r.common import PageMeta, body_of, page_answer, page_params, query_choice
from flowengine.core.times import rfc3339
from flowengine.errors import bad_request
from flowengine.identity.keys import PREFIXES, KeyKind
from flowengine.identity.records import Credential, KeyStatus

TAG = "credentials"
KINDS: tuple[KeyKind, ...] = tuple(PREFIXES)


class NewCredential(msgspec.Struct):
    kind: Literal["integration", "agent"]  # sk- or ak-; dk- keys come from pairing a device
    display_name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    expires_in_days: Annotated[int, msgspec.Meta(ge=1, le=365)] | None = None  # none: until revoked


class CredentialItem(msgspec.Struct):
    id: str
    kind: KeyKind
    display_name: str
    key_prefix: str  # the key's first characters, to tell it apart: the key itself is never shown again
    user_id: str | None  # a device key's user; integration and agent keys are the team's
    key_status: KeyStatus
    created_at: str
    last_used_at: str | None
    expires_at: str | None  # none: until revoked


class CreatedCredential(CredentialItem):
    raw_key: str  # shown this once: only its hash is stored


class CredentialPage(msgspec.Struct):
    credentials: list[CredentialItem]
    page_meta: PageMeta


def item(credential: Credential, now: float) -> CredentialItem:
    def at(t: float | None) -> str | None:
        return None if t is None else rfc3339(t, precise=False)

    c = credential
    return CredentialItem(c.id, c.kind, c.display_name, c.key_prefix, c.user, c.status(now), rfc3339(c.created, False),
                          at(c.last_used), at(c.expires))  # fmt: skip


async def create(request: Request) -> Response:
    principal = await authenticate(request.scope, SESSION_CALLERS)
    body = await body_of(request, NewCredential)
    if not body.display_name.strip():
        raise bad_request("invalid_field", "display_name must not be blank", "display_name")
    directory = engine_of(request).directory
    credential, raw = await directory.create_key(
        principal.team, body.kind, body.display_name, expires_in_days=body.expires_in_days
    )
    listed = item(credential, directory.clock())
    return json_response(CreatedCredential(**msgspec.structs.asdict(listed), raw_key=raw), 201)


async def listing(request: Request) -> Response:
    principal = await authenticate(request.scope, SESSION_CALLERS)
    kind = query_choice(request, "kind", KINDS)
    directory = engine_of(request).directory
    now = directory.clock()
    keys = partial(directory.keys_of, principal.team, kind)  # type: ignore[arg-type]
    return await page_answer(request, keys, lambda c: item(c, now), CredentialPage)


async def revoke(request: Request) -> Response:
    principal = await authenticate(request.scope, SESSION_CALLERS)
    credential_id = request.path_params["credentialId"]
    try:
        uuid.UUID(credential_id)
    except ValueError:
        message = "credentialId must be a credential's id (a UUID), never the key or its prefix"
        raise bad_request("invalid_path", message, "path.credentialId") from None
    await engine_of(request).directory.revoke(credential_id, principal.team)
    return Response(status_code=204)


SESSION_ONLY = (
    "A user's session token with `X-Team-ID` only: an `sk-`, `dk-` or `ak-` key is refused (401), so that a "
    "stolen key cannot make keys that outlive its own revocation."
)
CREATE = Operation(
    summary="Make an API key of the team: sk- (integration) or ak- (agent); the key is shown this once",
    description=f"{SESSION_ONLY} `dk-` keys are made by pairing a device (`/desktop/pair/*`), never here. Only "
    "the key's hash is stored: keep `raw_key`, it is not shown again.",
    tag=TAG,
    body=Body(NewCredential, "the key's kind, its name, and when it expires (1-365 days; none: until revoked)"),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={
        201: Answer("the key, with `raw_key` this once", CreatedCredential),
        400: "a field is missing, out of its bounds or of the wrong type (the field is named); kind device",
    },
)
LIST = Operation(
    summary="The team's API keys, oldest first: never the keys themselves, only their prefixes",
    description=SESSION_ONLY,
    tag=TAG,
    params=(in_query("kind", KeyKind, "only keys of this kind"), *page_params("keys")),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={
        200: Answer("a page of the team's keys", CredentialPage),
        400: "kind, current_page or per_page is not one the query takes (invalid_query)",
    },
)
REVOKE = Operation(
    summary="Revoke an API key of the team, at once (a device's key takes its agent key with it)",
    description=f"{SESSION_ONLY} The next request with the key is refused (401), whichever API it goes to.",
    tag=TAG,
    params=(in_path("credentialId", str, "the key's `id` (never the key, nor its prefix)"),),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={
        204: Answer("revoked (or revoked already)"),
        400: "credentialId is not a UUID (invalid_path)",
        404: "the team has no such key (not_found)",
    },
)

routes = [
    ApiRoute("/api/v1/credentials", create, name="create_credential", post=CREATE),
    ApiRoute("/api/v1/credentials", listing, name="list_credentials", get=LIST),
    ApiRoute("/api/v1/credentials/{credentialId}", revoke, name="revoke_credential", delete=REVOKE),
]
