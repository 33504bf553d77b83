"""The agent protocol over HTTP against a real server: registration and sessions, long-poll leases
with presigned URLs, acknowledgement, heartbeats, numbered logs, complete / fail / release, tokens
that fence late reports, lease expiry and re-lease, cancel, routing, and a step no agent can take."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from live import Server, make_key, wait_for_status

FAST = {"auth": "keys", "lease": 2, "heartbeat_interval": 1, "offer_timeout": 2, "schedule_to_start": 60}


def gpu_flow(labels: list[str] | None = None, attempts: int = 1, tool: str = "render") -> dict:
    task = {"Name": "render", "Tool": tool, "Labels": labels if labels is not None else ["gpu"],
            "Inputs": [{"Name": "scene"}], "Outputs": [{"Name": "image", "ContentType": "image/png"}],
            "MaxAttempts": attempts}  # fmt: skip
    step = {"ID": "render", "Uses": "render", "Inputs": [{"Slot": "scene", "Edge": "scene"}],
            "Outputs": [{"Slot": "image", "Edge": "image"}]}  # fmt: skip
    return {"Flow": {"DataWells": [{"Edge": "scene", "Source": "upload"}], "Steps": [step], "Tasks": [task]}}


class Agent:
    """One agent's side of the protocol, by hand."""

    def __init__(self, server: Server, key: str, name: str, **registration: Any) -> None:
        self.http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        self.name = name
        self.registration = {"name": name, "tools": ["render"], **registration}
        self.session = self.register()

    def register(self) -> str:
        answer = self.http.post("/api/v1/agent/register", json=self.registration)
        assert answer.status_code == 200, answer.text
        self.session = answer.json()["session"]
        return self.session

    def lease(self, wait: float = 0, slots: int = 1) -> list[dict]:
        answer = self.http.post("/api/v1/agent/lease", json={"session": self.session, "wait": wait, "slots": slots})
        assert answer.status_code == 200, answer.text
        return answer.json()["leases"]

    def call(self, lease: dict, action: str, **body: Any) -> httpx.Response:
        path = f"/api/v1/agent/leases/{lease['lease_id']}/{action}"
        return self.http.post(path, json={"token": lease["token"], **body})

    def heartbeat(self, running: list[str], **more: Any) -> dict:
        answer = self.http.post("/api/v1/agent/heartbeat", json={"session": self.session, "running": running, **more})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def deliver(self, lease: dict, data: bytes) -> httpx.Response:
        """Upload the output and report the step complete."""
        out = lease["outputs"]["image"]
        assert httpx.put(out["url"], content=data, headers=out["headers"]).status_code in (200, 201, 204)
        return self.call(lease, "complete", outputs={"image": {"size": len(data), "content_type": "image/png"}})


def serve(start_server, **settings: Any) -> tuple[Server, httpx.Client, str]:
    server = start_server(**{**FAST, **settings})
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {make_key(server, 'studio')}"},
                          timeout=30)  # fmt: skip
    return server, client, make_key(server, "studio", "agent")


@pytest.fixture
def engine(start_server) -> tuple[Server, httpx.Client, str]:
    return serve(start_server)


def start_run(client: httpx.Client, body: dict, scene: bytes = b"a scene") -> str:
    created = client.post("/api/v1/flow/render", json=body)
    assert created.status_code == 201, created.text
    run = created.json()
    assert httpx.put(run["WaitingURLs"][0]["PutURL"], content=scene).status_code in (200, 201)
    return run["ID"]


def until(condition, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_an_agent_with_the_labels_leases_runs_through_urls_and_completes_exactly_once(engine):
    server, client, key = engine
    cpu = Agent(server, key, "cpu-box")
    gpu = Agent(server, key, "gpu-box", labels=["gpu", "a100"], system={"gpu": "A100", "vram_gb": 80})
    run_id = start_run(client, gpu_flow())
    assert cpu.lease(wait=0.5) == []  # lacks the label
    [lease] = until(lambda: gpu.lease(wait=1))
    assert (lease["run_id"], lease["step"], lease["attempt"], lease["tool"]) == (run_id, "render", 1, "render")
    assert httpx.get(lease["inputs"]["scene"]["url"]).content == b"a scene"  # a presigned GET: no credentials
    assert lease["inputs"]["scene"]["size"] == len(b"a scene")
    [again] = gpu.lease(wait=0)  # not acknowledged yet: offered again, as it was (a lost answer)
    assert (again["lease_id"], again["token"]) == (lease["lease_id"], lease["token"])
    assert gpu.heartbeat([lease["lease_id"]]) == {"cancel": [], "lost": []}  # an offer is the agent's too
    assert gpu.call(lease, "ack").status_code == 200
    assert gpu.call(lease, "ack").status_code == 200  # the same acknowledgement again: harmless
    task = client.get(f"/api/v1/flow/status/{run_id}").json()
    assert task["Steps"][0]["Status"] == "RUNNING"

    forged = gpu.call({**lease, "token": "forged"}, "progress", message="not mine")
    assert forged.status_code == 409 and forged.json()["field"] == "token"
    logs = [{"seq": 1, "text": "loading"}, {"seq": 2, "text": "sampling"}]
    assert gpu.call(lease, "progress", fraction=0.5, step="KSampler", message="half", logs=logs).status_code == 200
    assert gpu.call(lease, "progress", logs=[logs[1], {"seq": 3, "text": "saving"}]).status_code == 200  # 2 again
    shown = client.get(f"/api/v1/flow/status/{run_id}").json()["Steps"][0]
    assert shown["Progress"] == {"Fraction": 0.5, "Current": "KSampler", "Message": "half"}

    wrong = gpu.call(lease, "complete", outputs={"image": {"size": 3}})
    assert wrong.status_code == 400 and "has not landed" in wrong.json()["error_message"]
    out = lease["outputs"]["image"]
    assert httpx.put(out["url"], content=b"PNG-bytes", headers=out["headers"]).status_code in (200, 201, 204)
    short = gpu.call(lease, "complete", outputs={"image": {"size": 3}})
    assert short.status_code == 400 and "landed with 9 bytes, reported 3" in short.json()["error_message"]
    assert gpu.call(lease, "complete", outputs={"image": {"size": 9}}).status_code == 200
    assert gpu.call(lease, "complete", outputs={"image": {"size": 9}}).status_code == 200  # again: the same answer
    assert gpu.call(lease, "fail", error="late").status_code == 409  # another report: refused, nothing changes

    done = wait_for_status(client, run_id, {"COMPLETE"})
    [image] = [a for a in done["Artifacts"] if a["EdgeName"] == "image"]
    assert httpx.get(image["GetURL"]).content == b"PNG-bytes"
    assert client.get(f"/api/v1/flow/{run_id}/logs/render").text == "loading\nsampling\nsaving\n"  # no duplicate
    listed = {a["agent_id"]: a for a in client.get("/api/v1/agents").json()["agent_list"]}
    assert listed["gpu-box"]["tasks_completed"] == 1 and listed["gpu-box"]["agent_status"] == "idle"
    assert listed["gpu-box"]["agent_labels"] == ["a100", "gpu"]
    assert listed["gpu-box"]["system_stats"] == {
        "comfyui_version": None, "pytorch_version": None, "os_type": None,
        "gpu_devices": [{"device_name": "A100", "device_type": None, "vram_total": None, "vram_free": None}],
        "facts": {"gpu": "A100", "vram_gb": 80},
    }  # fmt: skip
    assert client.get("/api/v1/r/agents").json()["page_meta"]["total_count"] == 2


def test_a_long_poll_answers_as_soon_as_work_arrives(engine):
    server, client, key = engine
    agent = Agent(server, key, "waiter", labels=["gpu"])
    got: list[Any] = []
    poll = threading.Thread(target=lambda: got.append((time.monotonic(), agent.lease(wait=30))))
    began = time.monotonic()
    poll.start()
    time.sleep(0.5)
    start_run(client, gpu_flow())
    poll.join(40)
    [(answered, leases)] = got
    assert len(leases) == 1 and answered - began < 30  # woken by the new work, not by the wait running out


def test_an_expired_lease_is_retried_elsewhere_and_the_late_workers_reports_are_refused(engine):
    server, client, key = engine
    stalled = Agent(server, key, "stalled", labels=["gpu"])
    run_id = start_run(client, gpu_flow(attempts=2))
    [first] = until(lambda: stalled.lease(wait=1))
    assert stalled.call(first, "ack").status_code == 200
    other = Agent(server, key, "other", labels=["gpu"])
    [second] = until(lambda: other.lease(wait=1), 30)  # after the lease ran out, unheard from
    assert (second["attempt"], second["lease_id"] != first["lease_id"]) == (2, True)
    assert "/attempt-2/" in second["outputs"]["image"]["url"]  # its own key: the late worker cannot overwrite it
    assert stalled.heartbeat([first["lease_id"]]) == {"cancel": [], "lost": [first["lease_id"]]}
    late = first["outputs"]["image"]
    assert httpx.put(late["url"], content=b"late", headers=late["headers"]).status_code == 409  # not taken
    assert stalled.call(first, "complete", outputs={"image": {"size": 4}}).status_code == 409
    assert stalled.call(first, "progress", message="still here").status_code == 409
    assert other.call(second, "ack").status_code == 200
    assert other.deliver(second, b"winner").status_code == 200
    done = wait_for_status(client, run_id, {"COMPLETE"})
    [image] = [a for a in done["Artifacts"] if a["EdgeName"] == "image"]
    assert httpx.get(image["GetURL"]).content == b"winner"
    assert done["Steps"][0]["Attempts"] == 2


def test_a_lease_the_agent_no_longer_lists_is_not_kept_alive_by_its_heartbeats(engine):
    server, client, key = engine
    agent = Agent(server, key, "forgetful", labels=["gpu"])
    start_run(client, gpu_flow(attempts=2))
    [lease] = until(lambda: agent.lease(wait=1))
    assert agent.call(lease, "ack").status_code == 200

    def retried() -> list[dict]:
        assert agent.heartbeat([]) == {"cancel": [], "lost": []}  # alive, running nothing
        return agent.lease(wait=0.5)

    [again] = until(retried)
    assert (again["attempt"], again["lease_id"] != lease["lease_id"]) == (2, True)


def test_a_heartbeat_keeps_a_lease_and_says_to_cancel_a_cancelled_step(engine):
    server, client, key = engine
    agent = Agent(server, key, "steady", labels=["gpu"])
    run_id = start_run(client, gpu_flow())
    [lease] = until(lambda: agent.lease(wait=1))
    assert agent.call(lease, "ack").status_code == 200
    for _ in range(5):  # 5 s: more than twice the lease, kept by heartbeats
        assert agent.heartbeat([lease["lease_id"]]) == {"cancel": [], "lost": []}
        time.sleep(1)
    assert client.post(f"/api/v1/flow/{run_id}/cancel").json()["Status"] == "STOPPED"
    assert agent.heartbeat([lease["lease_id"]]) == {"cancel": [lease["lease_id"]], "lost": []}
    assert agent.call(lease, "complete", outputs={"image": {"size": 1}}).status_code == 409


def test_a_released_lease_goes_back_to_the_queue_uncounted_and_a_new_session_fences_the_old(engine):
    server, client, key = engine
    agent = Agent(server, key, "leaving", labels=["gpu"])
    run_id = start_run(client, gpu_flow())
    [lease] = until(lambda: agent.lease(wait=1))
    assert agent.call(lease, "ack").status_code == 200
    assert agent.call(lease, "release").status_code == 200
    assert agent.call(lease, "complete", outputs={}).status_code == 409  # released: no longer its
    [again] = until(lambda: agent.lease(wait=1))
    assert (again["lease_id"], again["attempt"], again["token"] != lease["token"]) == (lease["lease_id"], 1, True)
    assert agent.call(again, "ack").status_code == 200
    old_session = agent.session
    agent.register()  # the same name again: a new session, the old one's leases lost
    stale = agent.http.post("/api/v1/agent/lease", json={"session": old_session, "wait": 0})
    assert stale.status_code == 409 and stale.json()["field"] == "session"
    assert agent.call(again, "ack").status_code == 409
    # MaxAttempts 1: the lost attempt was the step's one try
    error = wait_for_status(client, run_id, {"ERROR"})
    assert "registered again" in error["Error"]


def test_an_offer_not_acknowledged_in_time_goes_back_and_its_token_is_refused(engine):
    server, client, key = engine
    agent = Agent(server, key, "slow", labels=["gpu"])
    start_run(client, gpu_flow())
    [offer] = until(lambda: agent.lease(wait=1))
    time.sleep(3.5)  # past the offer timeout (2 s) and a tick
    [again] = until(lambda: agent.lease(wait=1))
    assert again["lease_id"] == offer["lease_id"] and again["token"] != offer["token"] and again["attempt"] == 1
    assert agent.call(offer, "ack").status_code == 409
    assert agent.call(again, "ack").status_code == 200


def test_a_step_no_agent_can_take_waits_then_fails_saying_what_was_missing(start_server):
    server, client, key = serve(start_server, schedule_to_start=3)
    agents = [Agent(server, key, "gpu-only", labels=["gpu"]), Agent(server, key, "renderless", labels=["tpu"],
                                                                     tools=["exec"])]  # fmt: skip
    run_id = start_run(client, gpu_flow(labels=["tpu"]))
    time.sleep(1)
    assert client.get(f"/api/v1/flow/status/{run_id}").json()["Status"] == "RUNNING"  # it waits for one

    def failed() -> dict | None:
        for agent in agents:
            agent.heartbeat([])  # connected all along
        doc = client.get(f"/api/v1/flow/status/{run_id}").json()
        return doc if doc["Status"] == "ERROR" else None

    failed = until(failed)
    assert "no agent took the step within 3s" in failed["Error"]
    assert "gpu-only lacks label(s) tpu" in failed["Error"] and "renderless lacks tool 'render'" in failed["Error"]


def test_agents_of_another_team_see_nothing_and_other_keys_are_refused(engine):
    server, client, key = engine
    outsider = Agent(server, make_key(server, "elsewhere", "agent"), "outsider", labels=["gpu"])
    start_run(client, gpu_flow())
    assert outsider.lease(wait=1) == []  # the team pool: not another team's agent
    integration = httpx.post(f"{server.url}/api/v1/agent/register", json={"name": "x"},
                             headers={"Authorization": f"Bearer {make_key(server, 'studio')}"})  # fmt: skip
    assert integration.status_code == 401
    bad = Agent(server, key, "ok", labels=["gpu"])
    answer = bad.http.post("/api/v1/agent/register", json={"name": "no spaces please", "tools": ["render"]})
    assert answer.status_code == 400 and answer.json()["field"] == "name"


def test_an_output_numbered_0_takes_as_many_files_as_the_step_gives_each_an_output_of_its_own(engine):
    server, client, key = engine
    flow = gpu_flow(attempts=2)
    flow["Flow"]["Tasks"][0]["Outputs"] = [{"Name": "9.images.0", "ContentType": "image/png"}, {"Name": "log"}]
    flow["Flow"]["Steps"][0]["Outputs"] = [{"Slot": "9.images.0", "Edge": "9.images.0"}, {"Slot": "log", "Edge": "log"}]
    gpu = Agent(server, key, "gpu-box", labels=["gpu"])
    run_id = start_run(client, flow)
    [lease] = until(lambda: gpu.lease(wait=1))
    assert gpu.call(lease, "ack").status_code == 200
    for slot in ("log.1", "9.images.0x", "9.images.01", "9.images.256", "8.images.1"):
        refused = gpu.call(lease, "outputs", slots=[slot])
        assert refused.status_code == 400 and refused.json()["field"] == f"outputs.{slot}", refused.text
        assert "one more file of" in refused.json()["error_message"]
    assert gpu.call({**lease, "token": "forged"}, "outputs", slots=["9.images.1"]).status_code == 409
    answer = gpu.call(lease, "outputs", slots=["9.images.2", "9.images.1"])
    assert answer.status_code == 200, answer.text
    urls = {**lease["outputs"], **answer.json()["outputs"]}
    assert urls["9.images.2"]["name"] == "9.images.2" and urls["9.images.2"]["content_type"] == "image/png"
    files = {"9.images.0": b"first", "9.images.1": b"second", "9.images.2": b"third!", "log": b"said"}
    for slot, data in files.items():
        assert httpx.put(urls[slot]["url"], content=data, headers=urls[slot]["headers"]).status_code in (200, 201)
    reported = {slot: {"size": len(data)} for slot, data in files.items()}
    unknown = gpu.call(lease, "complete", outputs={**reported, "9.images.3": {"size": 1}})
    assert unknown.status_code == 400 and "has not landed" in unknown.json()["error_message"]
    assert gpu.call(lease, "complete", outputs=reported).status_code == 200
    done = wait_for_status(client, run_id, {"COMPLETE"})
    artifacts = [a for a in done["Artifacts"] if a["EdgeName"] != "scene"]
    assert [a["EdgeName"] for a in artifacts] == ["9.images.0", "9.images.1", "9.images.2", "log"]  # after the first
    assert [httpx.get(a["GetURL"]).content for a in artifacts] == [files[a["EdgeName"]] for a in artifacts]
    assert artifacts[2]["ObjectName"].endswith(f"/{run_id}/9.images.2")


def test_the_tools_a_heartbeat_names_are_those_offered_from_then_on_even_to_a_waiting_lease_call(engine):
    server, client, key = engine
    gpu = Agent(server, key, "gpu-box", labels=["gpu"])
    bad = gpu.http.post("/api/v1/agent/heartbeat", json={"session": gpu.session, "tools": ["no tool"]})
    assert bad.status_code == 400 and bad.json()["field"] == "tools[0]"
    got: list[list[dict]] = []
    polling = threading.Thread(target=lambda: got.append(gpu.lease(wait=4)))
    polling.start()
    time.sleep(0.5)  # the lease call waits, for a render step
    assert gpu.heartbeat([], tools=["exec"]) == {"cancel": [], "lost": []}  # its renderer went away
    run_id = start_run(client, gpu_flow())
    polling.join()
    assert got == [[]]  # the waiting call took no render step
    listed = client.get("/api/v1/agents").json()["agent_list"]
    assert listed[0]["tool"] == ["exec"]
    assert gpu.heartbeat([], tools=["render", "exec"])
    [lease] = until(lambda: gpu.lease(wait=1))
    assert lease["run_id"] == run_id
    assert client.get("/api/v1/agents").json()["agent_list"][0]["tool"] == ["exec", "render"]
