"""ComfyUI workflows run end to end: a real server, a real `flowengine agent --comfyui-url` process and the
stand-in ComfyUI (tests/comfy_standin.py) on loopback ports. A task of a comfyui workflow, run through
`/r/workflows/.../run` with an uploaded image, completes with `download_urls` keyed `<node>.images.<i>`
holding ComfyUI's output; its progress streams as SSE `progress` events; a ComfyUI error fails the task
with ComfyUI's message, without a retry; cancelling the task interrupts the prompt in ComfyUI.
With FLOWENGINE_TEST_COMFYUI_URL set to a real ComfyUI's address, a run and a cancel also go to it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from comfy_standin import StandIn
from dashboard import sign_in
from live import Server, make_key, stop
from PIL import Image
from test_comfyui import GRAPH, assert_inverted, picture
from test_r_tasks import read_events

from flowengine.agent.comfyui import Output
from flowengine.agent.worker import StepFailed, _comfy_outputs

SETTINGS = {"auth": "keys", "lease": 2, "heartbeat_interval": 0.5, "offer_timeout": 2, "schedule_to_start": 60}
WORKFLOW: dict[str, Any] = {
    "workflow_slug": "invert",
    "display_name": "Invert",
    "tool_type": "comfyui",
    "task_timeout": 60,
    "max_retries": 2,
    "workflow_json": GRAPH,
    "parameters": [
        {"key": "photo", "node_id": "1", "field": "image", "type": "file", "label": "Photo", "required": True,
         "accept": ["image/*"]},
        {"key": "prefix", "node_id": "3", "field": "filename_prefix", "type": "string", "label": "Prefix",
         "default": "inverted"},
    ],
}  # fmt: skip
# A batch of `copies` inverted photos, saved by one SaveImage: it gives `3.images.0`, `3.images.1`, ...
BATCH: dict[str, Any] = {
    **WORKFLOW,
    "workflow_slug": "invert-batch",
    "workflow_json": {**GRAPH, "4": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 2}},
                      "3": {**GRAPH["3"], "inputs": {**GRAPH["3"]["inputs"], "images": ["4", 0]}}},
    "parameters": [*WORKFLOW["parameters"], {"key": "copies", "node_id": "4", "field": "amount", "type": "number",
                                              "label": "Copies", "default": 2}],
}  # fmt: skip


class Lab:
    """A team on the engine: its integration key for the task API, its agent key, and the stand-in ComfyUI."""

    def __init__(self, server: Server, comfy: StandIn) -> None:
        self.server, self.comfy = server, comfy
        self.key = make_key(server, "lab")
        self.client = httpx.Client(base_url=server.url + "/api/v1", timeout=10,
                                   headers={"Authorization": f"Bearer {self.key}"})  # fmt: skip
        self.agent_key = make_key(server, "lab", "agent")
        for workflow in (WORKFLOW, BATCH):
            created = self.client.post("/workflows", json=workflow)
            assert created.status_code == 201, created.text

    def start(self, data: bytes, slug: str = "invert", **parameters: Any) -> str:
        presigned = self.client.post("/r/files/presign", json={"file_name": "photo.png", "file_size": len(data),
                                                               "content_type": "image/png"}).json()  # fmt: skip
        assert httpx.put(presigned["upload_url"], content=data, headers=presigned["upload_headers"]).status_code == 200
        body = {"parameters": {"photo": presigned["file_key"], **parameters}}
        answer = self.client.post(f"/r/workflows/slug/{slug}/run", json=body)
        assert answer.status_code == 202, answer.text
        return answer.json()["task_id"]

    def task(self, task_id: str) -> dict[str, Any]:
        return self.client.get(f"/r/tasks/{task_id}").json()

    def wait(self, task_id: str, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
        return until(lambda: (task := self.task(task_id))["task_status"] in statuses and task, timeout)

    def events(self, task_id: str) -> list[dict[str, Any]]:
        """The task's SSE stream, read until the server closes it after the terminal event."""
        with httpx.stream("GET", f"{self.server.url}/api/v1/r/tasks/{task_id}/events", timeout=30,
                          headers=self.client.headers) as stream:  # fmt: skip
            return read_events(stream.iter_lines())

    def agents(self) -> dict[str, dict[str, Any]]:
        return {a["agent_id"]: a for a in self.client.get("/agents").json()["agent_list"]}


def until(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


@pytest.fixture
def comfy(tmp_path: Path) -> Iterator[StandIn]:
    with StandIn(tmp_path / "comfyui") as server:
        yield server


@pytest.fixture
def lab(start_server: Callable[..., Server], comfy: StandIn) -> Iterator[Lab]:
    lab = Lab(start_server(**SETTINGS), comfy)
    yield lab
    lab.client.close()


@pytest.fixture
def agent(lab: Lab, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """agent(name, comfyui_url=the stand-in's): a `flowengine agent` process, stopped at the end."""
    started: list[subprocess.Popen] = []

    def start(name: str = "gpu-box", comfyui_url: str | None = None) -> subprocess.Popen:
        log = open(tmp_path / f"agent-{name}.log", "ab")  # noqa: SIM115 (the process writes it until it ends)
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowengine.cli", "agent", "--server", lab.server.url, "--key", lab.agent_key,
             "--name", name, "--work-dir", str(tmp_path / f"work-{name}"),
             "--comfyui-url", lab.comfy.url if comfyui_url is None else comfyui_url],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop(proc, signal.SIGKILL)


def png(path: Path) -> bytes:
    return picture(path).read_bytes()


def test_a_comfyui_task_runs_on_the_agents_comfyui_and_gives_its_images_by_node(lab: Lab, agent, tmp_path: Path):
    lab.comfy.node_delay, lab.comfy.progress_steps = 0.3, 3  # slow enough to report progress, as a sampler does
    agent()
    registered = until(lambda: lab.agents().get("gpu-box"))
    assert "comfyui" in registered["tool"] and registered["system_stats"]["comfyui_version"] == "0.3.64"
    source = tmp_path / "photo.png"
    task_id = lab.start(png(source), prefix="flipped")
    events = lab.events(task_id)
    assert lab.task(task_id)["task_status"] == "completed", events
    result = lab.client.get(f"/r/tasks/{task_id}/result").json()
    assert list(result["download_urls"]) == ["3.images.0"]
    got = httpx.get(result["download_urls"]["3.images.0"])
    assert got.headers["content-type"] == "image/png"
    (tmp_path / "result.png").write_bytes(got.content)
    assert_inverted(source, tmp_path / "result.png")
    # one prompt, named by the lease, with the run's parameter patched into its node
    [prompt_id] = lab.comfy.posted
    assert lab.comfy.history[prompt_id]["prompt"][2]["3"]["inputs"]["filename_prefix"] == "flipped"
    progress = [e["data"] for e in events if e.get("event") == "progress"]
    assert {p["current_node"] for p in progress} >= {"1", "2", "3"}, progress
    assert any(p.get("step_total") == 3 and p.get("step_current") for p in progress), progress
    fractions = [p["progress"] for p in progress]
    assert fractions == sorted(fractions) and fractions[0] < 0.5 < fractions[-2] and fractions[-1] == 1.0, fractions
    assert events[-1]["event"] == "completed"


def test_every_image_a_saver_node_makes_is_an_output_of_its_own(lab: Lab, agent, tmp_path: Path):
    agent()
    source = tmp_path / "photo.png"
    for copies in (2, 3):  # how many there are is known only once the graph ran
        task_id = lab.start(png(source), "invert-batch", copies=copies)
        task = lab.wait(task_id, {"completed", "failed", "cancelled"})
        assert task["task_status"] == "completed", task
        result = lab.client.get(f"/r/tasks/{task_id}/result").json()
        assert list(result["download_urls"]) == [f"3.images.{i}" for i in range(copies)]
        assert list(result["task_output"]["outputs"]) == list(result["download_urls"])
        for i, url in enumerate(result["download_urls"].values()):
            got = httpx.get(url)
            assert got.headers["content-type"] == "image/png"
            (tmp_path / f"result-{i}.png").write_bytes(got.content)
            assert_inverted(source, tmp_path / f"result-{i}.png")
        saved = lab.comfy.history[lab.comfy.posted[-1]]["outputs"]["3"]["images"]
        assert len({image["filename"] for image in saved}) == copies  # ComfyUI's files, each kept
    with sign_in(lab.server, lab.key) as ui:  # the dashboard shows the last one's files, each
        page = ui.get(f"/ui/runs/{task_id}")
        assert page.status_code == 200 and all(f"3.images.{i}" in page.text for i in range(3)), page.text


@pytest.mark.skipif(not os.environ.get("FLOWENGINE_TEST_COMFYUI_URL"), reason="no real ComfyUI given")
def test_a_comfyui_task_runs_on_a_real_comfyui(lab: Lab, agent, tmp_path: Path):
    real = os.environ["FLOWENGINE_TEST_COMFYUI_URL"]
    agent("real", real)
    assert "comfyui" in until(lambda: lab.agents().get("real"))["tool"]
    source = tmp_path / "photo.png"
    task_id = lab.start(png(source), prefix=f"flowengine-test-{time.time_ns()}")  # a prompt ComfyUI never cached
    events = lab.events(task_id)
    assert lab.task(task_id)["task_status"] == "completed", events
    url = lab.client.get(f"/r/tasks/{task_id}/result").json()["download_urls"]["3.images.0"]
    (tmp_path / "result.png").write_bytes(httpx.get(url).content)
    assert_inverted(source, tmp_path / "result.png")
    progress = [e["data"] for e in events if e.get("event") == "progress"]  # nodes may go by between two reports
    assert progress and progress[-1]["progress"] == 1.0, progress
    batch = lab.start(png(source), "invert-batch", prefix=f"flowengine-test-{time.time_ns()}", copies=2)
    assert lab.wait(batch, {"completed", "failed", "cancelled"}, timeout=60)["task_status"] == "completed"
    urls = lab.client.get(f"/r/tasks/{batch}/result").json()["download_urls"]
    assert list(urls) == ["3.images.0", "3.images.1"]  # ComfyUI's SaveImage gave both images of the batch
    for i, url in enumerate(urls.values()):
        (tmp_path / f"batch-{i}.png").write_bytes(httpx.get(url).content)
        assert_inverted(source, tmp_path / f"batch-{i}.png")
    failing = lab.start(b"\x89PNG\r\n\x1a\n but not an image")
    task = lab.wait(failing, {"completed", "failed", "cancelled"}, timeout=60)
    assert "node 1 (LoadImage) failed: " in task["task_error"], task  # its PIL says "OSError: Truncated File Read"
    assert task["retry_count"] == 0


@pytest.mark.skipif(not os.environ.get("FLOWENGINE_TEST_COMFYUI_URL"), reason="no real ComfyUI given")
def test_cancelling_a_task_interrupts_its_prompt_in_a_real_comfyui(lab: Lab, agent, tmp_path: Path):
    real = os.environ["FLOWENGINE_TEST_COMFYUI_URL"]
    agent("real", real)
    big = tmp_path / "noise.png"
    Image.frombytes("RGB", (4000, 4000), os.urandom(4000 * 4000 * 3)).save(big, compress_level=1)
    task_id = lab.start(big.read_bytes(), prefix=f"flowengine-test-{time.time_ns()}")
    running = until(lambda: httpx.get(f"{real}/queue").json()["queue_running"], timeout=120)
    prompt_id = running[0][1]
    assert lab.client.post(f"/r/tasks/{task_id}/cancel").status_code == 200
    entry = until(lambda: httpx.get(f"{real}/history/{prompt_id}").json().get(prompt_id), timeout=60)
    assert entry["status"]["status_str"] == "error", entry["status"]
    assert "execution_interrupted" in [message[0] for message in entry["status"]["messages"]]
    assert lab.task(task_id)["task_status"] == "cancelled"


def test_an_agent_whose_comfyui_does_not_answer_takes_no_comfyui_steps(lab: Lab, agent):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
    agent("no-comfy", nowhere)
    registered = until(lambda: lab.agents().get("no-comfy"))
    assert registered["tool"] == ["exec", "python"]
    task_id = lab.start(png(Path(lab.comfy.folders["input"]) / "photo.png"))
    time.sleep(2)
    assert lab.task(task_id)["task_status"] == "waiting" and lab.comfy.posted == []  # no agent can take it


def test_an_agent_offers_comfyui_steps_only_while_its_comfyui_answers(lab: Lab, agent, tmp_path: Path):
    lab.comfy.node_delay = 1  # a step still runs when ComfyUI goes away
    agent()
    until(lambda: "comfyui" in lab.agents().get("gpu-box", {}).get("tool", []))
    photo = png(tmp_path / "photo.png")
    cut_short = lab.start(photo)
    until(lambda: lab.comfy.started)
    lab.comfy.stop()
    until(lambda: lab.agents()["gpu-box"]["tool"] == ["exec", "python"], timeout=10)  # its heartbeat said so
    waiting = lab.start(photo)
    time.sleep(2)  # long enough for a lease call to take it, were comfyui still offered
    assert lab.task(waiting)["task_status"] == "waiting"
    with StandIn(tmp_path / "comfyui", port=lab.comfy.port) as back:  # restarted: its queue and history are gone
        until(lambda: "comfyui" in lab.agents()["gpu-box"]["tool"], timeout=10)
        for task_id in (cut_short, waiting):
            assert lab.wait(task_id, {"completed", "failed", "cancelled"}, timeout=60)["task_status"] == "completed"
        # the prompt ComfyUI forgot failed its attempt as retryable; the retry ran on ComfyUI come back
        assert lab.task(cut_short)["retry_count"] == 1 and lab.task(waiting)["retry_count"] == 0
        assert len(back.posted) == 2


def test_a_comfyui_error_fails_the_task_with_its_message_and_no_retry(lab: Lab, agent):
    agent()
    task_id = lab.start(b"\x89PNG\r\n\x1a\n but not an image")  # ComfyUI's LoadImage fails on it
    task = lab.wait(task_id, {"completed", "failed", "cancelled"})
    assert task["task_status"] == "failed"
    assert "node 1 (LoadImage) failed: PIL.UnidentifiedImageError: cannot identify" in task["task_error"], task
    assert task["retry_count"] == 0 and len(lab.comfy.posted) == 1  # ComfyUI would fail it again: not retried


def test_cancelling_the_task_interrupts_its_prompt_in_comfyui(lab: Lab, agent, tmp_path: Path):
    lab.comfy.node_delay = 3
    agent()
    task_id = lab.start(png(tmp_path / "photo.png"))
    until(lambda: lab.comfy.started)
    [prompt_id] = lab.comfy.started
    running = lab.wait(task_id, {"running"})
    assert running["task_status"] == "running"
    assert lab.client.post(f"/r/tasks/{task_id}/cancel").status_code == 200
    until(lambda: prompt_id in lab.comfy.history, timeout=10)  # it ended well before its 9 s
    assert prompt_id in lab.comfy.interrupts
    assert lab.comfy.history[prompt_id]["status"]["status_str"] == "error"  # interrupted, not finished
    assert lab.task(task_id)["task_status"] == "cancelled"
    until(lambda: lab.agents()["gpu-box"]["running_count"] == 0, timeout=10)


def test_output_slots_take_the_file_they_name_else_the_files_no_slot_names(tmp_path: Path):
    produced = [Output(name, tmp_path / name, "image/png", 1, f"{name}.png") for name in ("9.images.0", "9.images.1",
                                                                                            "12.gifs.0")]  # fmt: skip
    chosen = _comfy_outputs(["outputs", "12.gifs.0", "second"], produced)
    assert chosen == {"outputs": tmp_path / "9.images.0", "12.gifs.0": tmp_path / "12.gifs.0",
                      "second": tmp_path / "9.images.1"}  # fmt: skip
    more = _comfy_outputs(["9.images.0"], produced)  # the rest of a numbered output's files, by their names
    assert more == {"9.images.0": tmp_path / "9.images.0", "9.images.1": tmp_path / "9.images.1"}
    with pytest.raises(StepFailed, match=r"no file for output '9.images.3' \(it gave 9.images.0, 9.images.1, 12"):
        _comfy_outputs(["9.images.3"], produced)
    with pytest.raises(StepFailed, match="no file for output 'outputs'") as failed:
        _comfy_outputs(["outputs"], [])
    assert not failed.value.retryable
