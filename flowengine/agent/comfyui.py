"""Drive a ComfyUI server over its HTTP API and websocket, for `comfyui` steps.

`run_graph` uploads a step's input files, submits its graph under a prompt id the caller chooses (the
lease id: asking again after a lost answer follows the prompt ComfyUI already has instead of queueing a
second one), reports progress from the websocket, takes the outcome from `/history` (the socket is known
to drop messages and to go silent, so the history is polled as well), and streams the outputs to disk.
`check` reads the facts an agent registers with, from `/system_stats`.

What this relies on is ComfyUI's own behaviour (server.py, execution.py and main.py, checked against a
running 0.3.64):
- `POST /prompt` queues a prompt_id it already knows a second time, and runs it again.
- `/history/{id}` is `{}` until the prompt has ended; then `status.status_str` is `success` or `error`
  and `status.messages` holds the `execution_error` or `execution_interrupted` with its data. A prompt
  leaves the queue and enters the history in one step.
- A prompt's messages go only to the socket whose `clientId` was the prompt's `client_id`; a socket that
  connects again under that id is told the node running now.
- `POST /interrupt {"prompt_id"}` stops that prompt only while it runs, and an interrupt that lands just
  before it starts executing is forgotten; `POST /queue {"delete": [...]}` removes pending prompts.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import mimetypes
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import websockets
from websockets.asyncio.client import connect

from flowengine.aio import wait_event

log = logging.getLogger("flowengine.agent.comfyui")

TOOL = "comfyui"  # the tool type of the steps this runs

_HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_WS_MAX_SIZE = 64 * 1024 * 1024  # previews come as binary frames: a bigger one costs the socket, not the prompt
_WS_MAX_BACKOFF = 10.0
_QUEUE_EVERY = 5  # polls of /history between two looks at /queue for a prompt that has vanished
_STOP_GRACE = 10.0  # how long a cancelled run keeps trying to stop its prompt in ComfyUI
_TRACEBACK_LINES = 20


class Progress(msgspec.Struct, frozen=True):
    """How far a prompt is: `fraction` (0 to 1) over the nodes it runs, the node running now and, for
    nodes that report them (samplers), its steps."""

    fraction: float
    current_node: str | None = None
    step_current: int | None = None
    step_total: int | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class Output:
    """One file an output node produced, downloaded to `path`. `name` is `<node>.<kind>.<i>` (`9.images.0`),
    the key of the reference's `download_urls`."""

    name: str
    path: Path
    content_type: str
    size: int
    filename: str  # its name in ComfyUI's output folder


class GpuDevice(msgspec.Struct, frozen=True):
    device_name: str
    device_type: str
    vram_total: int
    vram_free: int


class SystemStats(msgspec.Struct, frozen=True):
    """`/system_stats` in the reference's field names (an agent's `system_stats`)."""

    comfyui_version: str
    pytorch_version: str
    python_version: str
    os_type: str
    ram_total: int
    ram_free: int
    gpu_devices: list[GpuDevice]


class ComfyUIError(Exception):
    """A prompt that did not give its outputs. `code`: `graph_rejected`, `bad_binding`, `execution_error`,
    `interrupted`, `vanished`, `unavailable`, `timeout`, `output_missing`. `retryable` says whether another
    attempt may succeed: a graph ComfyUI rejects or a node that fails on its input fails again; a ComfyUI
    that was away, restarted, out of memory or interrupted by someone else may do better next time."""

    def __init__(self, code: str, message: str, *, retryable: bool, node_id: str = "", traceback: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.node_id = node_id
        self.traceback = traceback


ProgressCallback = Callable[[Progress], Awaitable[None]]


async def run_graph(
    base_url: str,
    graph: dict[str, Any],
    files: dict[tuple[str, str], Path],
    prompt_id: str,
    workdir: Path,
    on_progress: ProgressCallback | None = None,
    timeout: float | None = None,
    *,
    poll_interval: float = 1.0,
    unreachable_grace: float = 60.0,
) -> list[Output]:
    """Run `graph` (API format, parameters already patched in) on the ComfyUI at `base_url` as `prompt_id`,
    with each `files[(node_id, field)]` uploaded and named in that node's input; return its output files,
    downloaded into `workdir`.

    A prompt_id ComfyUI already has (queued, running or in its history) is followed, not submitted again.
    `timeout` (seconds) bounds the whole run: uploads, queueing, execution and downloads. Cancelling the
    task, or the timeout passing, deletes the prompt from ComfyUI's queue and interrupts it.
    ComfyUI may stop answering for `unreachable_grace` seconds before the run fails (retryable).
    Raises ComfyUIError."""
    _check_bindings(graph, files)
    async with httpx.AsyncClient(base_url=base_url, timeout=_HTTP_TIMEOUT) as client:
        prompt = _Prompt(_Api(client, base_url), graph, prompt_id, on_progress, poll_interval, unreachable_grace)
        try:
            async with asyncio.timeout(timeout) as deadline:
                return await prompt.run(files, workdir, _ws_url(base_url, prompt.client_id))
        except asyncio.CancelledError:
            await prompt.stop()
            raise
        except TimeoutError:
            if not deadline.expired():
                raise
            await prompt.stop()
            raise ComfyUIError(
                "timeout", f"prompt {prompt_id} did not finish within {timeout:g} s", retryable=True
            ) from None


async def check(base_url: str, timeout: float = 10.0) -> SystemStats:
    """The facts of the ComfyUI at `base_url` an agent registers with; ComfyUIError if it does not answer
    within `timeout` seconds."""
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as client:
        body = await _Api(client, base_url).call("GET", "/system_stats")
    try:
        stats = msgspec.convert(body, _RawStats)
    except msgspec.ValidationError as exc:
        raise ComfyUIError(
            "unavailable", f"{_where(base_url)}/system_stats is not ComfyUI's: {exc}", retryable=True
        ) from None
    system = stats.system
    return SystemStats(
        comfyui_version=system.comfyui_version,
        pytorch_version=system.pytorch_version,
        python_version=system.python_version,
        os_type=system.os,
        ram_total=system.ram_total,
        ram_free=system.ram_free,
        gpu_devices=[GpuDevice(d.name, d.type, d.vram_total, d.vram_free) for d in stats.devices],
    )


class _Api:
    """ComfyUI's HTTP calls; a failure to answer becomes ComfyUIError `unavailable`."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self.client = client
        self.where = _where(base_url)

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._send(method, path, **kwargs)
        if response.status_code != 200:
            raise self._unexpected(method, path, response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise self._unexpected(method, path, response) from None

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self.unreachable(exc) from None

    def unreachable(self, exc: Exception) -> ComfyUIError:
        return ComfyUIError("unavailable", f"ComfyUI at {self.where} does not answer: {_explain(exc)}", retryable=True)

    def _unexpected(self, method: str, path: str, response: httpx.Response) -> ComfyUIError:
        return ComfyUIError(
            "unavailable",
            f"ComfyUI at {self.where} answered {method} {path} with {response.status_code}: {response.text[:300]}",
            retryable=True,
        )

    async def queue(self) -> set[str]:
        """The ids of the prompts running and pending."""
        body = await self.call("GET", "/queue")
        if not isinstance(body, dict):
            raise ComfyUIError("unavailable", f"ComfyUI at {self.where} answered /queue with {body!r}", retryable=True)
        items = [*body.get("queue_running", []), *body.get("queue_pending", [])]
        return {item[1] for item in items if isinstance(item, list) and len(item) > 1}

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        body = await self.call("GET", f"/history/{quote(prompt_id, safe='')}")
        return body.get(prompt_id) if isinstance(body, dict) else None

    async def upload(self, path: Path, name: str, subfolder: str) -> str:
        """Upload a file into ComfyUI's input folder; the name a LoadImage-like node takes it by."""
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        with path.open("rb") as file:
            body = await self.call(
                "POST",
                "/upload/image",
                files={"image": (name, file, content_type)},
                data={"type": "input", "overwrite": "true", "subfolder": subfolder},
            )
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]

    async def submit(self, graph: dict[str, Any], prompt_id: str, client_id: str) -> None:
        body = {"prompt": graph, "prompt_id": prompt_id, "client_id": client_id}
        response = await self._send("POST", "/prompt", json=body)
        if response.status_code == 400:
            raise _rejected(response)
        if response.status_code != 200:
            raise self._unexpected("POST", "/prompt", response)
        node_errors = response.json().get("node_errors")
        if node_errors:  # queued all the same, without the output nodes that failed validation
            raise _rejected_nodes("ComfyUI dropped output nodes that failed validation", node_errors)

    async def download(self, item: dict[str, Any], name: str, workdir: Path) -> Output:
        filename, subfolder = item["filename"], str(item.get("subfolder", ""))
        path = workdir / (_safe(name) + _safe(Path(filename).suffix))
        params = {"filename": filename, "subfolder": subfolder, "type": "output"}
        size = 0
        try:
            async with self.client.stream("GET", "/view", params=params) as response:
                if response.status_code == 404:
                    raise ComfyUIError(
                        "output_missing",
                        f"ComfyUI has no output file {subfolder}/{filename} ({name}): it was deleted",
                        retryable=False,
                    )
                if response.status_code != 200:
                    await response.aread()
                    raise self._unexpected("GET", "/view", response)
                with path.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)
                        size += len(chunk)
        except httpx.HTTPError as exc:
            raise self.unreachable(exc) from None
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        content_type = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return Output(name=name, path=path, content_type=content_type, size=size, filename=filename)


class _Prompt:
    """One prompt followed through ComfyUI: its submission, its websocket, its progress and its outcome."""

    def __init__(
        self,
        api: _Api,
        graph: dict[str, Any],
        prompt_id: str,
        on_progress: ProgressCallback | None,
        poll_interval: float,
        unreachable_grace: float,
    ) -> None:
        self.api = api
        self.graph = graph
        self.id = prompt_id
        # One socket per prompt, under an id a retry of the same prompt finds again: ComfyUI sends a
        # prompt's messages to its client_id's socket only, and replaces a socket that reuses an id.
        self.client_id = f"flowengine-{prompt_id}"
        self.on_progress = on_progress
        self.poll_interval = poll_interval
        self.unreachable_grace = unreachable_grace
        self.socket_tried = asyncio.Event()  # the first connection of the socket succeeded or failed
        self.ended = asyncio.Event()  # the socket says the prompt ended: look at the history now
        self.changed = asyncio.Event()  # progress to report
        self.total = max(len(graph), 1)  # nodes to run: the graph's, less those ComfyUI has cached
        self.done: set[str] = set()
        self.node: str | None = None
        self.step: int | None = None
        self.steps: int | None = None
        self.message = ""

    async def run(self, files: dict[tuple[str, str], Path], workdir: Path, ws_url: str) -> list[Output]:
        watcher = asyncio.create_task(self._watch(ws_url))
        reporter = asyncio.create_task(self._report()) if self.on_progress else None
        try:
            if self.id in await self.api.queue() or await self.api.history(self.id) is not None:
                log.info("prompt %s: ComfyUI already has it, following it instead of submitting it again", self.id)
            else:
                await wait_event(self.socket_tried, 5.0)  # not worth holding the prompt back for
                await self._submit(files)
                if not self.message:  # the socket may have told more already
                    self._update(message="queued")
            outputs = await self._wait()
        finally:
            for task in (watcher, reporter):
                if task:
                    task.cancel()
            await asyncio.gather(*(t for t in (watcher, reporter) if t), return_exceptions=True)
        await self._emit(Progress(1.0, message="finished; downloading outputs"))
        return await self._download(outputs, workdir)

    async def _submit(self, files: dict[tuple[str, str], Path]) -> None:
        graph = copy.deepcopy(self.graph)
        subfolder = f"flowengine/{_safe(self.id)}"  # a folder per prompt: concurrent jobs never collide
        for i, ((node, field), path) in enumerate(sorted(files.items())):
            name = f"{i}-{_safe(node)}-{_safe(field)}{_safe(path.suffix)}"
            graph[node]["inputs"][field] = await self.api.upload(path, name, subfolder)
        try:
            await self.api.submit(graph, self.id, self.client_id)
        except ComfyUIError as exc:
            if exc.code == "graph_rejected":
                await self.stop()  # a partly valid graph was queued anyway
            raise
        log.info("prompt %s: submitted to ComfyUI (%d nodes, %d input files)", self.id, len(graph), len(files))

    async def _wait(self) -> dict[str, Any]:
        """The prompt's outputs from its history entry, once there; polled, and looked up at once when the
        socket says the prompt ended."""
        loop = asyncio.get_running_loop()
        answered, away, polls = loop.time(), False, 0
        while True:
            self.ended.clear()
            polls += 1
            try:
                entry = await self.api.history(self.id)
                if entry is None and polls % _QUEUE_EVERY == 0:
                    entry = await self._still_there()
            except ComfyUIError as exc:
                if exc.code != "unavailable" or loop.time() - answered > self.unreachable_grace:
                    raise
                (log.debug if away else log.warning)("prompt %s: %s; asking again", self.id, exc.message)
                entry, away = None, True
            else:
                if away:
                    log.info("prompt %s: ComfyUI answers again", self.id)
                answered, away = loop.time(), False
            if entry is not None:
                return _outcome(self.id, entry)
            await wait_event(self.ended, self.poll_interval)

    async def _still_there(self) -> dict[str, Any] | None:
        """None while the prompt is queued or running; its history entry if it ended meanwhile."""
        if self.id in await self.api.queue():
            return None
        entry = await self.api.history(self.id)  # it may have ended between the two looks
        if entry is None:
            raise ComfyUIError(
                "vanished",
                f"ComfyUI no longer knows prompt {self.id}: it was restarted, or the prompt was deleted from its queue",
                retryable=True,
            )
        return entry

    async def _download(self, outputs: dict[str, Any], workdir: Path) -> list[Output]:
        workdir.mkdir(parents=True, exist_ok=True)
        downloaded = [await self.api.download(item, name, workdir) for name, item in _output_files(outputs)]
        log.info("prompt %s: downloaded %d output files", self.id, len(downloaded))
        return downloaded

    async def stop(self) -> None:
        """Take the prompt out of ComfyUI's hands: delete it from the queue so it never starts, and
        interrupt it while it runs (again, as ComfyUI forgets an interrupt that lands as it starts)."""
        try:
            async with asyncio.timeout(_STOP_GRACE):
                while True:
                    await self.api.call("POST", "/queue", json={"delete": [self.id]})
                    await self.api.call("POST", "/interrupt", json={"prompt_id": self.id})
                    if self.id not in await self.api.queue():
                        log.info("prompt %s: stopped in ComfyUI", self.id)
                        return
                    await asyncio.sleep(min(self.poll_interval, 0.2))
        except (ComfyUIError, TimeoutError) as exc:
            log.warning("prompt %s: could not stop it in ComfyUI: %s", self.id, exc or "it keeps running")

    async def _watch(self, url: str) -> None:
        """Follow the prompt's messages on ComfyUI's websocket, reconnecting with a backoff; the run never
        depends on it (the history is polled all the same)."""
        delay, failures = self.poll_interval, 0
        while True:
            try:
                async with connect(url, max_size=_WS_MAX_SIZE, open_timeout=10) as socket:
                    self.socket_tried.set()
                    if failures:
                        log.info("prompt %s: websocket connected again", self.id)
                    delay, failures = self.poll_interval, 0
                    async for message in socket:
                        if isinstance(message, str):  # binary frames are previews
                            self._on_message(message)
                reason = "closed by ComfyUI"
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                reason = _explain(exc)
            self.socket_tried.set()
            failures += 1
            (log.warning if failures == 1 else log.debug)(
                "prompt %s: websocket %s; following the prompt through /history, reconnecting in %.1f s",
                self.id, reason, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, _WS_MAX_BACKOFF)

    def _on_message(self, text: str) -> None:
        try:
            message = msgspec.json.decode(text, type=_Message)
            kind = _EVENTS.get(message.type)
            if kind is None:
                return
            event = msgspec.json.decode(message.data, type=kind)
        except msgspec.MsgspecError as exc:
            log.debug("prompt %s: ignoring a websocket message ComfyUI sent: %s", self.id, exc)
            return
        if event.prompt_id not in (None, self.id):
            return
        if isinstance(event, _Cached):
            cached = len(set(event.nodes) & self.graph.keys())
            self.total = max(len(self.graph) - cached, 1)
            self._update(message=f"started ({cached} nodes cached)" if cached else "started")
        elif isinstance(event, _Executing) and event.node is None:
            self.ended.set()
        elif isinstance(event, _Executing):
            if self.node is not None and self.node != event.node:
                self.done.add(self.node)
            self._update(node=event.node, step=None, steps=None, message=self._running(event.node))
        elif isinstance(event, _Step):
            node = event.node or self.node
            steps = int(event.max) or None
            self._update(node=node, step=int(event.value), steps=steps, message=self._running(node))
        elif message.type != "execution_start":  # execution_success, _error, _interrupted
            self.ended.set()

    def _running(self, node: str | None) -> str:
        class_type = self.graph.get(node, {}).get("class_type", "?") if node else "?"
        return f"running node {node} ({class_type})"

    def _update(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self, name, value)
        self.changed.set()

    def _progress(self) -> Progress:
        within = self.step / self.steps if self.step is not None and self.steps else 0.0
        fraction = min((len(self.done) + within) / self.total, 0.99)  # 1.0 once the history says so
        return Progress(fraction, self.node, self.step, self.steps, self.message)

    async def _report(self) -> None:
        """Report the latest progress whenever it changed: a slow callback sees fewer updates, never a
        backlog, and never holds up the socket."""
        while True:
            await self.changed.wait()
            self.changed.clear()
            await self._emit(self._progress())

    async def _emit(self, progress: Progress) -> None:
        if self.on_progress is None:
            return
        try:
            await self.on_progress(progress)
        except Exception:
            log.exception("prompt %s: the progress callback failed", self.id)


class _Message(msgspec.Struct):
    type: str
    data: msgspec.Raw = msgspec.Raw(b"null")


class _Event(msgspec.Struct):
    prompt_id: str | None = None


class _Cached(_Event):
    nodes: list[str] = []


class _Executing(_Event):
    node: str | None = None


class _Step(_Event):
    value: float = 0
    max: float = 0
    node: str | None = None


_EVENTS: dict[str, type[_Event]] = {
    "execution_start": _Event,
    "execution_cached": _Cached,
    "executing": _Executing,
    "progress": _Step,
    "execution_success": _Event,
    "execution_error": _Event,
    "execution_interrupted": _Event,
}


class _RawSystem(msgspec.Struct):
    os: str = ""
    ram_total: int = 0
    ram_free: int = 0
    comfyui_version: str = ""
    python_version: str = ""
    pytorch_version: str = ""


class _RawDevice(msgspec.Struct):
    name: str = ""
    type: str = ""
    vram_total: int = 0
    vram_free: int = 0


class _RawStats(msgspec.Struct):
    system: _RawSystem
    devices: list[_RawDevice] = []


def _outcome(prompt_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The outputs of a prompt that ended well; ComfyUIError for one that did not."""
    status = entry.get("status") or {}
    if status.get("status_str", "success") == "success":
        return entry.get("outputs") or {}
    for message in status.get("messages") or []:
        event, data = message if isinstance(message, list) and len(message) == 2 else ("", {})
        if event == "execution_error":
            raise _node_error(data)
        if event == "execution_interrupted":
            node = str(data.get("node_id", ""))
            raise ComfyUIError(
                "interrupted",
                f"ComfyUI interrupted prompt {prompt_id} at node {node} ({data.get('node_type', '?')})",
                retryable=True,
                node_id=node,
            )
    raise ComfyUIError("execution_error", f"ComfyUI says prompt {prompt_id} failed, not why", retryable=False)


def _output_files(outputs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """`(<node>.<kind>.<i>, file)` for each file in a history entry's outputs (`{"9": {"images": [...]}}`):
    files only, not texts or flags like `animated`, and not previews (type `temp`), which a graph shows
    rather than produces and ComfyUI deletes when it restarts."""
    return [
        (f"{node}.{kind}.{i}", item)
        for node, produced in outputs.items()
        if isinstance(produced, dict)
        for kind, items in produced.items()
        if isinstance(items, list)
        for i, item in enumerate(items)
        if isinstance(item, dict) and isinstance(item.get("filename"), str) and item.get("type", "output") == "output"
    ]


def _node_error(data: dict[str, Any]) -> ComfyUIError:
    node = str(data.get("node_id", ""))
    exception_type = str(data.get("exception_type", ""))
    text = str(data.get("exception_message", "")).strip()
    lines = "".join(str(line) for line in data.get("traceback") or []).splitlines()
    return ComfyUIError(
        "execution_error",
        f"node {node} ({data.get('node_type', '?')}) failed: {exception_type}: {text}",
        # a bigger GPU, or the same one less busy, may have the memory
        retryable="OutOfMemory" in exception_type,
        node_id=node,
        traceback="\n".join(lines[-_TRACEBACK_LINES:]),
    )


def _rejected(response: httpx.Response) -> ComfyUIError:
    """ComfyUI's 400: `{"error": {type, message, details}, "node_errors": {node: {class_type, errors}}}`."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        what = str(error.get("message", "")) or "invalid graph"
        if error.get("details") and not body.get("node_errors"):
            what = f"{what}: {error['details']}"
    else:
        what = str(error or response.text[:300])
    return _rejected_nodes(what, body.get("node_errors") if isinstance(body, dict) else None)


def _rejected_nodes(what: str, node_errors: Any) -> ComfyUIError:
    problems = []
    for node, found in (node_errors or {}).items():
        for error in found.get("errors", []):
            detail = f": {error['details']}" if error.get("details") else ""
            problems.append(f"node {node} ({found.get('class_type', '?')}): {error.get('message', '')}{detail}")
    message = f"ComfyUI rejected the graph: {what}" + "".join(f"; {p}" for p in problems)
    return ComfyUIError("graph_rejected", message, retryable=False, node_id=next(iter(node_errors or {}), ""))


def _check_bindings(graph: dict[str, Any], files: dict[tuple[str, str], Path]) -> None:
    for node, field in files:
        if not isinstance(graph.get(node), dict) or not isinstance(graph[node].get("inputs"), dict):
            raise ComfyUIError(
                "bad_binding", f"the graph has no node {node!r} to take the file of input {field!r}",
                retryable=False, node_id=node,
            )  # fmt: skip


def _ws_url(base_url: str, client_id: str) -> str:
    url = httpx.URL(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(url.scheme)
    if scheme is None:
        raise ValueError(f"a ComfyUI URL is http:// or https://, not {base_url!r}")
    return str(url.copy_with(scheme=scheme, path=url.path.rstrip("/") + "/ws", params={"clientId": client_id}))


def _where(base_url: str) -> str:
    """The URL to name in messages: never its credentials."""
    url = httpx.URL(base_url)
    return str(url.copy_with(username=None, password=None)).rstrip("/")


def _safe(text: str) -> str:
    """A name ComfyUI keeps as it is on every OS (node ids of subgraphs hold `:`)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _explain(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
