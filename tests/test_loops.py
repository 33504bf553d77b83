"""Background loops survive their failures: they log, back off, retry, and /readyz names them meanwhile."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

import pytest
from live import wait_for_status

from flowengine.runtime.supervisor import Supervisor


def test_a_failing_iteration_is_logged_retried_with_backoff_and_named_until_it_recovers(caplog) -> None:
    slept: list[float] = []
    seen: list[dict[str, str]] = []
    outcomes = [RuntimeError("disk full"), RuntimeError("disk full"), RuntimeError("disk full"), None, None]

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    supervisor = Supervisor(sleep=sleep)

    async def iteration() -> None:
        seen.append(supervisor.failing())
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        if not outcomes:
            raise asyncio.CancelledError  # the engine stopping: the loop ends only this way

    with caplog.at_level(logging.ERROR, logger="flowengine.loops"), pytest.raises(asyncio.CancelledError):
        asyncio.run(supervisor.run("timers", iteration, lambda: sleep(0)))
    assert slept == [1.0, 2.0, 4.0, 0]  # backoffs, then the pause after the turn that worked
    assert seen[0] == {} and seen[3] == {"timers": "3 failure(s) in a row: RuntimeError: disk full"}
    assert seen[4] == {}  # recovered
    assert supervisor.loops["timers"].failures == 3 and supervisor.loops["timers"].iterations == 1
    assert [r.exc_info[1].args for r in caplog.records if r.exc_info] == [("disk full",)] * 3


def test_backoff_stops_growing_at_a_minute() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 10:
            raise asyncio.CancelledError

    async def iteration() -> None:
        raise OSError("no")

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(Supervisor(sleep=sleep).run("sweeper", iteration, lambda: sleep(5)))
    assert slept == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]


def test_timers_survive_a_database_that_refuses_writes_and_ttls_still_expire(start_server):
    """The database locked by another process for a while (as disk full would): the timer loop's
    write fails. It used to end the loop for good, so TTLs never expired again."""
    server = start_server()
    with server.client() as client:
        body = {"Flow": {"DataWells": [{"Edge": "file", "Source": "upload", "TTL": 2}]}}
        run = client.post("/api/v1/flow/short", json=body).json()
        blocker = sqlite3.connect(server.data_dir / "flowengine.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: every write of the engine fails after 5 s
        try:
            deadline = time.monotonic() + 30
            ready = client.get("/readyz", timeout=30)
            while "timers" not in ready.json()["Loops"] and time.monotonic() < deadline:
                time.sleep(0.2)
                ready = client.get("/readyz", timeout=30)
            assert ready.status_code == 503
            assert "database is locked" in ready.json()["Loops"]["timers"], ready.json()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        done = wait_for_status(client, run["ID"], {"ERROR"}, timeout=30)
        assert done["Error"] == "upload for edge 'file' expired"
        ready = client.get("/readyz").json()
        assert (ready["Status"], ready["Stores"], ready["Loops"]) == ("ready", {}, {}), ready
    assert "loop timers failed" in server.log.read_text()
