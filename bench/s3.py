"""S3 landing detection: how soon an upload advances its run, and what the reconciler costs.

    python bench/s3.py            # about 50-80 s on 2 cores (more on a busy machine); prints a table
    python bench/s3.py --full     # (b) drives all 600 simulated seconds against SeaweedFS

(a) Upload-to-advance latency on a real S3 server (SeaweedFS): a run with one upload well on an S3
    store; the bench PUTs to its PutURL and measures from the PUT's answer to the moment the run
    left WAITING (the run document's `Landed`, stamped in the transaction that moves the run on;
    same host, same clock; the bench polls until it sees the run move). Two engines:
      notifications - the bench posts a MinIO-shaped bucket notification right after the PUT, as
                      MinIO would; the reconciler is off (interval 3600 s); one upload at a time;
      reconciler    - no notifications; the reconciler at its default interval (1.0 s); each run
                      starts at a random point of the reconciler's cycle; PUT at once, and PUT 5 s
                      after the run started (the reconciler backs off: 1, 2, 4, 8 ... s).
(b) The reconciler with 10,000 waiting runs: an Engine built in-process on a temp data dir with an S3
    store on SeaweedFS; 10,000 runs with one upload well each created (timed); then
    `landing.Reconciler(engine).tick()` driven with an injected clock that advances 1 s per tick.
    Store requests per tick must stay at most `reconcile_batch` whatever the number of waiting
    runs. The first --ticks (60) simulated seconds run against SeaweedFS; the whole 600 s schedule
    is then replayed from a copy of the same database (and for 1,000 waiting runs) with a store
    that answers "nothing there" without the network, so the wall time is the engine's own cost.
    The request counts do not depend on the answers while nothing lands (--full shows both give
    the same counts). Waiting keys of one flow lie close together: a listing answers for
    thousands of them, so a tick takes a request or two. How soon an upload is noticed with many
    waiting keys is `bench/scale.py lag`.

SeaweedFS comes from tests/s3server.py and the engine servers from tests/live.py (imported by
path); everything runs on loopback and is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote_plus

import httpx
import msgspec

from flowengine.config import Config
from flowengine.core.spec import Flow
from flowengine.runtime import landing
from flowengine.runtime.engine import Engine
from flowengine.stores.base import KeyPage, ObjectInfo

TESTS = Path(__file__).resolve().parent.parent / "tests"
TOKEN = "bench-events-token"
BODY = b"bench upload\n"
CREDS = {"access_key": "benchkey", "secret_key": "benchsecret123"}


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", TESTS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


s3server = load("s3server")
live = load("live")


# --- shared --------------------------------------------------------------------------------------


def s3_store(s3: dict[str, Any], prefix: str) -> dict:
    params = {"endpoint": s3["endpoint"], "bucket": s3["bucket"], "prefix": prefix, "secure": False}
    return {"Name": "s3", "Type": "s3", "Params": params}


def upload_flow(s3: dict[str, Any], prefix: str) -> dict:
    """One upload well on S3, one cp step writing to the embedded store."""
    copy = {"Name": "copy", "Inputs": [{"Name": "a"}], "Outputs": [{"Name": "b"}], "Exec": ["cp", "${a}", "${b}"]}
    return {
        "Name": "bench-s3",
        "Stores": [s3_store(s3, prefix)],
        "DataWells": [{"Edge": "in", "Store": "s3", "Source": "upload"}],
        "Tasks": [copy],
        "Steps": [{"ID": "copy", "Uses": "copy", "Inputs": [{"Slot": "a", "Edge": "in"}],
                   "Outputs": [{"Slot": "b", "Edge": "out"}]}],
    }  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def notification(bucket: str, full_key: str) -> dict:
    """What MinIO's webhook target posts for one PUT: the key URL-encoded ('+' for space, %2F for '/')."""
    rec = {
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventName": "s3:ObjectCreated:Put",
        "eventTime": datetime.now().astimezone().isoformat(), "userIdentity": {"principalId": CREDS["access_key"]},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
               "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": quote_plus(full_key, safe=""), "size": len(BODY),
                          "eTag": hashlib.md5(BODY).hexdigest(), "contentType": "text/plain"}},
    }  # fmt: skip
    return {"EventName": rec["eventName"], "Key": f"{bucket}/{full_key}", "Records": [rec]}


# --- (a) upload-to-advance latency ---------------------------------------------------------------


def one_upload(
    api: httpx.Client, s3: httpx.Client, flow: dict, notify: bool, prefix: str, bucket: str, delay: float
) -> float:
    """Start a run, PUT its input `delay` s later, (notify), wait until the run left WAITING; seconds from the
    PUT's answer to Landed."""
    doc = api.post("/api/v1/flow/bench-s3", json={"Flow": flow})
    doc.raise_for_status()
    run = doc.json()
    time.sleep(delay)
    waiting = run["WaitingURLs"][0]
    put = s3.put(waiting["PutURL"], content=BODY, headers={"Content-Type": "text/plain", **waiting.get("Headers", {})})
    put.raise_for_status()
    put_done = time.time()
    if notify:
        full_key = f"{prefix}/{waiting['Artifact']['ObjectName']}"
        sent = api.post("/api/v1/events/s3", json=notification(bucket, full_key),
                        headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert sent.json()["Matched"] == 1, sent.text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = api.get(f"/api/v1/flow/status/{run['ID']}").json()
        if status["Status"] != "WAITING":
            landed = next(a["Landed"] for a in status["Artifacts"] if a["EdgeName"] == "in")
            return datetime.fromisoformat(landed).timestamp() - put_done
        time.sleep(0.005 if notify else 0.05)
    raise RuntimeError(f"run {run['ID']} still WAITING after 30 s")


def latency(s3: dict[str, Any], root: Path, runs: int, notify: bool, put_after: float = 0.0) -> list[float]:
    """Latencies of `runs` uploads. Without notifications each run starts at a random moment of the
    reconciler's 1 s cycle (clients are not in step with it), and its PUT follows `put_after` s later."""
    name = f"notified-{put_after:g}" if notify else f"reconciled-{put_after:g}"
    (root / name / "flows").mkdir(parents=True)
    settings = {"events_token": TOKEN, "reconcile_interval": 3600} if notify else {}
    settings |= {"s3_access_key": s3["access_key"], "s3_secret_key": s3["secret_key"]}
    server = live.Server(root / name / "data", root / name / "flows", **settings).start()
    prefix = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    flow = upload_flow(s3, prefix)
    try:
        local = threading.local()

        def clients() -> tuple[httpx.Client, httpx.Client]:
            if not hasattr(local, "api"):
                local.api, local.s3 = server.client(), httpx.Client(timeout=10)
            return local.api, local.s3

        def one(_: int) -> float:
            api, s3c = clients()
            if not notify:
                time.sleep(random.random())
            return one_upload(api, s3c, flow, notify, prefix, s3["bucket"], put_after)

        clients()[0].post("/api/v1/flow/bench-s3", json={"Flow": flow}).raise_for_status()  # warm-up: first use
        # Notifications: one at a time. Reconciler: many at once (each waits seconds for a tick).
        with ThreadPoolExecutor(1 if notify else 10 if not put_after else runs) as pool:
            return list(pool.map(one, range(runs)))
    finally:
        server.stop()


# --- (b) the reconciler with many waiting runs ---------------------------------------------------


class NotThere:
    """A store answering every stat and listing with "nothing there", without the network (schedule replay)."""

    async def stat(self, key: str) -> ObjectInfo | None:
        return None

    async def list_keys(self, prefix: str, start_after: str = "", limit: int = 1000) -> KeyPage:
        return KeyPage([], False)


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def engine_on(data: Path, s3: dict[str, Any], clock: Clock) -> Engine:
    config = Config(data_dir=str(data), flows_dir=str(data / "flows"), s3_access_key=s3["access_key"],
                    s3_secret_key=s3["secret_key"])  # fmt: skip
    return Engine(config, clock=clock)


async def create_runs(engine: Engine, s3: dict[str, Any], count: int) -> float:
    """`count` runs with one upload well each on an S3 store; returns seconds taken."""
    flow = msgspec.convert(
        {"Name": "waiting", "Stores": [s3_store(s3, f"bench-wait-{uuid.uuid4().hex[:8]}")],
         "DataWells": [{"Edge": "in", "Store": "s3", "Source": "upload"}]}, Flow,
    )  # fmt: skip
    started = time.perf_counter()
    for _ in range(count):
        await engine.create_run(engine.plan(flow))
    return time.perf_counter() - started


async def drive(engine: Engine, clock: Clock, ticks: int) -> dict[str, Any]:
    """tick() once per simulated second; requests and wall time per tick."""
    reconciler = landing.Reconciler(engine)
    requests, walls = [], []
    for _ in range(ticks):
        clock.now += 1.0
        started = time.perf_counter()
        requests.append(await reconciler.tick())
        walls.append(time.perf_counter() - started)
    assert reconciler.requests == sum(requests)
    return {"requests": requests, "walls": walls, "waits": await engine.db.count_waits()}


def copy_engine(engine: Engine, dest: Path, s3: dict[str, Any], clock: Clock) -> Engine:
    """A second engine on a snapshot of `engine`'s database, whose stores never touch the network."""
    dest.mkdir(parents=True)
    engine.db.conn.execute("VACUUM INTO ?", (str(dest / "flowengine.db"),))
    copy = engine_on(dest, s3, clock)
    stub = NotThere()
    copy.store_of = lambda flow, edge: stub  # type: ignore[method-assign]
    return copy


async def reconciler_cost(s3: dict[str, Any], root: Path, waiting: int, ticks: int, replay: int) -> list[dict]:
    start = 1_900_000_000.0
    clock = Clock(start)
    engine = engine_on(root / "engine", s3, clock)
    created = await create_runs(engine, s3, waiting)
    rows = [{"what": f"create {waiting:,} runs (in-process)", "seconds": created}]
    assert await engine.db.count_waits() == waiting
    replays: list[tuple[str, Engine, Clock]] = []
    if replay:
        snap = Clock(start)
        replays.append((f"{waiting:,} waits, schedule replay", copy_engine(engine, root / "replay", s3, snap), snap))
        small_clock = Clock(start)
        small = engine_on(root / "small", s3, small_clock)
        await create_runs(small, s3, waiting // 10)
        small.store_of = lambda flow, edge: NotThere()  # type: ignore[method-assign]
        replays.append((f"{waiting // 10:,} waits, schedule replay", small, small_clock))
    rows.append({"what": f"{waiting:,} waits, SeaweedFS HEADs", "ticks": ticks, **await drive(engine, clock, ticks)})
    for what, other, other_clock in replays:
        rows.append({"what": what, "ticks": replay, **await drive(other, other_clock, replay)})
    for each in [engine, *(e for _, e, _ in replays)]:
        await each.db.close()
    return rows


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# --- the table -----------------------------------------------------------------------------------


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="uploads per latency figure (default 30)")
    parser.add_argument("--waiting", type=int, default=10_000, help="waiting runs for the reconciler (10,000)")
    parser.add_argument("--ticks", type=int, default=60, help="simulated seconds against SeaweedFS (default 60)")
    parser.add_argument("--replay", type=int, default=600, help="simulated seconds of schedule replay (600)")
    parser.add_argument("--full", action="store_true", help="all 600 simulated seconds against SeaweedFS")
    args = parser.parse_args(argv)
    if args.full:
        args.ticks = args.replay
    began = time.perf_counter()
    print(f"# bench/s3.py  cores={os.cpu_count()}  load={os.getloadavg()[0]:.2f}  python={sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp, s3server.serve(bucket="bench", **CREDS) as s3:
        root = Path(tmp)
        lat = [latency(s3, root, args.runs, True), latency(s3, root, args.runs, False),
               latency(s3, root, args.runs, False, put_after=5.0)]  # fmt: skip
        cost = asyncio.run(reconciler_cost(s3, root / "cost", args.waiting, args.ticks, args.replay))

    print("\n(a) upload-to-advance latency on SeaweedFS: PUT answered -> run left WAITING (ms)")
    print(table(["detected by", "runs", "median", "p95", "min", "max"], [
        [name, str(len(v)), ms(statistics.median(v)), ms(percentile(v, 0.95)), ms(min(v)), ms(max(v))]
        for name, v in (("bucket notification (posted after the PUT)", lat[0]),
                        ("reconciler only (interval 1.0 s), PUT at once", lat[1]),
                        ("reconciler only (interval 1.0 s), PUT 5 s after the run started", lat[2]))
    ]))  # fmt: skip

    batch = Config().reconcile_batch
    print(f"\n(b) reconciler, 1 simulated second per tick, reconcile_batch={batch}, created: "
          f"{cost[0]['seconds']:.1f} s ({args.waiting / cost[0]['seconds']:,.0f} runs/s)")  # fmt: skip
    rows = []
    for row in cost[1:]:
        req, walls = row["requests"], row["walls"]
        rows.append([row["what"], str(row["ticks"]), str(max(req)), f"{statistics.median(req):g}",
                     f"{statistics.mean(req):.1f}", f"{sum(req):,}", ms(statistics.median(walls)),
                     ms(max(walls))])  # fmt: skip
        assert max(req) <= batch, f"{row['what']}: {max(req)} requests in one tick, over the batch of {batch}"
    print(table(["waiting runs, store", "ticks", "req/tick max", "median", "mean", "total", "wall/tick med ms",
                 "max ms"], rows))  # fmt: skip
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
