"""Pairing a device over real HTTP: /api/v1/desktop/pair/start, /confirm and /poll; the dk- key and its
companion ak- collected exactly once, revoked together; codes that lapse; polls too soon; limits."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from live import Server, admin, make_key
from test_credentials import Member, bearer, member, works

from flowengine.identity.pairing import ALPHABET

USER_CODE = re.compile(f"[{ALPHABET}]{{4}}-[{ALPHABET}]{{4}}")


@pytest.fixture
def keyed(start_server) -> Server:
    return start_server(auth="keys", pair_interval=1)


@pytest.fixture
def ann(keyed: Server) -> Member:
    return member(keyed, "alpha", "ann@example.com")


def start(client: httpx.Client) -> dict:
    answer = client.post("/api/v1/desktop/pair/start")
    assert answer.status_code == 200, answer.text
    return answer.json()


def poll(client: httpx.Client, device_code: str) -> httpx.Response:
    return client.post("/api/v1/desktop/pair/poll", json={"device_code": device_code})


def confirm(client: httpx.Client, who: Member, user_code: str, **body: object) -> httpx.Response:
    return client.post("/api/v1/desktop/pair/confirm", json={"user_code": user_code, **body}, headers=who.headers())


def listed(client: httpx.Client, who: Member, kind: str) -> list[dict]:
    return client.get("/api/v1/credentials", params={"kind": kind}, headers=who.headers()).json()["credentials"]


def test_a_device_is_paired_and_collects_its_keys_exactly_once(keyed: Server, ann: Member):
    with keyed.client() as client:
        started = start(client)  # anonymous, on an engine where everything else needs a credential
        assert USER_CODE.fullmatch(started["user_code"]) and started["device_code"]
        assert started["verification_uri"] == f"{keyed.url}/desktop/pair?user_code={started['user_code']}"
        assert (started["expires_in"], started["interval"]) == (300, 1)
        assert poll(client, started["device_code"]).json() == {"status": "pending", "interval": 1}
        typed = started["user_code"].lower().replace("-", " ")  # as a user may type it
        confirmed = confirm(client, ann, typed, device_name="Mac Studio - Ann")
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json() == {"status": "approved", "user_code": started["user_code"],
                                    "device_name": "Mac Studio - Ann"}  # fmt: skip
        approved = poll(client, started["device_code"])
        assert approved.status_code == 200
        keys = approved.json()
        assert (
            keys["status"] == "approved" and keys["raw_key"].startswith("dk-") and keys["agent_key"].startswith("ak-")
        )
        again = poll(client, started["device_code"])
        assert again.status_code == 404 and "resource not found" in again.json()["error_message"]

        assert works(client, keys["raw_key"]) == (200, 200)
        agent = client.get("/api/v1/flow/runs", headers=bearer(keys["agent_key"]))
        assert agent.status_code == 401 and "an ak- key is not accepted here" in agent.json()["Message"]
        user_id = admin(keyed, "users", "add", "ann@example.com", "--team", "alpha")
        [device] = listed(client, ann, "device")
        [companion] = listed(client, ann, "agent")
        assert (device["display_name"], device["user_id"], device["key_prefix"]) == (
            "Mac Studio - Ann", user_id, keys["raw_key"][:11])  # fmt: skip
        assert (companion["display_name"], companion["key_prefix"]) == (
            "Mac Studio - Ann (agent)",
            keys["agent_key"][:11],
        )
        stored = (keyed.data_dir / "flowengine.db").read_bytes()
        for secret in (started["device_code"], keys["raw_key"], keys["agent_key"]):
            assert secret.encode() not in stored


@pytest.mark.backends("sqlite", "postgres")
def test_of_two_polls_at_once_one_collects_the_keys(keyed: Server, ann: Member):
    with keyed.client() as client:
        started = start(client)
        assert confirm(client, ann, started["user_code"]).json()["device_name"].startswith("Desktop (paired 20")
        with ThreadPoolExecutor(4) as pool:
            body = {"device_code": started["device_code"]}
            answers = list(pool.map(lambda _: httpx.post(f"{keyed.url}/api/v1/desktop/pair/poll", json=body), range(4)))
        assert sorted(a.status_code for a in answers) == [200, 404, 404, 404]
        assert len(listed(client, ann, "device")) == 1


@pytest.mark.backends("sqlite", "postgres")
def test_revoking_the_device_key_revokes_its_agent_key_at_once(keyed: Server, ann: Member):
    with keyed.client() as client:
        started = start(client)
        confirm(client, ann, started["user_code"])
        keys = poll(client, started["device_code"]).json()
        [device] = listed(client, ann, "device")
        assert client.delete(f"/api/v1/credentials/{device['id']}", headers=ann.headers()).status_code == 204
        assert works(client, keys["raw_key"]) == (401, 401)
        for key in (keys["raw_key"], keys["agent_key"]):
            answer = client.get("/api/v1/flow/runs", headers=bearer(key))
            assert (answer.status_code, answer.json()["Message"]) == (401, "the API key is revoked")
        assert [c["key_status"] for c in listed(client, ann, "device") + listed(client, ann, "agent")] == [
            "revoked", "revoked"]  # fmt: skip


def test_polling_sooner_than_the_interval_slows_the_device_down(keyed: Server, ann: Member):
    with keyed.client() as client:
        started = start(client)
        assert poll(client, started["device_code"]).json() == {"status": "pending", "interval": 1}
        assert poll(client, started["device_code"]).json() == {"status": "slow_down", "interval": 6}
        assert poll(client, started["device_code"]).json() == {"status": "slow_down", "interval": 11}
        confirm(client, ann, started["user_code"])
        assert poll(client, started["device_code"]).json()["status"] == "approved"  # the keys are not held back


def test_codes_lapse(start_server):
    server = start_server(auth="keys", pair_code_ttl=1)
    ann = member(server, "alpha", "ann@example.com")
    with server.client() as client:
        started, confirmed_in_time = start(client), start(client)
        assert started["expires_in"] == 1
        assert confirm(client, ann, confirmed_in_time["user_code"]).status_code == 200
        time.sleep(1.1)
        late = confirm(client, ann, started["user_code"])
        assert (late.status_code, late.json()["field"]) == (404, "user_code")
        for code in (started, confirmed_in_time):  # confirmed or not, keys are no longer handed out
            assert poll(client, code["device_code"]).json() == {"status": "expired"}
        assert poll(client, started["device_code"]).json() == {"status": "expired"}  # and stays so
        assert listed(client, ann, "device") == []


def test_only_a_member_signed_in_confirms_and_the_key_is_for_the_team_named(keyed: Server, ann: Member):
    bob = member(keyed, "beta", "bob@example.com")
    sk = make_key(keyed, "alpha")
    with keyed.client() as client:
        started = start(client)
        code = started["user_code"]
        foreign = confirm(client, Member(ann.team, bob.token), code)
        assert (foreign.status_code, foreign.json()["error_code"]) == (403, "not_a_member")
        no_team = client.post("/api/v1/desktop/pair/confirm", json={"user_code": code}, headers=bearer(ann.token))
        assert (no_team.status_code, no_team.json()["field"]) == (400, "header.X-Team-ID")
        for key in (sk, None):
            answer = client.post("/api/v1/desktop/pair/confirm", json={"user_code": code},
                                 headers={**(bearer(key) if key else {}), "X-Team-ID": ann.team})  # fmt: skip
            assert answer.status_code == 401
        assert poll(client, started["device_code"]).json()["status"] == "pending"  # none of those confirmed it
        assert confirm(client, bob, code).status_code == 200
        keys = poll(client, started["device_code"])
        assert keys.json()["status"] == "approved"
        # A dk- cannot pair another device (nor mint keys): a stolen one cannot outlive its revocation.
        other = start(client)
        by_device = client.post("/api/v1/desktop/pair/confirm", json={"user_code": other["user_code"]},
                                headers=bearer(keys.json()["raw_key"]))  # fmt: skip
        assert by_device.status_code == 401 and "a dk- key is not accepted here" in by_device.json()["error_message"]
        assert [c["display_name"] for c in listed(client, bob, "device")] != [] and listed(client, ann, "device") == []
        runs = client.get("/api/v1/flow/runs", headers=bearer(keys.json()["raw_key"]))
        assert runs.status_code == 200


def test_bad_input_is_named(keyed: Server, ann: Member):
    with keyed.client() as client:
        started = start(client)
        for user_code in ["", "AB0O-1I2L", "ABCD-EFG", "ABCD-EFGHJ", 42]:
            answer = confirm(client, ann, user_code)  # type: ignore[arg-type]
            assert (answer.status_code, answer.json()["field"]) == (400, "user_code"), user_code
        long_name = confirm(client, ann, started["user_code"], device_name="x" * 101)
        assert (long_name.status_code, long_name.json()["field"]) == (400, "device_name")
        unknown = confirm(client, ann, "2345-6789" if started["user_code"] != "2345-6789" else "3456-789A")
        assert unknown.status_code == 404 and unknown.json()["error_message"].startswith("resource not found")
        assert confirm(client, ann, started["user_code"], device_name="x" * 100).status_code == 200
        twice = confirm(client, ann, started["user_code"])
        assert (twice.status_code, twice.json()["error_code"]) == (409, "conflict")
        for body, status, field in [({}, 400, "device_code"), ({"device_code": 7}, 400, "device_code"),
                                    ({"device_code": "dc-never-issued"}, 404, "device_code")]:  # fmt: skip
            answer = client.post("/api/v1/desktop/pair/poll", json=body)
            assert (answer.status_code, answer.json()["field"]) == (status, field), body


def test_starts_and_confirmations_are_limited(start_server):
    server = start_server(auth="keys", pair_start_limit=2, pair_confirm_limit=2)
    ann = member(server, "alpha", "ann@example.com")
    with server.client() as client:
        codes = [start(client), start(client)]
        refused = client.post("/api/v1/desktop/pair/start")
        assert (refused.status_code, refused.json()["error_code"]) == (429, "rate_limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 30
        assert confirm(client, ann, codes[0]["user_code"]).status_code == 200
        assert confirm(client, ann, codes[0]["user_code"]).status_code == 409  # a try all the same
        third = confirm(client, ann, codes[1]["user_code"])
        assert (third.status_code, int(third.headers["retry-after"]) >= 1) == (429, True)
        assert poll(client, codes[1]["device_code"]).json()["status"] == "pending"


def test_pairings_waiting_at_once_are_capped(start_server):
    server = start_server(auth="keys", pair_start_limit=0, pair_max_pending=2)
    with server.client() as client:
        start(client), start(client)
        refused = client.post("/api/v1/desktop/pair/start")
        assert (refused.status_code, refused.json()["error_code"]) == (429, "too_many_pairings")
        assert refused.headers["retry-after"] == "60"
