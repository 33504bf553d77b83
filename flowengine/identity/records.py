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


class Pairing(msgspec.Struct, frozen=True):
    """A device waiting to be paired (identity/pairing.py): found by its device code's hash (the code
    itself is never stored) or by the code a user confirms it with."""

    device_hash: str  # SHA-256 of the device code
    user_code: str  # 8 characters, without the dash
    created: float
    expires: float
    interval: int  # seconds the device waits between polls (grows by 5 at each slow_down)
    last_poll: float | None = None
    team: str | None = None  # the rest: set when a member of the team confirms it
    user: str | None = None
    device_name: str | None = None
    confirmed: float | None = None
