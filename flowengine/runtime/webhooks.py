"""Team webhooks: their records, the deliveries a task's end makes, and the sender that POSTs them.

Durable: `enqueue` writes a task's deliveries in the transaction of the run change that ends the task
(`Engine.apply`), so a crash loses none. The sender (a supervised loop) claims due deliveries by moving
their `due` past a lease in the claiming statement (PostgreSQL: `FOR UPDATE SKIP LOCKED`), so two
loops or two engines never send one at once; every attempt is recorded with its outcome. An attempt
that a crash cut short is sent again when its lease ends, under the same `webhook-id`, which is how a
receiver tells a repeat.

Where it connects: the URL's host is resolved first and, unless the operator allows private
addresses, every address it has must be public; the request then goes to the address checked (the
name stays in Host and in TLS's SNI and certificate check), so a second lookup cannot point it
elsewhere. Redirects are never followed: a 3xx is a failed attempt.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import secrets
import socket
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import msgspec

from flowengine.core.spec import Flow
from flowengine.core.tasks import task_output, task_status
from flowengine.core.webhooks import SECRET_PREFIX, event_of, next_due, public, signature_headers, task_body
from flowengine.errors import Error, not_found
from flowengine.persistence.base import DeliveryAttempt, DeliveryRecord, Queries, WebhookRecord

if TYPE_CHECKING:
    from flowengine.core.machine import Run
    from flowengine.runtime.engine import Engine

log = logging.getLogger("flowengine.webhooks")
BATCH = 64  # deliveries one tick claims (and sends at once) at most
LEASE_MARGIN = 5.0  # seconds past an attempt's timeout (which bounds it whole) before another sender may take it
IDLE_PAUSE = 1.0  # seconds the sender sleeps when no commit wakes it (retries fall due meanwhile)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


async def enqueue(tx: Queries, engine: Engine, run: Run, flow: Flow) -> int:
    """The deliveries of a task's end to the team's active webhooks that take its event, in `tx` (the
    transaction of the change that ended it); returns how many."""
    event = event_of(task_status(run))
    if event is None:
        return 0
    hooks = [w for w in await tx.webhooks(run.team) if w.status == "active" and event in w.events.split()]
    if not hooks:
        return 0
    now = engine.clock()
    body = task_body(event, run, task_output(run, flow) if event == "task.completed" else None)
    await tx.insert_deliveries([DeliveryRecord(engine.new_id(), w.id, event, run.id, body, "pending", 0, 0, now, now,
                                               now) for w in hooks])  # fmt: skip
    return len(hooks)


async def team_webhook(engine: Engine, team: str, webhook_id: str) -> WebhookRecord:
    """The team's webhook; another team's is not found, as one that does not exist."""
    webhook = await engine.db.webhook(webhook_id)
    if webhook is None or webhook.team != team:
        raise not_found("webhook", webhook_id, "path.webhookId")
    return webhook


class Refused(Exception):
    """An attempt not made: the URL's host resolves to an address the operator does not allow."""


class Sender:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.wake = asyncio.Event()  # set by a commit that made deliveries: send them now
        self.client: httpx.AsyncClient | None = None  # while the engine is started

    def open(self) -> None:
        timeout = self.engine.config.webhook_timeout
        self.client = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(IDLE_PAUSE):  # not wait_for: see LocalExecutor.serve
                await self.wake.wait()
        self.wake.clear()

    async def tick(self) -> None:
        """Send every due delivery (BATCH at a time), each attempt recorded."""
        while True:
            now = self.engine.clock()
            lease = now + self.engine.config.webhook_timeout + LEASE_MARGIN
            claimed = await self.engine.db.claim_deliveries(now, lease, BATCH)
            await asyncio.gather(*(self.attempt(d) for d in claimed))
            if len(claimed) < BATCH:
                return

    async def attempt(self, delivery: DeliveryRecord) -> None:
        engine, config = self.engine, self.engine.config
        webhook = await engine.db.webhook(delivery.webhook)
        if webhook is None:  # deleted meanwhile, with its deliveries
            return
        now, started = engine.clock(), time.monotonic()
        code, error = None, ""
        if webhook.status != "active":
            error = "the webhook is disabled"
        else:
            headers = signature_headers(delivery.id, webhook.secret, delivery.body, now)
            try:
                async with asyncio.timeout(config.webhook_timeout):
                    code = (await self.post(webhook.url, headers, delivery.body)).status_code
                error = "" if 200 <= code < 300 else f"the receiver answered {code}"
            except TimeoutError:
                error = f"no answer within {config.webhook_timeout:g} s"
            except (httpx.HTTPError, OSError, Refused) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        latency = time.monotonic() - started
        tries = delivery.tries + 1
        due = None if not error or webhook.status != "active" else next_due(tries, config.webhook_retry_delays, now)
        status = "delivered" if not error else "pending" if due is not None else "failed"
        attempt = DeliveryAttempt(delivery.id, delivery.attempts + 1, now, code, latency, error)
        async with engine.db.transaction() as tx:
            await tx.record_delivery_attempt(attempt, status, due)
        if error:
            log.info("webhook %s: delivery %s attempt %d failed (%s)%s", webhook.id, delivery.id, attempt.n, error,
                     "" if due is None else f"; again in {due - now:.0f} s")  # fmt: skip

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> httpx.Response:
        """POST to `url` at an address of its host that the rules allow (module docstring)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]
        if not addresses:
            raise Refused(f"{host} has no address")
        if not self.engine.config.webhook_allow_private:
            for address in addresses:
                if not public(address):
                    raise Refused(f"{host} resolves to {address}, a private or reserved address")
        address = addresses[0]
        literal = f"[{address}]" if address.version == 6 else str(address)
        pinned = parts._replace(netloc=literal + (f":{parts.port}" if parts.port else "")).geturl()
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        netloc_host = parts.netloc.rpartition("@")[2]
        assert self.client is not None, "the sender's loop runs only while the engine is started"
        return await self.client.post(pinned, content=body, headers={**headers, "host": netloc_host},
                                      extensions=extensions)  # fmt: skip


# records


async def create(engine: Engine, team: str, name: str, url: str, events: list[str]) -> WebhookRecord:
    now = engine.clock()
    webhook = WebhookRecord(engine.new_id(), team, name, url, new_secret(), " ".join(dict.fromkeys(events)), "active",
                            now, now)  # fmt: skip
    async with engine.db.transaction() as tx:
        await tx.insert_webhook(webhook)
    return webhook


async def update(engine: Engine, webhook: WebhookRecord, **changes: object) -> WebhookRecord:
    changed = msgspec.structs.replace(webhook, **changes, updated=engine.clock())
    async with engine.db.transaction() as tx:
        await tx.update_webhook(changed)
    return changed


async def delete(engine: Engine, webhook: WebhookRecord) -> None:
    async with engine.db.transaction() as tx:
        await tx.delete_webhook(webhook.id)


async def resend(engine: Engine, webhook: WebhookRecord, delivery_id: str) -> DeliveryRecord:
    delivery = await engine.db.delivery(delivery_id)
    if delivery is None or delivery.webhook != webhook.id:
        raise not_found("delivery", delivery_id, "path.deliveryId")
    if delivery.status == "pending":
        raise Error("conflict", "delivery_pending", "this delivery is still being sent: it needs no re-send",
                    "path.deliveryId")  # fmt: skip
    async with engine.db.transaction() as tx:
        await tx.resend_delivery(delivery.id, engine.clock())
    engine.webhooks.wake.set()
    return await engine.db.delivery(delivery_id) or delivery
