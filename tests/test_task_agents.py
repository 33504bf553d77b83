"""Tasks run by agents, over real HTTP against a real server: where a task runs (`agent_id`,
`agent_labels`, `gpu_type`), its status through the queue (`waiting` until a worker takes its step,
`queued` while offered, `running` from the acknowledgement, `waiting` again when an offer goes back),
its SSE `progress` events, and the agents' listing (the reference's fields, paged)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from dashboard import sign_in
from live import Server, make_key
from test_agent_protocol import FAST, Agent, until

RENDER = """
Name: render
Workflow:
  RequiredLabels: [gpu]
Tasks:
  - Name: render
    Tool: render
    Outputs: [{Name: image, ContentType: image/png}]
Steps:
  - ID: render
    Uses: render
    Outputs: [{Slot: image, Edge: image}]
"""
GREET = """
Name: greet
Tasks:
  - Name: greet
    Outputs: [{Name: text}]
    Exec: [sh, -c, 'printf hello > "$0"', "${text}"]
Steps:
  - ID: greet
    Uses: greet
    Outputs: [{Slot: text, Edge: text}]
Workflow: {}
"""
RTX = {"gpu_devices": [{"device_name": "NVIDIA GeForce RTX 4090", "device_type": "cuda", "vram_total": 25757220864,
                        "vram_free": 24000000000}], "comfyui_version": "0.3.64", "os_type": "posix",
       "agent_version": "1.2.0", "platform_arch": "linux/amd64"}  # fmt: skip


class Studio:
    """A team on the server: its integration key's calls of the task API, and its agent key."""

    def __init__(self, server: Server) -> None:
        self.key = make_key(server, "studio")
        headers = {"Authorization": f"Bearer {self.key}"}
        self.api = httpx.Client(base_url=server.url + "/api/v1", headers=headers, timeout=30)
        self.agent_key = make_key(server, "studio", "agent")
        until(lambda: self.api.post("/r/workflows/slug/greet/run", json={}).status_code != 404)  # flows are read

    def start(self, slug: str) -> str:
        answer = self.api.post(f"/r/workflows/slug/{slug}/run", json={})
        assert answer.status_code == 202, answer.text
        return answer.json()["task_id"]

    def task(self, task_id: str) -> dict:
        answer = self.api.get(f"/r/tasks/{task_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def listed(self, task_id: str) -> dict:
        [found] = [t for t in self.api.get("/r/tasks", params={"per_page": 100}).json()["task_list"]
                   if t["id"] == task_id]  # fmt: skip
        return found

    def agents(self, path: str = "/agents", **params: int) -> dict:
        answer = self.api.get(path, params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def events(self, task_id: str, count: int = 0) -> list[tuple[str, dict]]:
        """The task's stream from its first event: `count` events, or (0) all until it closes (the task ended)."""
        found, name = [], ""
        with self.api.stream("GET", f"/r/tasks/{task_id}/events", params={"last_event_id": "0"}) as answer:
            assert answer.status_code == 200
            for line in answer.iter_lines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    found.append((name, json.loads(line[5:])))
                    if len(found) == count:
                        break
        return found


@pytest.fixture
def studio(start_server: Callable[..., Server], flows_dir: Path) -> tuple[Server, Studio]:
    (flows_dir / "render.yaml").write_text(RENDER)
    (flows_dir / "greet.yaml").write_text(GREET)
    server = start_server(**FAST)
    return server, Studio(server)


def deliver(agent: Agent, lease: dict) -> None:
    out = lease["outputs"]["image"]
    assert httpx.put(out["url"], content=b"PNG", headers=out["headers"]).status_code in (200, 201, 204)
    done = agent.call(lease, "complete", outputs={"image": {"size": 3, "content_type": "image/png"}})
    assert done.status_code == 200, done.text


def test_a_task_shows_the_agent_that_runs_it_and_walks_waiting_queued_running_with_progress(studio):
    server, team = studio
    task_id = team.start("render")
    waiting = team.task(task_id)
    assert (waiting["task_status"], waiting["agent_id"], waiting["agent_labels"], waiting["gpu_type"]) == (
        "waiting", None, [], None)  # no agent yet: the step waits in the queue  # fmt: skip
    assert team.listed(task_id)["task_status"] == "waiting"

    agent = Agent(server, team.agent_key, "gpu-01", labels=["gpu", "a100"], system=RTX)
    [lease] = until(lambda: agent.lease(wait=1))
    offered = team.task(task_id)
    assert (offered["task_status"], offered["agent_id"], offered["agent_labels"], offered["gpu_type"]) == (
        "queued", "gpu-01", ["a100", "gpu"], "NVIDIA GeForce RTX 4090")  # fmt: skip
    queued = team.api.get("/r/tasks", params={"status": "queued"}).json()["task_list"]
    assert [t["id"] for t in queued] == [task_id]

    assert agent.call(lease, "ack").status_code == 200
    running = team.task(task_id)
    assert (running["task_status"], running["agent_id"], running["started_at"] is not None) == ("running", "gpu-01",
                                                                                                 True)  # fmt: skip
    assert team.listed(task_id) == running  # the list shows what the task shows
    listed = team.agents()["agent_list"]
    assert [(a["agent_id"], a["agent_status"], a["running_count"], a["running_tasks"], a["current_task_id"])
            for a in listed] == [("gpu-01", "busy", 1, [task_id], task_id)]  # fmt: skip

    report = agent.call(lease, "progress", fraction=0.35, step="3", message="sampling")
    assert report.status_code == 200
    with sign_in(server, team.key) as browser:  # the dashboard's run page shows what the agent said
        page = browser.get(f"/ui/runs/{task_id}")
        assert page.status_code == 200 and "35%" in page.text and "3 · sampling" in page.text
        live = browser.get(f"/ui/tasks/{task_id}/live").text  # and the task's page, where it runs
        assert '<span id="task-agent">gpu-01</span>' in live and "NVIDIA GeForce RTX 4090" in live
    assert agent.call(lease, "progress", message="sampling").status_code == 200  # fraction unknown now
    deliver(agent, lease)
    until(lambda: team.task(task_id)["task_status"] == "completed")
    done = team.task(task_id)
    assert (done["agent_id"], done["agent_labels"], done["gpu_type"]) == ("gpu-01", ["a100", "gpu"],
                                                                          "NVIDIA GeForce RTX 4090")  # fmt: skip

    stream = team.events(task_id)
    assert [(name, data["status"]) for name, data in stream] == [
        ("status", "waiting"), ("status", "queued"), ("status", "running"), ("progress", "running"),
        ("progress", "running"), ("completed", "completed")]  # fmt: skip
    progress = [data for name, data in stream if name == "progress"]
    assert {k: v for k, v in progress[0].items() if k != "timestamp"} == {
        "task_id": task_id, "status": "running", "progress": 0.35, "current_node": "3", "message": "sampling",
        "step": "render", "step_current": None, "step_total": None}  # fmt: skip
    assert (progress[1]["progress"], progress[1]["current_node"], progress[1]["message"]) == (None, "", "sampling")
    idle = team.agents()["agent_list"][0]
    assert (idle["agent_status"], idle["running_count"], idle["running_tasks"], idle["tasks_completed"]) == (
        "idle", 0, [], 1)  # fmt: skip


def test_an_offer_not_acknowledged_puts_the_task_back_to_waiting(studio):
    server, team = studio
    task_id = team.start("render")
    agent = Agent(server, team.agent_key, "slow", labels=["gpu"])
    [offer] = until(lambda: agent.lease(wait=1))
    assert team.task(task_id)["task_status"] == "queued"
    until(lambda: team.task(task_id)["task_status"] == "waiting")  # the offer ran out (2 s), back in the queue
    [again] = until(lambda: agent.lease(wait=1))
    assert again["lease_id"] == offer["lease_id"] and team.task(task_id)["task_status"] == "queued"
    assert agent.call(again, "release").status_code == 200  # given back before it ran: waiting again
    assert team.task(task_id)["task_status"] == "waiting"
    assert [data["status"] for _, data in team.events(task_id, 5)] == ["waiting", "queued", "waiting", "queued",
                                                                       "waiting"]  # fmt: skip


def test_a_task_the_engine_runs_itself_has_no_agent_and_goes_from_waiting_to_running(studio):
    _, team = studio
    task_id = team.start("greet")
    until(lambda: team.task(task_id)["task_status"] == "completed")
    done = team.task(task_id)
    assert (done["agent_id"], done["agent_labels"], done["gpu_type"], done["gateway_id"]) == (None, [], None, None)
    assert team.listed(task_id)["agent_id"] is None
    statuses = [data["status"] for _, data in team.events(task_id)]
    assert statuses[-1] == "completed" and "queued" not in statuses and statuses[0] in ("waiting", "running")


def test_the_agents_list_has_the_references_fields_and_pages_in_the_database(studio):
    server, team = studio
    Agent(server, make_key(server, "elsewhere", "agent"), "outsider")
    for name in ("c-box", "b-box", "a-box"):
        agent = Agent(server, team.agent_key, name, labels=["gpu"], system=RTX if name == "a-box" else {"gpu": "A100"})
    agent.heartbeat([])  # a-box: connected (a heartbeat within three intervals)
    first = team.agents()
    assert [a["agent_id"] for a in first["agent_list"]] == ["a-box", "b-box", "c-box"]
    assert first["page_meta"] == {"current_page": 1, "per_page": 20, "total_count": 3}
    a_box = first["agent_list"][0]
    assert set(a_box) == {
        "agent_id", "agent_status", "agent_labels", "last_heartbeat", "agent_version", "tool", "tool_version",
        "comfyui_version", "gpu_capacity", "running_count", "running_tasks", "platform_arch", "sync_phase",
        "sync_detail", "sync_percent", "connected_at", "tasks_completed", "current_task_id", "system_stats",
        "region", "community"}  # fmt: skip
    facts = ("agent_status", "agent_version", "platform_arch", "comfyui_version", "gpu_capacity", "current_task_id")
    assert [a_box[name] for name in facts] == ["idle", "1.2.0", "linux/amd64", "0.3.64", 1, None]
    stats = a_box["system_stats"]
    assert (stats["comfyui_version"], stats["os_type"], stats["gpu_devices"]) == ("0.3.64", "posix",
                                                                                 RTX["gpu_devices"])  # fmt: skip
    second = team.agents("/r/agents", per_page=2, current_page=2)
    assert [a["agent_id"] for a in second["agent_list"]] == ["c-box"]
    assert second["page_meta"] == {"current_page": 2, "per_page": 2, "total_count": 3}
    assert team.agents(per_page=2, current_page=3)["agent_list"] == []
