"""Tasks through the workflow/task API, over real HTTP against a real server: running the operator's
workflows (tests/data/*.yaml) with every validation rule one at a time, Idempotency-Key, listing,
a task's detail and result, cancel, its SSE stream (read as it streams, resumed with Last-Event-ID),
team isolation both ways, a restart in the middle of a task, and the reference's Python example as
written (only BASE and API_KEY changed), on the embedded store and on S3."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import Server, make_key

DATA = Path(__file__).resolve().parent / "data"
PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 50
TERMINAL = {"completed", "failed", "cancelled"}
DETAIL_FIELDS = {
    "id", "workflow_id", "workflow_version", "task_status", "created_at", "started_at", "completed_at", "task_error",
    "retry_count", "agent_id", "agent_labels", "gateway_id", "gpu_type", "dispatch_target", "target_pool",
    "submitter_region", "tool_type", "created_via",
}  # fmt: skip


class Team:
    """One team's integration key on the server, and calls of the API with it."""

    def __init__(self, server: Server, name: str) -> None:
        self.server = server
        self.key = make_key(server, name)
        self.headers = {"Authorization": f"Bearer {self.key}"}
        self.client = httpx.Client(base_url=server.url + "/api/v1/r", headers=self.headers, timeout=10)

    def run(self, parameters: dict[str, Any] | None = None, slug: str = "img2img", **fields: Any) -> httpx.Response:
        body = {**({"parameters": parameters} if parameters is not None else {}), **fields}
        return self.client.post(f"/workflows/slug/{slug}/run", json=body)

    def start(self, parameters: dict[str, Any] | None = None, slug: str = "img2img", **fields: Any) -> str:
        answer = self.run(parameters, slug, **fields)
        assert answer.status_code == 202, answer.text
        return answer.json()["task_id"]

    def upload(self, data: bytes = PNG, content_type: str = "image/png", put_type: str | None = None) -> str:
        """A file presigned as `content_type` and uploaded (with Content-Type `put_type`, if given)."""
        presigned = self.presign(data, content_type)
        headers = {**presigned["upload_headers"], **({"Content-Type": put_type} if put_type else {})}
        assert httpx.put(presigned["upload_url"], content=data, headers=headers).status_code == 200
        return presigned["file_key"]

    def presign(self, data: bytes = PNG, content_type: str = "image/png") -> dict:
        body = {"file_name": "photo.png", "file_size": len(data), "content_type": content_type}
        answer = self.client.post("/files/presign", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def task(self, task_id: str) -> dict:
        answer = self.client.get(f"/tasks/{task_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def wait(self, task_id: str, statuses: set[str] = TERMINAL, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while (task := self.task(task_id))["task_status"] not in statuses:
            assert time.monotonic() < deadline, f"task {task_id} still {task['task_status']}"
            time.sleep(0.05)
        return task

    def result(self, task_id: str) -> dict:
        answer = self.client.get(f"/tasks/{task_id}/result")
        assert answer.status_code == 200, answer.text
        return answer.json()


def install(flows_dir: Path, *names: str) -> None:
    for name in names:
        shutil.copy(DATA / f"{name}.yaml", flows_dir)


def wait_for_workflows(team: Team) -> None:
    """Until the engine has stored the flow files' workflows (it looks at them every 2 seconds)."""
    deadline = time.monotonic() + 20
    while (answer := team.run({})).status_code == 404:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.1)


@pytest.fixture
def server(start_server: Callable[..., Server], flows_dir: Path) -> Server:
    install(flows_dir, "img2img", "greet")
    return start_server()


@pytest.fixture
def team(server: Server) -> Iterator[Team]:
    team = Team(server, "alpha")
    wait_for_workflows(team)
    yield team
    team.client.close()


@pytest.fixture
def other(server: Server, team: Team) -> Iterator[Team]:
    other = Team(server, "beta")
    yield other
    other.client.close()


def s3_config(tmp_path: Path, s3: dict[str, Any]) -> str:
    """Files for the task API go to S3 (the `media` store); step outputs stay on the embedded store."""
    prefix = f"tasks-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"files_store: media\nstores:\n  - Name: media\n    Type: s3\n    Params: {{endpoint: '{s3['endpoint']}', "
        f"bucket: {s3['bucket']}, prefix: {prefix}, secure: false, access_key: {s3['access_key']}, "
        f"secret_key: {s3['secret_key']}}}\n"
    )
    return str(config)


# running a workflow


@pytest.mark.parametrize("store", ["embedded", "s3"])
def test_a_task_runs_with_its_file_and_parameters_and_its_result_downloads(
    request: pytest.FixtureRequest, start_server: Callable[..., Server], flows_dir: Path, tmp_path: Path, store: str
):
    install(flows_dir, "img2img")
    config = s3_config(tmp_path, request.getfixturevalue("s3")) if store == "s3" else None
    server = start_server(config=config)
    team = Team(server, "alpha")
    wait_for_workflows(team)
    file_key = team.upload()
    task_id = team.start({"input_image": file_key, "prompt": "enhance", "width": 512, "mode": "fill"},
                         submitter_region="  US-East ", target_pool="community", tool_type="exec")  # fmt: skip
    task = team.wait(task_id)
    assert task["task_status"] == "completed" and set(task) == DETAIL_FIELDS
    assert (task["id"], task["task_error"], task["retry_count"], task["created_via"]) == (task_id, "", 0, "api_key")
    assert (task["dispatch_target"], task["target_pool"], task["submitter_region"], task["tool_type"]) == (
        "agent", "community", "us-east", "exec")  # fmt: skip
    assert task["created_at"] <= task["started_at"] <= task["completed_at"]
    result = team.result(task_id)
    assert set(result["download_urls"]) == {"result"} and result["download_url"] == result["download_urls"]["result"]
    assert result["task_output"]["storage_key"] == result["task_output"]["outputs"]["result"]["storage_key"]
    # the file filled the well as uploaded; the parameters set the flags; left out, their defaults
    assert httpx.get(result["download_url"]).content == PNG + b"|enhance|512|fill|False"
    assert result["task_error"] == "" and result["completed_at"] == task["completed_at"]
    time.sleep(1.1)
    again = team.result(task_id)
    assert again["download_url"] != result["download_url"] and again["expires_at"] > result["expires_at"]  # fresh


def test_omitted_optionals_take_their_defaults_and_nothing_required_runs_on_nothing(team: Team):
    task_id = team.start({"input_image": team.upload()})
    team.wait(task_id)
    assert httpx.get(team.result(task_id)["download_url"]).content == PNG + b"|none|256|fit|False"
    for body in ({}, {"parameters": {}}, None):  # `{}`, empty parameters, no body at all
        answer = team.client.post("/workflows/slug/greet/run", json=body) if body is not None else team.client.post(
            "/workflows/slug/greet/run")  # fmt: skip
        assert answer.status_code == 202, answer.text
        done = team.wait(answer.json()["task_id"])
        assert httpx.get(team.result(done["id"])["download_url"]).content == b"hello world"


def test_a_task_runs_by_workflow_id_too(team: Team):
    by_slug = team.wait(team.start({"name": "id"}, slug="greet"))
    answer = team.client.post(f"/workflows/{by_slug['workflow_id']}/run", json={"parameters": {"name": "x"}})
    assert answer.status_code == 202, answer.text
    assert team.wait(answer.json()["task_id"])["workflow_id"] == by_slug["workflow_id"]


@pytest.mark.parametrize(
    ("parameters", "fields", "code", "field"),
    [
        ({"nope": 1}, {}, "unknown_parameter", "parameters.nope"),
        ({}, {}, "missing_parameter", "parameters.input_image"),
        ({"width": "wide"}, {}, "type_mismatch", "parameters.width"),
        ({"width": 12.5}, {}, "type_mismatch", "parameters.width"),  # it sets an integer flag
        ({"sharpen": "yes"}, {}, "type_mismatch", "parameters.sharpen"),
        ({"prompt": 7}, {}, "type_mismatch", "parameters.prompt"),
        ({"width": 5000}, {}, "out_of_range", "parameters.width"),
        ({"width": 8}, {}, "out_of_range", "parameters.width"),
        ({"mode": "stretch"}, {}, "invalid_option", "parameters.mode"),
        ({f"k{i}": 1 for i in range(101)}, {}, "too_many_parameters", "parameters"),
        ({}, {"dispatch_target": "comfy_cloud"}, "bad_dispatch_target", "dispatch_target"),
        ({}, {"dispatch_target": "moon"}, "invalid_field", "dispatch_target"),
        ({}, {"target_pool": "everyone"}, "invalid_field", "target_pool"),
        ({}, {"submitter_region": "x" * 65}, "bad_region", "submitter_region"),
        ({}, {"tool_type": "comfyui"}, "tool_type_mismatch", "tool_type"),
        ({}, {"priority": "high"}, "invalid_field", "priority"),
    ],
)
def test_each_rule_of_a_run_is_a_400_naming_the_key(team: Team, parameters: dict, fields: dict, code: str, field: str):
    if code not in ("missing_parameter", "too_many_parameters", "unknown_parameter"):
        parameters = {"input_image": team.upload(), **parameters}  # only the rule under test is broken
    answer = team.run(parameters, **fields)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error_code"] == code and answer.json()["field"] == field, answer.text
    assert answer.json()["error_message"]
    assert team.client.get("/tasks").json()["page_meta"]["total_count"] == 0  # nothing half-stored


def test_a_file_must_be_uploaded_the_teams_and_of_an_accepted_type(team: Team, other: Team):
    not_uploaded = team.presign()["file_key"]
    never_presigned = not_uploaded.rsplit("/", 2)[0] + "/other/photo.png"
    others = other.upload()
    declared_text = team.upload(content_type="text/plain")
    stored_as_text = team.upload(content_type="image/png", put_type="text/plain")  # its real stored type counts
    cases = [(not_uploaded, "file_not_found"), (never_presigned, "file_not_found"), (others, "file_not_found"),
             (declared_text, "file_type_rejected"), (stored_as_text, "file_type_rejected")]  # fmt: skip
    for file_key, code in cases:
        answer = team.run({"input_image": file_key})
        assert answer.status_code == 400, answer.text
        assert (answer.json()["error_code"], answer.json()["field"]) == (code, "parameters.input_image"), file_key
    told = [team.run({"input_image": key}).json()["error_message"].replace(key, "K") for key in (others, not_uploaded)]
    assert told[0] == told[1]  # another team's file is told apart from none, never
    assert team.run({"input_image": team.upload(put_type="image/png")}).status_code == 202
    assert other.run({"input_image": others}).status_code == 202  # the owner may


def test_an_unknown_workflow_or_version_is_404_and_a_pinned_version_runs(team: Team, server: Server):
    assert team.run({}, slug="nope").status_code == 404
    assert team.client.post(f"/workflows/{uuid.uuid4()}/run", json={}).status_code == 404
    assert team.run({}, slug="greet@7").status_code == 404
    flow = server.flows_dir / "greet.yaml"
    flow.write_text(flow.read_text().replace("Default: world", "Default: there"))
    deadline = time.monotonic() + 20
    while team.wait(task_id := team.start({}, slug="greet"))["workflow_version"] != 2:
        assert time.monotonic() < deadline
    assert httpx.get(team.result(task_id)["download_url"]).content == b"hello there"
    pinned = team.wait(team.start({}, slug="greet@1"))
    assert pinned["workflow_version"] == 1 and httpx.get(team.result(pinned["id"])["download_url"]).content == (
        b"hello world")  # fmt: skip


def test_a_disabled_workflow_takes_no_task(team: Team, server: Server):
    workflow_id = team.wait(team.start({}, slug="greet"))["workflow_id"]
    (server.flows_dir / "greet.yaml").unlink()  # no longer declared: disabled
    deadline = time.monotonic() + 20
    while (answer := team.run({}, slug="greet")).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert answer.status_code == 400 and answer.json()["error_code"] == "workflow_disabled", answer.text
    assert team.client.post(f"/workflows/{workflow_id}/run", json={}).json()["error_code"] == "workflow_disabled"


def test_an_idempotency_key_answers_the_first_task_for_its_team(team: Team, other: Team):
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"parameters": {"name": "once"}}
    first = team.client.post("/workflows/slug/greet/run", json=body, headers=key)
    again = team.client.post("/workflows/slug/greet/run", json=body, headers=key)
    assert first.status_code == again.status_code == 202 and first.json() == again.json()
    assert "idempotent-replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
    changed = team.client.post("/workflows/slug/greet/run", json={"parameters": {"name": "twice"}}, headers=key)
    assert changed.status_code == 409 and changed.json()["field"] == "header.Idempotency-Key"
    theirs = other.client.post("/workflows/slug/greet/run", json=body, headers=key)  # another team's key
    assert theirs.status_code == 202 and theirs.json() != first.json()
    fresh = team.client.post("/workflows/slug/greet/run", json=body, headers={"Idempotency-Key": "another"})
    assert fresh.json() != first.json()
    assert team.client.get("/tasks").json()["page_meta"]["total_count"] == 2
    bad = team.client.post("/workflows/slug/greet/run", json=body, headers={"Idempotency-Key": "has space"})
    assert bad.status_code == 400 and bad.json()["field"] == "header.Idempotency-Key"


@pytest.mark.backends("sqlite", "postgres")  # what goes through the database, on each
def test_concurrent_retries_with_one_idempotency_key_make_one_task(team: Team, server: Server):
    import concurrent.futures

    key = {"Idempotency-Key": "burst", **team.headers}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{server.url}/api/v1/r/workflows/slug/greet/run", json={},
                                                     headers=key, timeout=10), range(8)))  # fmt: skip
    assert {a.status_code for a in answers} == {202} and len({a.json()["task_id"] for a in answers}) == 1
    assert team.client.get("/tasks").json()["page_meta"]["total_count"] == 1


# listing, detail, result, cancel


@pytest.mark.backends("sqlite", "postgres")  # what goes through the database, on each
def test_tasks_list_newest_first_by_page_and_status(team: Team):
    ids = [team.start({"name": str(i)}, slug="greet") for i in range(5)]
    for task_id in ids:
        team.wait(task_id)
    failed = team.start({"input_image": team.upload(), "fail": True})
    team.wait(failed)
    listed = team.client.get("/tasks", params={"per_page": 2}).json()
    assert [t["id"] for t in listed["task_list"]] == [failed, ids[4]]
    assert listed["page_meta"] == {"current_page": 1, "per_page": 2, "total_count": 6}
    third = team.client.get("/tasks", params={"per_page": 2, "current_page": 3}).json()
    assert [t["id"] for t in third["task_list"]] == [ids[1], ids[0]] and set(third["task_list"][0]) == DETAIL_FIELDS
    completed = team.client.get("/tasks", params={"status": "completed"}).json()
    assert [t["id"] for t in completed["task_list"]] == ids[::-1] and completed["page_meta"]["total_count"] == 5
    assert [t["id"] for t in team.client.get("/tasks", params={"status": "failed"}).json()["task_list"]] == [failed]
    assert team.client.get("/tasks").json()["page_meta"]["per_page"] == 20
    for params in ({"per_page": 0}, {"per_page": 101}, {"current_page": 0}, {"status": "done"}):
        answer = team.client.get("/tasks", params=params)
        assert answer.status_code == 400 and answer.json()["field"] == f"query.{next(iter(params))}", params


def test_a_failed_tasks_result_has_its_error_and_no_output(team: Team):
    task = team.wait(team.start({"input_image": team.upload(), "fail": True}))
    assert task["task_status"] == "failed" and "exited with status 3" in task["task_error"]
    result = team.result(task["id"])
    assert result["task_error"] == task["task_error"] and result["completed_at"] == task["completed_at"]
    assert (result["task_output"], result["download_url"], result["download_urls"], result["expires_at"]) == (
        None, None, None, None)  # fmt: skip


def test_cancel_stops_a_running_step_and_is_idempotent(team: Team, server: Server):
    task_id = team.start({"input_image": team.upload(), "pause": 30})
    team.wait(task_id, {"running"})
    cancelled_at = time.monotonic()
    answer = team.client.post(f"/tasks/{task_id}/cancel")
    assert answer.status_code == 200 and answer.json() == {"success": True}
    task = team.wait(task_id, timeout=5)
    assert task["task_status"] == "cancelled" and task["task_error"] == "" and time.monotonic() - cancelled_at < 5
    run = httpx.get(f"{server.url}/api/v1/flow/status/{task_id}", headers=team.headers).json()
    assert run["Status"] == "STOPPED" and run["Steps"][0]["Status"] == "ERROR"  # the step was stopped
    result = team.result(task_id)
    assert (result["task_output"], result["download_url"], result["download_urls"], result["task_error"]) == (
        None, None, None, "")  # fmt: skip
    assert team.client.post(f"/tasks/{task_id}/cancel").json() == {"success": True}  # again: no change
    done = team.wait(team.start({}, slug="greet"))
    assert team.client.post(f"/tasks/{done['id']}/cancel").json() == {"success": True}
    assert team.task(done["id"])["task_status"] == "completed"  # a task that ended stays as it ended


def test_an_unfinished_tasks_result_is_all_null(team: Team):
    task_id = team.start({"input_image": team.upload(), "pause": 30})
    result = team.result(task_id)
    assert result["task_status"] in ("waiting", "running")
    assert {k: result[k] for k in ("task_output", "download_url", "download_urls", "expires_at", "completed_at")} == (
        dict.fromkeys(("task_output", "download_url", "download_urls", "expires_at", "completed_at")))  # fmt: skip
    team.client.post(f"/tasks/{task_id}/cancel")


def test_another_teams_tasks_are_not_found_both_ways(team: Team, other: Team):
    mine, theirs = team.start({}, slug="greet"), other.start({}, slug="greet")
    for me, task_id in ((team, theirs), (other, mine)):
        for method, path in (("GET", ""), ("GET", "/result"), ("POST", "/cancel"), ("GET", "/events")):
            answer = me.client.request(method, f"/tasks/{task_id}{path}")
            assert answer.status_code == 404 and answer.json()["error_code"] == "not_found", (method, path)
        assert [t["id"] for t in me.client.get("/tasks").json()["task_list"]] == [mine if me is team else theirs]
    assert team.wait(mine)["task_status"] == other.wait(theirs)["task_status"] == "completed"  # cancels did nothing


def test_tasks_need_a_credential_of_the_runtime_kinds(server: Server, team: Team):
    agent = make_key(server, "alpha", "agent")
    task_id = team.start({}, slug="greet")
    for headers in ({}, {"Authorization": f"Bearer {agent}"}, {"Authorization": "Bearer sk-wrong"}):
        for method, path in (("GET", f"/tasks/{task_id}"), ("GET", "/tasks"), ("POST", "/workflows/slug/greet/run"),
                             ("GET", f"/tasks/{task_id}/events")):  # fmt: skip
            answer = httpx.request(method, f"{server.url}/api/v1/r{path}", headers=headers, json={})
            assert answer.status_code == 401, (headers, path)


def test_a_task_records_how_it_was_created_and_is_its_teams_whoever_started_it(server: Server, team: Team):
    from live import admin

    team_id = next(line.split()[0] for line in admin(server, "teams", "list").splitlines() if line.endswith("alpha"))
    admin(server, "users", "add", "ann@example.com", "--team", "alpha")
    token = admin(server, "token", "--user", "ann@example.com")
    device = admin(server, "keys", "create", "--team", "alpha", "--kind", "device", "--user", "ann@example.com")
    url = f"{server.url}/api/v1/r/workflows/slug/greet/run"
    no_team = httpx.post(url, json={}, headers={"Authorization": f"Bearer {token}"})
    assert no_team.status_code == 400 and no_team.json()["field"] == "header.X-Team-ID"
    by_user = httpx.post(url, json={}, headers={"Authorization": f"Bearer {token}", "X-Team-ID": team_id})
    by_device = httpx.post(url, json={}, headers={"Authorization": f"Bearer {device}"})
    assert by_user.status_code == by_device.status_code == 202
    assert team.task(by_user.json()["task_id"])["created_via"] == "jwt"  # the team's key sees its members' tasks
    assert team.task(by_device.json()["task_id"])["created_via"] == "device"


def test_a_file_past_its_retention_is_not_found(start_server: Callable[..., Server], flows_dir: Path):
    install(flows_dir, "img2img")
    server = start_server(input_retention=1, sweep_interval=3600)  # kept past its time, yet not taken
    team = Team(server, "alpha")
    wait_for_workflows(team)
    file_key = team.upload()
    time.sleep(1.2)
    answer = team.run({"input_image": file_key})
    assert (answer.status_code, answer.json()["error_code"]) == (400, "file_not_found")


# server-sent events


def read_events(lines: Iterator[str], until: Callable[[list[dict]], bool] = lambda _: False) -> list[dict]:
    """Events as they stream (each with `id`, `event`, `data`), until the stream ends or `until` them."""
    events: list[dict] = []
    current: dict[str, Any] = {}
    for line in lines:
        if line.startswith(":") or (line == "" and current):
            events.append({"comment": line} if line else current)
            current = {}
            if until(events):
                break
        elif line:
            name, _, value = line.partition(": ")
            current[name] = json.loads(value) if name == "data" else int(value) if name == "id" else value
    return events


def test_events_stream_the_current_status_then_each_change_and_close_after_the_end(team: Team, server: Server):
    task_id = team.start({"input_image": team.upload(), "pause": 1.5})
    team.wait(task_id, {"running"})
    started = time.monotonic()
    with httpx.stream("GET", f"{server.url}/api/v1/r/tasks/{task_id}/events", headers=team.headers,
                      timeout=10) as stream:  # fmt: skip
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        first = read_events(lines, until=lambda events: len(events) == 1)
        assert time.monotonic() - started < 1  # the current status at once, not when it next changes
        rest = read_events(lines)  # the server closes the stream after the terminal event
    assert [(e["event"], e["data"]["status"]) for e in first + rest] == [("status", "running"),
                                                                         ("completed", "completed")]  # fmt: skip
    assert all(e["data"]["task_id"] == task_id for e in first + rest)
    assert rest[0]["data"]["output"] == team.result(task_id)["task_output"]
    assert first[0]["id"] < rest[0]["id"]


def test_a_reconnect_with_last_event_id_resumes_without_loss_or_repeat(team: Team, server: Server):
    task_id = team.start({"input_image": team.upload(), "pause": 1})
    url = f"{server.url}/api/v1/r/tasks/{task_id}/events"
    with httpx.stream("GET", url, headers=team.headers, params={"last_event_id": 0}, timeout=10) as stream:
        seen = read_events(stream.iter_lines(), until=lambda events: len(events) == 1)  # then the client drops
    team.wait(task_id)
    with httpx.stream("GET", url, headers={**team.headers, "Last-Event-ID": str(seen[-1]["id"])}, timeout=10) as s:
        rest = read_events(s.iter_lines())
    everything = seen + rest
    assert [e["id"] for e in everything] == list(range(1, len(everything) + 1))  # every event, once, in order
    assert [e["data"]["status"] for e in everything][-2:] == ["running", "completed"]
    with httpx.stream("GET", url, headers={**team.headers, "Last-Event-ID": "0"}, timeout=10) as s:  # from the start
        assert [e["id"] for e in read_events(s.iter_lines())] == [e["id"] for e in everything]
    ended = httpx.get(url, headers={**team.headers, "Last-Event-ID": str(everything[-1]["id"])})
    assert ended.status_code == 204  # nothing after the end: an EventSource stops reconnecting
    fresh = httpx.get(url, headers=team.headers, timeout=10)  # a new stream of an ended task: its end, then closed
    assert [e["event"] for e in read_events(iter(fresh.text.splitlines()))] == ["completed"]
    bad = httpx.get(url, headers={**team.headers, "Last-Event-ID": "x"})
    assert bad.status_code == 400 and bad.json()["field"] == "header.Last-Event-ID"


def test_a_quiet_stream_gets_keepalives(team: Team, server: Server):
    task_id = team.start({"input_image": team.upload(), "pause": 17})
    team.wait(task_id, {"running"})
    with httpx.stream("GET", f"{server.url}/api/v1/r/tasks/{task_id}/events", headers=team.headers,
                      timeout=30) as stream:  # fmt: skip
        events = read_events(stream.iter_lines(), until=lambda events: "comment" in events[-1])
    assert events[-1] == {"comment": ": keepalive"} and [e["event"] for e in events[:-1]] == ["status"]
    team.client.post(f"/tasks/{task_id}/cancel")


def test_a_failed_and_a_cancelled_task_end_their_streams(team: Team, server: Server):
    failed = team.start({"input_image": team.upload(), "fail": True})
    cancelled = team.start({"input_image": team.upload(), "pause": 30})
    team.wait(cancelled, {"running"})
    team.client.post(f"/tasks/{cancelled}/cancel")
    team.wait(failed)
    ends = {}
    for task_id, kind in ((failed, "failed"), (cancelled, "cancelled")):
        answer = httpx.get(f"{server.url}/api/v1/r/tasks/{task_id}/events", headers=team.headers, timeout=10)
        (ends[kind],) = read_events(iter(answer.text.splitlines()))
        assert (ends[kind]["event"], ends[kind]["data"]["status"]) == (kind, kind)
    assert "exited with status 3" in ends["failed"]["data"]["error"] and "error" not in ends["cancelled"]["data"]


# restart


@pytest.mark.backends("sqlite", "postgres")  # what goes through the database, on each
def test_a_task_cut_short_by_a_crash_finishes_after_the_restart_and_its_stream_resumes(
    start_server: Callable[..., Server], flows_dir: Path, tmp_path: Path
):
    install(flows_dir, "img2img")
    server = start_server()
    team = Team(server, "alpha")
    wait_for_workflows(team)
    task_id = team.start({"input_image": team.upload(), "pause": 2})
    team.wait(task_id, {"running"})
    url = f"{server.url}/api/v1/r/tasks/{task_id}/events"
    with httpx.stream("GET", url, headers=team.headers, params={"last_event_id": 0}, timeout=10) as stream:
        seen = read_events(
            stream.iter_lines(), until=lambda events: events[-1].get("data", {}).get("status") == "running"
        )
    server.kill9()
    restarted = start_server(data_dir=server.data_dir, port=server.port)
    assert restarted.url == server.url  # the team's client carries on
    done = team.wait(task_id, timeout=30)
    assert done["task_status"] == "completed" and done["retry_count"] == 0  # an interruption is no retry
    assert httpx.get(team.result(task_id)["download_url"]).content.startswith(PNG)
    with httpx.stream("GET", url, headers={**team.headers, "Last-Event-ID": str(seen[-1]["id"])}, timeout=10) as s:
        rest = read_events(s.iter_lines())
    assert [e["id"] for e in seen + rest] == list(range(1, len(seen + rest) + 1))
    assert rest[-1]["event"] == "completed"


# the reference's example


@pytest.mark.parametrize("store", ["embedded", "s3"])
def test_the_references_python_example_runs_as_written(
    request: pytest.FixtureRequest, start_server: Callable[..., Server], flows_dir: Path, tmp_path: Path, store: str
):
    install(flows_dir, "img2img")
    config = s3_config(tmp_path, request.getfixturevalue("s3")) if store == "s3" else None
    server = start_server(config=config)
    team = Team(server, "example")
    wait_for_workflows(team)
    example = (DATA / "file_inputs_example.py").read_text()
    example, keys = re.subn(r'^API_KEY = ".*"$', f'API_KEY = "{team.key}"', example, flags=re.M)
    example, bases = re.subn(r'^BASE = ".*"$', f'BASE = "{server.url}/api/v1/r"', example, flags=re.M)
    assert keys == bases == 1
    work = tmp_path / "example"
    work.mkdir()
    photo = PNG + bytes(1048576 - len(PNG))  # the size the example declares
    (work / "photo.png").write_bytes(photo)
    (work / "example.py").write_text(example)
    done = subprocess.run([sys.executable, "example.py"], cwd=work, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    task = team.wait(done.stdout.strip())
    assert task["task_status"] == "completed", task
    assert httpx.get(team.result(task["id"])["download_url"]).content == photo + b"|enhance|256|fit|False"


# in process


def test_retries_racing_with_one_idempotency_key_make_one_task(tmp_path: Path):
    """Submissions with one key that all miss the first lookup (none is committed yet) meet in the
    claim, inside the transaction that creates each task: one task, the same id for all."""
    from flowengine.config import Config
    from flowengine.core.workflows import RunRequest
    from flowengine.identity.directory import Principal
    from flowengine.runtime.engine import Engine
    from flowengine.runtime.tasks import submit

    install(tmp_path, "greet")
    engine = Engine(Config(data_dir=str(tmp_path / "data"), flows_dir=str(tmp_path)))

    async def scenario() -> tuple[list[tuple[str, bool]], int]:
        await engine.start()
        try:
            await engine.workflows.sync()
            stored = await engine.workflows.get("t1", slug="greet")
            caller = Principal("integration", "t1")
            answers = await asyncio.gather(*(submit(engine, caller, stored, RunRequest(), "key") for _ in range(5)))
            return answers, await engine.db.count_tasks("t1", None)
        finally:
            await engine.stop()

    answers, total = asyncio.run(scenario())
    assert len({task_id for task_id, _ in answers}) == 1 and total == 1
    assert sorted(replayed for _, replayed in answers) == [False, True, True, True, True]
