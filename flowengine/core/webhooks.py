"""Webhooks, the pure part: what a task's end sends, how it is signed, when a failed attempt is tried
again, and which URLs and addresses a delivery may go to.

Two kinds of delivery share it: a team webhook's (the workflow/task API, signed with the webhook's
secret) and a flow-API run's (its `Webhook` URL: the run document as `GET /api/v1/flow/status/{id}`
shows it, signed with the operator's `webhook_signing_key`).

A delivery's body is the reference's (cyberun-api.md §6.4): `event_type`, `task_id`, `task_status`,
`task_output` (null unless completed), `task_error` ("" unless failed), `timestamp`. It is signed two
ways, so a receiver can use either:

- `X-Webhook-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`, keyed with the secret as the
  reference shows it (the whole `whsec_...` string, UTF-8);
- Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256
  of "{id}.{timestamp}.{body}">`), keyed with the bytes the secret's base64 after `whsec_` encodes,
  as the Standard Webhooks libraries read a `whsec_` secret. The id is the delivery's, the same on
  every attempt, so a receiver can drop a repeat; the timestamp lets it refuse a replay.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import msgspec

from flowengine.core.times import rfc3339
from flowengine.errors import bad_request

if TYPE_CHECKING:
    from flowengine.core.machine import Run  # validate (which machine imports) checks URLs here

WebhookEvent = Literal["task.completed", "task.failed"]
EVENTS: tuple[WebhookEvent, ...] = ("task.completed", "task.failed")
_OF_STATUS: dict[str, WebhookEvent] = {"completed": "task.completed", "failed": "task.failed"}
RunEvent = Literal["run.completed", "run.error", "run.stopped"]
_OF_RUN_STATUS: dict[str, RunEvent] = {"COMPLETE": "run.completed", "ERROR": "run.error", "STOPPED": "run.stopped"}
SECRET_PREFIX = "whsec_"
MAX_URL = 2048
_encode = msgspec.json.Encoder().encode


class TaskDelivery(msgspec.Struct, frozen=True):
    event_type: WebhookEvent
    task_id: str
    task_status: str
    task_output: Any
    task_error: str
    timestamp: str


def event_of(task_status: str) -> WebhookEvent | None:
    """The webhook event a task's status is (None: cancelled and the other statuses send none)."""
    return _OF_STATUS.get(task_status)


def run_event(run_status: str) -> RunEvent | None:
    """The event a flow-API run's status is (None: it has not ended)."""
    return _OF_RUN_STATUS.get(run_status)


def task_body(event: WebhookEvent, run: Run, output: Any) -> bytes:
    """The body of a task's end, as sent (and signed) on every attempt."""
    completed = event == "task.completed"
    status = "completed" if completed else "failed"
    body = TaskDelivery(event, run.id, status, output if completed else None, "" if completed else run.error or "",
                        rfc3339(run.updated, precise=False))  # fmt: skip
    return _encode(body)


def signature_headers(delivery_id: str, secret: str, body: bytes, now: float) -> dict[str, str]:
    """Both signatures of an attempt (module docstring), with the type of its body."""
    stamp = str(int(now))
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{delivery_id}.{stamp}.".encode() + body
    standard = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "content-type": "application/json",
        "x-webhook-signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        "webhook-id": delivery_id,
        "webhook-timestamp": stamp,
        "webhook-signature": f"v1,{standard}",
    }


def next_due(tries: int, delays: list[float], now: float) -> float | None:
    """When a delivery whose `tries`-th attempt (from 1) just failed is tried again; None: no more."""
    return now + delays[tries - 1] if tries <= len(delays) else None


def check_url(url: str, allow_private: bool, field: str = "webhook_url") -> str:
    """A webhook URL as given, if it may be one (`url_problem`); else a 400 naming `field`."""
    problem = url_problem(url, allow_private)
    if problem:
        raise bad_request("invalid_field", f"{field} {problem}", field)
    return url


def url_problem(url: str, allow_private: bool) -> str:
    """What is wrong with a webhook URL ("" if nothing), as the end of a sentence naming it: https
    (http too where the operator allows private addresses), a host, at most MAX_URL characters, no
    user or password; an address literal must be public unless allowed (a name's addresses are
    checked when a delivery resolves it)."""
    if len(url) > MAX_URL:
        return f"is longer than {MAX_URL} characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as exc:
        return f"is not a URL: {exc}"
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        return f"must be an {' or '.join(schemes)}:// URL"
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not carry a user or password"
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return ""
    if not allow_private and not public(address):
        return "is a private, loopback or reserved address"
    return ""


def public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address on the internet: not private, loopback, link-local, multicast, reserved or unspecified."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast
