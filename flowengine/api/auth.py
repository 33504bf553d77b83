"""Who a request comes from, and whether this route takes that kind of caller.

Each route says which callers it accepts (`FLOW_CALLERS`, `RUNTIME_CALLERS`, ...). A credential of
another kind is refused with 401, as one that is not valid. On an engine with `auth: open`, a
request with no credential is the anonymous caller, whose runs belong to no team; with
`auth: keys` it is a 401. Signed URLs need no credential: their signature is one.
"""

from __future__ import annotations

from starlette.types import Scope

from flowengine.api.http import header
from flowengine.errors import Error
from flowengine.identity.directory import ANONYMOUS, Principal, PrincipalKind, unauthorized

Accepts = frozenset[PrincipalKind]
FLOW_CALLERS: Accepts = frozenset({"anonymous", "user", "integration", "device"})  # the flow API
RUNTIME_CALLERS: Accepts = frozenset({"user", "integration", "device"})  # the workflow/task API (/api/v1/r/)
AGENT_CALLERS: Accepts = frozenset({"agent"})
# Credential management and confirming a pairing: a signed-in user only, so that a stolen key (a dk- above
# all) cannot mint keys that outlive its own revocation.
SESSION_CALLERS: Accepts = frozenset({"user"})
RUNTIME_SECURITY = ("bearer",)  # the OpenAPI security of routes that take RUNTIME_CALLERS
_NAMES = {"user": "a user session token", "integration": "an sk- key", "device": "a dk- key", "agent": "an ak- key"}


async def authenticate(scope: Scope, accepts: Accepts, *, team_scoped: bool = True) -> Principal:
    """The caller, if this route takes them; a user must name the team (X-Team-ID) where the route
    is scoped to one (400 without it)."""
    engine = scope["app"].state.engine
    principal = await engine.directory.authenticate(_bearer(scope), header(scope, b"x-team-id"))
    if principal is None:
        if engine.config.auth == "keys" or "anonymous" not in accepts:
            raise unauthorized("a credential is required: 'Authorization: Bearer <key or token>'")
        return ANONYMOUS
    if principal.kind not in accepts:
        raise unauthorized(f"{_NAMES[principal.kind]} is not accepted here")
    if team_scoped and principal.kind == "user" and not principal.team:
        raise Error("bad_request", "team_required", "send X-Team-ID: the team this request is for",
                    "header.X-Team-ID")  # fmt: skip
    return principal


def _bearer(scope: Scope) -> str | None:
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, credential = value.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise unauthorized("the Authorization header must be 'Bearer <key or token>'")
    return credential.strip()
