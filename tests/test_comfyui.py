"""The ComfyUI driver of the agent (`flowengine.agent.comfyui`) against a stand-in ComfyUI on a loopback port
(tests/comfy_standin.py: ComfyUI's API and websocket messages, executing LoadImage -> ImageInvert ->
SaveImage for real), misbehaving the ways real ones do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from comfy_standin import MESSAGES, StandIn
from PIL import Image

from flowengine.agent.comfyui import ComfyUIError, Output, Progress, _output_files, check, run_graph

GRAPH: dict[str, Any] = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "set by the driver"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "result"}},
}


@pytest.fixture
def comfy(tmp_path: Path) -> Iterator[StandIn]:
    with StandIn(tmp_path / "comfyui") as server:
        yield server


def picture(path: Path, shade: int = 0) -> Path:
    """A small PNG whose pixels are all different, so an inversion shows in every byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (8, 6))
    image.putdata([((i * 7 + shade) % 256, (i * 13 + shade) % 256, (i * 29 + shade) % 256) for i in range(48)])
    image.save(path)
    return path


def assert_inverted(source: Path, result: Path) -> None:
    with Image.open(source) as a, Image.open(result) as b:
        assert (b.mode, b.size) == ("RGB", a.size)
        pairs = list(zip(a.tobytes(), b.tobytes(), strict=True))
    # ComfyUI computes 1 - x in float32 and truncates: 255 - v, or one less
    assert all(254 <= x + y <= 255 for x, y in pairs), pairs
    assert any(x + y == 255 for x, y in pairs)


def graph_run(
    comfy: StandIn,
    tmp_path: Path,
    prompt_id: str = "lease-1",
    graph: dict[str, Any] = GRAPH,
    source: Path | None = None,
    files: dict[tuple[str, str], Path] | None = None,
    **kwargs: Any,
) -> Coroutine[Any, Any, list[Output]]:
    """run_graph of GRAPH on a picture, polling fast, never for long (a broken driver fails, not hangs)."""
    files = {("1", "image"): source or picture(tmp_path / "in" / "photo.png")} if files is None else files
    kwargs = {"poll_interval": 0.05, "timeout": 10, **kwargs}
    return run_graph(comfy.url, graph, files, prompt_id, tmp_path / "out" / prompt_id, **kwargs)


def run(comfy: StandIn, tmp_path: Path, prompt_id: str = "lease-1", **kwargs: Any) -> list[Output]:
    return asyncio.run(graph_run(comfy, tmp_path, prompt_id, **kwargs))


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def pending(comfy: StandIn) -> list[str]:
    return [item[1] for item in httpx.get(f"{comfy.url}/queue").json()["queue_pending"]]


def post_prompt(comfy: StandIn, prompt_id: str, image: str) -> None:
    """Submit GRAPH straight to ComfyUI, as an earlier attempt (or another client) would have."""
    graph = {**GRAPH, "1": {"class_type": "LoadImage", "inputs": {"image": image}}}
    answer = httpx.post(f"{comfy.url}/prompt", json={"prompt": graph, "prompt_id": prompt_id})
    assert answer.status_code == 200, answer.text


def upload(comfy: StandIn, path: Path) -> str:
    with path.open("rb") as file:
        answer = httpx.post(f"{comfy.url}/upload/image", files={"image": (path.name, file)}, data={"overwrite": "1"})
    return answer.json()["name"]


def test_a_graph_runs_its_input_is_uploaded_and_its_output_downloaded_inverted(comfy: StandIn, tmp_path: Path):
    source = picture(tmp_path / "in" / "photo.png")
    [output] = run(comfy, tmp_path, source=source)
    assert output.name == "3.images.0"  # the reference's download_urls key
    assert output.content_type == "image/png" and output.filename == "result_00001_.png"
    assert output.path.parent == tmp_path / "out" / "lease-1" and output.size == output.path.stat().st_size
    assert_inverted(source, output.path)
    # uploaded into a folder of its own, and the graph names it there
    [entry] = httpx.get(f"{comfy.url}/history/lease-1").json().values()
    assert entry["prompt"][2]["1"]["inputs"]["image"] == "flowengine/lease-1/0-1-image.png"
    assert (
        Path(comfy.folders["input"]) / "flowengine" / "lease-1" / "0-1-image.png"
    ).read_bytes() == source.read_bytes()


def test_progress_follows_nodes_and_steps_and_ends_at_one(comfy: StandIn, tmp_path: Path):
    comfy.node_delay, comfy.progress_steps = 0.2, 4
    seen: list[Progress] = []

    async def on_progress(progress: Progress) -> None:
        seen.append(progress)

    run(comfy, tmp_path, on_progress=on_progress)
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0 < fractions[len(fractions) // 2] < 1
    assert {p.current_node for p in seen} >= {"1", "2", "3"}
    steps = [(p.current_node, p.step_current, p.step_total) for p in seen if p.step_total]
    assert ("2", 2, 4) in steps or ("2", 3, 4) in steps, steps
    assert any(p.message == "running node 2 (ImageInvert)" for p in seen)


def test_a_failing_progress_callback_does_not_stop_the_prompt(comfy: StandIn, tmp_path: Path):
    async def on_progress(progress: Progress) -> None:
        raise RuntimeError("the engine is away")

    [output] = run(comfy, tmp_path, on_progress=on_progress)
    assert output.path.exists()


def test_the_socket_saying_the_prompt_ended_brings_the_outcome_at_once(comfy: StandIn, tmp_path: Path):
    comfy.node_delay = 0.1
    [output] = run(comfy, tmp_path, poll_interval=60)
    assert output.path.exists()


def test_the_outcome_comes_from_the_history_when_the_socket_delivers_nothing(comfy: StandIn, tmp_path: Path):
    comfy.ws_drop, comfy.node_delay = set(MESSAGES), 0.1  # still running at the first look at the history
    source = picture(tmp_path / "in" / "photo.png")
    [output] = run(comfy, tmp_path, source=source)
    assert_inverted(source, output.path)


def test_the_outcome_comes_from_the_history_without_any_socket(comfy: StandIn, tmp_path: Path):
    comfy.ws_refuse, comfy.node_delay = True, 0.1
    [output] = run(comfy, tmp_path)
    assert output.path.exists() and comfy.ws_connections == 0


def test_a_socket_closed_mid_run_is_connected_again_and_progress_goes_on(comfy: StandIn, tmp_path: Path):
    comfy.node_delay, comfy.progress_steps, comfy.ws_close_after = 0.3, 3, 6
    seen: list[Progress] = []

    async def on_progress(progress: Progress) -> None:
        seen.append(progress)

    [output] = run(comfy, tmp_path, on_progress=on_progress)
    assert output.path.exists()
    assert comfy.ws_connections >= 2
    # the first socket closed during node 1 (after status, status, start, cached, progress_state, executing)
    assert any(p.current_node == "3" and p.step_current for p in seen)


def test_the_same_prompt_id_again_is_not_a_second_job(comfy: StandIn, tmp_path: Path):
    first = run(comfy, tmp_path, "lease-7")
    again = run(comfy, tmp_path, "lease-7")
    assert [o.filename for o in again] == [o.filename for o in first] == ["result_00001_.png"]
    assert again[0].path.read_bytes() == first[0].path.read_bytes()
    assert comfy.posted == ["lease-7"] and comfy.started == ["lease-7"]


def test_the_stand_in_like_comfyui_runs_a_prompt_id_posted_twice_twice(comfy: StandIn, tmp_path: Path):
    """What makes the test above mean something: ComfyUI itself does not refuse a known prompt_id."""
    name = upload(comfy, picture(tmp_path / "photo.png"))
    post_prompt(comfy, "twice", name)
    post_prompt(comfy, "twice", name)
    asyncio.run(until(lambda: len(comfy.started) == 2 and not comfy.running))
    assert comfy.started == ["twice", "twice"]


@pytest.mark.parametrize("ahead", [0, 1], ids=["running", "queued"])
def test_a_retry_follows_the_prompt_comfyui_already_has(comfy: StandIn, tmp_path: Path, ahead: int):
    """An earlier attempt submitted the prompt and lost the answer: the retry waits for that prompt."""
    comfy.node_delay = 0.2
    name = upload(comfy, picture(tmp_path / "photo.png"))
    for i in range(ahead):
        post_prompt(comfy, f"before-{i}", name)
    post_prompt(comfy, "lease-3", name)
    [output] = run(comfy, tmp_path, "lease-3", files={})
    assert output.name == "3.images.0" and output.path.exists()
    assert comfy.posted.count("lease-3") == 1 and comfy.started.count("lease-3") == 1


def test_a_failing_node_is_an_error_naming_the_node_with_its_traceback(comfy: StandIn, tmp_path: Path):
    broken = tmp_path / "in" / "broken.png"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"this is no image")
    with pytest.raises(ComfyUIError) as failure:
        run(comfy, tmp_path, source=broken)
    error = failure.value
    assert (error.code, error.node_id, error.retryable) == ("execution_error", "1", False)
    assert error.message.startswith("node 1 (LoadImage) failed: PIL.UnidentifiedImageError: cannot identify image file")
    assert "raise UnidentifiedImageError(msg)" in error.traceback


@pytest.mark.parametrize(
    ("graph", "message", "node"),
    [
        (
            {**GRAPH, "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "result"}}},
            "ComfyUI rejected the graph: Prompt outputs failed validation; "
            "node 3 (SaveImage): Required input is missing: images",
            "3",
        ),
        (
            {**GRAPH, "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 1]}}},
            "ComfyUI rejected the graph: Prompt outputs failed validation; node 2 (ImageInvert): Return type "
            "mismatch between linked nodes: image, received_type(MASK) mismatch input_type(IMAGE)",
            "2",
        ),
        (
            {**GRAPH, "4": {"class_type": "KSamplerTurbo", "inputs": {}}},
            "ComfyUI rejected the graph: Cannot execute because node KSamplerTurbo does not exist.: Node ID '#4'",
            "",
        ),
    ],
    ids=["missing-input", "wrong-type", "unknown-node"],
)
def test_a_graph_comfyui_rejects_is_an_error_naming_nodes_and_problems(
    comfy: StandIn, tmp_path: Path, graph: dict[str, Any], message: str, node: str
):
    with pytest.raises(ComfyUIError) as failure:
        run(comfy, tmp_path, graph=graph)
    assert (failure.value.code, failure.value.retryable, failure.value.node_id) == ("graph_rejected", False, node)
    assert failure.value.message == message
    assert comfy.started == []


def test_a_graph_with_one_invalid_output_is_rejected_and_stopped(comfy: StandIn, tmp_path: Path):
    """ComfyUI queues the valid part of such a graph (200 with node_errors): it is not what was asked."""
    comfy.node_delay = 0.3
    graph = {**GRAPH, "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "other"}}}
    with pytest.raises(ComfyUIError) as failure:
        run(comfy, tmp_path, graph=graph)
    assert failure.value.code == "graph_rejected"
    assert failure.value.message.endswith("node 4 (SaveImage): Required input is missing: images")
    asyncio.run(until(lambda: not comfy.running))
    assert "lease-1" in comfy.interrupts and list(Path(comfy.folders["output"]).iterdir()) == []


def test_cancelling_interrupts_the_running_prompt_in_comfyui(comfy: StandIn, tmp_path: Path):
    comfy.node_delay, comfy.progress_steps = 0.5, 5

    async def scenario() -> None:
        task = asyncio.create_task(graph_run(comfy, tmp_path, "lease-9"))
        await until(lambda: "lease-9" in comfy.started)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert "lease-9" in comfy.interrupts and not comfy.running
    status = httpx.get(f"{comfy.url}/history/lease-9").json()["lease-9"]["status"]
    assert status["status_str"] == "error" and status["messages"][-1][0] == "execution_interrupted"
    assert list(Path(comfy.folders["output"]).iterdir()) == []


def test_cancelling_a_queued_prompt_takes_it_off_the_queue_and_spares_the_others(comfy: StandIn, tmp_path: Path):
    comfy.node_delay = 0.3
    post_prompt(comfy, "someone-else", upload(comfy, picture(tmp_path / "photo.png")))
    source = picture(tmp_path / "in" / "photo.png", shade=90)

    async def scenario() -> None:
        task = asyncio.create_task(graph_run(comfy, tmp_path, "lease-4", source=source))
        await until(lambda: "lease-4" in comfy.posted)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert "lease-4" not in pending(comfy)
    asyncio.run(until(lambda: "someone-else" in comfy.history))
    assert comfy.history["someone-else"]["status"]["status_str"] == "success"
    assert comfy.started == ["someone-else"] and "lease-4" not in comfy.history


def test_an_interrupt_from_someone_else_is_a_retryable_error(comfy: StandIn, tmp_path: Path):
    comfy.node_delay = 0.3

    async def scenario() -> None:
        task = asyncio.create_task(graph_run(comfy, tmp_path, "lease-5"))
        await until(lambda: "lease-5" in comfy.started)
        async with httpx.AsyncClient() as client:
            await client.post(f"{comfy.url}/interrupt")  # the ComfyUI page's Cancel button
        await task

    with pytest.raises(ComfyUIError) as failure:
        asyncio.run(scenario())
    assert (failure.value.code, failure.value.retryable) == ("interrupted", True)
    assert failure.value.message.startswith("ComfyUI interrupted prompt lease-5 at node ")


def test_a_timeout_stops_the_prompt_in_comfyui(comfy: StandIn, tmp_path: Path):
    comfy.node_delay = 1.0
    with pytest.raises(ComfyUIError) as failure:
        run(comfy, tmp_path, "lease-6", timeout=0.5)
    assert (failure.value.code, failure.value.retryable) == ("timeout", True)
    assert "lease-6" in comfy.interrupts
    asyncio.run(until(lambda: "lease-6" in comfy.history))
    assert comfy.history["lease-6"]["status"]["status_str"] == "error"


def test_a_comfyui_that_restarts_and_forgets_the_prompt_is_a_retryable_error(comfy: StandIn, tmp_path: Path):
    comfy.node_delay = 2.0
    restarted: list[StandIn] = []

    async def scenario() -> list[Output]:
        task = asyncio.create_task(graph_run(comfy, tmp_path, "lease-8"))
        await until(lambda: "lease-8" in comfy.started)
        await asyncio.to_thread(comfy.stop)
        restarted.append(StandIn(tmp_path / "comfyui", port=comfy.port).start())
        return await task

    try:
        with pytest.raises(ComfyUIError) as failure:
            asyncio.run(scenario())
    finally:
        for server in restarted:
            server.stop()
    assert (failure.value.code, failure.value.retryable) == ("vanished", True)
    assert "restarted" in failure.value.message


def test_a_comfyui_away_longer_than_the_grace_is_a_retryable_error(comfy: StandIn, tmp_path: Path):
    comfy.node_delay = 2.0

    async def scenario() -> None:
        task = asyncio.create_task(graph_run(comfy, tmp_path, "lease-2", unreachable_grace=0.5))
        await until(lambda: "lease-2" in comfy.started)
        await asyncio.to_thread(comfy.stop)
        await task

    with pytest.raises(ComfyUIError) as failure:
        asyncio.run(scenario())
    assert (failure.value.code, failure.value.retryable) == ("unavailable", True)
    assert failure.value.message.startswith(f"ComfyUI at {comfy.url} does not answer")


def test_concurrent_prompts_with_same_named_inputs_do_not_collide(comfy: StandIn, tmp_path: Path):
    first = picture(tmp_path / "a" / "photo.png", shade=0)
    second = picture(tmp_path / "b" / "photo.png", shade=100)

    async def both() -> list[list[Output]]:
        return await asyncio.gather(
            graph_run(comfy, tmp_path, "lease-a", source=first), graph_run(comfy, tmp_path, "lease-b", source=second)
        )

    [[a], [b]] = asyncio.run(both())
    assert_inverted(first, a.path)
    assert_inverted(second, b.path)


def test_previews_are_not_outputs(comfy: StandIn, tmp_path: Path):
    graph = {**GRAPH, "8": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    outputs = run(comfy, tmp_path, graph=graph)
    assert [o.name for o in outputs] == ["3.images.0"]
    assert any(Path(comfy.folders["temp"]).iterdir())  # the preview was made, and left in ComfyUI


def test_output_files_are_named_by_node_kind_and_index():
    produced = {
        "9": {"images": [{"filename": "a_00001_.png", "subfolder": "", "type": "output"},
                         {"filename": "a_00002_.png", "subfolder": "", "type": "output"}]},
        "12": {"gifs": [{"filename": "clip.webp", "subfolder": "v", "type": "output", "format": "image/webp"}],
               "animated": [True]},
        "14": {"audio": [{"filename": "voice.flac", "subfolder": "audio", "type": "output"}]},
        "15": {"text": ["a caption"]},
        "16": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]},
    }  # fmt: skip
    assert [name for name, _ in _output_files(produced)] == [
        "9.images.0", "9.images.1", "12.gifs.0", "14.audio.0",
    ]  # fmt: skip


def test_a_file_for_a_node_the_graph_lacks_is_refused_before_anything_is_sent(comfy: StandIn, tmp_path: Path):
    with pytest.raises(ComfyUIError) as failure:
        run(comfy, tmp_path, files={("7", "image"): picture(tmp_path / "photo.png")})
    assert (failure.value.code, failure.value.retryable, failure.value.node_id) == ("bad_binding", False, "7")
    assert comfy.posted == [] and not any(Path(comfy.folders["input"]).iterdir())


def test_check_reports_the_system_an_agent_registers_with(comfy: StandIn):
    stats = asyncio.run(check(comfy.url))
    assert (stats.comfyui_version, stats.pytorch_version, stats.os_type) == ("0.3.64", "2.14.1+cpu", "posix")
    assert stats.ram_total == 16 * 1024**3
    assert [(d.device_name, d.device_type, d.vram_total) for d in stats.gpu_devices] == [("cpu", "cpu", 16 * 1024**3)]


def test_check_of_a_comfyui_that_does_not_answer_is_an_error(comfy: StandIn):
    url = comfy.url
    comfy.stop()
    with pytest.raises(ComfyUIError) as failure:
        asyncio.run(check(url))
    assert (failure.value.code, failure.value.retryable) == ("unavailable", True)
