"""Server-sent events: a stream of `text/event-stream` frames, fed by an async iterator.

Each event is one frame: `id: <n>`, `event: <name>`, `data: <one line of JSON>`, then a blank line.
The data is always one line (clients of the task API read `data:` lines with `json.loads(line[5:])`),
so a line break in it is refused rather than split over several `data:` lines.

`EventStream` is the response. It sends a keep-alive comment (`: keepalive`) after every
`keepalive` seconds of silence, so proxies and clients do not take a quiet stream for a dead one;
it notices the client leaving as soon as the connection closes (it listens for it, it does not
wait for its next write to fail), and then stops and closes its iterator, whatever that was
waiting on (a notifier's subscription is closed with it). When the server shuts down, open
streams end at once (`end_streams`, called by the server), and their clients reconnect elsewhere.

`follow` is the iterator a resumable stream is made of: the events stored after the one the client
saw last (`last_event_id`: the `Last-Event-ID` header, or a `last_event_id` query parameter), then
each new one as it is committed, woken by the notifier, until the last one. Events are stored rows
with increasing ids, so a client that reconnects with the id it saw last misses nothing and gets
nothing twice.

A stream that ended should answer a reconnect after its last event with 204 No Content: a browser's
EventSource reconnects by itself whenever a stream closes, and stops only on a 204.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import msgspec
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from flowengine.api.http import whole_number
from flowengine.errors import bad_request
from flowengine.runtime.notifier import Notifier

KEEPALIVE = 15.0  # seconds of silence before a keep-alive comment
POLL = 30.0  # follow(): the longest a stream waits without reading, notified or not (the polling fallback)
KEEPALIVE_FRAME = b": keepalive\n\n"
log = logging.getLogger("flowengine")


class Event(msgspec.Struct, frozen=True):
    id: int  # increasing within a stream: what Last-Event-ID names to resume after
    event: str  # the event's name: `status`, `completed`, ...
    data: bytes  # one line of JSON (msgspec's encoder never writes a line break)


def frame(event: Event) -> bytes:
    """The event as the bytes of one SSE frame; ValueError if its name or data would break the framing."""
    if b"\n" in event.data or b"\r" in event.data:
        raise ValueError(f"event {event.id}: data must be one line, got {event.data[:80]!r}")
    name = event.event.encode()
    if not name or b"\n" in name or b"\r" in name:
        raise ValueError(f"event {event.id}: {event.event!r} is not an event name")
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, name, event.data)


def last_event_id(connection: HTTPConnection) -> int:
    """The id of the last event the client saw, to resume after it (0: from the start). From the
    `Last-Event-ID` header (EventSource sends it when it reconnects), else the `last_event_id` query
    parameter (a page that opens a new EventSource can only set its URL). A value that is not a
    whole number is a 400 naming where it came from."""
    for raw, where in ((connection.headers.get("last-event-id"), "header.Last-Event-ID"),
                       (connection.query_params.get("last_event_id"), "query.last_event_id")):  # fmt: skip
        if raw is None or not raw.strip():  # EventSource sends an empty one when the stream set no id
            continue
        value = whole_number(raw.strip())
        if value is None or value < 0:
            name = where.split(".", 1)[1]
            raise bad_request("invalid_last_event_id", f"{name} must be the id of an event (a whole number)", where)
        return value
    return 0


async def follow(
    read_after: Callable[[int], Awaitable[list[Event]]],
    topic: str,
    notifier: Notifier,
    is_last: Callable[[Event], bool],
    *,
    after: int = 0,
    poll: float = POLL,
) -> AsyncIterator[Event]:
    """The events after `after`, then each new one, until one `is_last` (the stream ends after it).

    `read_after(n)` returns every stored event with an id above `n`, in order (a task's stream holds
    tens of events, not thousands). Then `follow` waits for `topic` to be notified (the writer
    notifies after committing an event), or for `poll` seconds, and reads again. It subscribes
    before its first read, so an event committed during a read, or while the events it returned
    are being sent, is read at once after them."""
    with notifier.subscribe(topic) as changes:
        while True:
            for event in await read_after(after):
                yield event
                after = event.id
                if is_last(event):
                    return
            await changes.wait(poll)


# The futures that end each open stream of this process, for end_streams.
_open: set[asyncio.Future[None]] = set()


def end_streams() -> None:
    """End every open stream of this process: the server is shutting down, and waits for every
    response to finish. Each stream closes cleanly; its client reconnects with Last-Event-ID."""
    for ending in _open:
        if not ending.done():
            ending.set_result(None)


class EventStream(Response):
    """A `text/event-stream` response of the events `events` yields, until it ends, the client
    leaves, or the server shuts down. `events` is closed (`aclose`) in every case.

    A failure of `events` ends the stream (logged; its headers are sent, so it cannot become an
    error response): the client reconnects and resumes where it was."""

    media_type = "text/event-stream"

    def __init__(
        self, events: AsyncIterator[Event], *, keepalive: float = KEEPALIVE, headers: Mapping[str, str] | None = None
    ) -> None:
        self.events = events
        self.keepalive = keepalive
        self.status_code = 200
        self.background = None
        # no-cache: every reader gets its own stream; X-Accel-Buffering: nginx passes each event on at once.
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Three tasks a stream, none per event: the pump sends the iterator's events, the keep-alive
        # fills silences, the listener notices the client leaving. Each send is one whole frame, so
        # the pump and the keep-alive never interleave within one.
        loop = asyncio.get_running_loop()
        ending: asyncio.Future[None] = loop.create_future()
        last_sent = loop.time()

        async def body(chunk: bytes) -> None:
            nonlocal last_sent
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            last_sent = loop.time()

        async def pump() -> None:
            async for event in self.events:
                await body(frame(event))

        async def keep_alive() -> None:
            while True:
                await asyncio.sleep(last_sent + self.keepalive - loop.time())
                if loop.time() - last_sent >= self.keepalive:
                    await body(KEEPALIVE_FRAME)

        _open.add(ending)
        tasks: list[asyncio.Future[None]] = []
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            tasks += [asyncio.ensure_future(job) for job in (pump(), keep_alive(), _disconnected(receive))]
            gone = tasks[2]
            await asyncio.wait((*tasks, ending), return_when=asyncio.FIRST_COMPLETED)
        except OSError:  # the client left before the stream began (an ASGI 2.4 server says so this way)
            return
        finally:
            _open.discard(ending)
            for task in tasks:
                task.cancel()  # the iterator is interrupted where it waits: its `with` blocks exit
            if tasks:
                await asyncio.wait(tasks)
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
        failure = next((t.exception() for t in tasks if not t.cancelled() and t.exception()), None)
        if not gone.cancelled() or isinstance(failure, OSError):  # the client left
            return
        if failure is not None:
            log.error("an event stream's source failed; the stream ends (its client resumes with Last-Event-ID)",
                      exc_info=failure)  # fmt: skip
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
