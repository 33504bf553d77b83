"""Serving the app with uvicorn, hardened at the edge: deadlines for slow clients, a connection cap
answered with 503, enough file descriptors, and no signature in any log line.

uvicorn closes a keep-alive connection that stays idle between requests, but it has no deadline
for a request's headers or for a stalled body: a connection that sends nothing, trickles its
headers a byte at a time, or stops mid-body holds its socket (a file descriptor) for ever, and a
thousand of them starve the process. Its `limit_concurrency` counts every open connection (idle
ones too) and in-flight request, but answers in plain text and frees no descriptor by itself.
`EdgeProtocol` adds the two deadlines, and the cap with a JSON 503, to uvicorn's httptools
protocol. It is the one place that depends on that protocol's internals (the parser callbacks and
the `cycle`, `flow`, `connections` and `tasks` attributes it uses below).
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
import resource
from collections.abc import Mapping
from typing import Any

import msgspec
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from flowengine.api.errors import STATUS, ErrorBody, error_response
from flowengine.api.sse import end_streams
from flowengine.config import Config
from flowengine.errors import Error

UNSTAMPED = -1.0  # a deadline's start, for the next sweep to stamp
RESERVED_FDS = 256  # descriptors kept, beyond the connection cap, for the database, stores, steps and logs
log = logging.getLogger("flowengine.server")
_encode = msgspec.json.Encoder().encode


class Limits(msgspec.Struct, frozen=True):
    header_timeout: float  # seconds from a connection's opening (or a request's first byte) to its whole head
    body_timeout: float  # seconds a request body may pause
    max_connections: int

    @property
    def sweep_interval(self) -> float:
        """How often the deadlines are checked: each is enforced at most a tenth late (and a second)."""
        return min(max(min(self.header_timeout, self.body_timeout) / 10, 0.05), 1.0)


def raw_response(error: Error) -> bytes:
    """A whole HTTP/1.1 error answer that closes the connection, for writing straight to the socket."""
    body = _encode(ErrorBody(error.code, error.message, error.location))
    status = STATUS[error.kind]
    head = f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
    return f"{head}content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines for a request's head and for pauses in its body.

    The deadlines are checked by one sweep over all connections a few times a second, which also
    stamps the times they start from: a request only marks what it waits for. (Two timers, or
    even reading the clock, per request cost a status poll several percent of its CPU time.)"""

    limits: Limits  # set on the subclass `protocol()` makes for each server, with:
    sweeping = False  # whether that server's sweep is scheduled

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_since: float | None = None  # since when a request's head is awaited (None: it is not)
        self._body_seen: float | None = None  # when the body being received last made progress (None: none is)
        self._partial = False  # some of a request's head has arrived

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_since = UNSTAMPED
        cls = type(self)
        if not cls.sweeping:
            cls.sweeping = True
            self.loop.call_later(cls.limits.sweep_interval, cls._sweep, self.loop, self.connections)

    @classmethod
    def _sweep(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        now = loop.time()
        for connection in list(connections):
            if isinstance(connection, EdgeProtocol) and not connection.transport.is_closing():
                connection._check_deadlines(now)
        if connections:
            loop.call_later(cls.limits.sweep_interval, cls._sweep, loop, connections)
        else:
            cls.sweeping = False  # the next connection starts it again

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._partial = True
        if self._head_since is None:  # the next request on a kept-alive connection
            self._head_since = UNSTAMPED

    def on_headers_complete(self) -> None:
        self._partial = False
        self._head_since = None
        self._body_seen = UNSTAMPED  # on_message_complete clears it at once for a request without a body
        cap = self.limits.max_connections
        if len(self.connections) <= cap and len(self.tasks) < cap:
            super().on_headers_complete()
            return
        app, self.app = self.app, self._too_busy  # uvicorn starts the request with self.app
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_body(self, body: bytes) -> None:
        self._body_seen = UNSTAMPED
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_seen = None
        super().on_message_complete()

    def shutdown(self) -> None:
        # uvicorn shuts down gracefully: it waits for every response to finish, and an event stream
        # would never finish by itself. (Called once per connection: ending the streams is idempotent.)
        super().shutdown()
        end_streams()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to what its parser refuses (a control character in a header...), in plain text.
        message = "the request is not valid HTTP/1.1 (its request line or a header is malformed)"
        self.transport.write(raw_response(Error("bad_request", "malformed_request", message, "request")))
        self.transport.close()

    def _check_deadlines(self, now: float) -> None:
        limits = self.limits
        if self._head_since == UNSTAMPED:
            self._head_since = now
        elif self._head_since is not None and now - self._head_since >= limits.header_timeout:
            if self._partial:
                self._time_out(f"the request's headers did not arrive within {limits.header_timeout:g} s", "header")
            else:  # a connection that sent nothing is closed without a word (as uvicorn does between requests)
                self.transport.close()
            return
        cycle = self.cycle
        if self._body_seen is None or cycle is None:
            return
        if self._body_seen == UNSTAMPED or self.flow.read_paused or cycle.waiting_for_100_continue:
            # Progress since the last sweep, or a pause that is not the client's doing: the app has not
            # read what came, or not asked for the body yet.
            self._body_seen = now
        elif now - self._body_seen >= limits.body_timeout:
            # The app, waiting for the rest of the body, is told the client went away (connection_lost).
            self._time_out(f"the request's body stopped arriving: nothing for {limits.body_timeout:g} s", "body",
                           answer=not cycle.response_started)  # fmt: skip

    def _time_out(self, message: str, location: str, answer: bool = True) -> None:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.info("closing the connection of %s: %s", client, message)
        if answer:
            self.transport.write(raw_response(Error("request_timeout", "request_timeout", message, location)))
        self.transport.close()

    async def _too_busy(self, scope: Scope, receive: Receive, send: Send) -> None:
        cap = self.limits.max_connections
        message = f"the engine is serving its most connections at once ({cap}, max_connections); retry shortly"
        response = error_response(Error("unavailable", "too_many_connections", message))
        response.headers.update({"retry-after": "1", "connection": "close"})
        await response(scope, receive, send)


def protocol(limits: Limits) -> type[EdgeProtocol]:
    return type("EdgeProtocol", (EdgeProtocol,), {"limits": limits})


def raise_descriptor_limit() -> int:
    """Raise the soft limit on open files to the hard one (systems often start processes at 1,024,
    which a few hundred slow clients exhaust); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65_536
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def connection_cap(max_connections: int, descriptors: int) -> int:
    """max_connections, or fewer when the open-file limit cannot hold them with room to spare."""
    fits = max(1, descriptors - RESERVED_FDS)
    if max_connections > fits:
        log.warning("max_connections is %d, but the open-file limit (%d) leaves room for %d: serving at most %d",
                    max_connections, descriptors, fits, fits)  # fmt: skip
        return fits
    return max_connections


# Query parameters that make a URL a credential: the embedded store's and webhooks' signature, and
# SigV4's (whose credential names the access key). Also when the URL is itself percent-encoded.
_SECRET_PARAM = re.compile(
    r"((?:X-Signature|X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token)(?:=|%3D))(?:(?!%26)[^&\s\"'<>])*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    return _SECRET_PARAM.sub(r"\1REDACTED", text)


def _redact_arg(arg: object) -> object:
    if arg is None or isinstance(arg, int | float):
        return arg
    text = arg if isinstance(arg, str) else str(arg)
    clean = redact(text)
    return arg if clean == text else clean  # unchanged arguments keep their type (for %d, %r)


def redact_record(record: logging.LogRecord) -> None:
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_redact_arg(a) for a in record.args)
    elif isinstance(record.args, Mapping):
        record.args = {k: _redact_arg(v) for k, v in record.args.items()}
    if record.exc_info and not record.exc_text:
        # Formatted here, once: handlers print exc_text when it is set.
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def redact_records() -> None:
    """Redact signatures from every log record the process makes from now on, whatever logger or
    handler it goes to (uvicorn's access log writes each request's full URL)."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        redact_record(record)
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def run(app: ASGIApp, config: Config, *, log_level: str, access_log: bool) -> None:
    redact_records()
    cap = connection_cap(config.max_connections, raise_descriptor_limit())
    limits = Limits(config.header_timeout, config.body_timeout, cap)
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, access_log=access_log,
                http=protocol(limits), log_config=None)  # fmt: skip  # logging: cli.py, flowengine.logs
