"""API keys: `sk-` (integration, team-wide), `dk-` (device, a user in a team), `ak-` (agent).

A key is its prefix and 256 random bits. Only its SHA-256 is stored: with that much entropy a
fast hash is enough (nothing to brute-force), and a lookup by hash needs no constant-time
comparison, since the hash is not secret. The first characters are kept too, to show a key
(`sk-AbCd1234`) without revealing it.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Literal

KeyKind = Literal["integration", "device", "agent"]
PREFIXES: dict[KeyKind, str] = {"integration": "sk-", "device": "dk-", "agent": "ak-"}
SHOWN = 8  # characters after the prefix kept in `key_prefix`


def new_key(kind: KeyKind) -> str:
    return PREFIXES[kind] + secrets.token_urlsafe(32)


def key_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def key_prefix(raw: str) -> str:
    return raw[: 3 + SHOWN]


def kind_of(raw: str) -> KeyKind | None:
    """The kind a raw key claims by its prefix (None: not one of ours, e.g. a JWT)."""
    return next((kind for kind, prefix in PREFIXES.items() if raw.startswith(prefix)), None)
