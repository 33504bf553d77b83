"""The dashboard over plain HTTP: signing in, its cookie, CSRF, who sees what, the lists' filters and
pages, its live stream, and its static files. (tests/test_ui_browser.py drives it in Chromium.)"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import msgspec
import pytest
from dashboard import FAILING_FLOW, csrf_of, sign_in, write_flows
from live import Server, admin, make_key, wait_for_status

from flowengine.api.ui import graph, stats
from flowengine.core import machine
from flowengine.core.spec import Flow, parse_yaml

UPLOAD = {"Flow": {"DataWells": [{"Edge": "in", "Source": "upload"}]}}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(start_server, flows_dir: Path) -> Server:
    write_flows(flows_dir)
    return start_server(auth="keys")


@pytest.fixture
def open_engine(start_server, flows_dir: Path) -> Server:
    write_flows(flows_dir)
    return start_server()


def start(server: Server, flow: str, key: str | None = None, body: dict | None = None) -> dict:
    answer = httpx.post(f"{server.url}/api/v1/flow/{flow}", json=body, headers=bearer(key) if key else {})
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_with_auth_keys_no_page_works_without_signing_in(keyed: Server):
    run = start(keyed, "copy", make_key(keyed, "alpha"))["ID"]
    with httpx.Client(base_url=keyed.url) as client:
        for path in ["/ui", "/ui/runs", "/ui/flows", f"/ui/runs/{run}", f"/ui/runs/{run}/events", "/ui/runs/rows",
                     f"/ui/runs/{run}/logs/copy", "/ui/runs?status=ERROR"]:  # fmt: skip
            answer = client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/ui/sign-in?next=%2Fui"), path
            assert run not in answer.text
        # htmx's polling is sent to the sign-in page rather than swapping it into a list
        polled = client.get("/ui/runs/rows", headers={"HX-Request": "true"})
        assert polled.status_code == 401 and polled.headers["hx-redirect"].startswith("/ui/sign-in")
        for path in [f"/ui/runs/{run}/cancel", "/ui/flows/copy/runs", "/ui/sign-out"]:
            assert client.post(path).status_code == 401, path
        assert wait_for_status(client, run, {"WAITING"}, headers=bearer(make_key(keyed, "alpha")))
        assert client.get("/ui/sign-in").status_code == 200
        assert client.get("/ui/static/dashboard.css").status_code == 200  # no secret in a stylesheet


def test_signing_in_sets_a_signed_httponly_samesite_cookie_holding_no_credential(keyed: Server):
    key = make_key(keyed, "alpha")
    with httpx.Client(base_url=keyed.url) as client:
        form = client.get("/ui/sign-in")
        visitor = form.headers["set-cookie"]
        for elsewhere in ["https://evil.example/ui", "//evil.example/ui", "/uievil", "/api/v1/flow/x/cancel"]:
            with httpx.Client(base_url=keyed.url) as other:
                token = csrf_of(other.get("/ui/sign-in").text)
                sent = other.post("/ui/sign-in", data={"csrf": token, "credential": key, "next": elsewhere})
                assert sent.headers["location"] == "/ui/runs", elsewhere  # never off the dashboard
        answer = client.post("/ui/sign-in", data={"csrf": csrf_of(form.text), "credential": key, "next": "/ui/flows"})
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/flows"
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("flowengine_session=") and cookie != visitor
        flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
        assert "httponly" in flags and flags["samesite"].lower() == "samesite=lax" and flags["path"] == "Path=/ui"
        assert "secure" not in flags  # plain http on loopback: a Secure cookie would never come back
        assert key not in cookie and key[3:15] not in cookie  # the session names the key, it does not hold it
        assert client.get("/ui/flows").status_code == 200
        # A tampered cookie is no session: back to signing in.
        value = client.cookies["flowengine_session"]
        client.cookies.set("flowengine_session", value[:-2] + ("AA" if not value.endswith("AA") else "BB"), path="/ui")
        assert client.get("/ui/flows").status_code == 303


def test_a_wrong_credential_or_missing_team_is_refused_on_the_form(keyed: Server):
    admin(keyed, "teams", "create", "epsilon")
    admin(keyed, "users", "add", "ann@example.com", "--team", "epsilon")
    token = admin(keyed, "token", "--user", "ann@example.com")
    agent = make_key(keyed, "epsilon", "agent")
    with httpx.Client(base_url=keyed.url) as client:
        token_csrf = csrf_of(client.get("/ui/sign-in").text)
        for credential, team, status, message in [
            ("sk-not-one-of-ours", "", 401, "not a key of this engine"),
            (agent, "", 401, "agent"),
            (token, "", 400, "needs the team"),
            (token, "nope", 400, "there is no team"),
            ("", "", 400, "enter a key"),
        ]:
            answer = client.post("/ui/sign-in", data={"csrf": token_csrf, "credential": credential, "team": team})
            assert answer.status_code == status, (credential[:5], answer.text)
            assert message in answer.text and 'role="alert"' in answer.text
            assert "set-cookie" not in answer.headers or "kind" not in answer.headers["set-cookie"]
        signed = client.post("/ui/sign-in", data={"csrf": token_csrf, "credential": token, "team": "epsilon"})
        assert signed.status_code == 303
        assert client.get("/ui/runs").status_code == 200


def test_behind_https_the_cookie_is_secure(start_server, flows_dir: Path):
    server = start_server(auth="keys", public_url="https://flows.example.com")
    key = make_key(server, "alpha")
    form = httpx.get(f"{server.url}/ui/sign-in")
    assert "; secure" in form.headers["set-cookie"].lower()
    # The browser would send it back over https only; a proxy in front of the engine passes it on.
    visitor = form.headers["set-cookie"].split(";")[0]
    answer = httpx.post(f"{server.url}/ui/sign-in", data={"csrf": csrf_of(form.text), "credential": key},
                        headers={"Origin": "https://flows.example.com", "Cookie": visitor})  # fmt: skip
    assert answer.status_code == 303 and "; secure" in answer.headers["set-cookie"].lower()


def test_every_form_needs_its_csrf_token(keyed: Server):
    key = make_key(keyed, "alpha")
    run = start(keyed, "copy", key)["ID"]
    with httpx.Client(base_url=keyed.url) as visitor:
        visitor.get("/ui/sign-in")
        refused = visitor.post("/ui/sign-in", data={"credential": key})
        assert refused.status_code == 403 and "expired" in refused.text and "set-cookie" not in refused.headers
        huge = visitor.post("/ui/sign-in", data={"credential": "x" * 70_000})
        assert huge.status_code == 413 and "over 65536 bytes" in huge.text
    with sign_in(keyed, key) as client:
        token = csrf_of(client.get(f"/ui/runs/{run}").text)
        for data, headers in [({}, {}), ({"csrf": "forged"}, {}), ({}, {"X-CSRF-Token": "forged"})]:
            answer = client.post(f"/ui/runs/{run}/cancel", data=data, headers=headers)
            assert answer.status_code == 403 and "csrf" in answer.text, answer.text
        assert client.post("/ui/flows/copy/runs").status_code == 403
        assert client.post("/ui/sign-out", data={"csrf": "forged"}).status_code == 403
        assert wait_for_status(client, run, {"WAITING"}, headers=bearer(key))
        # Another session's token is no good either.
        with sign_in(keyed, key) as other:
            assert other.post(f"/ui/runs/{run}/cancel", data={"csrf": token}).status_code == 403
        before = httpx.get(f"{keyed.url}/api/v1/flow/status/{run}", headers=bearer(key)).json()["WaitingURLs"][0]
        time.sleep(1.1)  # TTLs are written to the second
        refreshed = client.post(f"/ui/runs/{run}/refresh", data={"csrf": token})
        assert refreshed.status_code == 303 and refreshed.headers["location"] == f"/ui/runs/{run}"
        after = httpx.get(f"{keyed.url}/api/v1/flow/status/{run}", headers=bearer(key)).json()["WaitingURLs"][0]
        assert after["TTL"] > before["TTL"] and after["PutURL"] != before["PutURL"]
        cancelled = client.post(f"/ui/runs/{run}/cancel", data={"csrf": token})
        assert cancelled.status_code == 303 and cancelled.headers["location"] == f"/ui/runs/{run}"
        assert wait_for_status(client, run, {"STOPPED"}, headers=bearer(key))
        # A form posted from another site is refused before its token is even read.
        assert client.post(f"/ui/runs/{run}/refresh", data={"csrf": token},
                           headers={"Origin": "https://evil.example"}).status_code == 403  # fmt: skip
        out = client.post("/ui/sign-out", data={"csrf": token})
        assert out.status_code == 303 and out.headers["location"] == "/ui/sign-in"
        assert client.get("/ui/runs").status_code == 303


def test_a_team_sees_only_its_own_runs_and_another_teams_run_is_not_found(keyed: Server):
    a, b = make_key(keyed, "alpha"), make_key(keyed, "beta")
    mine, theirs = start(keyed, "copy", a)["ID"], start(keyed, "copy", b)["ID"]
    with sign_in(keyed, a) as client:
        listed = client.get("/ui/runs").text
        assert mine in listed and theirs not in listed and "1 run match" in listed
        assert 'id="f-team"' not in listed  # a team cannot ask for other teams' runs
        assert theirs not in client.get("/ui/runs", params={"team": "-"}).text
        for path in [f"/ui/runs/{theirs}", f"/ui/runs/{theirs}/events", f"/ui/runs/{theirs}/logs/copy"]:
            answer = client.get(path)
            assert answer.status_code == 404 and "Not found" in answer.text, path
            assert answer.headers["content-type"].startswith("text/html")
        token = csrf_of(client.get(f"/ui/runs/{mine}").text)
        assert client.post(f"/ui/runs/{theirs}/cancel", data={"csrf": token}).status_code == 404
        assert wait_for_status(client, theirs, {"WAITING"}, headers=bearer(b))
        assert client.get(f"/ui/runs?id={theirs}", follow_redirects=True).status_code == 404


def test_a_revoked_key_ends_its_session_at_the_next_request_and_its_open_stream(keyed: Server):
    key, other = make_key(keyed, "alpha"), make_key(keyed, "alpha")
    run = start(keyed, "copy", key)["ID"]
    with sign_in(keyed, key) as client:
        assert client.get("/ui/runs").status_code == 200
        with client.stream("GET", f"/ui/runs/{run}/events") as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("event: ")) == "event: live"
            [row] = [row for row in admin(keyed, "keys", "list").splitlines() if key[:11] in row]
            admin(keyed, "keys", "revoke", row.split()[0])
            assert httpx.post(f"{keyed.url}/api/v1/flow/{run}/cancel", headers=bearer(other)).status_code == 200
            rest = list(lines)  # the change wakes the stream, which finds the key revoked and ends
        assert not any(line.startswith("event: ") for line in rest), rest
        assert client.get("/ui/runs").status_code == 303


def test_an_open_engine_shows_the_operator_every_teams_runs(open_engine: Server):
    a = make_key(open_engine, "alpha")
    mine, anonymous = start(open_engine, "copy", a)["ID"], start(open_engine, "copy")["ID"]
    with httpx.Client(base_url=open_engine.url) as client:
        page = client.get("/ui/runs")
        assert page.status_code == 200 and mine in page.text and anonymous in page.text and "2 runs match" in page.text
        assert "operator (open engine)" in page.text and 'id="f-team"' in page.text
        team = re.search(r'<option value="([0-9a-f-]{36})">alpha</option>', page.text).group(1)  # type: ignore[union-attr]
        only = client.get("/ui/runs", params={"team": team}).text
        assert mine in only and anonymous not in only
        none = client.get("/ui/runs", params={"team": "-"}).text
        assert anonymous in none and mine not in none
        assert client.get(f"/ui/runs/{mine}").status_code == 200
    with sign_in(open_engine, a) as signed:  # signed in, an operator sees as the team does
        assert anonymous not in signed.get("/ui/runs").text


def test_the_runs_list_filters_by_status_flow_and_time_and_pages_by_cursor(open_engine: Server):
    ids = [start(open_engine, "copy")["ID"] for _ in range(52)]
    other = start(open_engine, "slow")["ID"]
    with httpx.Client(base_url=open_engine.url) as client:
        client.post(f"/api/v1/flow/{ids[0]}/cancel")
        first = client.get("/ui/runs", params={"flow": "copy"}).text
        shown = re.findall(r'id="run-([0-9a-f-]{36})"', first)
        assert shown == ids[::-1][:50] and "52 runs match" in first
        older = re.search(r'href="/ui/runs\?([^"]*cursor=[^"]+)" rel="next"', first).group(1)  # type: ignore[union-attr]
        second = client.get(f"/ui/runs?{older.replace('&amp;', '&')}").text
        assert re.findall(r'id="run-([0-9a-f-]{36})"', second) == [ids[1], ids[0]]
        assert "hx-trigger" not in second  # an older page stays put; the first one refreshes
        assert 'hx-get="/ui/runs/rows?flow=copy"' in first
        stopped = client.get("/ui/runs", params={"status": "stopped"}).text
        assert re.findall(r'id="run-([0-9a-f-]{36})"', stopped) == [ids[0]]
        assert other not in first and other in client.get("/ui/runs").text
        # Time bounds: the IDs are UUIDv7, so "created after" is an ID range.
        doc = client.get(f"/api/v1/flow/status/{other}").json()
        since = doc["Created"][:16]  # the minute it was made: every run of this test is that late or later
        assert other in client.get("/ui/runs", params={"since": since}).text
        assert 'id="run-' not in client.get("/ui/runs", params={"until": "2001-01-01T00:00"}).text
        assert 'id="run-' not in client.get("/ui/runs", params={"since": "2999-01-01T00:00"}).text
        rows = client.get("/ui/runs/rows", params={"flow": "slow"})
        assert rows.text.startswith('<div id="runs"') and other in rows.text and "<html" not in rows.text
        for params, where in [({"status": "DONE"}, "query.status"), ({"since": "yesterday"}, "query.since"),
                              ({"cursor": "bogus!"}, "query.cursor")]:  # fmt: skip
            bad = client.get("/ui/runs", params=params)
            assert bad.status_code == 400 and where in bad.text, params
        assert client.get("/ui/runs", params={"id": f" {other} "}).headers["location"] == f"/ui/runs/{other}"
        assert client.get("/ui/runs", params={"id": "a/b?c"}).headers["location"] == "/ui/runs/a%2Fb%3Fc"


def test_a_run_page_streams_its_changes_until_the_run_ends(open_engine: Server):
    run = start(open_engine, "copy")
    with httpx.Client(base_url=open_engine.url, timeout=20) as client:
        page = client.get(f"/ui/runs/{run['ID']}").text
        assert f'data-events="/ui/runs/{run["ID"]}/events"' in page and "Refresh upload URLs" in page
        events: list[tuple[str, str]] = []
        with client.stream("GET", f"/ui/runs/{run['ID']}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            name = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:]) if name == "live" else ""))
                    if len(events) == 1:
                        assert httpx.put(run["WaitingURLs"][0]["PutURL"], content=b"hello\n").status_code == 200
                    if name == "end":
                        break
        htmls = [html for name, html in events if name == "live"]
        assert 'id="run-status">WAITING' in htmls[0]
        assert any('id="run-status">RUNNING' in h and "copying" in h for h in htmls)  # the log, live
        assert 'id="run-status">COMPLETE' in htmls[-1] and 'id="download-out"' in htmls[-1]
        assert events[-1][0] == "end"
        done = client.get(f"/ui/runs/{run['ID']}").text
        assert 'data-events=""' in done and "Cancel run" not in done
        log = client.get(f"/ui/runs/{run['ID']}/logs/copy", params={"attempt": 1})
        assert log.text == "copying\ncopied\n" and log.headers["content-type"].startswith("text/plain")


def test_a_run_started_from_the_dashboard_answers_with_its_upload_urls(keyed: Server):
    key = make_key(keyed, "alpha")
    with sign_in(keyed, key) as client:
        token = csrf_of(client.get("/ui/flows").text)
        started = client.post("/ui/flows/copy/runs", headers={"X-CSRF-Token": token})
        assert started.status_code == 201
        doc = started.json()
        assert doc["Status"] == "WAITING" and [w["Artifact"]["EdgeName"] for w in doc["WaitingURLs"]] == ["in"]
        # the run is the team's
        assert httpx.get(f"{keyed.url}/api/v1/flow/status/{doc['ID']}", headers=bearer(key)).status_code == 200
        broken = client.post("/ui/flows/broken/runs", headers={"X-CSRF-Token": token})
        assert broken.status_code == 422 and broken.json()["Code"] == "invalid_flow"
        assert client.post("/ui/flows/nope/runs", headers={"X-CSRF-Token": token}).status_code == 404


def test_the_flows_page_shows_problems_inputs_and_a_start_form(open_engine: Server):
    page = httpx.get(f"{open_engine.url}/ui/flows").text
    assert 'data-action="/ui/flows/copy/runs"' in page and 'id="in-copy-in"' in page
    assert "at most 976.6 KiB" in page  # the well's MaxSize
    assert "unknown task" in page.lower() or "missing" in page  # broken.yaml's problem
    assert 'data-action="/ui/flows/broken/runs"' not in page  # an invalid flow cannot be started


def test_the_overview_counts_runs_and_sums_up_the_last_hours_steps(open_engine: Server):
    ok, bad = start(open_engine, "copy"), start(open_engine, "failing")
    start(open_engine, "copy")
    with httpx.Client(base_url=open_engine.url) as client:
        for run in (ok, bad):
            assert httpx.put(run["WaitingURLs"][0]["PutURL"], content=b"x").status_code == 200
        wait_for_status(client, ok["ID"], {"COMPLETE"})
        wait_for_status(client, bad["ID"], {"ERROR"})
        page = client.get("/ui").text
        counts = {status: int(n) for n, status in re.findall(r'<span class="n">(\d+)</span> <span>(\w+)</span>', page)}
        assert counts == {"STOPPED": 0, "WAITING": 1, "RUNNING": 0, "COMPLETE": 1,
                                                           "ERROR": 1}  # fmt: skip
        assert re.search(r"failing</a></td><th scope=\"row\">parse</th><td>1</td><td>1</td>\s*<td class=\"bad\">100 %",
                         page)  # fmt: skip


def test_static_files_are_cached_by_version_and_pages_are_not(open_engine: Server):
    with httpx.Client(base_url=open_engine.url) as client:
        page = client.get("/ui/runs")
        assert page.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        src = re.search(r'src="(/ui/static/htmx.min.js\?v=[0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
        script = client.get(src)
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert script.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert "htmx" in script.text[:2000]
        assert client.get(src, headers={"If-None-Match": script.headers["etag"]}).status_code == 304
        assert client.get("/ui/static/htmx.min.js").headers["cache-control"] == "no-cache"  # unversioned
        assert client.get("/ui/static/nope.js").status_code == 404


# The pure parts.


def test_a_flow_is_laid_out_left_to_right_from_inputs_to_outputs():
    flow = parse_flow("""
DataWells: [{Edge: a, Source: upload}, {Edge: b, Source: upload}]
Steps:
  - {ID: merge, Uses: t, Inputs: [{Slot: x, Edge: a}, {Slot: y, Edge: b}], Outputs: [{Slot: o, Edge: m}]}
  - {ID: count, Uses: t, Inputs: [{Slot: x, Edge: m}], Outputs: [{Slot: o, Edge: n}]}
  - {ID: zip, Uses: t, Inputs: [{Slot: x, Edge: m}], Outputs: [{Slot: o, Edge: z}]}
""")
    drawn = graph.layout(flow)
    x = {(n.kind, n.id): n.x for n in drawn.nodes}
    assert x["edge", "a"] == x["edge", "b"] < x["step", "merge"] < x["edge", "m"] < x["step", "count"]
    assert x["step", "count"] == x["step", "zip"] < x["edge", "n"] == x["edge", "z"]
    assert len(drawn.links) == 7 and all(n.x + n.w <= drawn.width and n.y + n.h <= drawn.height for n in drawn.nodes)
    ys = [n.y for n in drawn.nodes if n.x == x["edge", "a"]]
    assert len(set(ys)) == len(ys)  # nodes of one column do not overlap


def parse_flow(text: str) -> Flow:
    return msgspec.convert(parse_yaml(text.encode()), Flow)


def test_step_figures_count_what_finished_in_the_window_and_rank_failures_first():
    def run(flow: str, steps: dict[str, machine.StepState]) -> machine.Run:
        return machine.Run("r", flow, machine.COMPLETE, 0.0, 0.0, {}, steps)

    ok = machine.StepState(machine.COMPLETE, 1, started=100.0, finished=104.0)
    slow = machine.StepState(machine.COMPLETE, 1, started=100.0, finished=110.0)
    failed = machine.StepState(machine.ERROR, 2, started=100.0, finished=101.0)
    old = machine.StepState(machine.ERROR, 1, started=10.0, finished=20.0)
    running = machine.StepState(machine.RUNNING, 1, started=100.0)
    figures = stats.step_stats([run("f", {"a": ok, "b": failed}), run("f", {"a": slow, "b": old}),
                                run("g", {"c": running})], since=50.0)  # fmt: skip
    assert [(s.flow, s.step, s.finished, s.failed) for s in figures] == [("f", "b", 1, 1), ("f", "a", 2, 0)]
    assert figures[0].failure_rate == 1.0 and figures[1].mean == 7.0 and figures[1].longest == 10.0


def test_the_timeline_draws_every_attempt_of_a_step_with_how_it_ended(start_server, flows_dir: Path):
    write_flows(flows_dir)
    retried = FAILING_FLOW.replace("Name: failing", "Name: retried").replace(
        "    Exec:", "    MaxAttempts: 2\n    Backoff: 0.2\n    Exec:"
    )
    (flows_dir / "retried.yaml").write_text(retried)
    server = start_server()
    run = start(server, "retried")
    assert httpx.put(run["WaitingURLs"][0]["PutURL"], content=b"no header").status_code == 200
    assert wait_for_status(httpx.Client(base_url=server.url), run["ID"], {"ERROR"})["Steps"][0]["Attempts"] == 2
    page = httpx.get(f"{server.url}/ui/runs/{run['ID']}").text
    bars = re.findall(r'<rect class="bar s-(\w+)"[^>]*><title>parse, attempt (\d)', page)
    assert bars == [("error", "1"), ("error", "2")]
