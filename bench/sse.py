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

Pointing it at the task endpoint (`GET /api/v1/r/tasks/{id}/events`) once it exists: write another
`Target` (below) whose `prepare` starts N tasks that stay running and returns their event URLs and
the credential header, whose `publish` makes each chosen task change (a progress report, a cancel),
and whose `origin` is when the bench asked for that change (the events' own timestamps are whole
seconds). The measuring code does not change.
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

    async def prepare(self, count: int) -> tuple[list[str], dict[str, str]]:
        """`count` subjects to follow: their event stream paths, and the headers each request sends."""
        ...

    async def publish(self, indices: list[int], spacing: float) -> None:
        """Make one event happen on each of these subjects, `spacing` seconds apart."""
        ...

    def origin(self, index: int, data: dict) -> float:
        """When the event (its `data`) on subject `index` was caused, on time.monotonic()'s clock."""
        ...

    async def subscriptions(self) -> int:
        """Streams the server holds open (-1: it cannot say)."""
        ...


class StandIn:
    """The engine with the bench routes of `serve`."""

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

    def origin(self, index: int, data: dict) -> float:
        return data["t"]

    async def subscriptions(self) -> int:
        status, body = await request(self.port, "GET", "/bench/stats")
        return json.loads(body)["subscriptions"] if status == 200 else -1


async def request(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request on its own connection; (status, body)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Length: {len(body)}\r\n"
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
        self.latencies.append(now - self.target.origin(self.index, json.loads(fields[b"data"])))

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
        return await target.subscriptions() == count

    async def received(count: int) -> bool:
        return len(latencies) >= count

    await until(lambda: subscribed(n), 30)
    await asyncio.sleep(1)
    rss["subscribed"] = resident_mb(target.pid)
    print(f"{n} streams open in {opened:.1f} s", flush=True)

    trickle_count = args.events
    await target.publish([random.randrange(n) for _ in range(trickle_count)], 1 / args.rate)
    await until(lambda: received(trickle_count), trickle_count / args.rate + 30)
    trickle, latencies[:] = list(latencies), []
    print(f"trickle  {trickle_count} events at {args.rate}/s to random subscribers   {spread(trickle)}", flush=True)

    cpu, own_cpu = cpu_seconds(target.pid), time.process_time()
    for round_ in range(1, args.bursts + 1):
        await target.publish(list(range(n)), 0)
        await until(lambda r=round_: received(r * n), 60)
        await asyncio.sleep(0.5)
    cpu_per_event = (cpu_seconds(target.pid) - cpu) / (args.bursts * n)
    own_cpu_per_event = (time.process_time() - own_cpu) / (args.bursts * n)
    burst = list(latencies)
    print(f"burst    {args.bursts} x {n} events at once                       {spread(burst)}", flush=True)
    rss["after events"] = resident_mb(target.pid)

    expected = trickle_count + args.bursts * n
    delivered = sum(len(s.ids) for s in subscribers)
    exact = all(s.ids == list(range(1, len(s.ids) + 1)) for s in subscribers)
    for s in subscribers:
        s.close()
    left = await until(lambda: subscribed(0), 30)
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1)
    rss["after they left"] = resident_mb(target.pid)

    print()
    print(f"SSE, {n} concurrent subscribers ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    print(f"  server memory     idle {rss['idle']:.1f} MB, subscribed {rss['subscribed']:.1f} MB "
          f"(+{(rss['subscribed'] - rss['idle']) * 1024 / n:.1f} KB a subscriber), after the events "
          f"{rss['after events']:.1f} MB, after they left {rss['after they left']:.1f} MB")  # fmt: skip
    print(f"  notify -> client  trickle: {spread(trickle)}")
    print(f"                    burst:   {spread(burst)}")
    print(f"  CPU               {cpu_per_event * 1e6:.0f} us a delivered event in the server, "
          f"{own_cpu_per_event * 1e6:.0f} us in the subscribers' process (bursts)")  # fmt: skip
    print(f"  delivered         {delivered} of {expected}, each stream's ids in order without a gap or a repeat: "
          f"{'yes' if exact else 'NO'}")  # fmt: skip
    print(f"  left              every subscription forgotten {left:.2f} s after the clients closed")


@contextlib.contextmanager
def stand_in(workdir: Path, subscribers: int) -> Iterator[StandIn]:
    argv = [sys.executable, str(BENCH / "sse.py"), "serve", "--data-dir", str(workdir / "data"),
            "--max-connections", str(max(4096, subscribers + 100))]  # fmt: skip
    with server(argv, workdir) as srv:
        yield StandIn(srv.port, srv.pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["measure", "serve"], default="measure")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000, help="trickle: how many events")
    parser.add_argument("--rate", type=float, default=500.0, help="trickle: events a second")
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
        with stand_in(workdir, args.subscribers) as target:
            uvloop.run(measure(target, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
