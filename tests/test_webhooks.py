"""Team webhooks over real HTTP, with a real receiver (webhook_receiver.py): a small HTTP server on
loopback that answers as each test scripts it and records every request, whose two signatures (the
reference's hex HMAC, Standard Webhooks) each test checks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks
from live import Server, free_port
from test_workflow_api import Team
from webhook_receiver import DELAYS, SLOW, Receiver, verify

pytestmark = pytest.mark.backends("sqlite", "postgres")

HELLO = """
Name: hello
Description: Writes a file, or fails when asked to.
DataWells:
  - {Edge: out}
Steps:
  - {ID: make, Uses: make, Outputs: [{Slot: out, Edge: out}]}
Tasks:
  - Name: make
    Exec: [sh, -c, 'test "$0" != fail && echo made > "$1"', "${mode}", "${out}"]
    Outputs: [{Name: out}]
    Flags: [{Name: mode, Type: string, Default: ok}]
Workflow:
  Slug: hello
  Parameters:
    - {Key: mode, Type: string, Step: make, Flag: mode}
"""


@pytest.fixture
def start(start_server: Callable[..., Server], flows_dir: Path) -> Callable[..., Server]:
    (flows_dir / "hello.yaml").write_text(HELLO)

    def started(**settings: Any) -> Server:
        defaults = {"auth": "keys", "webhook_allow_private": "true", "webhook_retry_delays": DELAYS,
                    "webhook_timeout": 1}  # fmt: skip
        return start_server(**{**defaults, **settings})

    return started


@pytest.fixture
def engine(start: Callable[..., Server]) -> Server:
    return start()


@pytest.fixture
def client(engine: Server) -> Iterator[httpx.Client]:
    with engine.client() as c:
        yield c


def make_hook(client: httpx.Client, team: Team, url: str, **fields: Any) -> dict[str, Any]:
    doc = {"display_name": "notify", "webhook_url": url, "webhook_events": ["task.completed", "task.failed"], **fields}
    answer = client.post("/api/v1/webhooks", json=doc, headers=team.headers())
    assert answer.status_code == 201, answer.text
    return answer.json()


def run_task(client: httpx.Client, team: Team, mode: str = "ok") -> str:
    answer = client.post("/api/v1/r/workflows/slug/hello/run", json={"parameters": {"mode": mode}},
                         headers=team.headers())  # fmt: skip
    assert answer.status_code in (200, 201, 202), answer.text
    return answer.json()["task_id"]


def deliveries(client: httpx.Client, team: Team, hook: dict[str, Any]) -> list[dict[str, Any]]:
    answer = client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=team.headers())
    assert answer.status_code == 200, answer.text
    return answer.json()["deliveries"]


def settled(client: httpx.Client, team: Team, hook: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The webhook's deliveries once `count` of them are no longer pending."""
    deadline = time.monotonic() + 20
    while True:
        found = deliveries(client, team, hook)
        if len([d for d in found if d["delivery_status"] != "pending"]) >= count:
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


def test_completed_and_failed_tasks_are_delivered_signed_both_ways(client, engine, receiver):
    team = Team(engine, "acme")
    hook = make_hook(client, team, receiver.url)
    assert hook["webhook_secret"].startswith("whsec_") and hook["webhook_status"] == "active"
    done, failed = run_task(client, team), run_task(client, team, "fail")
    requests = receiver.wait(2)
    bodies = {verify(r, hook["webhook_secret"])["task_id"]: json.loads(r["body"]) for r in requests}
    assert bodies[done]["event_type"] == "task.completed" and bodies[done]["task_status"] == "completed"
    assert bodies[done]["task_output"]["storage_key"] and bodies[done]["task_error"] == ""
    assert bodies[failed]["event_type"] == "task.failed" and bodies[failed]["task_status"] == "failed"
    assert bodies[failed]["task_output"] is None and bodies[failed]["task_error"]
    assert set(bodies[done]) == {"event_type", "task_id", "task_status", "task_output", "task_error", "timestamp"}
    found = settled(client, team, hook, 2)
    assert {d["delivery_status"] for d in found} == {"delivered"}
    assert all(len(d["attempts"]) == 1 and d["attempts"][0]["status_code"] == 200 for d in found)
    assert {r["headers"]["webhook-id"] for r in requests} == {d["id"] for d in found}
    read = client.get(f"/api/v1/webhooks/{hook['id']}", headers=team.headers()).json()
    assert read["last_delivered_at"] is not None


def test_only_the_events_a_webhook_names_are_sent(client, engine, receiver):
    team = Team(engine, "acme")
    hook = make_hook(client, team, receiver.url, webhook_events=["task.failed"])
    run_task(client, team)
    failed = run_task(client, team, "fail")
    settled(client, team, hook, 1)
    time.sleep(0.5)
    assert [json.loads(r["body"])["task_id"] for r in receiver.requests] == [failed]


def test_every_retry_is_made_and_recorded_then_the_delivery_fails_and_can_be_resent(client, engine, receiver):
    team = Team(engine, "acme")
    hook = make_hook(client, team, receiver.url)
    receiver.script = [500, 503, 404, 302, 500]  # the first attempt and all four retries fail
    run_task(client, team)
    (delivery,) = settled(client, team, hook, 1)
    assert delivery["delivery_status"] == "failed"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 404, 302, 500]
    assert all("answered" in a["error"] for a in delivery["attempts"])
    assert len(receiver.requests) == 5 and {r["headers"]["webhook-id"] for r in receiver.requests} == {delivery["id"]}
    gaps = [b["at"] - a["at"] for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert gaps[1] >= 0.2 and gaps[3] >= 0.6  # the schedule's delays, in order
    resent = client.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/resend", headers=team.headers())
    assert resent.status_code == 202, resent.text
    receiver.wait(6)
    (delivery,) = settled(client, team, hook, 1)
    assert delivery["delivery_status"] == "delivered" and delivery["attempts"][-1]["status_code"] == 200
    assert receiver.requests[-1]["headers"]["webhook-id"] == delivery["id"]
    again = client.post(f"/api/v1/webhooks/{hook['id']}/deliveries/nope/resend", headers=team.headers())
    assert again.status_code == 404


def test_an_unreachable_or_slow_receiver_counts_as_failed_with_the_error_recorded(client, engine, receiver):
    team = Team(engine, "acme")
    hook = make_hook(client, team, f"http://127.0.0.1:{free_port()}/nobody-listens")
    run_task(client, team)
    (delivery,) = settled(client, team, hook, 1)
    assert delivery["delivery_status"] == "failed" and len(delivery["attempts"]) == 5
    assert all(a["status_code"] is None and "ConnectError" in a["error"] for a in delivery["attempts"])
    slow = make_hook(client, team, receiver.url)
    receiver.script = [SLOW]  # answers after the engine's 1 s timeout: a failed attempt, retried
    run_task(client, team)
    (delivery,) = settled(client, team, slow, 1)
    assert delivery["delivery_status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [None, 200]
    assert "no answer within 1 s" in delivery["attempts"][0]["error"]


def test_a_rotated_secret_signs_at_once_and_the_old_one_no_longer_verifies(client, engine, receiver):
    team = Team(engine, "acme")
    hook = make_hook(client, team, receiver.url)
    rotated = client.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret", headers=team.headers())
    assert rotated.status_code == 200
    secret = rotated.json()["webhook_secret"]
    assert secret.startswith("whsec_") and secret != hook["webhook_secret"]
    assert client.get(f"/api/v1/webhooks/{hook['id']}", headers=team.headers()).json()["webhook_secret"] == secret
    run_task(client, team)
    (request,) = receiver.wait(1)
    verify(request, secret)
    with pytest.raises(AssertionError):
        verify(request, hook["webhook_secret"])
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        headers = {k.lower(): v for k, v in request["headers"].items() if k.lower().startswith("webhook-")}
        standardwebhooks.Webhook(hook["webhook_secret"]).verify(request["body"], headers)


def test_a_delivery_survives_a_crash_and_keeps_its_webhook_id(start, receiver):
    engine = start(webhook_timeout=2)
    team = Team(engine, "acme")
    with engine.client() as client:
        hook = make_hook(client, team, receiver.url)
        receiver.hold.clear()  # the receiver takes the first attempt and does not answer it
        task = run_task(client, team)
        receiver_saw_it = time.monotonic() + 20
        while not _pending_requests(receiver) and time.monotonic() < receiver_saw_it:
            time.sleep(0.02)
    engine.kill9()  # the event committed, its delivery under way: nothing recorded it as sent
    receiver.hold.set()
    engine.start()
    with engine.client() as client:
        (delivery,) = settled(client, team, hook, 1)
    assert delivery["delivery_status"] == "delivered"
    ids = {r["headers"]["webhook-id"] for r in receiver.requests}
    assert ids == {delivery["id"]}  # a receiver that keeps the ids it has seen takes the event once
    assert {json.loads(r["body"])["task_id"] for r in receiver.requests} == {task}
    assert len({r["body"] for r in receiver.requests}) == 1  # the same bytes every time


def test_bad_webhooks_are_400s_naming_the_field_and_nothing_is_stored(start):
    engine = start(webhook_allow_private="false")
    team = Team(engine, "acme")
    cases = [
        ({"display_name": ""}, "display_name"),
        ({"display_name": "x" * 256}, "display_name"),
        ({"display_name": "   "}, "display_name"),
        ({"webhook_url": "http://example.com/hook"}, "webhook_url"),
        ({"webhook_url": "https://127.0.0.1/hook"}, "webhook_url"),
        ({"webhook_url": "https://[::1]/hook"}, "webhook_url"),
        ({"webhook_url": "https://10.1.2.3/hook"}, "webhook_url"),
        ({"webhook_url": "https://169.254.169.254/latest"}, "webhook_url"),
        ({"webhook_url": "https://user:pw@example.com/hook"}, "webhook_url"),
        ({"webhook_url": "https://example.com/" + "a" * 2048}, "webhook_url"),
        ({"webhook_url": "ftp://example.com/"}, "webhook_url"),
        ({"webhook_events": []}, "webhook_events"),
        ({"webhook_events": ["task.cancelled"]}, "webhook_events[0]"),
        ({"webhook_events": "task.completed"}, "webhook_events"),
    ]
    with engine.client() as client:
        for change, field in cases:
            doc = {"display_name": "n", "webhook_url": "https://example.com/hook", "webhook_events": ["task.failed"],
                   **change}  # fmt: skip
            answer = client.post("/api/v1/webhooks", json=doc, headers=team.headers())
            assert answer.status_code == 400, (change, answer.text)
            assert answer.json()["field"] == field, (change, answer.json())
            assert answer.json()["error_message"]
        assert client.get("/api/v1/webhooks", headers=team.headers()).json()["webhooks"] == []
        good = make_hook(client, team, "https://example.com/hook")
        bad = client.patch(f"/api/v1/webhooks/{good['id']}", json={"webhook_url": "https://192.168.0.1/"},
                           headers=team.headers())  # fmt: skip
        assert bad.status_code == 400 and bad.json()["field"] == "webhook_url"
        read = client.get(f"/api/v1/webhooks/{good['id']}", headers=team.headers()).json()
        assert read["webhook_url"] == "https://example.com/hook"
        assert client.post("/api/v1/webhooks", json={}, headers={}).status_code == 401


def test_a_name_resolving_to_a_private_address_is_refused_when_it_is_sent(start, receiver):
    engine = start(webhook_allow_private="false")
    team = Team(engine, "acme")
    with engine.client() as client:
        hook = make_hook(client, team, "https://localhost/hook")  # a name: checked when resolved
        run_task(client, team)
        (delivery,) = settled(client, team, hook, 1)
    assert delivery["delivery_status"] == "failed"
    assert all(a["status_code"] is None and "private" in a["error"] for a in delivery["attempts"])


def test_update_disable_delete_and_another_teams_webhooks_are_not_found(client, engine, receiver):
    acme, other = Team(engine, "acme"), Team(engine, "other")
    hook = make_hook(client, acme, receiver.url)
    path = f"/api/v1/webhooks/{hook['id']}"
    for method, suffix, kwargs in [
        ("GET", "", {}),
        ("PATCH", "", {"json": {"display_name": "mine"}}),
        ("DELETE", "", {}),
        ("POST", "/rotate-secret", {}),
        ("GET", "/deliveries", {}),
    ]:
        answer = client.request(method, path + suffix, headers=other.headers(), **kwargs)
        assert answer.status_code == 404, (method, suffix, answer.text)
    assert client.get("/api/v1/webhooks", headers=other.headers()).json()["webhooks"] == []
    run_task(client, other)  # the other team's task: nothing for acme's webhook
    changed = client.patch(path, json={"display_name": "renamed", "webhook_events": ["task.failed"]},
                           headers=acme.headers("jwt"))  # fmt: skip
    assert changed.status_code == 200, changed.text
    assert (changed.json()["display_name"], changed.json()["webhook_events"]) == ("renamed", ["task.failed"])
    assert changed.json()["webhook_secret"] == hook["webhook_secret"]
    assert client.patch(path, json={"webhook_status": "disabled"}, headers=acme.headers("dk")).status_code == 200
    run_task(client, acme, "fail")
    time.sleep(1)
    assert receiver.requests == [] and deliveries(client, acme, hook) == []
    assert client.delete(path, headers=acme.headers()).status_code == 204
    assert client.get(path, headers=acme.headers()).status_code == 404


def _pending_requests(receiver: Receiver) -> int:
    return receiver.received - len(receiver.requests)
