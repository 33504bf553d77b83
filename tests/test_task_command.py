"""`flowengine task run` as a user runs it (a subprocess against a real server, with an operator
workflow from a flow file and an sk- key), and the same task through `AsyncClient`: a file and a
number parameter to completion, a failing task, usage errors before any task exists, Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from live import Server, make_key

from flowengine.client import AsyncClient, TaskEvent

DATA = Path(__file__).resolve().parent / "data"
PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 5000


class Engine:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.key = make_key(server, "alpha")
        self.api = httpx.Client(base_url=server.url + "/api/v1/r", headers={"Authorization": f"Bearer {self.key}"})
        deadline = time.monotonic() + 20  # the engine stores the flow files' workflows every 2 seconds
        while self.api.get("/workflows/slug/img2img").status_code == 404:
            assert time.monotonic() < deadline
            time.sleep(0.1)

    def tasks(self) -> list[dict]:
        return self.api.get("/tasks").json()["task_list"]


@pytest.fixture
def engine(start_server: Callable[..., Server], flows_dir: Path) -> Engine:
    shutil.copy(DATA / "img2img.yaml", flows_dir)
    return Engine(start_server())


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    path.write_bytes(PNG)
    return path


def task_run(engine: Engine, *args: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWENGINE_")}
    command = [sys.executable, "-m", "flowengine", "task", "run", *args, "--server", engine.server.url,
               "--key", engine.key]  # fmt: skip
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_a_task_with_a_file_and_a_number_completes_and_its_output_is_downloaded(
    engine: Engine, photo: Path, tmp_path: Path
):
    args = ["-f", f"input_image={photo}", "-p", "width=512", "-p", "sharpen=yes", "-p", "prompt=a cat", "-o", "results"]
    code, out, err = finished(task_run(engine, "img2img", *args, cwd=tmp_path))
    assert code == 0, err
    (task,) = engine.tasks()
    assert task["task_status"] == "completed"
    saved = [Path(line) for line in out.splitlines()]
    assert len(saved) == 1 and saved[0].parent == Path("results")
    # the step appends its flags to the image: the number went as a number, the boolean as a boolean
    assert (tmp_path / saved[0]).read_bytes() == PNG + b"|a cat|512|fit|True"
    assert f"uploading photo.png → input_image ({len(PNG) / 1000:.1f} kB)" in err
    assert f"task {task['id']}: running" in err and f"task {task['id']}: completed" in err


def test_a_failing_task_exits_1_with_its_reason(engine: Engine, photo: Path, tmp_path: Path):
    code, out, err = finished(task_run(engine, "img2img", "-f", f"input_image={photo}", "-p", "fail=true",
                                       cwd=tmp_path))  # fmt: skip
    assert code == 1, err
    (task,) = engine.tasks()
    assert task["task_status"] == "failed" and task["task_error"]
    assert f"flowengine task run: task {task['id']} failed: {task['task_error']}" in err
    assert out == ""


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["-p", "width=wide"], "-p width=wide: 'width' is a number"),
        (["-p", "width=9"], "-p width=9: 'width' is at least 16"),
        (["-p", "mode=stretch"], "-p mode=stretch: 'mode' is one of fit, fill"),
        (["-p", "sharpen=maybe"], "'sharpen' is a boolean"),
        (["-p", "colour=red"], "no parameter 'colour'; workflow img2img takes input_image (file, required), prompt"),
        (["-p", "input_image=x"], "'input_image' is a file: give it with -f input_image=PATH"),
        (["-f", "width=photo.png"], "'width' is a number, not a file"),
        ([], "workflow img2img requires -f input_image=PATH"),
    ],
)
def test_a_usage_error_exits_2_before_any_task_exists(engine: Engine, photo: Path, args: list[str], said: str):
    files = ["-f", f"input_image={photo.name}"] if args[:1] == ["-p"] and "input_image" not in args[1] else []
    code, _, err = finished(task_run(engine, "img2img", *files, *args, cwd=photo.parent))
    assert code == 2, err
    assert said in err
    assert engine.tasks() == []


def test_missing_files_and_unknown_workflows_are_usage_errors(engine: Engine, tmp_path: Path):
    code, _, err = finished(task_run(engine, "img2img", "-f", "input_image=nothing.png", cwd=tmp_path))
    assert (code, err.strip()) == (2, "flowengine task run: -f input_image=nothing.png: nothing.png: no such file")
    code, _, err = finished(task_run(engine, "no-such-workflow", cwd=tmp_path))
    assert code == 2 and "the engine has no workflow 'no-such-workflow'" in err
    assert engine.tasks() == []


def test_ctrl_c_cancels_the_task_and_exits_130(engine: Engine, photo: Path, tmp_path: Path):
    proc = task_run(engine, "img2img", "-f", f"input_image={photo}", "-p", "pause=60", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not (tasks := engine.tasks()) or tasks[0]["task_status"] != "running":
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        code, _, err = finished(proc)
    finally:
        proc.kill()
    task_id = tasks[0]["id"]
    assert code == 130, err
    assert f"cancelling task {task_id}" in err and f"interrupted: task {task_id} is cancelled" in err
    assert engine.api.get(f"/tasks/{task_id}").json()["task_status"] == "cancelled"


def test_the_async_client_runs_the_same_task(engine: Engine, photo: Path, tmp_path: Path):
    async def run() -> tuple[list[TaskEvent], list[Path]]:
        events: list[TaskEvent] = []
        async with AsyncClient(engine.server.url, engine.key) as client:
            workflow = await client.workflow("img2img")
            assert workflow.parameter("width").type == "number"
            moved: list[int] = []
            key = await client.upload_file(photo, progress=lambda done, total: moved.append(done))
            assert moved[-1] == len(PNG)
            task_id = await client.run_workflow("img2img", {"input_image": key, "width": 64})
            task = await client.follow(task_id, on_event=events.append)
            assert task.task_status == "completed"
            return events, await client.download_result(await client.result(task_id), tmp_path / "out")

    events, saved = asyncio.run(run())
    assert [p.read_bytes() for p in saved] == [PNG + b"|none|64|fit|False"]
    assert events[-1].event == "completed" and events[-1].id
    assert "running" in [e.status for e in events if e.event == "status"]


def test_a_broken_event_stream_resumes_after_its_last_event_then_falls_back_to_polling():
    """`follow` driven by hand (the protocol does no I/O): each reconnect sends Last-Event-ID, no
    event is told twice, and a stream that keeps breaking gives way to the task's status."""
    from flowengine.client.errors import ConnectionFailed
    from flowengine.client.protocol import Protocol, Send, Sleep

    def answer(send: Send, status: int = 200, body: bytes = b"") -> httpx.Response:
        return httpx.Response(status, content=body, request=httpx.Request(send.method, send.url))

    seen: list[TaskEvent] = []
    op = Protocol("http://engine", "sk-x").follow("t1", on_event=seen.append)
    first = next(op)
    assert first.url == "http://engine/api/v1/r/tasks/t1/events" and "Last-Event-ID" not in first.headers
    first.sink.write(b'id: 1\nevent: status\ndata: {"task_id": "t1", "status": "pending"}\n\n: keepalive\n\nid: 2\nev')
    first.sink.write(b'ent: status\ndata: {"task_id": "t1", "status": "running"}\n\nid: 3\nevent: progr')
    assert isinstance(op.throw(ConnectionFailed("reset")), Sleep)  # the half event 3 is not told
    again = op.send(None)
    assert again.headers["Last-Event-ID"] == "2"
    for _ in range(3):  # three breaks in a row, none with an event: the stream is given up
        assert isinstance(op.send(answer(again, 503)), Sleep)
        again = op.send(None)
    assert again.url == "http://engine/api/v1/r/tasks/t1" and again.sink is None
    task = b'{"id": "t1", "task_status": "completed"}'
    with pytest.raises(StopIteration) as stop:
        op.send(answer(again, body=task))
    assert stop.value.value.task_status == "completed"
    assert [(e.id, e.event, e.status) for e in seen] == [
        ("1", "status", "pending"), ("2", "status", "running"), ("", "completed", "completed")
    ]  # fmt: skip
