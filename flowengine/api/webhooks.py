"""Team webhooks (cyberun-api.md §6): `POST /api/v1/webhooks`, `GET /api/v1/webhooks[/{webhookId}]`,
`PATCH` and `DELETE /api/v1/webhooks/{webhookId}`, `POST .../rotate-secret`, and the deliveries:
`GET .../deliveries` (every attempt's status code, latency and error), `POST .../deliveries/{deliveryId}/resend`.

Dual-auth as the reference's management pages: a user's session token with `X-Team-ID`, an `sk-` or
a `dk-` key. Another team's webhook is 404, as one that does not exist. The secret (`whsec_...`) is
in the answers of create, read and rotate; a rotation replaces it at once (no overlap).
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from flowengine.api.auth import RUNTIME_CALLERS, RUNTIME_SECURITY, authenticate
from flowengine.api.errors import ReferenceErrorBody
from flowengine.api.http import engine_of, json_response
from flowengine.api.openapi import Answer, ApiRoute, Body, Operation, in_path
from flowengine.api.r.common import PageMeta, body_of, page_answer, page_params
from flowengine.core.times import rfc3339
from flowengine.core.webhooks import MAX_URL, WebhookEvent, check_url
from flowengine.errors import bad_request
from flowengine.persistence.base import DeliveryAttempt, DeliveryRecord, WebhookRecord
from flowengine.runtime import webhooks

TAG = "webhooks"
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Url = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_URL)]
Events = Annotated[list[WebhookEvent], msgspec.Meta(min_length=1)]


class NewWebhook(msgspec.Struct):
    display_name: Name
    webhook_url: Url
    webhook_events: Events


class WebhookChange(msgspec.Struct):
    """Only the fields sent change."""

    display_name: Name | msgspec.UnsetType = msgspec.UNSET
    webhook_url: Url | msgspec.UnsetType = msgspec.UNSET
    webhook_events: Events | msgspec.UnsetType = msgspec.UNSET
    webhook_status: Literal["active", "disabled"] | msgspec.UnsetType = msgspec.UNSET


class Webhook(msgspec.Struct):
    id: str
    display_name: str
    webhook_url: str
    webhook_secret: str  # whsec_...: the key both signatures use
    webhook_events: list[WebhookEvent]
    webhook_status: Literal["active", "disabled"]
    created_at: str
    last_delivered_at: str | None


class WebhookList(msgspec.Struct):
    webhooks: list[Webhook]


class Secret(msgspec.Struct):
    webhook_secret: str


class Attempt(msgspec.Struct):
    attempt: int  # from 1
    attempted_at: str
    status_code: int | None  # none: no answer (refused, timed out, unreachable)
    latency_ms: float
    error: str  # "" when the receiver answered 2xx


class Delivery(msgspec.Struct):
    id: str  # the webhook-id header of every attempt
    event_type: WebhookEvent
    task_id: str
    delivery_status: Literal["pending", "delivered", "failed"]
    created_at: str
    next_attempt_at: str | None
    attempts: list[Attempt]


class DeliveryPage(msgspec.Struct):
    deliveries: list[Delivery]
    page_meta: PageMeta


def _at(t: float | None) -> str | None:
    return None if t is None else rfc3339(t, precise=False)


def _webhook(w: WebhookRecord) -> Webhook:
    return Webhook(w.id, w.display_name, w.url, w.secret, w.events.split(), w.status,  # type: ignore[arg-type]
                   rfc3339(w.created, precise=False), _at(w.last_delivered))  # fmt: skip


def _delivery(d: DeliveryRecord, attempts: list[DeliveryAttempt]) -> Delivery:
    tried = [Attempt(a.n, rfc3339(a.at), a.status_code, round(a.latency * 1000, 1), a.error) for a in attempts]
    due = d.due if d.status == "pending" else None
    return Delivery(d.id, d.event, d.task, d.status, rfc3339(d.created), _at(due), tried)  # type: ignore[arg-type]


def _url(request: Request, url: str) -> str:
    return check_url(url.strip(), engine_of(request).config.webhook_allow_private)


def _name(name: str) -> str:
    if not name.strip():
        raise bad_request("invalid_field", "display_name must not be blank", "display_name")
    return name


async def create(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    body = await body_of(request, NewWebhook)
    url = _url(request, body.webhook_url)
    made = await webhooks.create(engine_of(request), principal.team, _name(body.display_name), url,
                                 list(body.webhook_events))  # fmt: skip
    return json_response(_webhook(made), 201)


async def listing(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    found = await engine_of(request).db.webhooks(principal.team)
    return json_response(WebhookList([_webhook(w) for w in found]))


async def read(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    webhook = await webhooks.team_webhook(engine_of(request), principal.team, request.path_params["webhookId"])
    return json_response(_webhook(webhook))


async def change(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    engine = engine_of(request)
    webhook = await webhooks.team_webhook(engine, principal.team, request.path_params["webhookId"])
    body = await body_of(request, WebhookChange)
    changes: dict[str, object] = {}
    if body.display_name is not msgspec.UNSET:
        changes["display_name"] = _name(body.display_name)
    if body.webhook_url is not msgspec.UNSET:
        changes["url"] = _url(request, body.webhook_url)
    if body.webhook_events is not msgspec.UNSET:
        changes["events"] = " ".join(dict.fromkeys(body.webhook_events))
    if body.webhook_status is not msgspec.UNSET:
        changes["status"] = body.webhook_status
    return json_response(_webhook(await webhooks.update(engine, webhook, **changes)))


async def delete(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    engine = engine_of(request)
    webhook = await webhooks.team_webhook(engine, principal.team, request.path_params["webhookId"])
    await webhooks.delete(engine, webhook)
    return Response(status_code=204)


async def rotate(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    engine = engine_of(request)
    webhook = await webhooks.team_webhook(engine, principal.team, request.path_params["webhookId"])
    rotated = await webhooks.update(engine, webhook, secret=webhooks.new_secret())
    return json_response(Secret(rotated.secret))


async def deliveries(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    engine = engine_of(request)
    webhook = await webhooks.team_webhook(engine, principal.team, request.path_params["webhookId"])
    found = partial(webhooks.deliveries, engine, webhook)
    return await page_answer(request, found, lambda row: _delivery(*row), DeliveryPage)


async def resend(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    engine = engine_of(request)
    webhook = await webhooks.team_webhook(engine, principal.team, request.path_params["webhookId"])
    delivery = await webhooks.resend(engine, webhook, request.path_params["deliveryId"])
    return json_response(_delivery(delivery, []), 202)


CALLERS = "A user's session token with `X-Team-ID`, an `sk-` or a `dk-` key. Another team's webhook is 404."
WEBHOOK_ID = in_path("webhookId", str, "the webhook's `id`")
URL_RULES = (
    "`webhook_url`: `https://` and at most 2048 characters; its host must resolve to public addresses only "
    "(http and private or loopback addresses only where the operator sets `webhook_allow_private`)."
)
NOT_FOUND = "the team has no such webhook (not_found)"
CREATE = Operation(
    summary="Make a webhook of the team: task.completed / task.failed POSTed to its URL, signed with its secret",
    description=f"{CALLERS} {URL_RULES} The answer carries the `whsec_` secret both signatures use.",
    tag=TAG,
    body=Body(NewWebhook, "its name (1-255), URL and events"),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={
        201: Answer("the webhook, with its secret", Webhook),
        400: "a field is missing, out of its bounds, of the wrong type, or a URL the rules refuse (the field is named)",
    },
)
LIST = Operation(
    summary="The team's webhooks, oldest first",
    description=CALLERS,
    tag=TAG,
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={200: Answer("every webhook of the team", WebhookList)},
)
READ = Operation(
    summary="A webhook of the team, with its secret and when a delivery last succeeded",
    description=CALLERS,
    tag=TAG,
    params=(WEBHOOK_ID,),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={200: Answer("the webhook", Webhook), 404: NOT_FOUND},
)
CHANGE = Operation(
    summary="Change a webhook's name, URL, events or status (disabled: its deliveries stop)",
    description=f"{CALLERS} Only the fields sent change. {URL_RULES}",
    tag=TAG,
    params=(WEBHOOK_ID,),
    body=Body(WebhookChange, "the fields to change"),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={200: Answer("the webhook as it is now", Webhook), 400: "a field the rules refuse (named)", 404: NOT_FOUND},
)
DELETE = Operation(
    summary="Delete a webhook, with its deliveries",
    description=CALLERS,
    tag=TAG,
    params=(WEBHOOK_ID,),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={204: Answer("deleted"), 404: NOT_FOUND},
)
ROTATE = Operation(
    summary="Give a webhook a new secret; the previous one stops at once",
    description=f"{CALLERS} Every attempt from now on, retries of earlier deliveries too, is signed with the new one.",
    tag=TAG,
    params=(WEBHOOK_ID,),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={200: Answer("the new secret", Secret), 404: NOT_FOUND},
)
DELIVERIES = Operation(
    summary="A webhook's deliveries, newest first, with every attempt (status code, latency, error)",
    description=CALLERS,
    tag=TAG,
    params=(WEBHOOK_ID, *page_params("deliveries")),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={
        200: Answer("a page of deliveries", DeliveryPage),
        400: "current_page or per_page is not one the query takes (invalid_query)",
        404: NOT_FOUND,
    },
)
RESEND = Operation(
    summary="Send a delivery again, from the start of the retry schedule, under the same webhook-id",
    description=CALLERS,
    tag=TAG,
    params=(WEBHOOK_ID, in_path("deliveryId", str, "the delivery's `id`")),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    answers={
        202: Answer("the delivery, pending again", Delivery),
        404: "no such webhook or delivery (not_found)",
        409: "the delivery is still pending (delivery_pending)",
    },
)

routes = [
    ApiRoute("/api/v1/webhooks", create, name="create_webhook", post=CREATE),
    ApiRoute("/api/v1/webhooks", listing, name="list_webhooks", get=LIST),
    ApiRoute("/api/v1/webhooks/{webhookId}", read, name="get_webhook", get=READ),
    ApiRoute("/api/v1/webhooks/{webhookId}", change, name="update_webhook", patch=CHANGE),
    ApiRoute("/api/v1/webhooks/{webhookId}", delete, name="delete_webhook", delete=DELETE),
    ApiRoute("/api/v1/webhooks/{webhookId}/rotate-secret", rotate, name="rotate_webhook_secret", post=ROTATE),
    ApiRoute("/api/v1/webhooks/{webhookId}/deliveries", deliveries, name="list_webhook_deliveries", get=DELIVERIES),
    ApiRoute("/api/v1/webhooks/{webhookId}/deliveries/{deliveryId}/resend", resend, name="resend", post=RESEND),
]
