"""Webhooks, the pure part: what a task's end sends, how it is signed, when a failed attempt is tried
again, and which URLs and addresses a delivery may go to.

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
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from flowengine.core.machine import Run
from flowengine.core.times import rfc3339
from flowengine.errors import bad_request

WebhookEvent = Literal["task.completed", "task.failed"]
EVENTS: tuple[WebhookEvent, ...] = ("task.completed", "task.failed")
_OF_STATUS: dict[str, WebhookEvent] = {"completed": "task.completed", "failed": "task.failed"}
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
    """A webhook URL as given, if it may be one: https (http too where the operator allows private
    addresses), a host, at most MAX_URL characters; an address literal must be public unless allowed."""
    if len(url) > MAX_URL:
        raise bad_request("invalid_field", f"{field} is longer than {MAX_URL} characters", field)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as exc:
        raise bad_request("invalid_field", f"{field} is not a URL: {exc}", field) from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise bad_request("invalid_field", f"{field} must be an {' or '.join(schemes)}:// URL", field)
    if not parts.hostname:
        raise bad_request("invalid_field", f"{field} has no host", field)
    if parts.username is not None or parts.password is not None:
        raise bad_request("invalid_field", f"{field} must not carry a user or password", field)
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return url  # a name: its addresses are checked when a delivery resolves it
    if not allow_private and not public(address):
        raise bad_request("invalid_field", f"{field} is a private, loopback or reserved address", field)
    return url


def public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address on the internet: not private, loopback, link-local, multicast, reserved or unspecified."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast
