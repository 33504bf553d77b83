"""The client's protocol logic, with no I/O of its own: both clients (`clients.py`) run it.

An operation is a generator. It yields what it needs done, a `Send` (one HTTP exchange) or a
`Sleep`, and is sent back the `httpx.Response` (or has the failure thrown in). `Client` carries
the effects out with httpx.Client and time.sleep, `AsyncClient` with httpx.AsyncClient and
asyncio.sleep: URLs, headers, retries, polling, checks and files are written once, here.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import re
import stat
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from flowengine.client.definitions import Definition, resolve
from flowengine.client.documents import (
    ErrorBody,
    FlowInfo,
    FlowList,
    PresignedFile,
    RErrorBody,
    RunDoc,
    RunPage,
    TaskDoc,
    TaskEvent,
    TaskResult,
    WaitingURL,
    WorkflowInfo,
    _Submitted,
)
from flowengine.client.errors import (
    ApiError,
    ClientError,
    ConnectionFailed,
    InputError,
    TransferError,
    WaitTimeout,
    error_class,
)

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:1234"
CHUNK = 1 << 20  # bytes read from disk, or written to it, at a time: the memory a transfer holds
TRIES = 3  # tries of one upload or download, when the connection breaks or the server answers 5xx
TTL_MARGIN = 60.0  # seconds: a URL this close to its expiry may die mid-upload, so fresh ones are fetched first
RETRY_STATUSES = (500, 502, 503, 504)  # a store or proxy that may answer otherwise a moment later
POLL = (0.2, 5.0)  # seconds between status polls: the first, and the most it backs off to

Progress = Callable[[int, int], None]  # (bytes moved so far, bytes in all), called as the bytes move
OnEvent = Callable[[TaskEvent], None]


@dataclass(slots=True)
class Send:
    """One HTTP exchange. With `body`, a file is streamed as the request body; with `sink`, a
    successful response's body is streamed into a file (any other answer is read whole, for its error)."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str | int] | None = None
    content: bytes | None = None
    body: FileBody | None = None
    sink: FileSink | EventSink | None = None


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


Effect = Send | Sleep
Op = Generator[Effect, Any, T]


class FileBody:
    """A file sent as exactly `size` bytes, read CHUNK by CHUNK: constant memory whatever its size.
    Iterate it (sync client) or async-iterate it (async client); each pass starts from the beginning."""

    def __init__(self, path: Path, size: int, progress: Progress | None = None) -> None:
        self.path = path
        self.size = size
        self.progress = progress

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        if self.progress:
            self.progress(0, self.size)
        with _disk(self.path, "read it"), self.path.open("rb") as f:
            while sent < self.size:
                chunk = f.read(min(CHUNK, self.size - sent))
                if not chunk:
                    raise TransferError(f"{self.path} shrank while it was being uploaded ({sent} of {self.size} bytes)")
                sent += len(chunk)
                yield chunk
                if self.progress:
                    self.progress(sent, self.size)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # Reads from a local disk, a megabyte at a time: short enough to do on the event loop.
        for chunk in self:
            yield chunk


class FileSink:
    """A download, written to a temp file beside `dest` and renamed onto it only once it holds
    exactly `size` bytes: `dest` is never a partial file. `start()` begins each try afresh."""

    chunk: int | None = CHUNK  # bytes handed to `write` at a time

    def __init__(self, dest: Path, size: int, progress: Progress | None = None) -> None:
        self.dest = dest
        self.size = size
        self.progress = progress
        self.received = 0
        with _disk(dest, "write it"):
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        self.temp = Path(name)
        self._file = os.fdopen(fd, "wb")

    def start(self) -> None:
        self._file.seek(0)
        self._file.truncate()
        self.received = 0
        if self.progress:
            self.progress(0, self.size)

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.size:
            raise TransferError(f"{self.dest.name}: the server sent more than the {self.size} bytes the run lists")
        with _disk(self.dest, "write it"):
            self._file.write(chunk)
        if self.progress:
            self.progress(self.received, self.size)

    def commit(self) -> None:
        if self.received != self.size:
            raise TransferError(f"{self.dest.name}: got {self.received} of {self.size} bytes")
        with _disk(self.dest, "write it"):
            self._file.close()
            os.chmod(self.temp, 0o666 & ~_umask())  # mkstemp's 0600, made the mode any new file gets
            os.replace(self.temp, self.dest)

    def discard(self) -> None:
        """Drop the temp file (after `commit`, there is none left to drop)."""
        self._file.close()
        self.temp.unlink(missing_ok=True)


class EventSink:
    """A task's server-sent event stream, parsed as its bytes arrive: `on_event` sees each event
    whole; `last_id` is the last one's id (for a reconnect's Last-Event-ID), `ended` says the
    task's last event (completed, failed, cancelled) came."""

    def __init__(self, on_event: OnEvent) -> None:
        self.on_event = on_event
        self.chunk = None  # the bytes as they arrive: an event is not held back to fill a chunk
        self.last_id = ""
        self.ended = False
        self._buffer = b""

    def start(self) -> None:
        self._buffer = b""

    def write(self, chunk: bytes) -> None:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in self._buffer:
            frame, self._buffer = self._buffer.split(b"\n\n", 1)
            self._frame(frame.decode(errors="replace"))

    def _frame(self, frame: str) -> None:
        fields: dict[str, str] = {}
        for line in frame.split("\n"):
            if line and not line.startswith(":"):  # a `: keepalive` comment is no event
                name, _, value = line.partition(":")
                fields[name] = fields.get(name, "") + value.removeprefix(" ")
        if "event" not in fields and "data" not in fields:
            return
        try:
            data = msgspec.json.decode(fields.get("data") or "{}")
        except msgspec.DecodeError:
            data = {"text": fields.get("data", "")}
        event = TaskEvent(id=fields.get("id", ""), event=fields.get("event", "message"),
                          data=data if isinstance(data, dict) else {"value": data})  # fmt: skip
        self.last_id = event.id or self.last_id
        self.ended = self.ended or event.final
        self.on_event(event)


@contextlib.contextmanager
def _disk(path: Path, doing: str) -> Iterator[None]:
    """An OSError on a local file (a full disk, a folder in the way) as the client's error, naming the file."""
    try:
        yield
    except OSError as exc:
        raise TransferError(f"{path}: cannot {doing}: {exc.strerror or exc}") from exc


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class Protocol:
    """The flow API, as operations for a client to run. `url` defaults to $FLOWENGINE_URL, then
    http://127.0.0.1:1234; `key` is sent as `Authorization: Bearer` to the engine's API, never to
    the presigned URLs of stores (they carry their own authority, and S3 refuses a second one)."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        poll: tuple[float, float] = POLL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = (url or os.environ.get("FLOWENGINE_URL") or DEFAULT_URL).rstrip("/")
        self.key = key
        self.poll = poll
        self.clock = clock

    # requests

    def api(self, method: str, path: str, *, params: dict[str, str | int] | None = None, json: Any = None) -> Send:
        headers = {"Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        content = None
        if json is not None:
            content = msgspec.json.encode(json)
            headers["Content-Type"] = "application/json"
        return Send(method, self.base_url + path, headers, params, content)

    def call(self, send: Send, type_: type[T]) -> Op[T]:
        response = yield send
        check(response)
        return decode(response, type_)

    # the flow API

    def start(self, flow: str | None = None, *, definition: Definition | None = None) -> Op[RunDoc]:
        """Start a run of the engine's flow file `flow`, or of an inline `definition` (a dict, bare or
        as {"Flow": ...}, or a local YAML/JSON file), named `flow` if given, else the flow's Name."""
        if definition is None:
            if not flow:
                raise InputError("name a flow on the engine, or give a definition to run")
            return (yield from self.call(self.api("POST", _flow_path(flow)), RunDoc))
        body, name = resolve(definition)
        return (yield from self.call(self.api("POST", _flow_path(flow or name), json={"Flow": body}), RunDoc))

    def status(self, run_id: str) -> Op[RunDoc]:
        return (yield from self.call(self.api("GET", f"/api/v1/flow/status/{_seg(run_id)}"), RunDoc))

    def cancel(self, run_id: str) -> Op[RunDoc]:
        return (yield from self.call(self.api("POST", f"/api/v1/flow/{_seg(run_id)}/cancel"), RunDoc))

    def refresh(self, run_id: str) -> Op[RunDoc]:
        """Fresh upload URLs (a new TTL) for the inputs the run still waits for."""
        return (yield from self.call(self.api("POST", f"/api/v1/flow/{_seg(run_id)}/refresh"), RunDoc))

    def flows(self) -> Op[list[FlowInfo]]:
        """The engine's flow files, with the inputs each waits for."""
        return (yield from self.call(self.api("GET", "/api/v1/flow"), FlowList)).flows

    def logs(self, run_id: str, step_id: str, attempt: int | None = None) -> Op[str]:
        """A step's whole output (of its last attempt, unless `attempt` says which)."""
        send = self.api("GET", f"/api/v1/flow/{_seg(run_id)}/logs/{_seg(step_id)}")
        send.headers["Accept"] = "text/plain"
        send.params = {"attempt": attempt} if attempt is not None else None
        response = yield send
        check(response)
        return response.text

    def list_runs(
        self,
        *,
        status: str | None = None,
        flow: str | None = None,
        limit: int = 50,
        offset: int = 0,
        cursor: str | None = None,
    ) -> Op[RunPage]:
        """One page of runs, newest first."""
        params: dict[str, str | int] = {"limit": limit}
        params.update({k: v for k, v in (("status", status), ("flow", flow), ("cursor", cursor)) if v})
        if offset:
            params["offset"] = offset
        return (yield from self.call(self.api("GET", "/api/v1/flow/runs", params=params), RunPage))

    # uploads

    def put(
        self,
        waiting: WaitingURL,
        path: str | os.PathLike[str],
        *,
        content_type: str | None = None,
        progress: Progress | None = None,
    ) -> Op[None]:
        """PUT a file to a WaitingURL: streamed from disk, with exactly the headers the URL signed.
        The Content-Type is the signed one if the URL signed one, else `content_type`, else guessed
        from the file's name."""
        return (yield from self._put(waiting.put_url, waiting.headers, Path(path), f"input {waiting.edge!r}",
                                     content_type=content_type, progress=progress))  # fmt: skip

    def _put(
        self,
        url: str,
        signed_headers: Mapping[str, str],
        path: Path,
        what: str,
        *,
        content_type: str | None,
        progress: Progress | None,
    ) -> Op[None]:
        size = _file_size(path)
        headers = dict(signed_headers)
        signed = {k.lower(): v for k, v in headers.items()}
        if "content-length" in signed and signed["content-length"] != str(size):
            raise InputError(f"{path} has {size} bytes; {what} takes exactly {signed['content-length']}")
        if "content-type" not in signed:
            headers["Content-Type"] = content_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if "content-length" not in signed:
            headers["Content-Length"] = str(size)  # not chunked: stores want the size up front
        response = yield from self.transfer(lambda: Send("PUT", url, headers, body=FileBody(path, size, progress)))
        check(response)

    def upload(
        self,
        run: RunDoc,
        edge: str,
        path: str | os.PathLike[str],
        *,
        content_type: str | None = None,
        progress: Progress | None = None,
    ) -> Op[RunDoc]:
        """Upload a file to the input `edge` the run waits for. URLs about to expire are refreshed
        first; returns the run document to go on with (the refreshed one, or `run`)."""
        path = Path(path)
        _file_size(path)  # a missing file is said before anything is asked of the engine
        if run.waiting(edge) is None:
            raise InputError(f"run {run.id} does not wait for {edge!r}; it waits for {_edges(run)}")
        if self._expires_soon(run.waiting(edge)):
            run = yield from self.refresh(run.id)
        waiting = run.waiting(edge)
        if waiting is None:  # filled meanwhile, by someone else
            raise InputError(f"run {run.id} no longer waits for {edge!r}")
        yield from self.put(waiting, path, content_type=content_type, progress=progress)
        return run

    def upload_inputs(
        self,
        run: RunDoc,
        files: Mapping[str, str | os.PathLike[str]],
        *,
        content_types: Mapping[str, str] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> Op[RunDoc]:
        """Upload a file for each input (edge → path); every file and edge is checked before the first byte goes."""
        check_inputs([w.edge for w in run.waiting_urls], files)
        for edge, path in files.items():
            report = (lambda done, total, edge=edge: progress(edge, done, total)) if progress else None
            run = yield from self.upload(run, edge, path, content_type=(content_types or {}).get(edge), progress=report)
        return run

    def _expires_soon(self, waiting: WaitingURL | None) -> bool:
        if waiting is None:
            return False
        try:
            expires = datetime.fromisoformat(waiting.ttl).timestamp()
        except ValueError:
            return False
        return expires - self.clock() < TTL_MARGIN

    # waiting

    def wait(
        self, run_id: str, *, timeout: float | None = None, on_update: Callable[[RunDoc], None] | None = None
    ) -> Op[RunDoc]:
        """Until the run ends (COMPLETE, ERROR or STOPPED); `on_update` sees each new state of it.
        Raises WaitTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return (yield from self.watch(run_id, deadline, on_update or (lambda _doc: None)))

    def watch(self, run_id: str, deadline: float | None, on_update: Callable[[RunDoc], None]) -> Op[RunDoc]:
        """Where a run's changes come from: polling its status, quickly while it changes, backing off
        while it does not. (An event stream would take this place, with polling as its fallback.)"""
        pause, last = self.poll[0], None
        while True:
            doc = yield from self.status(run_id)
            if last is None or (doc.updated, doc.status) != (last.updated, last.status):
                on_update(doc)
                pause, last = self.poll[0], doc
            if doc.done:
                return doc
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"run {run_id} is still {doc.status}", doc)
                pause = min(pause, left)
            yield Sleep(pause)
            pause = min(pause * 1.5, self.poll[1])

    # downloads

    def download(
        self, run: RunDoc, edge: str, dest: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> Op[Path]:
        """Stream an artifact of the run into the file `dest` (replaced only once it is whole and of
        the size the run lists)."""
        art = run.artifact(edge)
        if art is None:
            raise InputError(f"run {run.id} has no artifact {edge!r}")
        if art.expired or not art.get_url:
            raise TransferError(f"artifact {edge!r} of run {run.id} is past retention: it was deleted")
        return (yield from self._fetch(art.get_url, Path(dest), art.size, progress))

    def _fetch(self, url: str, dest: Path, size: int, progress: Progress | None) -> Op[Path]:
        sink = FileSink(dest, size, progress)
        try:
            # identity: the stored bytes themselves, which is what the listed size counts
            response = yield from self.transfer(lambda: Send("GET", url, {"Accept-Encoding": "identity"}, sink=sink))
            check(response)
            sink.commit()
        finally:
            sink.discard()
        return dest

    def download_outputs(
        self, run: RunDoc, out: str | os.PathLike[str], *, progress: Callable[[str, int, int], None] | None = None
    ) -> Op[list[Path]]:
        """Every output of the run (its steps' artifacts) into the folder `out`; see `output_paths`."""
        saved = []
        for edge, dest in output_paths(run, Path(out)).items():
            report = (lambda done, total, edge=edge: progress(edge, done, total)) if progress else None
            saved.append((yield from self.download(run, edge, dest, progress=report)))
        return saved

    # the workflow/task API (`/api/v1/r/`)

    def workflow(self, slug: str) -> Op[WorkflowInfo]:
        """A workflow by slug (`resize`, or `resize@2` for version 2), with the parameters it takes."""
        return (yield from self.call(self.api("GET", f"/api/v1/r/workflows/slug/{_seg(slug)}"), WorkflowInfo))

    def presign(self, file_name: str, file_size: int, content_type: str) -> Op[PresignedFile]:
        body = {"file_name": file_name, "file_size": file_size, "content_type": content_type}
        return (yield from self.call(self.api("POST", "/api/v1/r/files/presign", json=body), PresignedFile))

    def upload_file(
        self, path: str | os.PathLike[str], *, content_type: str | None = None, progress: Progress | None = None
    ) -> Op[str]:
        """Presign a file and PUT it (streamed, with the signed upload_headers); its `file_key`, the
        value of a `file` parameter. The type is `content_type`, else guessed from the file's name."""
        path = Path(path)
        size = _file_size(path)
        content_type = content_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        presigned = yield from self.presign(path.name, size, content_type)
        yield from self._put(presigned.upload_url, presigned.upload_headers, path, f"the presigned {path.name!r}",
                             content_type=content_type, progress=progress)  # fmt: skip
        return presigned.file_key

    def run_workflow(
        self, slug: str, parameters: Mapping[str, Any] | None = None, *, idempotency_key: str | None = None
    ) -> Op[str]:
        """Start a task of the workflow `slug[@version]`; its id. The Idempotency-Key (a new one unless
        given) makes a retry of the same call answer the same task."""
        send = self.api(
            "POST", f"/api/v1/r/workflows/slug/{_seg(slug)}/run", json={"parameters": dict(parameters or {})}
        )
        send.headers["Idempotency-Key"] = idempotency_key or uuid.uuid4().hex
        return (yield from self.call(send, _Submitted)).task_id

    def task(self, task_id: str) -> Op[TaskDoc]:
        return (yield from self.call(self.api("GET", f"/api/v1/r/tasks/{_seg(task_id)}"), TaskDoc))

    def result(self, task_id: str) -> Op[TaskResult]:
        return (yield from self.call(self.api("GET", f"/api/v1/r/tasks/{_seg(task_id)}/result"), TaskResult))

    def cancel_task(self, task_id: str) -> Op[None]:
        response = yield self.api("POST", f"/api/v1/r/tasks/{_seg(task_id)}/cancel")
        check(response)

    def follow(self, task_id: str, *, on_event: OnEvent | None = None) -> Op[TaskDoc]:
        """Until the task ends; `on_event` sees each event of its stream. A broken stream is opened
        again with Last-Event-ID (no event twice, none lost); one that keeps breaking (TRIES times in a
        row with no event) gives way to polling the task's status."""
        on_event = on_event or (lambda _event: None)
        last_id, failures = "", 0
        while failures < TRIES:
            sink = EventSink(on_event)
            send = self.api("GET", f"/api/v1/r/tasks/{_seg(task_id)}/events")
            send.headers["Accept"] = "text/event-stream"
            if last_id:
                send.headers["Last-Event-ID"] = last_id
            send.sink = sink
            response = None
            with contextlib.suppress(ConnectionFailed):
                response = yield send
            if response is not None and not response.is_success and response.status_code not in RETRY_STATUSES:
                check(response)  # the task is not there, or not the caller's: no retry helps
            if sink.ended or (response is not None and response.status_code == 204):  # 204: it had ended already
                return (yield from self.task(task_id))
            failures = 0 if sink.last_id else failures + 1
            last_id = sink.last_id or last_id
            yield Sleep(self.poll[0] * 2**failures)
        return (yield from self.poll_task(task_id, on_event))

    def poll_task(self, task_id: str, on_event: OnEvent) -> Op[TaskDoc]:
        """Until the task ends, by its status: each change is told as a `status` event (without an id)."""
        pause, last = self.poll[0], ""
        while True:
            doc = yield from self.task(task_id)
            if doc.task_status != last:
                last, pause = doc.task_status, self.poll[0]
                name = doc.task_status if doc.done else "status"
                on_event(TaskEvent(id="", event=name, data={"task_id": doc.id, "status": doc.task_status}))
            if doc.done:
                return doc
            yield Sleep(pause)
            pause = min(pause * 1.5, self.poll[1])

    def download_result(
        self,
        result: TaskResult,
        out: str | os.PathLike[str],
        *,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> Op[list[Path]]:
        """Every output of a completed task (its `download_urls`) into the folder `out`, named as
        `result_paths` says."""
        if not result.download_urls:
            return []
        sizes = {edge: f.size for edge, f in (result.task_output.outputs if result.task_output else {}).items()}
        saved = []
        for edge, dest in result_paths(result, Path(out)).items():
            if edge not in sizes:
                raise TransferError(f"task {result.id}: output {edge!r} has a URL but no size in task_output")
            report = (lambda done, total, edge=edge: progress(edge, done, total)) if progress else None
            saved.append((yield from self._fetch(result.download_urls[edge], dest, sizes[edge], report)))
        return saved

    def transfer(self, make: Callable[[], Send]) -> Op[httpx.Response]:
        """A transfer to or from a store, tried again (from the start, after a pause) when the
        connection breaks or the server answers 5xx; any other answer is final."""
        attempt = 1
        while True:
            send = make()
            if send.sink:
                send.sink.start()
            try:
                response = yield send
            except ConnectionFailed:
                if attempt == TRIES:
                    raise
            else:
                if response.status_code not in RETRY_STATUSES or attempt == TRIES:
                    return response
            yield Sleep(2.0**attempt)
            attempt += 1


# responses


def check(response: httpx.Response) -> None:
    """Nothing for a 2xx; else the ApiError the answer says (the engine's JSON error, S3's XML one, or its text)."""
    if not response.is_success:
        raise api_error(response)


def api_error(response: httpx.Response) -> ApiError:
    status, body = response.status_code, response.content
    request = response.request
    url = str(request.url.copy_with(query=None))  # a presigned URL's signature stays out of messages
    error = ErrorBody()
    if body.lstrip().startswith(b"{"):
        with contextlib.suppress(msgspec.MsgspecError):
            error = msgspec.json.decode(body, type=ErrorBody)
        if not error.message:  # the workflow/task API's shape
            with contextlib.suppress(msgspec.MsgspecError):
                r = msgspec.json.decode(body, type=RErrorBody)
                error = ErrorBody(code=r.error_code, message=r.error_message, location=r.field)
    elif body.lstrip().startswith(b"<"):  # S3: <Error><Code>AccessDenied</Code><Message>...</Message>
        found = {m[0]: m[1] for m in re.findall(rb"<(Code|Message)>([^<]*)</\1>", body[:65536])}
        error = ErrorBody(code=found.get(b"Code", b"").decode(errors="replace"),
                          message=found.get(b"Message", b"").decode(errors="replace"))  # fmt: skip
    message = error.message or body[:300].decode(errors="replace").strip() or response.reason_phrase
    return error_class(status)(
        status, error.code, message, error.location, error.problems, method=request.method, url=url
    )


def decode(response: httpx.Response, type_: type[T]) -> T:
    try:
        return msgspec.json.decode(response.content, type=type_)
    except msgspec.MsgspecError as exc:
        url = response.request.url.copy_with(query=None)
        raise ClientError(f"{response.request.method} {url}: not the answer of a flow engine: {exc}") from None


class Steps:
    """Drives an operation for a client: `next()` is the effect to carry out (None once the
    operation has ended: its value is then `result`); `reply()` or `fail()` says how it went."""

    def __init__(self, op: Op[T]) -> None:
        self.op = op
        self.result: Any = None
        self._effect: Effect | None = None
        self._reply: Any = None
        self._error: BaseException | None = None

    def next(self) -> Effect | None:
        error, self._error = self._error, None
        try:
            self._effect = self.op.throw(error) if error is not None else self.op.send(self._reply)
        except StopIteration as stop:
            self.result = stop.value
            return None
        return self._effect

    def reply(self, value: Any) -> None:
        self._reply = value

    def fail(self, exc: Exception) -> None:
        """The effect failed: the operation is told, in the client's own terms."""
        self._reply = None
        if isinstance(exc, httpx.HTTPError | httpx.InvalidURL) and isinstance(self._effect, Send):
            url = httpx.URL(self._effect.url).copy_with(query=None)
            kind = ConnectionFailed if isinstance(exc, httpx.TransportError) else ClientError
            exc = kind(f"{self._effect.method} {url}: {type(exc).__name__}: {exc or 'connection failed'}")
        self._error = exc

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.op.close()  # an operation stopped half-way (Ctrl-C) cleans up after itself: temp files go


def next_page(page: RunPage) -> dict[str, Any] | None:
    """The arguments of `list_runs` for the page after `page`: by its `Next` cursor where the engine
    pages by cursor (a null `Next` ends it), else by offset; None after the last page."""
    if page.next is not msgspec.UNSET:
        return {"cursor": page.next} if page.next else None
    if page.runs and page.offset + len(page.runs) < page.total:
        return {"offset": page.offset + len(page.runs)}
    return None


def output_paths(run: RunDoc, out: Path) -> dict[str, Path]:
    """Where each output of the run goes in `out`: see `_place`."""
    return _place([(art.edge_name, art.object_name) for art in run.outputs], out)


def result_paths(result: TaskResult, out: Path) -> dict[str, Path]:
    """Where each output of a completed task goes in `out`: see `_place`."""
    outputs = result.task_output.outputs if result.task_output else {}
    names = [(edge, outputs[edge].storage_key if edge in outputs else edge) for edge in result.download_urls or {}]
    return _place(names, out)


def _place(outputs: list[tuple[str, str]], out: Path) -> dict[str, Path]:
    """(edge, object name) → a file in `out`: the object name's last segment, or the edge's name
    when that segment is no plain file name; prefixed by the edge when two outputs share one.
    Never outside `out`."""
    paths: dict[str, Path] = {}
    for edge, object_name in outputs:
        name = object_name.rsplit("/", 1)[-1]
        if not _plain_name(name):
            name = edge if _plain_name(edge) else f"output-{len(paths) + 1}"
        taken = {p.name for p in paths.values()}
        if name in taken:
            name = f"{edge}-{name}" if _plain_name(edge) else f"{len(paths) + 1}-{name}"
        paths[edge] = out / name
    return paths


def _plain_name(name: str) -> bool:
    """A file name that stays in its folder and prints as itself: no separator, no control character."""
    return name not in ("", ".", "..") and not any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in name)


def check_inputs(edges: list[str], files: Mapping[str, str | os.PathLike[str]]) -> None:
    """Every edge waited for has a file, every file an edge waited for, and every file is there."""
    unknown = [e for e in files if e not in edges]
    missing = [e for e in edges if e not in files]
    if unknown or missing:
        said = [f"no input {', '.join(map(repr, unknown))}" if unknown else "",
                f"no file for {', '.join(map(repr, missing))}" if missing else ""]  # fmt: skip
        raise InputError(f"the run waits for {', '.join(edges) or 'no input'}: {'; '.join(s for s in said if s)}")
    for path in files.values():
        _file_size(Path(path))


def _file_size(path: Path) -> int:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable")
    return info.st_size


def _edges(run: RunDoc) -> str:
    return ", ".join(w.edge for w in run.waiting_urls) or "no input"


def _seg(value: str) -> str:
    """One path segment, escaped: an ID never reaches another route."""
    return quote(value, safe="")


def _flow_path(name: str) -> str:
    return f"/api/v1/flow/{_seg(name)}"
