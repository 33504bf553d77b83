"""1,000 concurrent SSE subscribers: the server's memory, and the delay from a notification to the
client receiving the event.

    python bench/sse.py                        # 1,000 subscribers, ~30 s on 2 cores
    python bench/sse.py --subscribers 5000     # more (each side raises its open-file limit)

The server is the engine itself (`create_app`, served by `flowengine.api.server` as `flowengine serve`
serves it: httptools, uvloop, the edge protocol) with three bench routes beside its own: a stream
per topic made of `sse.follow` over `sse.EventStream`, woken by the engine's notifier; a route that
publishes events; and the notifier's counts. The events are held in memory, standing in for the
task-event rows the task API will store (so the real endpoint adds a database read per wake).

The subscribers are raw HTTP/1.1 connections in this process (uvloop, one task each), reading the
chunked stream and parsing its frames. The server stamps each event with `time.monotonic()` just
before it notifies; the client subtracts it from its own clock when the frame arrives (both are
CLOCK_MONOTONIC, one clock per machine). Figures:

- the server's resident memory idle, with every subscriber connected, after the events, and after
  they left (and whether the notifier forgot every subscription);
- trickle: events at a steady rate, each to one subscriber picked at random: latency p50/p99/max;
- burst: one event to every subscriber at once, a few times: latency p50/p99/max, server CPU per
  delivered event;
- every event delivered exactly once (ids checked per stream).

`--target tasks` measures the real endpoint, `GET /api/v1/r/tasks/{id}/events`, instead (`Tasks`
below): a `flowengine serve` with bench/tasks.py's `bench-task` workflow, `concurrency` raised to N,
and N tasks started through `POST /api/v1/r/workflows/slug/bench-task/run` with an `sk-` key, each
running a step that sleeps ten minutes, so every task is `running` (a real step process each) while
it is followed. Each stream first gets the task's current status (not timed). An event is then caused
by cancelling the task (`POST /api/v1/r/tasks/{id}/cancel`): the latency runs from just before the
bench sends the cancel to the subscriber parsing the `cancelled` frame, so it holds the cancel's own
request, the run stopped and its step's process killed, the event stored and the stream's database
read. A task ends with its cancel and its stream then closes, so each task has one timed event:
trickle cancels half the tasks at `--rate` (default 50/s), the burst cancels the other half at once
(at most 64 cancel requests in flight). The engine's subscriptions are not visible from outside, so
"left" is replaced by the count of streams the server closed itself after the terminal event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol

from run import HOST, cpu_seconds, server
from tasks import SLUG, bearer, task_engine

BENCH = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# The server (python bench/sse.py serve --port P --data-dir D)


def serve(port: int, data_dir: str, max_connections: int) -> None:
    import msgspec
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from flowengine.api import server as edge
    from flowengine.api.app import create_app
    from flowengine.api.sse import Event, EventStream, follow, last_event_id
    from flowengine.config import Config

    config = Config(host=HOST, port=port, data_dir=data_dir, flows_dir=data_dir, max_connections=max_connections)
    app = create_app(config)
    rows: dict[str, list[Event]] = {}

    async def read_after(topic: str, after: int) -> list[Event]:
        return rows.get(topic, [])[after:]  # ids are 1, 2, 3...: the events after `after` start at index `after`

    async def events(request: Request) -> EventStream:
        topic = request.path_params["topic"]
        notifier = request.app.state.engine.notifier
        source = follow(lambda after: read_after(topic, after), topic, notifier, lambda e: e.event == "completed",
                        after=last_event_id(request))  # fmt: skip
        return EventStream(source)

    async def publish(request: Request) -> Response:
        """{"topics": [...], "spacing": seconds}: one event on each topic, `spacing` apart (0: all at once)."""
        asked = msgspec.json.decode(await request.body())
        notifier = request.app.state.engine.notifier

        async def run() -> None:
            for topic in asked["topics"]:
                stream = rows.setdefault(topic, [])
                stamp = time.monotonic()
                data = msgspec.json.encode({"task_id": topic, "status": "running", "t": stamp})
                stream.append(Event(len(stream) + 1, "status", data))
                notifier.notify(topic)
                if asked["spacing"]:
                    await asyncio.sleep(asked["spacing"])

        request.app.state.engine.spawn(run())
        return Response(status_code=202)

    async def stats(request: Request) -> Response:
        notifier = request.app.state.engine.notifier
        counts = {"subscriptions": notifier.subscriptions(), "topics": notifier.topics()}
        return Response(msgspec.json.encode(counts), media_type="application/json")

    app.app.router.routes += [
        Route("/bench/events/{topic}", events),
        Route("/bench/publish", publish, methods=["POST"]),
        Route("/bench/stats", stats),
    ]
    edge.run(app, config, log_level="warning", access_log=False)


# ---------------------------------------------------------------------------------------------
# What is measured: a Target says where the streams are and how to make events on them


class Target(Protocol):
    port: int
    pid: int  # the server's process, whose memory and CPU are read from /proc
    once: bool  # a subject's stream ends with the one event the bench causes on it (a task's terminal event)

    async def prepare(self, count: int) -> tuple[list[str], dict[str, str]]:
        """`count` subjects to follow: their event stream paths, and the headers each request sends."""
        ...

    async def publish(self, indices: list[int], spacing: float) -> None:
        """Make one event happen on each of these subjects, `spacing` seconds apart."""
        ...

    def origin(self, index: int, data: dict) -> float | None:
        """When the event (its `data`) on subject `index` was caused, on time.monotonic()'s clock; None for
        an event the bench did not cause (not timed)."""
        ...

    async def subscriptions(self) -> int:
        """Streams the server holds open (-1: it cannot say)."""
        ...


class StandIn:
    """The engine with the bench routes of `serve`."""

    once = False

    def __init__(self, port: int, pid: int) -> None:
        self.port = port
        self.pid = pid
        self.topics: list[str] = []

    async def prepare(self, count: int) -> tuple[list[str], dict[str, str]]:
        self.topics = [f"run:bench-{i}" for i in range(count)]
        return [f"/bench/events/{topic}" for topic in self.topics], {}

    async def publish(self, indices: list[int], spacing: float) -> None:
        body = json.dumps({"topics": [self.topics[i] for i in indices], "spacing": spacing}).encode()
        status, _ = await request(self.port, "POST", "/bench/publish", body)
        assert status == 202, status

    def origin(self, index: int, data: dict) -> float | None:
        return data["t"]

    async def subscriptions(self) -> int:
        status, body = await request(self.port, "GET", "/bench/stats")
        return json.loads(body)["subscriptions"] if status == 200 else -1


class Tasks:
    """Running tasks of the workflow/task API, their events caused by cancelling them."""

    once = True

    def __init__(self, port: int, pid: int, key: str) -> None:
        self.port = port
        self.pid = pid
        self.headers = bearer(key)
        self.ids: list[str] = []
        self.asked: dict[int, float] = {}  # subject -> when its cancel was sent

    async def prepare(self, count: int) -> tuple[list[str], dict[str, str]]:
        body = json.dumps({"parameters": {"label": "sse", "seconds": 600}}).encode()
        started = time.monotonic()
        self.ids = await at_most(16, [self.start(body) for _ in range(count)])
        submitted = time.monotonic() - started

        async def running() -> bool:
            status, page = await request(self.port, "GET", "/api/v1/r/tasks?status=running&per_page=1",
                                         headers=self.headers)  # fmt: skip
            return status == 200 and json.loads(page)["page_meta"]["total_count"] == count

        running_after = await until(running, 120)
        print(f"{count} tasks submitted in {submitted:.1f} s, all running {running_after:.1f} s later", flush=True)
        return [f"/api/v1/r/tasks/{task_id}/events" for task_id in self.ids], self.headers

    async def start(self, body: bytes) -> str:
        status, answer = await request(self.port, "POST", f"/api/v1/r/workflows/slug/{SLUG}/run", body, self.headers)
        if status != 202:
            raise RuntimeError(f"run: {status} {answer[:300]!r}")
        return json.loads(answer)["task_id"]

    async def publish(self, indices: list[int], spacing: float) -> None:
        async def cancel(index: int) -> None:
            self.asked[index] = time.monotonic()
            path = f"/api/v1/r/tasks/{self.ids[index]}/cancel"
            status, answer = await request(self.port, "POST", path, headers=self.headers)
            if status != 200:
                raise RuntimeError(f"cancel: {status} {answer[:300]!r}")

        if not spacing:
            await at_most(64, [cancel(i) for i in indices])
            return
        sent = []
        for index in indices:
            sent.append(asyncio.create_task(cancel(index)))
            await asyncio.sleep(spacing)
        await asyncio.gather(*sent)

    def origin(self, index: int, data: dict) -> float | None:
        return self.asked[index] if data["status"] == "cancelled" else None

    async def subscriptions(self) -> int:
        return -1


async def at_most(limit: int, calls: list[Awaitable]) -> list:
    """Await every call, `limit` at a time; their results in order."""
    gate = asyncio.Semaphore(limit)

    async def gated(call: Awaitable) -> object:
        async with gate:
            return await call

    return await asyncio.gather(*(gated(c) for c in calls))


async def request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on its own connection; (status, body)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(head.encode() + b"Content-Type: application/json\r\nConnection: close\r\n\r\n" + body)
        answer = await reader.read()
    finally:
        writer.close()
    head, _, content = answer.partition(b"\r\n\r\n")
    return int(head[9:12]), content


# ---------------------------------------------------------------------------------------------
# The subscribers


class Subscriber:
    """One event stream, read on a raw connection: frames parsed out of the chunked body."""

    def __init__(self, index: int, path: str, target: Target, latencies: list[float]) -> None:
        self.index = index
        self.path = path
        self.target = target
        self.latencies = latencies
        self.ids: list[int] = []
        self.connected = asyncio.get_running_loop().create_future()
        self.writer: asyncio.StreamWriter | None = None

    async def run(self, headers: dict[str, str]) -> None:
        try:
            await self.follow(headers)
        except Exception as exc:
            if not self.connected.done():
                self.connected.set_exception(exc)  # the measurement stops with it
            raise

    async def follow(self, headers: dict[str, str]) -> None:
        reader, self.writer = await asyncio.open_connection(HOST, self.target.port)
        lines = [f"GET {self.path} HTTP/1.1", f"Host: {HOST}:{self.target.port}", "Accept: text/event-stream"]
        self.writer.write(("\r\n".join([*lines, *(f"{k}: {v}" for k, v in headers.items())]) + "\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") or b"transfer-encoding: chunked" not in head.lower():
            raise RuntimeError(f"{self.path}: {head.decode(errors='replace')}")
        self.connected.set_result(None)
        buffer = b""
        while size := int((await reader.readline()).strip(), 16):
            buffer += (await reader.readexactly(size + 2))[:-2]
            while b"\n\n" in buffer:
                block, _, buffer = buffer.partition(b"\n\n")
                if not block.startswith(b":"):
                    self.received(block, time.monotonic())

    def received(self, block: bytes, now: float) -> None:
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n"))
        self.ids.append(int(fields[b"id"]))
        origin = self.target.origin(self.index, json.loads(fields[b"data"]))
        if origin is not None:
            self.latencies.append(now - origin)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------------------------------------
# The measurement


def resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def spread(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"p50 {percentile(ms, 50):7.2f} ms   p99 {percentile(ms, 99):7.2f} ms   max {max(ms, default=0):7.2f} ms"


async def until(condition: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Seconds until `await condition()` is true; TimeoutError after `timeout`."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.05)
    return time.monotonic() - started


async def measure(target: Target, args: argparse.Namespace) -> None:
    n = args.subscribers
    rss = {"idle": resident_mb(target.pid)}
    paths, headers = await target.prepare(n)
    rss["prepared"] = resident_mb(target.pid)
    latencies: list[float] = []
    subscribers = [Subscriber(i, path, target, latencies) for i, path in enumerate(paths)]
    started = time.monotonic()
    tasks = []
    for at in range(0, n, 100):  # connect in batches: the listen backlog and the loop stay comfortable
        batch = subscribers[at : at + 100]
        tasks += [asyncio.create_task(s.run(headers)) for s in batch]
        await asyncio.gather(*(s.connected for s in batch))
    opened = time.monotonic() - started

    async def subscribed(count: int) -> bool:
        return await target.subscriptions() in (count, -1)  # -1: the server cannot say

    async def received(count: int) -> bool:
        return len(latencies) >= count

    await until(lambda: subscribed(n), 30)
    await asyncio.sleep(1)
    rss["subscribed"] = resident_mb(target.pid)
    print(f"{n} streams open in {opened:.1f} s", flush=True)

    if target.once:  # one event a subject: the trickle takes some, the one burst the others
        order = random.sample(range(n), n)
        trickle_to, bursts = order[: min(args.events, n // 2)], [order[min(args.events, n // 2) :]]
    else:
        trickle_to, bursts = [random.randrange(n) for _ in range(args.events)], [list(range(n))] * args.bursts
    await target.publish(trickle_to, 1 / args.rate)
    await until(lambda: received(len(trickle_to)), len(trickle_to) / args.rate + 30)
    trickle, latencies[:] = list(latencies), []
    print(f"trickle  {len(trickle_to)} events at {args.rate:g}/s to random subscribers   {spread(trickle)}", flush=True)

    cpu, own_cpu, burst_events = cpu_seconds(target.pid), time.process_time(), sum(map(len, bursts))
    for round_, subjects in enumerate(bursts, 1):
        await target.publish(subjects, 0)
        await until(lambda r=round_: received(sum(map(len, bursts[:r]))), 60)
        await asyncio.sleep(0.5)
    cpu_per_event = (cpu_seconds(target.pid) - cpu) / burst_events
    own_cpu_per_event = (time.process_time() - own_cpu) / burst_events
    burst = list(latencies)
    sizes = f"{len(bursts)} x {len(bursts[0])}"
    print(f"burst    {sizes} events at once                       {spread(burst)}", flush=True)
    rss["after events"] = resident_mb(target.pid)

    expected = len(trickle_to) + burst_events
    delivered = len(trickle) + len(burst)
    exact = all(s.ids == list(range(s.ids[0], s.ids[0] + len(s.ids))) for s in subscribers if s.ids)
    closed_by_server = sum(t.done() and t.exception() is None for t in tasks)
    for s in subscribers:
        s.close()
    left = await until(lambda: subscribed(0), 30)
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1)
    rss["after they left"] = resident_mb(target.pid)

    print()
    print(f"SSE, {n} concurrent subscribers ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    each = (rss["subscribed"] - rss["prepared"]) * 1024 / n
    print(f"  server memory     idle {rss['idle']:.1f} MB, prepared {rss['prepared']:.1f} MB, subscribed "
          f"{rss['subscribed']:.1f} MB (+{each:.1f} KB a subscriber), after the events "
          f"{rss['after events']:.1f} MB, after they left {rss['after they left']:.1f} MB")  # fmt: skip
    print(f"  cause -> client   trickle: {spread(trickle)}")
    print(f"                    burst:   {spread(burst)}")
    print(f"  CPU               {cpu_per_event * 1e6:.0f} us a delivered event in the server (its cause included), "
          f"{own_cpu_per_event * 1e6:.0f} us in the subscribers' process (bursts)")  # fmt: skip
    print(f"  delivered         {delivered} of {expected}, each stream's ids in order without a gap or a repeat: "
          f"{'yes' if exact else 'NO'}")  # fmt: skip
    if target.once:
        print(f"  closed            {closed_by_server} of {n} streams closed by the server after their last event")
    else:
        print(f"  left              every subscription forgotten {left:.2f} s after the clients closed")


@contextlib.contextmanager
def stand_in(workdir: Path, subscribers: int) -> Iterator[StandIn]:
    argv = [sys.executable, str(BENCH / "sse.py"), "serve", "--data-dir", str(workdir / "data"),
            "--max-connections", str(max(4096, subscribers + 100))]  # fmt: skip
    with server(argv, workdir) as srv:
        yield StandIn(srv.port, srv.pid)


@contextlib.contextmanager
def running_tasks(workdir: Path, subscribers: int) -> Iterator[Tasks]:
    """A `flowengine serve` with a step slot for every task and a connection for every subscriber."""
    settings = {"concurrency": str(subscribers + 10), "max_connections": str(max(4096, 2 * subscribers + 200))}
    with task_engine(workdir, settings) as (srv, key):
        yield Tasks(srv.port, srv.pid, key)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["measure", "serve"], default="measure")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000, help="trickle: how many events")
    parser.add_argument("--target", choices=["standin", "tasks"], default="standin",
                        help="the stand-in routes, or running tasks' real event streams")  # fmt: skip
    parser.add_argument("--rate", type=float, help="trickle: events a second (500; 50 cancels with --target tasks)")
    parser.add_argument("--bursts", type=int, default=5, help="rounds of one event to every subscriber at once")
    parser.add_argument("--port", type=int, help="serve: the port")
    parser.add_argument("--data-dir", help="serve: the engine's data dir")
    parser.add_argument("--max-connections", type=int, default=4096, help="serve: the engine's max_connections")
    args = parser.parse_args()
    if args.mode == "serve":
        serve(args.port, args.data_dir, args.max_connections)
        return 0
    import uvloop

    from flowengine.api.server import raise_descriptor_limit

    raise_descriptor_limit()  # a connection each
    workdir = Path(tempfile.mkdtemp(prefix="flowengine-sse-"))
    try:
        args.rate = args.rate or (50.0 if args.target == "tasks" else 500.0)
        make = running_tasks if args.target == "tasks" else stand_in
        with make(workdir, args.subscribers) as target:
            uvloop.run(measure(target, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
