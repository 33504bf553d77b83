"""Teams, users and credentials: making them, and telling who a request comes from.

A request carries `Authorization: Bearer <credential>`:
- `sk-` (integration) and `dk-` (device) keys belong to a team; `X-Team-ID` is ignored for them.
- `ak-` keys are agents', good only where agents are served.
- a user session JWT names a user; the team comes from `X-Team-ID`, which the user must belong to
  (the engine's records say, at each request, so a removal takes effect at once).
Keys are shown once and stored as hashes; revoking one takes effect at the next request.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Literal

import msgspec

from flowengine.errors import Error, conflict, not_found
from flowengine.identity import keys, tokens
from flowengine.identity.keys import KeyKind
from flowengine.identity.records import Credential, Role, Team, User
from flowengine.persistence.base import Database

PrincipalKind = Literal["anonymous", "user", "integration", "device", "agent"]
TOUCH_EVERY = 60.0  # seconds: a credential's last use is written no more often than this
_TEAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class Principal(msgspec.Struct, frozen=True):
    """Who a request comes from, and for which team ('' for none: an open engine's anonymous caller)."""

    kind: PrincipalKind
    team: str = ""
    user: str | None = None
    credential: str | None = None


ANONYMOUS = Principal("anonymous")


def unauthorized(message: str) -> Error:
    return Error("unauthorized", "unauthorized", message, "header.Authorization")


class Directory:
    def __init__(self, db: Database, jwt_secret: bytes, clock: Callable[[], float], new_id: Callable[[], str]) -> None:
        self.db = db
        self.jwt_secret = jwt_secret
        self.clock = clock
        self.new_id = new_id

    # operators' commands (flowengine teams / users / keys / token)

    async def create_team(self, name: str) -> Team:
        if not _TEAM_NAME.fullmatch(name):
            message = f"team name {name!r}: 1-64 of letters, digits, '.', '_', '-'"
            raise Error("invalid", "invalid_name", message, "name")
        team = Team(self.new_id(), name, self.clock())
        async with self.db.transaction() as tx:
            if await tx.team(name=name):
                raise conflict(f"team {name!r} exists already", "name")
            await tx.insert_team(team)
        return team

    async def team_named(self, name: str) -> Team:
        team = await self.db.team(name=name)
        if team is None:
            raise not_found("team", name, "team")
        return team

    async def add_user(self, email: str, team_name: str, role: Role = "member") -> User:
        """The user (made on first use) as a member of the team."""
        if not _EMAIL.fullmatch(email):
            raise Error("invalid", "invalid_email", f"{email!r} is not an email address", "email")
        team = await self.team_named(team_name)
        async with self.db.transaction() as tx:
            user = await tx.user(email=email.lower())
            if user is None:
                user = User(self.new_id(), email.lower(), self.clock())
                await tx.insert_user(user)
            await tx.put_member(team.id, user.id, role, self.clock())
        return user

    async def user_by_email(self, email: str) -> User:
        user = await self.db.user(email=email.lower())
        if user is None:
            raise not_found("user", email, "email")
        return user

    async def create_key(
        self, team: str, kind: KeyKind, display_name: str = "", *, user: str | None = None,
        expires_in_days: int | None = None, paired_with: str | None = None,
    ) -> tuple[Credential, str]:  # fmt: skip
        """A new key of the team (by id) and the raw key, which is shown this once and never stored."""
        credential, raw = self.new_key(team, kind, display_name, user=user, expires_in_days=expires_in_days,
                                       paired_with=paired_with)  # fmt: skip
        async with self.db.transaction() as tx:
            await tx.insert_credential(credential)
        return credential, raw

    def new_key(
        self, team: str, kind: KeyKind, display_name: str = "", *, user: str | None = None,
        expires_in_days: int | None = None, paired_with: str | None = None,
    ) -> tuple[Credential, str]:  # fmt: skip
        """A key's record and the raw key, not yet stored (for a caller storing it with more, in one transaction)."""
        if kind == "device" and user is None:
            raise Error("invalid", "user_required", "a device key belongs to a user", "user")
        if expires_in_days is not None and not 1 <= expires_in_days <= 365:
            raise Error("invalid", "invalid_field", "expires_in_days must be from 1 to 365", "expires_in_days")
        raw = keys.new_key(kind)
        now = self.clock()
        expires = now + expires_in_days * 86400 if expires_in_days is not None else None
        name = display_name or f"{kind} key {keys.key_prefix(raw)}"
        credential = Credential(self.new_id(), kind, team, user, name, keys.key_prefix(raw), keys.key_hash(raw), now,
                                expires, paired_with=paired_with)  # fmt: skip
        return credential, raw

    async def keys_of(self, team: str, kind: KeyKind | None, limit: int, offset: int) -> tuple[list[Credential], int]:
        """A page of a team's keys (of a kind, or all), oldest first, and how many there are in all."""
        return await self.db.credentials(team, kind, limit, offset), await self.db.count_credentials(team, kind)

    async def revoke(self, credential_id: str, team: str | None = None) -> Credential:
        """Revoke a key (of `team`, when given): at once. A device key's paired agent key goes with it."""
        async with self.db.transaction() as tx:
            found = await tx.credential(id=credential_id)
            if found is None or (team is not None and found.team != team):
                raise not_found("credential", credential_id, "path.credentialId")
            await tx.revoke_credentials([found.id, *([found.paired_with] if found.paired_with else [])], self.clock())
        return found

    def session_token(self, user: User, ttl: float) -> str:
        return tokens.issue(self.jwt_secret, user.id, user.email, self.clock(), ttl)

    # requests

    async def authenticate(self, bearer: str | None, team_header: str | None) -> Principal | None:
        """Who the bearer credential says the caller is (None: no credential given); a 401 for one
        that is not good, a 400/403 for a user's missing or foreign team."""
        if not bearer:
            return None
        kind = keys.kind_of(bearer)
        if kind is not None:
            return await self._key_principal(bearer)
        try:
            claims = tokens.verify(self.jwt_secret, bearer, self.clock())
        except tokens.InvalidToken as exc:
            raise unauthorized(f"the bearer credential is not valid: {exc}") from None
        if await self.db.user(id=claims.sub) is None:
            raise unauthorized("the token's user no longer exists")
        return Principal("user", await self._user_team(claims.sub, team_header), claims.sub)

    async def _key_principal(self, raw: str) -> Principal:
        now = self.clock()
        found = await self.db.credential(key_hash=keys.key_hash(raw))
        if found is None or not found.usable(now):
            why = "revoked" if found and found.revoked else "expired" if found else "not a key of this engine"
            raise unauthorized(f"the API key is {why}")
        if found.last_used is None or now - found.last_used > TOUCH_EVERY:
            await self.db.touch_credential(found.id, now)
        return Principal(found.kind, found.team, found.user, found.id)

    async def _user_team(self, user: str, team_header: str | None) -> str:
        """The team a user's request is for: X-Team-ID, which the user must belong to. '' when it is
        not given (routes scoped to a team refuse that; see api/auth.py)."""
        if team_header is None:
            return ""
        try:
            team = str(uuid.UUID(team_header))
        except ValueError:
            message = "X-Team-ID must be a team's UUID"
            raise Error("bad_request", "invalid_header", message, "header.X-Team-ID") from None
        if await self.db.member_role(team, user) is None:
            raise Error("forbidden", "not_a_member", f"you are not a member of team {team}", "header.X-Team-ID")
        return team
