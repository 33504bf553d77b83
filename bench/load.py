"""A small HTTP/1.1 load generator and a blocking client, both on raw sockets.

`run_load` opens N keep-alive connections, then each sends one pre-encoded request, reads the
response by its Content-Length, and sends the next, until the fixed duration is over. It is
callback-driven (asyncio.Protocol, uvloop when installed) so that one core drives thousands of
requests a second; run it in its own process (see run.py) so it never shares a core with the
server it measures. Only responses with a Content-Length are understood (no chunked bodies).

`Client` is a blocking keep-alive client for the latency measurements: one request at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

JSON = {"Content-Type": "application/json"}  # the flow API takes JSON bodies only with this type


def encode_request(
    method: str, target: str, host: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _parse_head(head: bytes) -> tuple[int, int]:
    """(status, content length) of a response head (without its final CRLFCRLF)."""
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise ValueError(f"response without Content-Length: {head[:200]!r}")
    end = lower.find(b"\r\n", at + 2)
    return status, int(lower[at + 17 : end if end >= 0 else None])


class _Stats:
    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.first_error = ""


class _Conn(asyncio.Protocol):
    """One connection: one request in flight, the next sent as soon as a response is complete."""

    def __init__(self, request: bytes, stats: _Stats) -> None:
        self.request = request
        self.stats = stats
        self.deadline = 0.0
        self.buf = bytearray()
        self.need = -1  # bytes of the whole response once its head is read; -1: head not read yet
        self.status = 0
        self.body_at = 0
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:  # uvloop's transports are no asyncio.Transport subclass
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self, deadline: float) -> None:
        self.deadline = deadline
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if time.monotonic() >= self.deadline:
            self.transport.close()
        else:
            self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need < 0:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self.status, length = _parse_head(bytes(self.buf[:end]))
                self.body_at = end + 4
                self.need = self.body_at + length
            if len(self.buf) < self.need:
                return
            if time.monotonic() > self.deadline:  # finished after the window closed: not counted
                pass
            elif 200 <= self.status < 300:
                self.stats.ok += 1
            else:
                self.stats.failed += 1
                body = bytes(self.buf[self.body_at : min(self.need, self.body_at + 300)])
                self.stats.first_error = self.stats.first_error or f"{self.status} {body!r}"
            del self.buf[: self.need]
            self.need = -1
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


async def _load(host: str, port: int, request: bytes, conns: int, duration: float) -> dict:
    loop = asyncio.get_running_loop()
    stats = _Stats()
    protocols = []
    for _ in range(conns):
        _, proto = await loop.create_connection(lambda: _Conn(request, stats), host, port)
        protocols.append(proto)
    start, cpu = time.monotonic(), time.process_time()
    deadline = start + duration
    for proto in protocols:
        proto.start(deadline)
    reconnects = 0
    while time.monotonic() < deadline:  # a connection the server closed early is reopened
        pending = [p.closed for p in protocols if not p.closed.done()]
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()), return_when="FIRST_COMPLETED")
        for i, proto in enumerate(protocols):
            if proto.closed.done() and time.monotonic() < deadline and reconnects < 10 * conns:
                reconnects += 1
                stats.failed += 1
                stats.first_error = stats.first_error or "connection closed by the server"
                _, protocols[i] = await loop.create_connection(lambda: _Conn(request, stats), host, port)
                protocols[i].start(deadline)
        if not pending:
            await asyncio.sleep(0.01)
    elapsed, cpu = time.monotonic() - start, time.process_time() - cpu
    with contextlib.suppress(TimeoutError):  # let in-flight requests finish; they are not counted
        await asyncio.wait_for(asyncio.gather(*(p.closed for p in protocols)), 5.0)
    for proto in protocols:
        if proto.transport is not None:
            proto.transport.close()
    return {"ok": stats.ok, "failed": stats.failed, "seconds": round(elapsed, 3),
            "rate": stats.ok / duration, "cpu": cpu / elapsed, "first_error": stats.first_error}  # fmt: skip


def run_load(host: str, port: int, request: bytes, conns: int, duration: float) -> dict:
    """Drive `request` over `conns` connections for `duration` seconds; counts 2xx and failures."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_load(host, port, request, conns, duration))
    return uvloop.run(_load(host, port, request, conns, duration))


class Client:
    """A blocking keep-alive HTTP/1.1 client for one request at a time."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host = f"{host}:{port}"
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        self.sock.sendall(encode_request(method, target, self.host, body, headers))
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self.buf += self._recv()
        status, length = _parse_head(self.buf[:end])
        total = end + 4 + length
        while len(self.buf) < total:
            self.buf += self._recv()
        body, self.buf = self.buf[end + 4 : total], self.buf[total:]
        return status, body

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()
