"""A real `flowengine serve` process on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """Starts the service with a data dir and flows dir of its own; settings go in as FLOWENGINE_* env."""

    prefix: list[str] = []  # a command that runs the server's command line (as_user.py)

    def __init__(
        self,
        data_dir: Path,
        flows_dir: Path,
        port: int | None = None,
        config: str | None = None,
        log_level: str = "warning",
        *,
        access_log: bool = False,  # the access log (and info lines) go to `log` too
        **settings: Any,
    ) -> None:
        self.data_dir = data_dir
        self.flows_dir = flows_dir
        self.port = port or free_port()
        self.config = config
        # Most tests post flows that define their own commands and stores; the engine's defaults refuse
        # them (inline_commands and inline_stores are off), which tests/test_library.py covers.
        self.settings = {"inline_commands": True, "inline_stores": True, **settings}
        self.log_level = log_level
        self.access_log = access_log
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    def start(self) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWENGINE_")}
        env["FLOWENGINE_FLOWS_DIR"] = str(self.flows_dir)
        env.update({f"FLOWENGINE_{k.upper()}": str(v) for k, v in self.settings.items()})
        quiet = ["--log-level", self.log_level, "--no-access-log"]
        args = [*self.prefix, sys.executable, "-m", "flowengine.cli", "serve", "--port", str(self.port),
                "--data-dir", str(self.data_dir), *(["--log-level", "info"] if self.access_log else quiet)]  # fmt: skip
        if self.config:
            args += ["--config", self.config]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(self.proc, self.url, self.log)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc:
            stop(self.proc, sig)

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal a server and wait for it to exit (killing it after 10 s)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 15) -> None:
    """Until `url`/healthz answers 200; a RuntimeError with the server's log if it exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not become healthy:\n{log.read_text()}")


def wait_for_status(
    client: httpx.Client, run_id: str, statuses: set[str], timeout: float = 15, headers: dict | None = None
) -> dict:
    """Poll a run until its Status is one of `statuses`; returns the document."""
    deadline = time.monotonic() + timeout
    doc: dict = {}
    while time.monotonic() < deadline:
        doc = client.get(f"/api/v1/flow/status/{run_id}", headers=headers).json()
        if doc.get("Status") in statuses:
            return doc
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} still {doc.get('Status')} after {timeout}s: {doc}")


def metric(client: httpx.Client, name: str, **labels: str) -> float | None:
    """One sample of GET /metrics by name and labels, or None if it is not there."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def admin(server: Server, *args: str) -> str:
    """Run an operator's command (`flowengine teams ...`, `keys ...`) on a server's data dir, while it
    runs; its output."""
    env = {**os.environ}
    if server.settings.get("database"):  # a server on PostgreSQL: the command works on its database
        env["FLOWENGINE_DATABASE"] = str(server.settings["database"])
    done = subprocess.run([sys.executable, "-m", "flowengine.cli", *args, "--data-dir", str(server.data_dir)],
                          capture_output=True, text=True, check=False, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def make_key(server: Server, team: str, kind: str = "integration") -> str:
    """A new key of `team` (made if need be) on the server."""
    if team not in admin(server, "teams", "list").split():
        admin(server, "teams", "create", team)
    return admin(server, "keys", "create", "--team", team, "--kind", kind)
