"""The dashboard's agents and webhooks pages over plain HTTP, against real agents' calls and a real
webhook receiver: what each shows, their refresh, the re-send button; and who sees what: a team its
own runs, tasks, agents and webhooks, the `operator_team`'s keys and members every team's, with a
team column and filter. (tests/test_ui_browser.py renders both pages in Chromium.)"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dashboard import csrf_of, sign_in
from live import Server, make_key
from test_agent_protocol import Agent, gpu_flow, start_run, until
from test_webhooks import HELLO, deliveries, make_hook, run_task, settled
from test_workflow_api import Team
from webhook_receiver import DELAYS, Receiver

pytestmark = pytest.mark.backends("sqlite", "postgres")  # every team's agents and webhooks: each backend's query

# An operator team; agents' timings short; webhooks to a loopback receiver, retried at once.
SETTINGS = {"auth": "keys", "operator_team": "ops", "lease": 2, "heartbeat_interval": 1, "offer_timeout": 2,
            "schedule_to_start": 60, "webhook_allow_private": "true", "webhook_retry_delays": DELAYS,
            "webhook_timeout": 1}  # fmt: skip


@pytest.fixture
def engine(start_server, flows_dir: Path) -> Server:
    (flows_dir / "hello.yaml").write_text(HELLO)  # a workflow: its tasks end in webhook deliveries
    return start_server(**SETTINGS)


@pytest.fixture
def api(engine: Server) -> Iterator[httpx.Client]:
    with engine.client() as c:
        yield c


def rows(html: str, kind: str) -> dict[str, str]:
    """A list page's rows (`<tr id="KIND-ID">`) by ID."""
    return dict(re.findall(rf'<tr id="{kind}-([^"]+)">(.*?)</tr>', html, re.S))


def agent_rows(html: str) -> dict[str, str]:
    """The agents list's rows by the agent's name."""
    return {re.search(r"<code>([^<]+)</code>", row).group(1): row for row in rows(html, "agent").values()}  # type: ignore[union-attr]


def test_the_agents_page_shows_status_leases_capacity_and_facts_and_refreshes(engine: Server, api: httpx.Client):
    alpha, beta = Team(engine, "alpha"), Team(engine, "beta")
    Agent(engine, alpha.ak, "old-box")
    time.sleep(3.2)  # three heartbeat intervals without one: offline
    gpu = Agent(engine, alpha.ak, "gpu-box", labels=["gpu", "a100"], region="eu-west", capacity=2,
                system={"gpu": "A100", "vram_gb": 80})  # fmt: skip
    Agent(engine, beta.ak, "beta-box")
    api.headers.update(alpha.headers())
    run = start_run(api, gpu_flow())
    [lease] = until(lambda: gpu.lease(wait=1))
    assert gpu.call(lease, "ack").status_code == 200
    gpu.heartbeat([lease["lease_id"]])
    with sign_in(engine, alpha.sk) as ui:
        page = ui.get("/ui/agents")
        assert page.status_code == 200
        shown = agent_rows(page.text)
        assert set(shown) == {"gpu-box", "old-box"}  # not beta's
        busy = shown["gpu-box"]
        assert 'class="status s-busy">busy<' in busy and f'href="/ui/runs/{run}"' in busy and "render #1" in busy
        assert all(f'<span class="tag">{label}</span>' in busy for label in ("gpu", "a100"))
        assert "eu-west" in busy and "1 / 2" in busy  # its region; running leases of its capacity
        assert "<dd>A100</dd>" in busy and "<dt>vram_gb</dt><dd>80</dd>" in busy  # its system facts
        assert re.search(r"\d+ ms ago|\d\.\d s ago", busy)  # the heartbeat's age
        assert 'class="status s-offline">offline<' in shown["old-box"] and "0 / 1" in shown["old-box"]
        assert '<th scope="col">Team</th>' not in page.text and 'id="f-team"' not in page.text
        assert 'hx-get="/ui/agents/rows?" hx-trigger="every 5s"' in page.text
        offline = ui.get("/ui/agents", params={"status": "offline"}).text
        assert set(agent_rows(offline)) == {"old-box"} and 'hx-get="/ui/agents/rows?status=offline"' in offline
        partial = ui.get("/ui/agents/rows", params={"status": "busy"})
        assert partial.text.startswith('<div id="agents"') and "<html" not in partial.text
        assert set(agent_rows(partial.text)) == {"gpu-box"}
        bad = ui.get("/ui/agents", params={"status": "asleep"})
        assert bad.status_code == 400 and "query.status" in bad.text
    # The API's list (the same states) agrees.
    listed = {a["agent_id"]: a for a in api.get("/api/v1/agents").json()["agent_list"]}
    assert listed["gpu-box"]["agent_status"] == "busy" and listed["gpu-box"]["running_tasks"] == [run]
    assert listed["old-box"]["agent_status"] == "offline"


def delivery_section(html: str, delivery: str) -> str:
    found = re.search(rf'<section class="card delivery" id="delivery-{delivery}".*?</section>', html, re.S)
    assert found, html
    return found.group(0)


def test_the_webhooks_pages_show_every_attempt_and_resend_a_failed_delivery(
    engine: Server, api: httpx.Client, receiver: Receiver
):
    alpha = Team(engine, "alpha")
    hook = make_hook(api, alpha, receiver.url, display_name="to the lab")
    receiver.script = [500, 503, 404, 302, 500]  # the first attempt and all four retries fail
    task = run_task(api, alpha)
    [delivery] = settled(api, alpha, hook, 1)
    assert delivery["delivery_status"] == "failed"
    with sign_in(engine, alpha.sk) as ui:
        listing = ui.get("/ui/webhooks").text
        [row] = rows(listing, "webhook").values()
        assert "to the lab" in row and receiver.url in row and "task.completed" in row and "never" in row
        assert hook["webhook_secret"] not in listing
        page = ui.get(f"/ui/webhooks/{hook['id']}")
        assert page.status_code == 200 and hook["webhook_secret"] not in page.text
        section = delivery_section(page.text, delivery["id"])
        assert 'class="status s-failed">failed<' in section and f'href="/ui/tasks/{task}"' in section
        codes = re.findall(r"<td>(?:<span class=\"error-text\">)?(\d{3})(?:</span>)?</td>", section)
        assert codes == ["500", "503", "404", "302", "500"]
        assert "redirect" in section.lower() or "302" in section
        assert "hx-get" not in page.text  # nothing is being sent: the list stays put
        action = f"/ui/webhooks/{hook['id']}/deliveries/{delivery['id']}/resend"
        assert f'action="{action}"' in section and ">Re-send</button>" in section
        assert ui.post(action).status_code == 403  # no CSRF token
        receiver.hold.clear()  # the receiver holds the re-sent attempt: the delivery stays pending meanwhile
        answer = ui.post(action, data={"csrf": csrf_of(page.text)})
        assert answer.status_code == 303 and answer.headers["location"] == f"/ui/webhooks/{hook['id']}"
        pending = ui.get(f"/ui/webhooks/{hook['id']}").text
        assert 'class="status s-pending">pending<' in delivery_section(pending, delivery["id"])
        assert f'hx-get="/ui/webhooks/{hook["id"]}/rows" hx-trigger="every 5s"' in pending
        assert ">Re-send</button>" not in pending
        receiver.hold.set()
        until(lambda: deliveries(api, alpha, hook)[0]["delivery_status"] == "delivered")
        partial = ui.get(f"/ui/webhooks/{hook['id']}/rows").text
        assert partial.startswith('<div id="deliveries"') and "<html" not in partial
        done = delivery_section(partial, delivery["id"])
        assert 'class="status s-delivered">delivered<' in done and ">Re-send</button>" not in done
        assert re.findall(r"<td>(\d)</td>", done) == ["1", "2", "3", "4", "5", "6"]  # every attempt ever
        assert "never" not in rows(ui.get("/ui/webhooks").text, "webhook")[hook["id"]]  # last delivered: now


def test_a_team_sees_only_its_own_and_the_operator_team_sees_every_teams(
    engine: Server, api: httpx.Client, receiver: Receiver
):
    alpha, beta, ops = Team(engine, "alpha"), Team(engine, "beta"), Team(engine, "ops")
    hooks = {t.id: make_hook(api, t, receiver.url)["id"] for t in (alpha, beta)}
    tasks = {t.id: run_task(api, t) for t in (alpha, beta)}
    agents = {alpha.id: "alpha-box", beta.id: "beta-box"}
    for t in (alpha, beta):
        Agent(engine, t.ak, agents[t.id])

    def listed(ui: httpx.Client, params: dict[str, str] | None = None) -> dict[str, set[str]]:
        """What each list shows: runs, tasks, agents, webhooks."""
        return {"runs": set(rows(ui.get("/ui/runs", params=params).text, "run")),
                "tasks": set(rows(ui.get("/ui/tasks", params=params).text, "task")),
                "agents": set(agent_rows(ui.get("/ui/agents", params=params).text)),
                "webhooks": set(rows(ui.get("/ui/webhooks", params=params).text, "webhook"))}  # fmt: skip

    def of(*teams: Team) -> dict[str, set[str]]:
        return {"runs": {tasks[t.id] for t in teams}, "tasks": {tasks[t.id] for t in teams},
                "agents": {agents[t.id] for t in teams}, "webhooks": {hooks[t.id] for t in teams}}  # fmt: skip

    with sign_in(engine, alpha.sk) as ui:
        assert listed(ui) == of(alpha)
        assert listed(ui, {"team": beta.id}) == of(alpha)  # a team cannot ask for another's
        for path in ["/ui/runs", "/ui/tasks", "/ui/agents", "/ui/webhooks"]:
            page = ui.get(path).text
            assert 'id="f-team"' not in page and '<th scope="col">Team</th>' not in page, path
        token = csrf_of(ui.get("/ui/webhooks").text)
        for path in [f"/ui/runs/{tasks[beta.id]}", f"/ui/tasks/{tasks[beta.id]}", f"/ui/webhooks/{hooks[beta.id]}",
                     f"/ui/webhooks/{hooks[beta.id]}/rows"]:  # fmt: skip
            answer = ui.get(path)
            assert answer.status_code == 404 and "Not found" in answer.text, path
            assert f"Where: <code>{path}</code>" in answer.text, answer.text  # the page's address, not the API's field
            assert not re.search(r"path\.(runID|taskId|webhookId)", answer.text), answer.text
        resend = ui.post(f"/ui/webhooks/{hooks[beta.id]}/deliveries/x/resend", data={"csrf": token})
        assert resend.status_code == 404
    # The operator team's key, and its member with a session token, see every team's.
    for credential, team in [(ops.sk, ""), (ops.jwt, "ops")]:
        with sign_in(engine, credential, team) as ui:
            assert listed(ui) == of(alpha, beta)
            assert listed(ui, {"team": alpha.id}) == of(alpha)
            assert listed(ui, {"team": beta.id}) == of(beta)
            for path in ["/ui/runs", "/ui/tasks", "/ui/agents", "/ui/webhooks"]:
                page = ui.get(path).text
                assert 'id="f-team"' in page and '<th scope="col">Team</th>' in page and ">beta</td>" in page, path
                assert "<strong" in page and ">operator</strong>" in page
            for path in [f"/ui/runs/{tasks[beta.id]}", f"/ui/tasks/{tasks[beta.id]}", f"/ui/webhooks/{hooks[beta.id]}"]:
                assert ui.get(path).status_code == 200, path


def test_an_operator_team_that_names_no_team_is_warned_of_at_start(start_server):
    warning = "operator_team 'ops' names no team: no one signed in is the dashboard's operator until a team"
    server = start_server(auth="keys", operator_team="ops")
    until(lambda: warning in server.log.read_text())  # it starts all the same: no one is an operator (fails closed)
    make_key(server, "ops")
    server.stop()
    again = start_server(data_dir=server.data_dir, auth="keys", operator_team="ops")
    assert again.client().get("/healthz").status_code == 200
    assert "operator_team" not in again.log.read_text()
