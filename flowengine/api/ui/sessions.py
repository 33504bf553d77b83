"""Who is looking at the dashboard: its session cookie, its CSRF tokens, and who may see what.

The session is a signed cookie (HMAC-SHA256 under a key derived from the engine's jwt_secret), so
the engine keeps no session table. It never holds a credential: it names one (a key's id, or a
user and team), and every request looks that up again, so a revoked key or a removed membership
ends the session at its next request. Each session has a random nonce; the CSRF token of every
form is an HMAC of that nonce, and a new nonce is drawn at sign-in (a session cookie planted before
it is worth nothing after it). A visitor who has not signed in gets a session of their own too
(`kind` empty), which is what the sign-in form's token is bound to.

Who sees what: a signed-in key or user sees its team's runs. An engine with `auth: open` (which
listens on loopback only, unless the operator said otherwise) serves its dashboard to whoever can
reach it, as the operator: every team's runs. With `auth: keys`, the engine's operators are the keys
and members of the team the `operator_team` setting names (a team's `admin` role is that team's
only): signed in, they see every team's runs, tasks, agents and webhooks; everyone else sees their
own team's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from flowengine.identity.directory import ANONYMOUS, Principal
from flowengine.runtime.engine import Engine

COOKIE = "flowengine_session"
CSRF_FIELD = "csrf"  # a form's hidden field
CSRF_HEADER = "x-csrf-token"  # or this header (htmx and fetch requests)
PRE_SESSION_TTL = 3600.0  # seconds a visitor's session lives before signing in


class Session(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the cookie carries (signed, not secret)."""

    nonce: str
    expires: float
    kind: str = ""  # '' before sign-in; else the principal's kind: integration | device | user
    credential: str = ""  # a key's id
    user: str = ""
    team: str = ""


class Viewer(msgspec.Struct, frozen=True):
    """The dashboard's caller."""

    principal: Principal
    session: Session
    operator: bool  # sees every team's runs
    fresh: bool = False  # the session is new: its cookie must be sent

    @property
    def team(self) -> str | None:
        """The team whose runs this viewer sees; None: every team's."""
        return None if self.operator else self.principal.team

    @property
    def signed_in(self) -> bool:
        return bool(self.session.kind)


class SignInRequired(Exception):
    """No page works without signing in on an engine that requires credentials."""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Session).decode


def _key(engine: Engine) -> bytes:
    return hmac.new(engine.directory.jwt_secret, b"flowengine dashboard session", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal(engine: Engine, session: Session) -> str:
    body = _b64(_encode(session))
    return f"{body}.{_b64(hmac.new(_key(engine), body.encode(), hashlib.sha256).digest())}"


def unseal(engine: Engine, value: str | None) -> Session | None:
    """The session a cookie carries, if this engine signed it and it has not expired."""
    if not value or value.count(".") != 1:
        return None
    body, signature = value.split(".")
    expected = _b64(hmac.new(_key(engine), body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(signature, expected):
        return None
    try:
        session = _decode(_unb64(body))
    except (ValueError, msgspec.DecodeError):
        return None
    return session if session.expires > engine.clock() else None


def new_session(engine: Engine, ttl: float = PRE_SESSION_TTL, **who: str) -> Session:
    return Session(secrets.token_urlsafe(18), engine.clock() + ttl, **who)


def csrf_token(engine: Engine, session: Session) -> str:
    return _b64(hmac.new(_key(engine), f"csrf:{session.nonce}".encode(), hashlib.sha256).digest())


def csrf_ok(engine: Engine, session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(str(sent), csrf_token(engine, session))


async def principal_of(engine: Engine, session: Session) -> Principal | None:
    """Who a signed-in session is now: None if its key was revoked or expired, its user removed from
    the team, or it never signed in."""
    if session.kind in ("integration", "device"):
        found = await engine.db.credential(id=session.credential)
        if found is None or not found.usable(engine.clock()) or found.kind != session.kind:
            return None
        return Principal(found.kind, found.team, found.user, found.id)
    if session.kind == "user":
        if await engine.db.user(id=session.user) is None:
            return None
        if await engine.db.member_role(session.team, session.user) is None:
            return None
        return Principal("user", session.team, session.user)
    return None


async def viewer_of(request: Request, engine: Engine) -> Viewer:
    """The caller of a dashboard page, from its cookie; SignInRequired where the engine wants
    credentials and the cookie names none that still holds."""
    session = unseal(engine, request.cookies.get(COOKIE))
    principal = await principal_of(engine, session) if session and session.kind else None
    if principal is not None:
        assert session is not None
        return Viewer(principal, session, operator=await is_operator(engine, principal))
    if engine.config.auth == "keys":
        raise SignInRequired
    fresh = session is None or bool(session.kind)  # a lapsed sign-in starts over as the operator
    if fresh:
        session = new_session(engine, engine.config.session_ttl)
    assert session is not None
    return Viewer(ANONYMOUS, session, operator=True, fresh=fresh)


async def is_operator(engine: Engine, principal: Principal) -> bool:
    """Whether a signed-in principal is one of the engine's operators: of the `operator_team`. Looked
    up at each request, so a key revoked or a member removed there stops being one at once."""
    name = engine.config.operator_team
    if not name or not principal.team:
        return False
    team = await engine.db.team(name=name)
    return team is not None and team.id == principal.team


def visitor_session(request: Request, engine: Engine) -> tuple[Session, bool]:
    """The session of someone on the sign-in page: theirs if it holds, else a new one (True)."""
    session = unseal(engine, request.cookies.get(COOKIE))
    return (session, False) if session is not None else (new_session(engine), True)


def secure(request: Request, engine: Engine) -> bool:
    """Whether the browser reaches the engine over https: directly, or behind a proxy whose public URL is https."""
    return request.url.scheme == "https" or engine.config.public_url.lower().startswith("https://")


def set_cookie(response: Response, request: Request, engine: Engine, session: Session) -> None:
    """HttpOnly (no script reads it), SameSite=Lax (sent when following a link here, never with
    another site's form posts), Secure behind https, scoped to /ui, gone when the session ends."""
    max_age = max(0, int(session.expires - engine.clock()))
    response.set_cookie(COOKIE, seal(engine, session), max_age=max_age, path="/ui", httponly=True,
                        samesite="lax", secure=secure(request, engine))  # fmt: skip


def clear_cookie(response: Response, request: Request, engine: Engine) -> None:
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="lax", secure=secure(request, engine))
