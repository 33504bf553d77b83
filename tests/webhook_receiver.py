"""A webhook receiver for the tests: a small HTTP server on loopback that records every request
(headers, body, the answer it got) and answers as a test scripts it; and the check of both signatures
(the reference's hex HMAC with its own code, Standard Webhooks with the `standardwebhooks` library).
The `receiver` fixture (conftest.py) gives a test one, closed after it."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import threading
import time
from typing import Any

import standardwebhooks

DELAYS = "0:0.2:0.4:0.6"  # the retry schedule, shortened: the same four retries
SLOW = 0  # scripted: answer 200 after 2 s (past the engine's timeout)


class Receiver:
    """Records each request (headers, body, the answer it got) and answers with the next scripted
    status (200 when the script is done); `hold` keeps requests unanswered until released."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[int] = []
        self.received = 0  # requests come in, answered or not
        self.hold = threading.Event()
        self.hold.set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.received += 1
                receiver.hold.wait(30)
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else 200
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.requests.append({"headers": headers, "body": body, "status": status, "at": time.time()})
                if status == SLOW:
                    time.sleep(2)
                    status = 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.requests)} requests came, not {count}"
            time.sleep(0.02)
        return self.requests


def verify(request: dict[str, Any], secret: str) -> dict[str, Any]:
    """Both signatures hold; the body, decoded."""
    headers, body = request["headers"], request["body"]
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-webhook-signature-256"], expected)
    standard = {k.lower(): v for k, v in headers.items() if k.lower().startswith("webhook-")}
    return standardwebhooks.Webhook(secret).verify(body, standard)
