"""Pairing a device (a desktop app, a CLI), in the style of OAuth's device authorization grant.

1. The device starts a pairing, anonymously: it gets a secret device code and a short user code.
2. A member of a team, signed in, confirms the user code for that team.
3. The device polls with its device code: `pending` until then (`slow_down` when it polls sooner
   than its interval, which grows by 5 s each time), then `approved` once, with a new `dk-` key of
   the member in that team and its companion `ak-` key for the device's agent. The pairing is gone
   after that poll; revoking the `dk-` revokes its `ak-`.

The keys are made at that poll, in the transaction that deletes the pairing: no raw key is ever at
rest, and of two polls at once only one gets them. The device code is stored only as its SHA-256
(256 random bits: nothing to brute-force); the user code has about 40 bits, and confirming is
limited per user (api/pairing.py), so guessing one is out of reach too.
"""

from __future__ import annotations

import secrets
import time
from typing import Literal

import msgspec

from flowengine.errors import Error, conflict
from flowengine.identity import keys
from flowengine.identity.directory import Directory
from flowengine.identity.records import Pairing

# No 0/O, 1/I/L: a code read off one screen and typed on another is typed right.
ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
USER_CODE_LENGTH = 8
SLOW_DOWN = 5  # seconds a poll that came too soon adds to the interval (as RFC 8628 has it)
SWEEP_AFTER = 3600.0  # seconds an expired pairing still answers `expired` before it is forgotten (then 404)
MAX_DEVICE_NAME = 100  # characters
PollStatus = Literal["pending", "slow_down", "expired", "approved"]


class Started(msgspec.Struct, frozen=True):
    device_code: str  # the secret the device polls with: shown this once
    user_code: str  # XXXX-XXXX
    expires_in: int
    interval: int


class Polled(msgspec.Struct, frozen=True, omit_defaults=True):
    """Where a pairing stands, as the poll answers it."""

    status: PollStatus
    interval: int = 0  # pending, slow_down: seconds to wait before the next poll
    raw_key: str | None = None  # approved: the device's dk- key, this once
    agent_key: str | None = None  # approved: its companion ak- key (for the device's agent), this once


def show(user_code: str) -> str:
    return f"{user_code[:4]}-{user_code[4:]}"


def normalize(user_code: str) -> str:
    """A user code as typed (any case, dashes and spaces anywhere) as stored; a 400 if it cannot be one."""
    code = "".join(user_code.split()).replace("-", "").upper()
    if len(code) != USER_CODE_LENGTH or any(c not in ALPHABET for c in code):
        message = f"user_code must be the {USER_CODE_LENGTH} characters the device shows, like AB7K-PNQ3"
        raise Error("bad_request", "invalid_field", message, "user_code")
    return code


def not_found(location: str) -> Error:
    return Error("not_found", "not_found", "resource not found: no pairing waits with this code (or it was "
                 "collected already); start a new one", location)  # fmt: skip


class Pairings:
    def __init__(self, directory: Directory, ttl: float, interval: int) -> None:
        self.directory = directory
        self.db = directory.db
        self.ttl = ttl
        self.interval = interval

    async def start(self, max_pending: int = 0) -> Started:
        """A new pairing; expired ones are swept first. `max_pending` (0: no cap) pairings waiting at
        once across all clients, past which a start is refused."""
        now = self.directory.clock()
        device_code = "dc-" + secrets.token_urlsafe(32)
        async with self.db.transaction() as tx:
            await tx.drop_pairings(expired_before=now - SWEEP_AFTER)
            if max_pending and await tx.count_pairings(now) >= max_pending:
                raise Error("too_many_requests", "too_many_pairings",
                            f"{max_pending} pairings wait already: try again in a minute", retry_after=60)  # fmt: skip
        for _ in range(3):  # a user code taken by another waiting pairing: one in ~10^12 per pairing
            user_code = "".join(secrets.choice(ALPHABET) for _ in range(USER_CODE_LENGTH))
            pairing = Pairing(keys.key_hash(device_code), user_code, now, now + self.ttl, self.interval)
            try:
                async with self.db.transaction() as tx:
                    await tx.insert_pairing(pairing)
            except Error as exc:
                if exc.kind != "conflict":
                    raise
                continue
            return Started(device_code, show(user_code), max(1, round(self.ttl)), self.interval)
        raise Error("unavailable", "no_user_code", "no free user code was found: try again")

    async def confirm(self, user_code: str, team: str, user: str, device_name: str = "") -> Pairing:
        """Approve the pairing the user code names, for `user` in `team`; the device is named
        `device_name`, or "Desktop (paired YYYY-MM-DD)"."""
        code = normalize(user_code)
        now = self.directory.clock()
        name = device_name.strip() or time.strftime("Desktop (paired %Y-%m-%d)", time.gmtime(now))
        async with self.db.transaction() as tx:
            found = await tx.pairing(user_code=code)
            if found is None or now >= found.expires:
                raise not_found("user_code")
            if found.confirmed is not None:
                raise conflict("this pairing is confirmed already", "user_code")
            await tx.confirm_pairing(code, team, user, name, now)
        return msgspec.structs.replace(found, team=team, user=user, device_name=name, confirmed=now)

    async def poll(self, device_code: str) -> Polled:
        now = self.directory.clock()
        digest = keys.key_hash(device_code)
        async with self.db.transaction() as tx:
            found = await tx.pairing(device_hash=digest)
            if found is None:
                raise not_found("device_code")
            if now >= found.expires:
                return Polled("expired")
            if found.confirmed is None:
                too_soon = found.last_poll is not None and now - found.last_poll < found.interval
                interval = found.interval + SLOW_DOWN if too_soon else found.interval
                await tx.polled_pairing(digest, now, interval)
                return Polled("slow_down" if too_soon else "pending", interval)
            if not await tx.take_pairing(digest):  # another poll, at the same moment, got them
                raise not_found("device_code")
            assert found.team is not None and found.user is not None and found.device_name is not None
            agent, agent_key = self.directory.new_key(found.team, "agent", f"{found.device_name} (agent)",
                                                      user=found.user)  # fmt: skip
            device, device_key = self.directory.new_key(found.team, "device", found.device_name, user=found.user,
                                                        paired_with=agent.id)  # fmt: skip
            await tx.insert_credential(agent)
            await tx.insert_credential(device)
        return Polled("approved", found.interval, device_key, agent_key)
