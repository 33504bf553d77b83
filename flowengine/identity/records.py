"""Who is who: teams, users and their memberships, and credentials, as stored."""

from __future__ import annotations

from typing import Literal

import msgspec

from flowengine.identity.keys import KeyKind

Role = Literal["admin", "member"]
KeyStatus = Literal["active", "revoked", "expired"]


class Team(msgspec.Struct, frozen=True):
    id: str
    name: str
    created: float


class User(msgspec.Struct, frozen=True):
    id: str
    email: str
    created: float


class Credential(msgspec.Struct, frozen=True):
    id: str
    kind: KeyKind
    team: str
    user: str | None  # device keys are a user's, in a team
    display_name: str
    key_prefix: str  # the first characters, to show a key without revealing it
    key_hash: str  # SHA-256 of the key: the key itself is never stored
    created: float
    expires: float | None = None
    revoked: float | None = None
    last_used: float | None = None
    paired_with: str | None = None  # a device key's companion agent key, revoked with it

    def usable(self, now: float) -> bool:
        return self.status(now) == "active"

    def status(self, now: float) -> KeyStatus:
        if self.revoked is not None:
            return "revoked"
        return "expired" if self.expires is not None and now >= self.expires else "active"
