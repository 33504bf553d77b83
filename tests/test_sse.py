"""Server-sent events: framing, Last-Event-ID, `follow`, and EventStream served by a real uvicorn on a
loopback port to a real streaming client (httpx): keep-alives, a client leaving, a reconnect that
resumes, a failing source, the server shutting down.

The app is a small Starlette app over `Feed`, an in-memory stand-in for the stored task events: a
list of events per topic, each added with a notification, as the engine will add rows and notify."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
from live import free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from flowengine.api.errors import ERROR_HANDLERS
from flowengine.api.server import Limits, protocol
from flowengine.api.sse import KEEPALIVE_FRAME, Event, EventStream, follow, frame, last_event_id
from flowengine.errors import Error
from flowengine.runtime.notifier import LocalNotifier

TERMINAL = frozenset({"completed", "failed", "cancelled"})


def is_last(event: Event) -> bool:
    return event.event in TERMINAL


class Feed:
    """Events per topic with increasing ids; adding one notifies its topic (after "committing" it)."""

    def __init__(self) -> None:
        self.notifier = LocalNotifier()
        self.rows: dict[str, list[Event]] = {}

    def add(self, topic: str, kind: str) -> Event:
        rows = self.rows.setdefault(topic, [])
        event = Event(len(rows) + 1, kind, msgspec.json.encode({"task_id": topic, "status": kind}))
        rows.append(event)
        self.notifier.notify(topic)
        return event

    async def read_after(self, topic: str, after: int) -> list[Event]:
        return [e for e in self.rows.get(topic, []) if e.id > after]


def make_app(feed: Feed, keepalive: float = 60.0, poll: float = 60.0) -> Starlette:
    async def events(request: Request) -> EventStream:
        topic = request.path_params["topic"]
        source = follow(partial(feed.read_after, topic), topic, feed.notifier, is_last,
                        after=last_event_id(request), poll=poll)  # fmt: skip
        return EventStream(source, keepalive=keepalive)

    return Starlette(routes=[Route("/events/{topic}", events)], exception_handlers=ERROR_HANDLERS)


@contextlib.asynccontextmanager
async def serving(app: Any, **settings: Any) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """uvicorn serving `app` on a free loopback port, in this event loop; stopped at the end."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", **settings)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn exited before it started")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), 10)
        except TimeoutError:
            server.force_exit = True  # a test that failed with streams still open
            await task


class Reader:
    """The frames of a streaming response, as the bytes of each (up to and including its blank line)."""

    def __init__(self, response: httpx.Response) -> None:
        self.chunks = response.aiter_raw()
        self.buffer = b""
        self.next_chunk: asyncio.Future[bytes] | None = None  # kept across a timeout: cancelling ends the stream

    async def block(self, timeout: float = 10) -> bytes | None:
        """The next frame or comment; None when the response has ended; TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while b"\n\n" not in self.buffer:
            if self.next_chunk is None:
                self.next_chunk = asyncio.ensure_future(anext(self.chunks))
            done, _ = await asyncio.wait((self.next_chunk,), timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                raise TimeoutError
            chunk, self.next_chunk = self.next_chunk, None
            try:
                self.buffer += chunk.result()
            except StopAsyncIteration:
                assert self.buffer == b"", f"the stream ended mid-frame: {self.buffer!r}"
                return None
        block, _, self.buffer = self.buffer.partition(b"\n\n")
        return block + b"\n\n"

    async def event(self, timeout: float = 10) -> bytes | None:
        """The next frame that is not a keep-alive comment."""
        while (block := await self.block(timeout)) == KEEPALIVE_FRAME:
            pass
        return block


def framed(topic: str, seq: int, kind: str) -> bytes:
    data = msgspec.json.encode({"task_id": topic, "status": kind})
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, kind.encode(), data)


async def until(condition: Callable[[], bool], timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# Framing and Last-Event-ID


def test_frame_is_id_event_data_and_a_blank_line():
    assert frame(Event(7, "status", b'{"task_id":"t","status":"running"}')) == (
        b'id: 7\nevent: status\ndata: {"task_id":"t","status":"running"}\n\n'
    )
    assert KEEPALIVE_FRAME == b": keepalive\n\n"


@pytest.mark.parametrize(
    "event",
    [
        Event(1, "status", b'{"a":\n1}'),
        Event(1, "status", b'{"a":\r1}'),
        Event(1, "sta\ntus", b"{}"),
        Event(1, "", b"{}"),
    ],
    ids=["newline-in-data", "carriage-return-in-data", "newline-in-name", "no-name"],
)
def test_frame_refuses_what_would_break_the_framing(event: Event):
    with pytest.raises(ValueError, match="event 1"):
        frame(event)


def request(headers: dict[str, str], query: str = "") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "headers": raw, "query_string": query.encode()})


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ({}, "", 0),
        ({"Last-Event-ID": "7"}, "", 7),
        ({}, "last_event_id=3", 3),
        ({"Last-Event-ID": "9"}, "last_event_id=3", 9),  # EventSource's reconnect names a later id than its URL
        ({"Last-Event-ID": ""}, "last_event_id=3", 3),
        ({"Last-Event-ID": " 5 "}, "", 5),
        ({"Last-Event-ID": "0"}, "", 0),
    ],
)
def test_last_event_id(headers: dict[str, str], query: str, expected: int):
    assert last_event_id(request(headers, query)) == expected


@pytest.mark.parametrize(
    ("headers", "query", "location"),
    [
        ({"Last-Event-ID": "abc"}, "", "header.Last-Event-ID"),
        ({"Last-Event-ID": "-1"}, "", "header.Last-Event-ID"),
        ({"Last-Event-ID": "1.5"}, "last_event_id=3", "header.Last-Event-ID"),
        ({}, "last_event_id=x", "query.last_event_id"),
        ({}, "last_event_id=99999999999999999999999", "query.last_event_id"),
    ],
)
def test_a_bad_last_event_id_is_refused_naming_where_it_came_from(headers: dict, query: str, location: str):
    with pytest.raises(Error) as caught:
        last_event_id(request(headers, query))
    assert (caught.value.kind, caught.value.code, caught.value.location) == (
        "bad_request", "invalid_last_event_id", location)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# follow, without HTTP


def collect(source: AsyncIterator[Event], timeout: float = 5) -> list[Event]:
    async def scenario() -> list[Event]:
        async with asyncio.timeout(timeout):
            return [event async for event in source]

    return asyncio.run(scenario())


def test_follow_replays_after_the_given_id_and_stops_after_the_last_event():
    feed = Feed()
    for kind in ("pending", "queued", "running", "completed", "status-after-the-end"):
        feed.add("t", kind)
    got = collect(follow(partial(feed.read_after, "t"), "t", feed.notifier, is_last, after=1))
    assert [(e.id, e.event) for e in got] == [(2, "queued"), (3, "running"), (4, "completed")]
    assert feed.notifier.subscriptions() == 0


@pytest.mark.parametrize("before", [[], ["pending"]], ids=["read-finds-nothing", "read-finds-one"])
def test_follow_does_not_miss_an_event_committed_while_it_reads(before: list[str]):
    """The event is committed and notified after the read took its snapshot, before follow waits:
    only the subscription, made before the read, can tell follow to read again (the poll is a
    minute away)."""
    feed = Feed()
    for kind in before:
        feed.add("t", kind)
    reads = []

    async def slow_read(after: int) -> list[Event]:
        found = await feed.read_after("t", after)
        reads.append(after)
        if len(reads) == 1:
            await asyncio.sleep(0.01)
            feed.add("t", "completed")  # committed and notified after the snapshot above
        return found

    got = collect(follow(slow_read, "t", feed.notifier, is_last, poll=60))
    assert [e.event for e in got] == [*before, "completed"]
    assert reads == [0, len(before)]


def test_follow_polls_when_no_notification_comes():
    """A writer on another replica whose notification was lost: the poll still finds the event."""
    feed = Feed()

    async def scenario() -> tuple[list[str], float]:
        async def silent_writer() -> None:
            await asyncio.sleep(0.05)
            rows = feed.rows.setdefault("t", [])
            rows.append(Event(1, "completed", b"{}"))  # no notify

        started = time.monotonic()
        writer = asyncio.create_task(silent_writer())
        got = [e.event async for e in follow(partial(feed.read_after, "t"), "t", feed.notifier, is_last, poll=0.1)]
        await writer
        return got, time.monotonic() - started

    got, took = asyncio.run(scenario())
    assert got == ["completed"]
    assert took < 5


# ---------------------------------------------------------------------------------------------
# EventStream, served


def test_a_stream_replays_then_follows_then_ends_after_the_last_event():
    feed = Feed()
    feed.add("t1", "pending")
    feed.add("t1", "queued")

    async def scenario() -> None:
        async with serving(make_app(feed)) as (url, _), httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", f"{url}/events/t1") as response:
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
                assert response.headers["cache-control"] == "no-cache"
                assert response.headers["x-accel-buffering"] == "no"
                reader = Reader(response)
                assert await reader.event() == framed("t1", 1, "pending")
                assert await reader.event() == framed("t1", 2, "queued")
                feed.add("t1", "running")
                assert await reader.event() == framed("t1", 3, "running")
                feed.add("t2", "running")  # another topic: not on this stream
                feed.add("t1", "completed")
                assert await reader.event() == framed("t1", 4, "completed")
                assert await reader.block() is None  # the server closed the stream after the last event
            assert feed.notifier.subscriptions() == 0

    asyncio.run(scenario())


def test_keepalive_comments_fill_the_silences():
    feed = Feed()

    async def scenario() -> None:
        async with serving(make_app(feed, keepalive=0.05)) as (url, _), httpx.AsyncClient(timeout=10) as client, \
                client.stream("GET", f"{url}/events/quiet") as response:  # fmt: skip
            reader = Reader(response)
            assert [await reader.block() for _ in range(3)] == [KEEPALIVE_FRAME] * 3
            feed.add("quiet", "cancelled")
            assert await reader.event() == framed("quiet", 1, "cancelled")
            assert await reader.block() is None

    asyncio.run(scenario())


def test_no_keepalive_before_its_time():
    feed = Feed()

    async def scenario() -> None:
        async with serving(make_app(feed, keepalive=60)) as (url, _), httpx.AsyncClient(timeout=10) as client, \
                client.stream("GET", f"{url}/events/quiet") as response:  # fmt: skip
            reader = Reader(response)
            with pytest.raises(TimeoutError):
                await reader.block(timeout=0.3)
            feed.add("quiet", "completed")
            assert await reader.block() == framed("quiet", 1, "completed")

    asyncio.run(scenario())


def test_no_keepalive_while_events_flow():
    """Keep-alives fill silences: a stream busier than the keep-alive interval gets none."""
    feed = Feed()

    async def scenario() -> list[bytes]:
        async with serving(make_app(feed, keepalive=1.0)) as (url, _), httpx.AsyncClient(timeout=10) as client, \
                client.stream("GET", f"{url}/events/busy") as response:  # fmt: skip
            reader = Reader(response)
            blocks = []
            for _ in range(50):  # 2.5 s of events, 0.05 s apart
                feed.add("busy", "running")
                blocks.append(await reader.block())
                await asyncio.sleep(0.05)
            return blocks

    blocks = asyncio.run(scenario())
    assert KEEPALIVE_FRAME not in blocks
    assert blocks == [framed("busy", i, "running") for i in range(1, 51)]


def test_clients_that_leave_are_noticed_at_once_and_leave_nothing_behind():
    """No keep-alive is due (60 s) and nothing is notified: the server notices from the connection
    closing, stops each stream and closes its source (the notifier forgets its subscriptions)."""
    feed = Feed()
    feed.add("shared", "running")

    async def scenario() -> None:
        async with serving(make_app(feed)) as (url, _), httpx.AsyncClient(timeout=10) as client:
            async with contextlib.AsyncExitStack() as streams:
                readers = []
                for i in range(100):
                    topic = "shared" if i % 2 else f"own-{i}"
                    response = await streams.enter_async_context(client.stream("GET", f"{url}/events/{topic}"))
                    readers.append(Reader(response))
                await until(lambda: feed.notifier.subscriptions() == 100)
                assert feed.notifier.topics() == 51
                assert [await r.event() for r in readers[1::2]] == [framed("shared", 1, "running")] * 50
                feed.add("shared", "queued")
                assert [await r.event() for r in readers[1::2]] == [framed("shared", 2, "queued")] * 50
            started = time.monotonic()
            await until(lambda: feed.notifier.subscriptions() == 0)
            assert time.monotonic() - started < 5
            assert feed.notifier.topics() == 0

    asyncio.run(scenario())


@pytest.mark.parametrize("resume", ["header", "query"])
def test_a_reconnect_with_the_last_event_id_resumes_without_loss_or_duplicate(resume: str):
    feed = Feed()
    feed.add("t", "pending")
    feed.add("t", "queued")

    async def scenario() -> list[bytes]:
        received: list[bytes] = []
        async with serving(make_app(feed)) as (url, _), httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", f"{url}/events/t") as response:
                reader = Reader(response)
                received += [await reader.event(), await reader.event()]
            await until(lambda: feed.notifier.subscriptions() == 0)
            feed.add("t", "running")  # while the client is away
            feed.add("t", "queued")
            last = received[-1].split(b"\n")[0].removeprefix(b"id: ").decode()
            where = {"headers": {"Last-Event-ID": last}} if resume == "header" else {"params": {"last_event_id": last}}
            async with client.stream("GET", f"{url}/events/t", **where) as response:
                reader = Reader(response)
                received += [await reader.event(), await reader.event()]
                feed.add("t", "running")
                feed.add("t", "failed")
                received += [await reader.event(), await reader.event()]
                assert await reader.block() is None
        return received

    assert asyncio.run(scenario()) == [
        framed("t", 1, "pending"), framed("t", 2, "queued"),
        framed("t", 3, "running"), framed("t", 4, "queued"),
        framed("t", 5, "running"), framed("t", 6, "failed"),
    ]  # fmt: skip


def test_a_bad_last_event_id_is_a_400_before_any_stream():
    feed = Feed()

    async def scenario() -> httpx.Response:
        async with serving(make_app(feed)) as (url, _), httpx.AsyncClient(timeout=10) as client:
            return await client.get(f"{url}/events/t", headers={"Last-Event-ID": "seven"})

    response = asyncio.run(scenario())
    assert response.status_code == 400
    assert response.json()["Code"] == "invalid_last_event_id"
    assert response.json()["Location"] == "header.Last-Event-ID"
    assert feed.notifier.subscriptions() == 0


def test_a_failing_source_ends_the_stream_cleanly_and_is_logged(caplog: pytest.LogCaptureFixture):
    closed = []

    async def source() -> AsyncIterator[Event]:
        try:
            yield Event(1, "status", b'{"status":"running"}')
            raise RuntimeError("the database went away")
        finally:
            closed.append(True)

    async def events(request: Request) -> EventStream:
        return EventStream(source())

    async def scenario() -> list[bytes | None]:
        app = Starlette(routes=[Route("/events", events)])
        async with serving(app) as (url, _), httpx.AsyncClient(timeout=10) as client, \
                client.stream("GET", f"{url}/events") as response:  # fmt: skip
            reader = Reader(response)
            return [await reader.block(), await reader.block()]

    with caplog.at_level(logging.ERROR, "flowengine"):
        assert asyncio.run(scenario()) == [b'id: 1\nevent: status\ndata: {"status":"running"}\n\n', None]
    assert closed == [True]
    assert "the stream ends" in caplog.text and "the database went away" in caplog.text


def test_shutting_the_server_down_ends_open_streams():
    """uvicorn waits for every response to finish before it stops; the engine's protocol ends the
    event streams so that a stop does not wait for their clients to leave."""
    feed = Feed()
    feed.add("t", "running")

    async def scenario() -> float:
        limits = Limits(header_timeout=10, body_timeout=30, max_connections=100)
        app = make_app(feed)
        async with serving(app, http=protocol(limits)) as (url, server), httpx.AsyncClient(timeout=10) as client, \
                client.stream("GET", f"{url}/events/t") as response:  # fmt: skip
            reader = Reader(response)
            assert await reader.event() == framed("t", 1, "running")
            started = time.monotonic()
            server.should_exit = True
            assert await reader.block() is None  # ended cleanly, not cut
            await until(lambda: feed.notifier.subscriptions() == 0)
            return time.monotonic() - started

    assert asyncio.run(scenario()) < 5


@pytest.mark.parametrize("failing", ["keepalive", "event"])
def test_a_send_that_fails_ends_the_stream_as_a_client_leaving(failing: str):
    """ASGI 2.4 servers (hypercorn, granian) may say that the client left by raising OSError from
    `send` rather than from `receive`: the stream stops as when it hears of it from `receive`."""
    feed = Feed()
    sent: list[dict] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and message["body"] in (KEEPALIVE_FRAME, b""):
            if failing == "keepalive":
                raise OSError("connection lost")
        elif message["type"] == "http.response.body" and failing == "event":
            raise OSError("connection lost")
        sent.append(message)

    async def receive() -> dict:
        await asyncio.Event().wait()  # this server never says so here
        return {}

    async def scenario() -> None:
        source = follow(partial(feed.read_after, "t"), "t", feed.notifier, is_last, poll=60)
        stream = EventStream(source, keepalive=0.05)
        streaming = asyncio.create_task(stream(
            {"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send))  # fmt: skip
        await until(lambda: feed.notifier.subscriptions() == 1)
        if failing == "event":
            feed.add("t", "running")
        await asyncio.wait_for(streaming, 5)
        assert feed.notifier.subscriptions() == 0

    asyncio.run(scenario())
    assert [m["type"] for m in sent] == ["http.response.start"]
