"""Several engines on one PostgreSQL database and one S3 server, sharing the work (issue 11).

Three `flowengine serve` processes on three loopback ports, one database, one SeaweedFS; clients
spread over them. Steps report each execution they finish to a counter (an HTTP server of the
test's own, `Counter`) after their work, so "nothing done twice" is counted outside the engine.
The steps sleep a little, so that runs are under way on every replica when one is killed. Which
replica runs a step is the step queue's choice: each replica's local executor leases from it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
import uuid
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from live import Server, metric, wait_for_status
from test_s3_flow import TOKEN, notify, s3_record

from flowengine.config import Config
from flowengine.core import machine
from flowengine.core.spec import Flow
from flowengine.runtime import retention
from flowengine.runtime.engine import Engine
from flowengine.runtime.local import ABORT_TOPIC
from flowengine.runtime.notifier import run_topic
from flowengine.runtime.queue import QUEUE_TOPIC

REPLICAS = 3
# A step: sleep, write its input and its own name to its output, then tell the counter it did.
STEP = """
import sys, time, urllib.request
src, dst, name, url, pause = sys.argv[1:]
time.sleep(float(pause))
data = open(src, "rb").read()
open(dst, "wb").write(data + b" " + name.encode())
urllib.request.urlopen(urllib.request.Request(url, data=name.encode() + b" " + data, method="POST")).read()
"""


class Counter:
    """Counts what steps POST to it: (step, what it read)."""

    def __init__(self) -> None:
        self.seen: Tally[str] = Tally()
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                counter.seen[body] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counter() -> Iterator[Counter]:
    c = Counter()
    yield c
    c.close()


def hop_flow(counter: Counter, pause: float, ttl: str | None = None) -> dict:
    """An upload `doc`, step `a` (doc to mid) and step `b` (mid to out), on the operator's S3 store."""
    well: dict[str, Any] = {
        "Edge": "doc",
        "Source": "upload",
        "Key": "${RUN_ID}/doc.txt",
        **({"TTL": ttl} if ttl else {}),
    }

    def task(name: str) -> dict:
        return {"Name": name, "Inputs": [{"Name": "src"}], "Outputs": [{"Name": "dst"}],
                "Exec": ["python3", "-c", STEP, "${src}", "${dst}", name, counter.url, str(pause)]}  # fmt: skip

    return {
        "Flow": {
            "DataWells": [
                well,
                {"Edge": "mid", "Key": "${RUN_ID}/mid.txt"},
                {"Edge": "out", "Key": "${RUN_ID}/out.txt"},
            ],
            "Tasks": [task("a"), task("b")],
            "Steps": [step("a", "doc", "mid"), step("b", "mid", "out")],
        }
    }


def step(name: str, src: str, dst: str) -> dict:
    return {
        "ID": name,
        "Uses": name,
        "Inputs": [{"Slot": "src", "Edge": src}],
        "Outputs": [{"Slot": "dst", "Edge": dst}],
    }


@pytest.fixture
def replicas(
    postgres_url: str, s3: dict[str, Any], tmp_path: Path, flows_dir: Path
) -> Iterator[Callable[..., list[Server]]]:
    """replicas(**settings): three engines on one database, their `default` store one S3 prefix."""
    prefix = f"replicas-{uuid.uuid4().hex[:12]}"
    config = tmp_path / "config.yaml"
    params = {"endpoint": s3["endpoint"], "bucket": s3["bucket"], "prefix": prefix, "region": "us-east-1",
              "secure": False, "access_key": s3["access_key"], "secret_key": s3["secret_key"]}  # fmt: skip
    config.write_text(json.dumps({"stores": [{"Name": "default", "Type": "s3", "Params": params}]}))
    started: list[Server] = []

    def start(**settings: Any) -> list[Server]:
        for i in range(REPLICAS):
            data = tmp_path / f"replica{i}"
            server = Server(data, flows_dir, config=str(config), database=postgres_url, events_token=TOKEN, **settings)
            started.append(server.start())
        return started

    yield start
    for server in started:
        server.stop()


def upload(doc: dict, body: bytes) -> str:
    """PUT the run's one upload; returns the object's full key in the bucket."""
    waiting = doc["WaitingURLs"][0]
    answer = httpx.put(
        waiting["PutURL"], content=body, headers={"Content-Type": "text/plain", **waiting.get("Headers", {})}
    )
    assert answer.status_code == 200, answer.text
    return waiting["PutURL"].split("?")[0].split("/", 4)[4]


def every_step_once(counter: Counter, bodies: list[bytes]) -> None:
    expected = {f"a {b.decode()}": 1 for b in bodies} | {f"b {b.decode()} a": 1 for b in bodies}
    assert dict(counter.seen) == expected


def test_runs_created_on_one_replica_complete_when_uploads_land_via_another(
    replicas: Callable[..., list[Server]], counter: Counter, s3: dict[str, Any]
) -> None:
    """Run i is created on replica i, its upload notified to replica i+1 (or, for every other run,
    found by the reconciler, which one replica runs), and its status read on replica i+2."""
    servers = replicas(reconcile_interval=0.2)
    clients = [s.client() for s in servers]
    bodies = [f"run {i} {uuid.uuid4().hex[:6]}".encode() for i in range(9)]
    runs = []
    for i, body in enumerate(bodies):
        created = clients[i % REPLICAS].post("/api/v1/flow/hop", json=hop_flow(counter, 0.05))
        assert created.status_code == 201, created.text
        key = upload(created.json(), body)
        if i % 2 == 0:
            record = s3_record(s3["bucket"], key, len(body), hashlib.md5(body).hexdigest())
            assert notify(clients[(i + 1) % REPLICAS], [record]).json()["Received"] == 1
        runs.append(created.json()["ID"])
    for i, (run_id, body) in enumerate(zip(runs, bodies, strict=True)):
        doc = wait_for_status(clients[(i + 2) % REPLICAS], run_id, {"COMPLETE", "ERROR"}, timeout=30)
        assert doc["Status"] == "COMPLETE", doc
        out = next(a for a in doc["Artifacts"] if a["EdgeName"] == "out")
        assert httpx.get(out["GetURL"]).content == body + b" a b"
    every_step_once(counter, bodies)
    checks = [metric(c, "flowengine_reconciler_checks_total") or 0 for c in clients]
    assert sum(1 for n in checks if n) == 1, checks  # one replica reconciles: requests do not multiply
    for c in clients:
        c.close()


def test_timers_fire_once_across_replicas(replicas: Callable[..., list[Server]], counter: Counter) -> None:
    """Runs whose upload TTL passes end ERROR once each: one replica's timer applies each expiry,
    whichever replicas find it due."""
    servers = replicas()
    clients = [s.client() for s in servers]
    runs = [clients[i % REPLICAS].post("/api/v1/flow/hop", json=hop_flow(counter, 0, ttl="1s")).json()["ID"]
            for i in range(12)]  # fmt: skip
    for i, run_id in enumerate(runs):
        doc = wait_for_status(clients[i % REPLICAS], run_id, {"ERROR", "COMPLETE"}, timeout=15)
        assert "expired" in doc["Error"], doc
    time.sleep(0.5)  # a second firing, were there one, would have been counted by now
    errors = [metric(c, "flowengine_transitions_total", kind="run.error") or 0 for c in clients]
    assert sum(errors) == len(runs), errors
    for c in clients:
        c.close()


def started(client: httpx.Client) -> int:
    """Steps started on this replica (acknowledged by its local executor)."""
    return int(metric(client, "flowengine_transitions_total", kind="step.started") or 0)


def test_a_replica_killed_mid_run_leaves_every_run_to_the_others(
    replicas: Callable[..., list[Server]], counter: Counter, s3: dict[str, Any]
) -> None:
    """kill -9 of one replica while its steps run: once their leases expire, its steps are run
    again by the others (a new attempt each, not counted as a failure: the step allows one attempt),
    every run completes, and no step finishes twice. Twelve first steps on three replicas of four
    slots: each runs four, and the victim is killed while its four are a moment into their 3 s, so
    none of its steps has finished (a step that finished on a replica killed before it recorded that
    would rightly run again)."""
    servers = replicas(concurrency=4, reconcile_interval=3600, lease=2, heartbeat_interval=0.5)
    clients = [s.client() for s in servers]
    bodies = [f"kill {i} {uuid.uuid4().hex[:6]}".encode() for i in range(12)]
    runs, records = [], []
    for i, body in enumerate(bodies):
        created = clients[i % REPLICAS].post("/api/v1/flow/hop", json=hop_flow(counter, 3.0))
        key = upload(created.json(), body)
        records.append(s3_record(s3["bucket"], key, len(body), hashlib.md5(body).hexdigest()))
        runs.append(created.json()["ID"])
    for i, record in enumerate(records):  # each replica runs the steps of a third of the runs
        assert notify(clients[i % REPLICAS], [record]).json() == {"Received": 1, "Matched": 1}
    deadline = time.monotonic() + 30
    while [started(c) for c in clients] != [4] * REPLICAS:
        assert time.monotonic() < deadline, [started(c) for c in clients]
        time.sleep(0.05)
    servers[0].kill9()
    assert dict(counter.seen) == {}  # nothing had finished anywhere
    attempts = []
    for i, run_id in enumerate(runs):
        doc = wait_for_status(clients[1 + i % 2], run_id, {"COMPLETE", "ERROR"}, timeout=60)
        assert doc["Status"] == "COMPLETE", doc
        attempts.append([s["Attempts"] for s in doc["Steps"]])
    assert sorted(attempts) == [[1, 1]] * 8 + [[2, 1]] * 4, attempts  # the victim's four ran again, once
    every_step_once(counter, bodies)
    assert sum(started(c) for c in clients[1:]) == 8 + 4 + 12  # first steps, the victim's again, second steps
    for c in clients:
        c.close()


def test_a_run_cancelled_on_another_replica_aborts_its_running_step(
    replicas: Callable[..., list[Server]], counter: Counter, s3: dict[str, Any]
) -> None:
    """The cancel goes to a replica the step does not run on, whose Abort cannot reach the step: the
    running replica's local executor hears of it (the abort's hint wakes its heartbeat, which finds
    the lease cancelled) and kills the step, which never gets to report to the counter. The
    heartbeat's interval is longer than the step: the hint, not the interval, stops it."""
    servers = replicas(heartbeat_interval=20)
    clients = [s.client() for s in servers]
    body = f"cancel {uuid.uuid4().hex[:6]}".encode()
    created = clients[0].post("/api/v1/flow/hop", json=hop_flow(counter, 4.0)).json()
    key = upload(created, body)
    record = s3_record(s3["bucket"], key, len(body), hashlib.md5(body).hexdigest())
    assert notify(clients[0], [record]).json() == {"Received": 1, "Matched": 1}
    deadline = time.monotonic() + 15
    while sum(started(c) for c in clients) < 1:
        assert time.monotonic() < deadline, "the step did not start"
        time.sleep(0.05)
    runner = next(i for i, c in enumerate(clients) if started(c))
    time.sleep(1.0)  # the step is under way on the runner
    assert clients[(runner + 1) % REPLICAS].post(f"/api/v1/flow/{created['ID']}/cancel").status_code == 200
    time.sleep(5.0)  # the step would have finished, and reported, by now
    assert dict(counter.seen) == {}
    assert wait_for_status(clients[2], created["ID"], {"ERROR", "STOPPED", "COMPLETE"})["Status"] != "COMPLETE"
    for c in clients:
        c.close()


# Wakeups across replicas, in one process: two engines on one database.

WAIT = msgspec.convert({"Name": "wait", "DataWells": [{"Edge": "file", "Source": "upload"}]}, Flow)
# A step ready at once, for an agent's tool: its attempt waits in the queue.
AGENT_STEP = msgspec.convert({"Name": "render", "Steps": [{"ID": "s", "Uses": "t"}],
                              "Tasks": [{"Name": "t", "Tool": "render"}]}, Flow)  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def two_engines(postgres_url: str, tmp_path: Path) -> AsyncIterator[list[Engine]]:
    engines: list[Engine] = []
    try:
        for name in ("one", "other"):
            engines.append(
                Engine(Config(data_dir=str(tmp_path / name), flows_dir=str(tmp_path), database=postgres_url))
            )
            await engines[-1].start()
        yield engines
    finally:
        for engine in engines:
            await engine.stop()


@pytest.mark.anyio
async def test_a_run_advanced_on_one_engine_wakes_its_waiters_on_another(two_engines: list[Engine]) -> None:
    """A waiter on the other engine is woken by the notification (its wait answers True, where its
    polling fallback would have answered False after 30 s), and reads the change: no copy of the
    run in its memory hides it."""
    one, other = two_engines
    run = await one.create_run(one.plan(WAIT))
    await asyncio.sleep(0.5)  # the other engine listens by now
    with other.notifier.subscribe(run_topic(run.id)) as changes:
        assert (await other.get_run(run.id))[0].status == machine.WAITING
        await one.cancel(run.id)
        assert await changes.wait(30.0) is True
        assert (await other.get_run(run.id))[0].status in machine.TERMINAL


@pytest.mark.anyio
async def test_an_attempt_queued_or_aborted_on_one_engine_wakes_the_others_leasers(two_engines: list[Engine]) -> None:
    """What waits for the queue on the other engine (its agents' long polls, its local executor) is
    woken when this one queues an attempt; its local executor's heartbeat when this one aborts one."""
    one, other = two_engines
    await asyncio.sleep(0.5)  # the other engine listens by now
    with other.notifier.subscribe(QUEUE_TOPIC) as queued, other.notifier.subscribe(ABORT_TOPIC) as aborted:
        run = await one.create_run(one.plan(AGENT_STEP))
        assert await queued.wait(30.0) is True
        assert await aborted.wait(0) is False
        await one.cancel(run.id)
        assert await aborted.wait(30.0) is True


def test_each_engine_deletes_its_own_step_logs_past_retention(tmp_path: Path) -> None:
    """Logs stay on the replica that ran the step: the one that claims a run's expiry cannot delete
    the others', so each deletes its own once they are past retention."""
    old, new = tmp_path / "old-run", tmp_path / "new-run"
    for folder in (old, new):
        folder.mkdir()
        (folder / "a.1.log").write_text("log")
    os.utime(old, (1000.0, 1000.0))
    retention._sweep_own_logs(tmp_path, before=2000.0)
    assert not old.exists() and (new / "a.1.log").exists()
