"""Teams, keys and session tokens, end to end: the operator's commands, and the flow API honouring them."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest
from live import Server, admin, make_key, wait_for_status

from flowengine.identity.directory import Directory
from flowengine.persistence.sqlite import SqliteDatabase

UPLOAD = {"Flow": {"DataWells": [{"Edge": "in", "Source": "upload"}]}}


def bearer(credential: str, team: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}", **({"X-Team-ID": team} if team else {})}


@pytest.fixture
def keyed(start_server) -> Server:
    return start_server(auth="keys")


def test_with_auth_keys_every_flow_api_call_needs_a_credential(keyed: Server):
    with keyed.client() as client:
        for method, path in [
            ("POST", "/api/v1/flow/x"), ("GET", "/api/v1/flow/status/nope"), ("GET", "/api/v1/flow/runs"),
            ("GET", "/api/v1/flow"), ("GET", "/api/v1/tasks"), ("POST", "/api/v1/flow/nope/cancel"),
            ("POST", "/api/v1/upload/nope/in"),
        ]:  # fmt: skip
            answer = client.request(method, path, json=UPLOAD if method == "POST" else None)
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json()["Code"] == "unauthorized" and answer.json()["Location"] == "header.Authorization"
        for header in ["Basic dXNlcjpwdw==", "Bearer", "Bearer sk-not-one-of-ours", "Bearer eyJ.not.jwt"]:
            answer = client.get("/api/v1/flow/runs", headers={"Authorization": header})
            assert answer.status_code == 401, header
        assert client.get("/healthz").status_code == 200


def test_a_teams_runs_are_its_own_and_another_teams_are_not_found(keyed: Server):
    a, b = make_key(keyed, "alpha"), make_key(keyed, "beta")
    with keyed.client() as client:
        mine = client.post("/api/v1/flow/mine", json=UPLOAD, headers=bearer(a)).json()
        theirs = client.post("/api/v1/flow/theirs", json=UPLOAD, headers=bearer(b)).json()
        run = mine["ID"]
        for method, path in [
            ("GET", f"/api/v1/flow/status/{run}"), ("POST", f"/api/v1/flow/{run}/cancel"),
            ("POST", f"/api/v1/flow/{run}/refresh"), ("GET", f"/api/v1/flow/{run}/logs/x"),
            ("POST", f"/api/v1/upload/{run}/in"),
        ]:  # fmt: skip
            answer = client.request(method, path, headers={**bearer(b), "Content-Type": "application/octet-stream"})
            assert answer.status_code == 404, (path, answer.text)
            assert answer.json()["Message"] == f"run {run!r} not found"  # as if it did not exist
        listed = client.get("/api/v1/flow/runs", headers=bearer(b)).json()
        assert [r["ID"] for r in listed["Runs"]] == [theirs["ID"]] and listed["Total"] == 1
        assert client.get(f"/api/v1/flow/status/{run}", headers=bearer(a)).json()["Status"] == "WAITING"
        # A signed URL needs no credential: its signature is one.
        assert httpx.put(mine["WaitingURLs"][0]["PutURL"], content=b"data").status_code == 200
        assert wait_for_status(client, run, {"COMPLETE"}, headers=bearer(a))["Status"] == "COMPLETE"


def test_keys_are_shown_once_kept_as_hashes_and_revoked_at_once(keyed: Server):
    key = make_key(keyed, "gamma")
    assert key.startswith("sk-") and len(key) == 46
    with keyed.client() as client:
        assert client.get("/api/v1/flow/runs", headers=bearer(key)).status_code == 200
        [line] = [row for row in admin(keyed, "keys", "list").splitlines() if key[:11] in row]
        assert "active" in line and key not in line
        assert key.encode() not in (keyed.data_dir / "flowengine.db").read_bytes()
        assert "revoked" in admin(keyed, "keys", "revoke", line.split()[0])
        refused = client.get("/api/v1/flow/runs", headers=bearer(key))
        assert refused.status_code == 401 and refused.json()["Message"] == "the API key is revoked"


def test_an_agent_key_is_not_taken_by_the_flow_api(keyed: Server):
    agent = make_key(keyed, "delta", "agent")
    assert agent.startswith("ak-")
    with keyed.client() as client:
        answer = client.get("/api/v1/flow/runs", headers=bearer(agent))
        assert answer.status_code == 401 and "an ak- key is not accepted here" in answer.json()["Message"]


def test_a_session_token_needs_the_team_it_is_for_and_membership_of_it(keyed: Server):
    admin(keyed, "teams", "create", "epsilon")
    team = next(line.split()[0] for line in admin(keyed, "teams", "list").splitlines() if line.endswith("epsilon"))
    other = admin(keyed, "teams", "create", "zeta")
    admin(keyed, "users", "add", "ann@example.com", "--team", "epsilon")
    token = admin(keyed, "token", "--user", "ann@example.com")
    with keyed.client() as client:
        missing = client.get("/api/v1/flow/runs", headers=bearer(token))
        assert (missing.status_code, missing.json()["Location"]) == (400, "header.X-Team-ID")
        foreign = client.get("/api/v1/flow/runs", headers=bearer(token, other))
        assert (foreign.status_code, foreign.json()["Code"]) == (403, "not_a_member")
        bad = client.get("/api/v1/flow/runs", headers=bearer(token, "not-a-uuid"))
        assert bad.status_code == 400
        run = client.post("/api/v1/flow/t", json=UPLOAD, headers=bearer(token, team))
        assert run.status_code == 201
        # A team's key sees the run its member made; the key's team is its own whatever X-Team-ID says.
        key = make_key(keyed, "epsilon")
        assert client.get(f"/api/v1/flow/status/{run.json()['ID']}", headers=bearer(key, other)).status_code == 200
        tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
        assert client.get("/api/v1/flow/runs", headers=bearer(tampered, team)).status_code == 401


def test_open_engines_serve_anonymous_callers_and_keep_teams_apart(start_server):
    server = start_server()  # auth: open, the default, on loopback
    key = make_key(server, "eta")
    with server.client() as client:
        anonymous = client.post("/api/v1/flow/a", json=UPLOAD).json()
        keyed = client.post("/api/v1/flow/k", json=UPLOAD, headers=bearer(key)).json()
        assert [r["ID"] for r in client.get("/api/v1/flow/runs").json()["Runs"]] == [anonymous["ID"]]
        assert client.get(f"/api/v1/flow/status/{keyed['ID']}").status_code == 404
        assert client.get(f"/api/v1/flow/status/{anonymous['ID']}", headers=bearer(key)).status_code == 404


def test_an_open_engine_refuses_to_listen_beyond_loopback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "flowengine.cli", "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "flowengine: host: 0.0.0.0 is not a loopback address and auth is open: anyone who can reach it could run "
        "flows. Set auth: keys (see 'flowengine keys'), or allow_open: true"
    ]
    assert not (tmp_path / "d").exists()  # refused before anything was made


def test_an_expired_key_is_refused(tmp_path):
    now = [1_000_000.0]

    async def scenario() -> tuple[str, str | None]:
        db = SqliteDatabase(tmp_path / "db.sqlite")
        directory = Directory(db, b"s" * 32, lambda: now[0], iter(f"id-{i}" for i in range(9)).__next__)
        team = await directory.create_team("theta")
        _, raw = await directory.create_key(team.id, "integration", expires_in_days=1)
        assert (await directory.authenticate(raw, None)).team == team.id
        now[0] += 86_400
        try:
            await directory.authenticate(raw, None)
        except Exception as exc:
            return type(exc).__name__, str(exc)
        finally:
            await db.close()
        return "no error", None

    assert asyncio.run(scenario()) == ("Error", "the API key is expired")
