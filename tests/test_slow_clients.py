"""Slow and idle clients against the real server, with real sockets: they are cut off after the
configured deadlines, they cannot starve it of file descriptors, and past the connection cap a
request is answered 503 instead of being reset."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from live import Server

UPLOAD_FLOW = "DataWells:\n  - Edge: file\n    Source: upload\n"


@contextlib.contextmanager
def open_file_limit(soft: int) -> Iterator[None]:
    """A lower soft limit on open files, inherited by the processes started meanwhile (as a shell's 1,024 would be)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def sockets_of(server: Server) -> int:
    assert server.proc is not None
    count = 0
    for fd in Path(f"/proc/{server.proc.pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            count += os.readlink(fd).startswith("socket:")
    return count


def answer_of(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def trickle(sock: socket.socket, data: bytes, pause: float, stop: threading.Event) -> None:
    """Send `data` a byte at a time until the server closes the connection or the test ends."""
    with contextlib.suppress(OSError):
        for byte in data:
            if stop.is_set():
                return
            sock.send(bytes([byte]))
            time.sleep(pause)


def status_and_body(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.fixture
def upload_flow(flows_dir: Path) -> None:
    (flows_dir / "upload.yaml").write_text(UPLOAD_FLOW)


def test_idle_and_trickling_connections_neither_starve_the_server_nor_live_for_ever(
    start_server: Callable[..., Server], upload_flow
) -> None:
    with open_file_limit(512):  # a thousand idle sockets are more than these descriptors
        server = start_server(header_timeout=5)
    assert server.proc is not None
    limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
    [line] = [line for line in limits.splitlines() if line.startswith("Max open files")]
    assert line.split()[3] == line.split()[4]  # the engine raised its soft limit to the hard one

    idle = [connect(server) for _ in range(1000)]
    stop = threading.Event()
    slow = [connect(server) for _ in range(20)]
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200
    tricklers = [threading.Thread(target=trickle, args=(s, head, 0.2, stop)) for s in slow]
    for t in tricklers:
        t.start()
    try:
        with server.client() as client:  # a normal client is served while they hold their sockets
            assert client.get("/healthz").status_code == 200
            assert client.post("/api/v1/flow/upload").status_code == 201
        assert sockets_of(server) > 1000  # ...which they still did
        for sock in idle:  # a connection that never sends a byte is closed without a word
            assert sock.recv(1) == b""
        for sock in slow:  # one that trickles its headers gets 408 and is closed
            status, body = status_and_body(answer_of(sock))
            assert status == 408
            assert body["Code"] == "request_timeout" and body["Location"] == "header"
    finally:
        stop.set()
        for sock in idle + slow:
            sock.close()
        for t in tricklers:
            t.join()
    deadline = time.monotonic() + 10
    while sockets_of(server) > 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sockets_of(server) <= 10  # the listening socket and a few others: every slow client's is gone


def test_a_stalled_body_is_cut_off_and_nothing_is_stored(start_server: Callable[..., Server], upload_flow) -> None:
    server = start_server(body_timeout=1)
    with server.client() as client:
        run = client.post("/api/v1/flow/upload").json()
        target = f"/api/v1/upload/{run['ID']}/file"
        sock = connect(server)
        sock.sendall(f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode() + b"x" * 50_000)
        status, body = status_and_body(answer_of(sock))  # ...and then nothing more
        assert status == 408
        assert body["Code"] == "request_timeout" and body["Location"] == "body"
        assert client.get(f"/api/v1/flow/status/{run['ID']}").json()["Status"] == "WAITING"
        assert list((server.data_dir / "tmp").iterdir()) == []  # the spooled half is gone

        def steady() -> Iterator[bytes]:  # slower than the timeout in all, but never stopping that long
            for _ in range(6):
                yield b"y" * 1000
                time.sleep(0.4)

        assert client.post(target, content=steady()).status_code == 200
        doc = client.get(f"/api/v1/flow/status/{run['ID']}").json()
        assert doc["Status"] == "COMPLETE" and doc["Artifacts"][0]["Size"] == 6000


def test_past_the_connection_cap_requests_get_503_not_a_reset(start_server: Callable[..., Server]) -> None:
    server = start_server(max_connections=20)
    held = [connect(server) for _ in range(25)]
    try:
        answer = httpx.get(f"{server.url}/api/v1/flow", timeout=10)
        assert answer.status_code == 503
        assert answer.json()["Code"] == "too_many_connections" and answer.headers["Retry-After"] == "1"
        assert "max_connections" in answer.json()["Message"]
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}/api/v1/flow", timeout=10).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{server.url}/api/v1/flow", timeout=10).status_code == 200
