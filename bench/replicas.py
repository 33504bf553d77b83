"""Several engines on one PostgreSQL database, beside one engine on SQLite, in the same run.

    python bench/replicas.py                 # ~2 minutes on 2 cores; prints a table
    python bench/replicas.py --json out.json

1. runs created/s: POST of an inline flow with one upload well, spread evenly over 1, 2 and 3
   replicas on PostgreSQL, and on one engine on SQLite; the database's own ceiling beside them:
   pgbench with a one-row transaction (INSERT of a ~1 KB row), as many clients as the engines have
   connections.
2. status GETs/s of one run, spread the same way (on PostgreSQL every GET is a query: no replica
   keeps runs in memory).
3. step hop: the next step's Started minus the previous one's Finished, in chains of cp steps on 3
   replicas and on SQLite (the replica that records a step's end queues the next step's attempt;
   the first local executor to lease it, on any replica, runs it: the others hear of it by NOTIFY).
   And across replicas: an upload PUT to one replica, then how soon another one's status shows the
   run advanced (every status read is a query there: the advance is visible once committed).
4. restart of one replica under load: creations on all three, one replica stopped (SIGTERM) and
   started again meanwhile; what the others kept doing, how long it was away, the failed requests.

A throwaway PostgreSQL (tests/pgserver.py: Debian's postgresql package, fsync off) and every engine
run as subprocesses on free loopback ports and are always stopped; one load generator process per
replica (bench/load.py). Everything shares the machine's cores, so the figures say where the
limit is on this machine, not what a deployment with a database server of its own does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from load import JSON, Client, encode_request, run_load
from run import (
    HOST,
    Server,
    chain_flow,
    expect,
    free_port,
    hop_latency,
    median,
    p95,
    start_and_upload,
    stop,
    wait_healthy,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import pgserver  # the tests' throwaway PostgreSQL

CREATE = json.dumps({"Flow": {"DataWells": [{"Edge": "in", "Source": "upload"}]}}).encode()
PGBENCH_SCRIPT = "INSERT INTO bench_rows VALUES (md5(random()::text || clock_timestamp()), repeat('x', 1024));\n"


class Engine:
    """One `flowengine serve` on a free port (started again by `restart` on the same port)."""

    def __init__(self, workdir: Path, name: str, database: str) -> None:
        self.data = workdir / name
        self.port = free_port()
        self.log = workdir / f"{name}.log"
        flows = workdir / "flows"
        flows.mkdir(exist_ok=True)
        self.argv = [sys.executable, "-m", "flowengine.cli", "serve", "--host", HOST, "--port", str(self.port),
                     "--data-dir", str(self.data), "--no-access-log", "--log-level", "warning"]  # fmt: skip
        # Steps are cp commands posted inline, and run on whichever replica leases them: the embedded
        # store is shared, as a shared mount would share it (every engine's objects and meta are one
        # folder, and every engine signs its URLs with one secret).
        shared = workdir / "shared"
        self.data.mkdir(parents=True, exist_ok=True)
        for folder in ("objects", "meta"):
            (shared / folder).mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                (self.data / folder).symlink_to(shared / folder)
        self.env = {**os.environ, "FLOWENGINE_FLOWS_DIR": str(flows), "FLOWENGINE_INLINE_COMMANDS": "true",
                    "FLOWENGINE_DATABASE": database, "FLOWENGINE_LOCAL_STORE_SHARED": "true",
                    "FLOWENGINE_DATABASE_POOL_SIZE": "10", "FLOWENGINE_SECRET": "bench-replicas-secret"}  # fmt: skip
        self.proc: subprocess.Popen | None = None

    def start(self) -> Engine:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        wait_healthy(self.proc, self.port, self.log, timeout=30)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    @property
    def server(self) -> Server:
        assert self.proc is not None
        return Server(self.port, self.proc.pid)


@contextlib.contextmanager
def engines(workdir: Path, prefix: str, database: str, n: int) -> Iterator[list[Engine]]:
    started: list[Engine] = []
    try:
        for i in range(n):
            started.append(Engine(workdir, f"{prefix}{i}", database).start())
        yield started
    finally:
        for e in started:
            with contextlib.suppress(Exception):  # the others are stopped whatever one does
                e.stop()


def spread(pool: ProcessPoolExecutor, servers: list[Engine], requests: list[bytes], conns: int, seconds: float) -> dict:
    """The same load on every engine at once, `conns` connections in all; requests/s summed."""
    each = max(1, conns // len(servers))
    futures = [pool.submit(run_load, HOST, s.port, r, each, seconds) for s, r in zip(servers, requests, strict=True)]
    results = [f.result(timeout=seconds + 60) for f in futures]
    return {"rate": sum(r["rate"] for r in results), "failed": sum(r["failed"] for r in results),
            "per_engine": [round(r["rate"]) for r in results]}  # fmt: skip


def creations(pool: ProcessPoolExecutor, servers: list[Engine], args: argparse.Namespace) -> dict:
    requests = [encode_request("POST", "/api/v1/flow/bench", f"{HOST}:{s.port}", CREATE, JSON) for s in servers]
    spread(pool, servers, requests, args.conns, args.warmup)
    rounds = [spread(pool, servers, requests, args.conns, args.duration) for _ in range(args.rounds)]
    return {"rate": median([r["rate"] for r in rounds]), "rounds": rounds}


def status_gets(pool: ProcessPoolExecutor, servers: list[Engine], args: argparse.Namespace) -> dict:
    client = Client(HOST, servers[0].port)
    try:
        run_id = json.loads(expect(client.request("POST", "/api/v1/flow/bench", CREATE, JSON), 201))["ID"]
    finally:
        client.close()
    target = f"/api/v1/flow/status/{run_id}"
    requests = [encode_request("GET", target, f"{HOST}:{s.port}") for s in servers]
    spread(pool, servers, requests, args.conns, args.warmup)
    rounds = [spread(pool, servers, requests, args.conns, args.duration) for _ in range(args.rounds)]
    return {"rate": median([r["rate"] for r in rounds]), "rounds": rounds}


def seen_elsewhere(servers: list[Engine], n: int) -> dict:
    """PUT answered on replica i -> RUNNING or COMPLETE seen on replica i+1 (polled as fast as it answers)."""
    latencies = []
    for k in range(n):
        here, there = Client(HOST, servers[k % len(servers)].port), Client(HOST, servers[(k + 1) % len(servers)].port)
        try:
            target, put_done = start_and_upload(here, chain_flow(1))
            while json.loads(there.request("GET", target)[1])["Status"] not in ("RUNNING", "COMPLETE"):
                pass
            latencies.append((time.perf_counter() - put_done) * 1000)
        finally:
            here.close()
            there.close()
    return {"median": median(latencies), "p95": p95(latencies), "n": n}


def pgbench(cluster: pgserver.Cluster, workdir: Path, clients: int, seconds: float) -> float:
    """One-row transactions/s of the database itself: pgbench, `clients` connections, a ~1 KB INSERT each."""
    url = cluster.create(template="template0")
    try:
        with cluster.admin() as admin, admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{url.rpartition("/")[2]}" SET synchronous_commit = off')
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_rows (id text PRIMARY KEY, doc text NOT NULL)")
        script = workdir / "one-row.sql"
        script.write_text(PGBENCH_SCRIPT)
        done = subprocess.run(
            [str(pgserver.binaries() / "pgbench"), "-n", "-c", str(clients), "-j", "2", "-T", str(round(seconds)),
             "-f", str(script), url],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith("tps ="))
        return float(line.split()[2])
    finally:
        cluster.drop(url)


def restart_under_load(pool: ProcessPoolExecutor, servers: list[Engine], args: argparse.Namespace) -> dict:
    """Creations on the other replicas for `restart_window` s while replica 0 is stopped at a third
    of it and started again at once (and asked to create runs one at a time meanwhile, by a client
    that reconnects). The others' rate beside their rate before; replica 0's failed requests."""
    requests = [encode_request("POST", "/api/v1/flow/bench", f"{HOST}:{s.port}", CREATE, JSON) for s in servers]
    others, window = servers[1:], args.restart_window
    before = spread(pool, others, requests[1:], args.conns, args.duration)
    away: dict[str, float] = {}
    asked = {"ok": 0, "failed": 0}

    def bounce() -> None:
        time.sleep(window / 3)
        stopped = time.monotonic()
        servers[0].stop()
        servers[0].start()
        away["seconds"] = time.monotonic() - stopped

    def ask(end: float) -> None:
        client = None
        while time.monotonic() < end:
            try:
                client = client or Client(HOST, servers[0].port, timeout=2.0)
                status = client.request("POST", "/api/v1/flow/bench", CREATE, JSON)[0]
                asked["ok" if status == 201 else "failed"] += 1
            except OSError:
                asked["failed"] += 1
                if client is not None:
                    client.close()
                client = None
                time.sleep(0.05)
        if client is not None:
            client.close()

    threads = [threading.Thread(target=bounce), threading.Thread(target=ask, args=(time.monotonic() + window,))]
    for thread in threads:
        thread.start()
    during = spread(pool, others, requests[1:], args.conns, window)
    for thread in threads:
        thread.join()
    return {"survivors_before": before["rate"], "survivors_during": during["rate"],
            "survivors_failed": during["failed"], "restarted_failed": asked["failed"], "restarted_ok": asked["ok"],
            "away_seconds": away.get("seconds"), "window": window}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per throughput round (default 3)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--conns", type=int, default=32, help="connections in all, spread over the engines")
    parser.add_argument("--chains", type=int, default=30, help="runs for the step hop")
    parser.add_argument("--chain-steps", type=int, default=4)
    parser.add_argument("--restart-window", type=float, default=9.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    started = time.monotonic()
    results: dict = {"machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                                 "loadavg_before": os.getloadavg()[0]},
                     "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="flowengine-replicas-") as tmp, pgserver.serve() as cluster, \
            ProcessPoolExecutor(3, mp_context=ctx) as pool:  # fmt: skip
        workdir = Path(tmp)
        print(f"machine: {os.cpu_count()} cores; PostgreSQL on port {cluster.port}")
        results["pgbench_tps"] = pgbench(cluster, workdir, args.conns, args.duration * args.rounds)
        print(f"pgbench one-row transactions: {results['pgbench_tps']:,.0f}/s ({args.conns} clients)")
        with engines(workdir, "sqlite", "", 1) as servers:
            results["sqlite"] = {"create": creations(pool, servers, args), "status": status_gets(pool, servers, args),
                                 "hop": hop_latency(servers[0].server, args.chains, args.chain_steps)}  # fmt: skip
            print(f"sqlite, 1 engine: {results['sqlite']['create']['rate']:,.0f} runs/s, "
                  f"{results['sqlite']['status']['rate']:,.0f} GET/s")  # fmt: skip
        for n in (1, 2, 3):
            url = cluster.create()
            try:
                with engines(workdir, f"pg{n}-", url, n) as servers:
                    figures = {"create": creations(pool, servers, args), "status": status_gets(pool, servers, args)}
                    if n == 3:
                        hops = [hop_latency(s.server, max(1, args.chains // 3), args.chain_steps) for s in servers]
                        figures["hop"] = {"hop_ms": {"median": median([h["hop_ms"]["median"] for h in hops]),
                                                     "p95": max(h["hop_ms"]["p95"] for h in hops)},
                                          "hops": sum(h["hops"] for h in hops)}  # fmt: skip
                        figures["seen_elsewhere_ms"] = seen_elsewhere(servers, args.chains)
                        figures["restart"] = restart_under_load(pool, servers, args)
                    results[f"pg{n}"] = figures
                    print(f"postgresql, {n} replica(s): {figures['create']['rate']:,.0f} runs/s, "
                          f"{figures['status']['rate']:,.0f} GET/s")  # fmt: skip
            finally:
                cluster.drop(url)
    results["seconds"] = time.monotonic() - started
    results["machine"]["loadavg_after"] = os.getloadavg()[0]
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def table(results: dict) -> str:
    tps = results["pgbench_tps"]
    rows = [("deployment", "runs created/s", "of pgbench", "status GET/s", "step hop (median, p95)")]
    for key, label in (("sqlite", "SQLite, 1 engine"), ("pg1", "PostgreSQL, 1 replica"),
                       ("pg2", "PostgreSQL, 2 replicas"), ("pg3", "PostgreSQL, 3 replicas")):  # fmt: skip
        r = results[key]
        hop = r.get("hop")
        share = "" if key == "sqlite" else f"{r['create']['rate'] / tps:.0%}"
        rows.append((label, f"{r['create']['rate']:,.0f}", share, f"{r['status']['rate']:,.0f}",
                     f"{hop['hop_ms']['median']:.0f} ms, {hop['hop_ms']['p95']:.0f} ms" if hop else ""))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    r, seen = results["pg3"]["restart"], results["pg3"]["seen_elsewhere_ms"]
    m = results["machine"]
    return "\n".join([
        f"pgbench one-row transactions/s: {tps:,.0f}; load average {m['loadavg_before']:.1f} before, "
        f"{m['loadavg_after']:.1f} after ({results['seconds']:.0f} s in all)",
        *lines,
        f"upload PUT on one replica -> advance seen on another: median {seen['median']:.1f} ms, "
        f"p95 {seen['p95']:.1f} ms (n={seen['n']})",
        f"restart of 1 of 3 replicas under load: away {r['away_seconds']:.1f} s; the other two "
        f"{r['survivors_before']:,.0f} runs/s before, {r['survivors_during']:,.0f} during "
        f"({r['survivors_failed']} failed); the restarted one failed {r['restarted_failed']} requests",
    ])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
