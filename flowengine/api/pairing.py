"""Pairing a device: `POST /api/v1/desktop/pair/start`, `/confirm` and `/poll` (identity/pairing.py).

`start` and `poll` are anonymous: the device has no credential yet. `start` is limited per client
address and in total (`pair_start_limit`, `pair_max_pending`), `confirm` per user
(`pair_confirm_limit`); `poll` by its own interval (`slow_down`). Past a limit the answer is 429 with
`Retry-After`.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from flowengine.api.auth import RUNTIME_SECURITY, SESSION_CALLERS, authenticate
from flowengine.api.errors import ReferenceErrorBody
from flowengine.api.http import json_response
from flowengine.api.openapi import Answer, ApiRoute, Body, Operation, in_header
from flowengine.api.r.common import body_of, public_base
from flowengine.config import Config
from flowengine.core.ratelimit import RateLimit
from flowengine.errors import Error
from flowengine.identity.pairing import MAX_DEVICE_NAME, Pairings, Polled, show
from flowengine.runtime.engine import Engine

TAG = "devices"


class Service:
    """What the routes share: the pairings and the limits, one per engine (made in the app's lifespan)."""

    def __init__(self, engine: Engine) -> None:
        config: Config = engine.config
        self.pairings = Pairings(engine.directory, config.pair_code_ttl, config.pair_interval)
        self.clock = engine.clock
        self.verification_url = config.pair_verification_url
        self.max_pending = config.pair_max_pending
        self.starts = RateLimit(config.pair_start_limit)
        self.confirms = RateLimit(config.pair_confirm_limit)


def service(request: Request) -> Service:
    return request.app.state.pairing


def limited(limit: RateLimit, key: str, now: float, what: str) -> None:
    wait = limit.take(key, now)
    if wait:
        message = f"too many {what} (at most {limit.limit} a minute): retry in {wait} s"
        raise Error("too_many_requests", "rate_limited", message, retry_after=wait)


class Start(msgspec.Struct):
    device_code: str  # the device's secret: poll with it; shown this once
    user_code: str  # XXXX-XXXX: the user confirms it, signed in, at verification_uri
    verification_uri: str
    expires_in: int  # seconds the codes wait to be confirmed
    interval: int  # seconds to wait between polls


class Confirm(msgspec.Struct):
    user_code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]  # any case; dashes and spaces ignored
    device_name: Annotated[str, msgspec.Meta(max_length=MAX_DEVICE_NAME)] = ""  # "": Desktop (paired YYYY-MM-DD)


class Confirmed(msgspec.Struct):
    status: str  # approved: the device's next poll collects its keys
    user_code: str
    device_name: str


class Poll(msgspec.Struct):
    device_code: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


async def start(request: Request) -> Response:
    pairing = service(request)
    client = request.client.host if request.client else ""
    limited(pairing.starts, client, pairing.clock(), "pairings started from this address")
    started = await pairing.pairings.start(pairing.max_pending)
    page = pairing.verification_url or f"{public_base(request)}/desktop/pair"
    uri = f"{page}{'&' if '?' in page else '?'}user_code={started.user_code}"
    return json_response(Start(started.device_code, started.user_code, uri, started.expires_in, started.interval))


async def confirm(request: Request) -> Response:
    principal = await authenticate(request.scope, SESSION_CALLERS)
    body = await body_of(request, Confirm)
    pairing = service(request)
    assert principal.user is not None
    limited(pairing.confirms, principal.user, pairing.clock(), "pairing confirmations")
    confirmed = await pairing.pairings.confirm(body.user_code, principal.team, principal.user, body.device_name)
    return json_response(Confirmed("approved", show(confirmed.user_code), confirmed.device_name or ""))


async def poll(request: Request) -> Response:
    body = await body_of(request, Poll)
    return json_response(await service(request).pairings.poll(body.device_code))


RETRY_AFTER = (in_header("Retry-After", int, "seconds to wait"),)
START = Operation(
    summary="Start pairing a device: codes for the device to show and to poll with (no credential)",
    description="The device shows `user_code` (and `verification_uri`); a member of a team confirms it there, "
    "signed in (`POST /api/v1/desktop/pair/confirm`), while the device polls `POST /api/v1/desktop/pair/poll` "
    "with `device_code` every `interval` seconds. The codes lapse after `expires_in` seconds.",
    tag=TAG,
    errors=ReferenceErrorBody,
    answers={
        200: Answer("the codes", Start),
        429: Answer(
            "too many pairings started from this address, or waiting in all (rate_limited, too_many_pairings)",
            ReferenceErrorBody,
            headers=RETRY_AFTER,
        ),
    },
)
CONFIRM = Operation(
    summary="Confirm a device's user code: the device's next poll gets a dk- key of yours in this team",
    description="A user's session token with `X-Team-ID` only (any key is refused with 401: a key cannot pair "
    "devices). The device's key is the user's in the team `X-Team-ID` names.",
    tag=TAG,
    body=Body(Confirm, "the code the device shows, and a name for the device (at most 100 characters)"),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={
        200: Answer("confirmed", Confirmed),
        400: "user_code is not one a device shows, or device_name is over 100 characters (the field is named)",
        404: "no pairing waits with this user_code: never started, expired, or collected (not_found)",
        409: "the pairing is confirmed already (conflict)",
        429: Answer("too many confirmations by this user (rate_limited)", ReferenceErrorBody, headers=RETRY_AFTER),
    },
)
POLL = Operation(
    summary="Poll a pairing: pending, slow_down, expired, or approved with the device's keys (no credential)",
    description="`pending`: poll again after `interval` seconds. `slow_down`: polled sooner than that; the "
    "interval grew by 5 s. `expired`: start again. `approved`: `raw_key` (the device's `dk-` key) and "
    "`agent_key` (its companion `ak-`, for the device's agent), this once: the pairing is gone, and the next "
    "poll is 404. Revoking the `dk-` revokes its `ak-`.",
    tag=TAG,
    body=Body(Poll, "the device code `start` gave"),
    errors=ReferenceErrorBody,
    answers={
        200: Answer("where the pairing stands", Polled),
        400: "device_code is missing or not a string (the field is named)",
        404: "no pairing has this device code: never started, collected already, or expired long ago (not_found)",
    },
)

routes = [
    ApiRoute("/api/v1/desktop/pair/start", start, name="pair_start", post=START),
    ApiRoute("/api/v1/desktop/pair/confirm", confirm, name="pair_confirm", post=CONFIRM),
    ApiRoute("/api/v1/desktop/pair/poll", poll, name="pair_poll", post=POLL),
]
