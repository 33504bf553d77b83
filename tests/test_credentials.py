"""Credential management over real HTTP: POST/GET /api/v1/credentials and DELETE /api/v1/credentials/{id},
for a signed-in user of a team only; keys shown once, kept as hashes, revoked or expired at once."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import httpx
import pytest
from live import Server, admin, make_key

UPLOAD = {"Flow": {"DataWells": [{"Edge": "in", "Source": "upload"}]}}
PRESIGN = {"file_name": "a.png", "file_size": 3, "content_type": "image/png"}


@dataclass
class Member:
    team: str  # the team's id
    token: str  # a session token of a member of it

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "X-Team-ID": self.team}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def member(server: Server, team: str, email: str) -> Member:
    team_id = admin(server, "teams", "create", team)
    admin(server, "users", "add", email, "--team", team)
    return Member(team_id, admin(server, "token", "--user", email))


@pytest.fixture
def keyed(start_server) -> Server:
    return start_server(auth="keys")


@pytest.fixture
def ann(keyed: Server) -> Member:
    return member(keyed, "alpha", "ann@example.com")


def create(client: httpx.Client, who: Member, **body: object) -> httpx.Response:
    return client.post("/api/v1/credentials", json={"kind": "integration", "display_name": "CI", **body},
                       headers=who.headers())  # fmt: skip


def works(client: httpx.Client, key: str) -> tuple[int, int]:
    """What the flow API and the workflow/task API answer the key."""
    flow = client.get("/api/v1/flow/runs", headers=bearer(key)).status_code
    runtime = client.post("/api/v1/r/files/presign", json=PRESIGN, headers=bearer(key)).status_code
    return flow, runtime


def test_each_field_is_held_to_its_bounds_and_named(keyed: Server, ann: Member):
    refused = [
        ({"display_name": ""}, "display_name"), ({"display_name": "x" * 101}, "display_name"),
        ({"display_name": "   "}, "display_name"), ({"expires_in_days": 0}, "expires_in_days"),
        ({"expires_in_days": 366}, "expires_in_days"), ({"expires_in_days": "30"}, "expires_in_days"),
        ({"kind": "device"}, "kind"), ({"kind": "admin"}, "kind"), ({"kind": None}, "kind"),
    ]  # fmt: skip
    with keyed.client() as client:
        for body, field in refused:
            answer = create(client, ann, **body)
            assert answer.status_code == 400, (body, answer.text)
            assert answer.json()["field"] == field and field in answer.json()["error_message"], body
        missing = client.post("/api/v1/credentials", json={"display_name": "CI"}, headers=ann.headers())
        assert (missing.status_code, missing.json()["field"]) == (400, "kind")
        assert client.get("/api/v1/credentials", headers=ann.headers()).json()["credentials"] == []  # none half-made
        for body in [{"display_name": "x" * 100}, {"expires_in_days": 1}, {"expires_in_days": 365}, {}]:
            assert create(client, ann, **body).status_code == 201, body


def test_a_key_is_shown_once_works_at_once_and_is_stored_only_as_a_hash(keyed: Server, ann: Member):
    with keyed.client() as client:
        made = create(client, ann, display_name="CI bot", expires_in_days=90)
        assert made.status_code == 201
        key = made.json()
        raw = key.pop("raw_key")
        assert raw.startswith("sk-") and key["key_prefix"] == raw[:11] and key["kind"] == "integration"
        assert key["key_status"] == "active" and key["user_id"] is None and key["last_used_at"] is None
        assert works(client, raw) == (200, 200)
        listed = client.get("/api/v1/credentials", headers=ann.headers())
        [item] = listed.json()["credentials"]
        assert {k: v for k, v in item.items() if k != "last_used_at"} == {k: v for k, v in key.items()
                                                                         if k != "last_used_at"}  # fmt: skip
        assert item["last_used_at"] is not None  # it was used just now
        assert raw not in listed.text and "hash" not in listed.text
        assert raw.encode() not in (keyed.data_dir / "flowengine.db").read_bytes()

        agent = create(client, ann, kind="agent", display_name="gpu box").json()
        assert agent["raw_key"].startswith("ak-") and agent["kind"] == "agent"
        refused = client.get("/api/v1/flow/runs", headers=bearer(agent["raw_key"]))
        assert refused.status_code == 401 and "an ak- key is not accepted here" in refused.json()["Message"]


def test_only_a_team_members_session_token_manages_credentials(keyed: Server, ann: Member):
    other = member(keyed, "beta", "bob@example.com")
    keys = [make_key(keyed, "alpha", kind) for kind in ("integration", "agent")]
    device = admin(keyed, "keys", "create", "--team", "alpha", "--kind", "device", "--user", "ann@example.com")
    body = {"kind": "integration", "display_name": "escalate"}
    with keyed.client() as client:
        some_id = create(client, ann).json()["id"]
        calls = [("POST", "/api/v1/credentials"), ("GET", "/api/v1/credentials"),
                 ("DELETE", f"/api/v1/credentials/{some_id}")]  # fmt: skip
        for method, path in calls:
            for key in [*keys, device]:
                answer = client.request(method, path, json=body if method == "POST" else None,
                                        headers={**bearer(key), "X-Team-ID": ann.team})  # fmt: skip
                assert answer.status_code == 401, (method, key[:3], answer.text)
            nobody = client.request(method, path, json=body if method == "POST" else None)
            assert nobody.status_code == 401
            no_team = client.request(method, path, headers=bearer(ann.token))
            assert (no_team.status_code, no_team.json()["field"]) == (400, "header.X-Team-ID")
            foreign = client.request(method, path, headers={**bearer(ann.token), "X-Team-ID": other.team})
            assert (foreign.status_code, foreign.json()["error_code"]) == (403, "not_a_member")
        answer = client.post("/api/v1/credentials", json=body, headers={**bearer(device), "X-Team-ID": ann.team})
        assert "a dk- key is not accepted here" in answer.json()["error_message"]
        assert works(client, device) == (200, 200)  # a good key, only not for this
        assert [c["id"] for c in client.get("/api/v1/credentials", headers=ann.headers()).json()["credentials"]
                if c["display_name"] == "escalate"] == []  # fmt: skip


def test_a_revoked_key_is_refused_at_once_on_both_apis(keyed: Server, ann: Member):
    with keyed.client() as client:
        made = create(client, ann).json()
        raw = made["raw_key"]
        assert works(client, raw) == (200, 200)
        revoked = client.delete(f"/api/v1/credentials/{made['id']}", headers=ann.headers())
        assert (revoked.status_code, revoked.content) == (204, b"")
        for path in ("/api/v1/flow/runs", "/api/v1/r/files/presign"):
            answer = client.request("GET" if "flow" in path else "POST", path, json=PRESIGN, headers=bearer(raw))
            assert answer.status_code == 401, path
        assert "revoked" in client.get("/api/v1/flow/runs", headers=bearer(raw)).json()["Message"]
        [item] = client.get("/api/v1/credentials", headers=ann.headers()).json()["credentials"]
        assert item["key_status"] == "revoked"
        assert client.delete(f"/api/v1/credentials/{made['id']}", headers=ann.headers()).status_code == 204
        for wrong in (raw, made["key_prefix"]):  # never the secret in a URL
            answer = client.delete(f"/api/v1/credentials/{wrong}", headers=ann.headers())
            assert (answer.status_code, answer.json()["field"]) == (400, "path.credentialId")
        unknown = client.delete("/api/v1/credentials/019abc12-7890-7890-abcd-ef1234567894", headers=ann.headers())
        assert (unknown.status_code, unknown.json()["error_code"]) == (404, "not_found")


def test_an_expired_key_is_refused_and_listed_as_expired(keyed: Server, ann: Member):
    with keyed.client() as client:
        made = create(client, ann, expires_in_days=1).json()
        [item] = client.get("/api/v1/credentials", headers=ann.headers()).json()["credentials"]
        assert item["expires_at"] > item["created_at"] and item["key_status"] == "active"
        assert works(client, made["raw_key"]) == (200, 200)
        # A day passes: the engine reads keys at each request, so a row past its expiry is one.
        with sqlite3.connect(keyed.data_dir / "flowengine.db") as db:
            db.execute("UPDATE credentials SET expires = expires - 86400 WHERE id = ?", (made["id"],))
        refused = client.get("/api/v1/flow/runs", headers=bearer(made["raw_key"]))
        assert refused.status_code == 401 and refused.json()["Message"] == "the API key is expired"
        assert works(client, made["raw_key"]) == (401, 401)
        [item] = client.get("/api/v1/credentials", headers=ann.headers()).json()["credentials"]
        assert item["key_status"] == "expired"


def test_another_teams_credentials_are_neither_listed_nor_revoked(keyed: Server, ann: Member):
    bob = member(keyed, "beta", "bob@example.com")
    with keyed.client() as client:
        mine = create(client, ann, display_name="ann's").json()
        create(client, bob, display_name="bob's")
        listed = client.get("/api/v1/credentials", headers=bob.headers()).json()
        assert [c["display_name"] for c in listed["credentials"]] == ["bob's"]
        assert listed["page_meta"]["total_count"] == 1
        answer = client.delete(f"/api/v1/credentials/{mine['id']}", headers=bob.headers())
        assert (answer.status_code, answer.json()["error_message"]) == (404, f"credential {mine['id']!r} not found")
        assert works(client, mine["raw_key"]) == (200, 200)


def test_listing_pages_and_filters_by_kind(keyed: Server, ann: Member):
    with keyed.client() as client:
        for n, kind in enumerate(["integration", "agent", "integration"]):
            create(client, ann, kind=kind, display_name=f"k{n}")

        def page(**query: object) -> dict:
            answer = client.get("/api/v1/credentials", params=query, headers=ann.headers())
            assert answer.status_code == 200, answer.text
            return answer.json()

        first, second = page(per_page=2), page(per_page=2, current_page=2)
        assert [c["display_name"] for c in first["credentials"] + second["credentials"]] == ["k0", "k1", "k2"]
        assert first["page_meta"] == {"current_page": 1, "per_page": 2, "total_count": 3}
        assert [c["display_name"] for c in page(kind="agent")["credentials"]] == ["k1"]
        assert page(kind="integration")["page_meta"]["total_count"] == 2
        assert page(kind="device") == {"credentials": [], "page_meta": {"current_page": 1, "per_page": 20,
                                                                         "total_count": 0}}  # fmt: skip
        for query, field in [({"kind": "sk"}, "query.kind"), ({"per_page": 101}, "query.per_page"),
                             ({"current_page": 0}, "query.current_page")]:  # fmt: skip
            answer = client.get("/api/v1/credentials", params=query, headers=ann.headers())
            assert (answer.status_code, answer.json()["field"]) == (400, field)
