"""Scale: a restart, run listings and S3 landing detection with many runs in the database.

    python bench/scale.py db                         # restart and listings at 10k, 100k and 1M runs
    python bench/scale.py db --before /tmp/before    # ... and the same figures for an older checkout
    python bench/scale.py lag                        # S3 detection lag at 1k, 10k and 100k waiting keys
    python bench/scale.py lag --before /tmp/before   # ... and for an older checkout (at 1k and 10k)

Databases are built straight through the persistence layer (the engine's own plans, runs and waits,
inserted 10,000 to a transaction), not by HTTP: about 50 s for a million runs. Every server is a
real `flowengine serve` subprocess on a free loopback port, started on a fresh copy of the built
data dir and killed with SIGKILL at the end of its round; `--before` runs an older checkout on a
copy of the same data, in alternating rounds. Older checkouts upgrade the copy as they open it.

db: N runs WAITING for an embedded-store upload (TTL 6 days), plus 20 runs RUNNING with a step
    READY (interrupted before it started). Per round:
      port s      spawn to the first answer of GET /healthz (what clients wait for after a crash)
      recovered s spawn to /readyz showing Recovery.Done (versions without it recover before the
                  port opens: there it is the port figure)
      peak MB     the server's peak resident memory (VmHWM) once recovered
    then, on the same server, the median of 20 keep-alive GETs of /api/v1/flow/runs?limit=50:
      first page, status=WAITING, and a page 90 % deep (by cursor; by offset where there is none).
    The figures should not grow with N. At 1M the data dir holds about 1 GB per copy.
lag: N runs WAITING for an upload on an S3 store (a SeaweedFS the bench starts, no notifications,
    the reconciler at its defaults). After the server has recovered, the server's CPU share over
    5 idle seconds (the reconciler's own cost); then 30 objects put with the minio client at random
    moments over 15 s, each for a random waiting run, and for each the run document's Landed minus
    the moment the PUT was answered (same host, same clock).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from load import Client
from minio import Minio
from run import HOST, cpu_seconds, free_port, median, p95
from s3 import CREDS, s3server, table

from flowengine.api.flow import _encode_cursor
from flowengine.config import Config
from flowengine.core import machine
from flowengine.core.ids import uuid7
from flowengine.core.spec import Flow
from flowengine.persistence.base import NewRun, Wait
from flowengine.runtime.engine import Engine

TTL = "6d"  # waiting runs outlive the bench (S3 presigns at most 7 days)
RUNNING = 20  # interrupted runs in every db
BATCH = 10_000  # runs per transaction while building
UPLOADS = 30
WINDOW = 15.0  # seconds over which the uploads are spread


# --- building a database -----------------------------------------------------------------------------


def build(data: Path, flow: dict, count: int, settings: dict[str, Any], running: dict | None = None) -> list[Any]:
    """`count` runs of `flow` (and RUNNING runs of `running`) stored as the engine stores a creation;
    returns the runs of `flow` in creation order."""
    (data / "flows").mkdir(parents=True, exist_ok=True)
    engine = Engine(Config(data_dir=str(data), flows_dir=str(data / "flows"), **settings))
    made: list[Any] = []
    started = time.perf_counter()
    for definition, n in ((flow, count), (running, RUNNING if running else 0)):
        if not n:
            continue
        plan = engine.plan(msgspec.convert(definition, Flow))
        made += asyncio.run(_store(engine, plan, n, keep=definition is flow))
    engine.db.checkpoint()
    asyncio.run(engine.db.close())
    print(f"  built {count:,} runs in {time.perf_counter() - started:.0f} s", flush=True)
    return made


async def _store(engine: Engine, plan: Any, n: int, keep: bool) -> list[Any]:
    made = []
    async with engine.db.transaction() as tx:
        await tx.put_definition(plan.digest, plan.definition)
    for first in range(0, n, BATCH):
        async with engine.db.transaction() as tx:
            for _ in range(min(BATCH, n - first)):
                now = time.time()
                run_id = uuid7()
                edges = {e.name: e.state(run_id, now) for e in plan.edges}
                run, _ = machine.start(plan.flow, run_id, edges, now)
                waits = [(Wait(e.store.location, e.store.full_key(edges[e.name].key), run_id, e.name),
                          None if e.store.kind == "local" else now + 1.0)
                         for e in plan.edges if e.name in machine.waiting_edges(run)]  # fmt: skip
                assert await tx.claim_waits(waits) is None
                await tx.insert_runs([NewRun(run, plan.digest, machine.next_wake(run))])
                if keep:
                    made.append(run)
    return made


# --- a server on a copy of the data ------------------------------------------------------------------


@contextlib.contextmanager
def serve(pristine: Path, work: Path, source: Path | None, env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Copy the data dir, spawn an engine on it, measure its start; kill -9 it at the end."""
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(pristine, data)
    port = free_port()
    argv = [sys.executable, "-m", "flowengine.cli", "serve", "--host", HOST, "--port", str(port),
            "--data-dir", str(data), "--no-access-log", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "FLOWENGINE_FLOWS_DIR": str(data / "flows"), **env}
    env.pop("PYTHONPATH", None)
    if source:
        env["PYTHONPATH"] = str(source.resolve())
    log = open(work / f"server-{port}.log", "wb")  # noqa: SIM115 - closed in finally
    spawned = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    try:
        first = until_answer(proc, port, "/healthz", lambda status, _: status == 200) - spawned
        ready = json.loads(until_answer(proc, port, "/readyz", recovered, body=True))
        recovered_at = time.perf_counter() - spawned if "Recovery" in ready else first
        yield {"port": port, "pid": proc.pid, "up": first, "recovered": recovered_at, "peak": peak_mb(proc.pid)}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
        shutil.rmtree(data, ignore_errors=True)


def recovered(status: int, body: bytes) -> bool:
    return status == 200 and json.loads(body).get("Recovery", {"Done": True})["Done"]


def until_answer(proc: subprocess.Popen, port: int, path: str, good: Any, body: bool = False) -> Any:
    """Ask every 5 ms until `good(status, body)`; the moment (perf_counter), or the body."""
    deadline = time.perf_counter() + 600
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            client = Client(HOST, port, timeout=30)
            try:
                status, data = client.request("GET", path)
            finally:
                client.close()
            if good(status, data):
                return data if body else time.perf_counter()
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"no good answer to {path} in 600 s")


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def versions(args: argparse.Namespace) -> list[tuple[str, Path | None]]:
    return [("this", None), *([("before", args.before)] if args.before else [])]


# --- db: restart and listings ------------------------------------------------------------------------


def upload_flow(store: dict | None = None) -> dict:
    well = {"Edge": "in", "Source": "upload", "TTL": TTL, **({"Store": "s3"} if store else {})}
    return {"Name": "waiting", "Stores": [store] if store else [], "DataWells": [well]}


INTERRUPTED = {
    "Name": "interrupted",
    "Tasks": [{"Name": "mark", "Outputs": [{"Name": "o"}], "Exec": ["sh", "-c", 'echo x > "$0"', "${o}"]}],
    "Steps": [{"ID": "mark", "Uses": "mark", "Outputs": [{"Slot": "o", "Edge": "out"}]}],
}


def get(port: int, target: str) -> bytes:
    client = Client(HOST, port, timeout=60)
    try:
        return client.request("GET", target)[1]
    finally:
        client.close()


def listing_ms(port: int, target: str, samples: int = 20) -> float:
    client = Client(HOST, port, timeout=60)
    try:
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            status, body = client.request("GET", target)
            times.append((time.perf_counter() - started) * 1000)
            assert status == 200, body[:300]
        return median(times)
    finally:
        client.close()


FIGURES = ("up", "recovered", "peak", "first", "waiting", "deep")


def db(args: argparse.Namespace, root: Path) -> list[list[str]]:
    rows = []
    for size in args.sizes:
        print(f"db: {size:,} runs", flush=True)
        pristine = root / f"db-{size}"
        runs = build(pristine, upload_flow(), size, {}, INTERRUPTED)
        deep = runs[len(runs) // 10].id  # newest first: 90 % of the way down
        figures: dict[str, list[dict]] = {name: [] for name, _ in versions(args)}
        for r in range(args.rounds):
            order = versions(args) if r % 2 == 0 else versions(args)[::-1]
            for name, source in order:
                with serve(pristine, root / name, source, {}) as srv:
                    page = json.loads(get(srv["port"], "/api/v1/flow/runs?limit=1"))
                    deep_target = (f"/api/v1/flow/runs?limit=50&cursor={_encode_cursor(deep)}" if "Next" in page
                                   else f"/api/v1/flow/runs?limit=50&offset={size * 9 // 10}")  # fmt: skip
                    srv["first"] = listing_ms(srv["port"], "/api/v1/flow/runs?limit=50")
                    srv["waiting"] = listing_ms(srv["port"], "/api/v1/flow/runs?limit=50&status=WAITING")
                    srv["deep"] = listing_ms(srv["port"], deep_target)
                    srv["deep_by"] = "cursor" if "Next" in page else "offset"
                    figures[name].append(srv)
                    print(f"  {name}: " + ", ".join(f"{k} {srv[k]:.2f}" for k in FIGURES), flush=True)
        for name, rounds in figures.items():
            med = {k: statistics.median(f[k] for f in rounds) for k in FIGURES}
            deep = f"{med['deep']:.1f} ({rounds[0]['deep_by']})"
            rows.append([f"{size:,}", name, *(f"{med[k]:.2f}" for k in FIGURES[:2]), f"{med['peak']:.0f}",
                         *(f"{med[k]:.1f}" for k in FIGURES[3:5]), deep])  # fmt: skip
        shutil.rmtree(pristine)
    return rows


# --- lag: S3 landing detection by the reconciler alone --------------------------------------------------


def lag(args: argparse.Namespace, root: Path) -> list[list[str]]:
    rows = []
    with s3server.serve(bucket="bench-scale", **CREDS) as s3:
        client = Minio(s3["endpoint"], s3["access_key"], s3["secret_key"], secure=False)
        settings = {"s3_access_key": s3["access_key"], "s3_secret_key": s3["secret_key"]}
        env = {f"FLOWENGINE_{k.upper()}": v for k, v in settings.items()}
        for size in args.lag_sizes:
            print(f"lag: {size:,} waiting S3 keys", flush=True)
            prefix = f"lag-{uuid.uuid4().hex[:8]}"
            params = {"endpoint": s3["endpoint"], "bucket": s3["bucket"], "prefix": prefix, "secure": False}
            pristine = root / f"lag-{size}"
            runs = build(pristine, upload_flow({"Name": "s3", "Type": "s3", "Params": params}), size, settings)
            for name, source in versions(args):
                if name == "before" and size not in args.before_lag_sizes:
                    continue
                with serve(pristine, root / name, source, env) as srv:
                    cpu = cpu_seconds(srv["pid"])
                    time.sleep(5.0)
                    idle = (cpu_seconds(srv["pid"]) - cpu) / 5.0
                    chosen = random.sample(runs, UPLOADS)
                    keys = [f"{prefix}/{run.edges['in'].key}" for run in chosen]
                    with ThreadPoolExecutor(UPLOADS) as pool:
                        lags = list(pool.map(upload_and_wait, [srv["port"]] * UPLOADS, [client] * UPLOADS,
                                             [s3["bucket"]] * UPLOADS, keys, [r.id for r in chosen]))  # fmt: skip
                print(f"  {name}: lag median {median(lags):.2f} s, p95 {p95(lags):.2f} s, max {max(lags):.2f} s;"
                      f" idle CPU {idle:.0%}", flush=True)  # fmt: skip
                rows.append([f"{size:,}", name, f"{median(lags):.2f}", f"{p95(lags):.2f}", f"{max(lags):.2f}",
                             f"{idle:.0%}"])  # fmt: skip
            shutil.rmtree(pristine)
    return rows


_polling = threading.Semaphore(4)  # status polls in flight at once: the server is also what is measured


def upload_and_wait(port: int, client: Minio, bucket: str, key: str, run_id: str) -> float:
    """PUT the object at a random moment of the window; seconds from the PUT's answer to Landed."""
    time.sleep(random.random() * WINDOW)
    client.put_object(bucket, key, io.BytesIO(b"landed"), 6)
    put_done = time.time()
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        time.sleep(0.2)
        with _polling:
            doc = json.loads(get(port, f"/api/v1/flow/status/{run_id}"))
        if doc["Status"] != "WAITING":
            landed = next(a["Landed"] for a in doc["Artifacts"] if a["EdgeName"] == "in")
            return datetime.fromisoformat(landed).timestamp() - put_done
    raise RuntimeError(f"run {run_id} still WAITING 20 minutes after its upload")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["db", "lag"])
    parser.add_argument("--before", type=Path, help="an older checkout (with a flowengine/ package) to measure too")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="db: runs in the database")
    parser.add_argument("--lag-sizes", default="1000,10000,100000", help="lag: waiting S3 keys")
    parser.add_argument("--before-lag-sizes", default="1000,10000",
                        help="lag: sizes to measure --before at (it took 498 s a key at 100,000)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="db: restarts per version and size")
    args = parser.parse_args(argv)
    for name in ("sizes", "lag_sizes", "before_lag_sizes"):
        setattr(args, name, [int(s) for s in getattr(args, name).split(",")])
    began = time.perf_counter()
    print(f"# bench/scale.py {args.what}  cores={os.cpu_count()}  load={os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        for name, _ in versions(args):
            (root / name).mkdir()
        if args.what == "db":
            rows = db(args, root)
            head = [
                "runs",
                "version",
                "port s",
                "recovered s",
                "peak MB",
                "first page ms",
                "WAITING ms",
                "deep page ms",
            ]
        else:
            rows = lag(args, root)
            head = ["waiting keys", "version", "lag median s", "p95 s", "max s", "idle CPU"]
    print()
    print(table(head, rows))
    print(f"\ntotal {time.perf_counter() - began:.0f} s, load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
