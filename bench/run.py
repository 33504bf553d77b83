"""Flow engine benchmarks, each figure beside a ceiling measured in the same run.

    python bench/run.py                    # ~1.5 minutes on 2 cores; prints a table of medians
    python bench/run.py --json out.json    # also writes every figure (and each round) as JSON

1. runs created/s: POST of an inline flow with one upload well, 32 keep-alive connections;
   ceiling: one-row SQLite transactions/s with the engine's settings (WAL, synchronous=NORMAL).
2. status GETs/s at 64 connections on a real run's status URL; ceiling: a bare Starlette route
   answering the same bytes under the same uvicorn settings (bench/bare.py).
3. upload-to-advance latency: PUT to a run's PutURL, then how soon the run shows it, and the
   server-side gap from the upload landing to its step starting.
4. step-to-step hop: next step's Started minus the previous step's Finished in a chain of cp steps.

Servers run as subprocesses on free loopback ports with temp data dirs and are always stopped;
the load generator (bench/load.py) runs in its own process. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from load import JSON, Client, encode_request, run_load

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent
UPLOAD_WELL = {"Edge": "in", "Source": "upload"}
COPY = {"Name": "copy", "Inputs": [{"Name": "in"}], "Outputs": [{"Name": "out"}], "Exec": ["cp", "${in}", "${out}"]}


def chain_flow(steps: int) -> dict:
    """An upload well `in`, then `steps` cp steps: in -> e1 -> e2 ... (one step: in -> e1)."""
    edges = ["in", *(f"e{i}" for i in range(1, steps + 1))]
    return {"Flow": {
        "DataWells": [UPLOAD_WELL],
        "Tasks": [COPY],
        "Steps": [{"ID": f"s{i}", "Uses": "copy", "Inputs": [{"Slot": "in", "Edge": edges[i - 1]}],
                   "Outputs": [{"Slot": "out", "Edge": edges[i]}]} for i in range(1, steps + 1)],
    }}  # fmt: skip


# servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, port: int, log: Path, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            client = Client(HOST, port, timeout=2.0)
            try:
                if client.request("GET", "/healthz")[0] == 200:
                    return
            finally:
                client.close()
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} not healthy after {timeout:g}s:\n{log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown (and cProfile writes its file)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Server(NamedTuple):
    port: int
    pid: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server(argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start a server on a free loopback port; yield it; always stop it."""
    port = free_port()
    log = workdir / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*argv, "--port", str(port)], cwd=workdir, env={**os.environ, **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_healthy(proc, port, log)
        yield Server(port, proc.pid)
    finally:
        stop(proc)


def engine(
    workdir: Path,
    name: str,
    profile: Path | None = None,
    source: Path | None = None,
    settings: dict[str, str] | None = None,
) -> contextlib.AbstractContextManager[Server]:
    """An engine on a free port; `source`: a checkout whose flowengine package to run instead of this one;
    `settings`: more of its settings (`{"concurrency": "8"}`, as FLOWENGINE_* variables)."""
    data, flows = workdir / name, workdir / "flows"
    flows.mkdir(exist_ok=True)
    python = [sys.executable, *(["-m", "cProfile", "-o", str(profile / f"{name}.prof")] if profile else [])]
    argv = [*python, "-m", "flowengine.cli", "serve", "--host", HOST, "--data-dir", str(data),
            "--no-access-log", "--log-level", "warning"]  # fmt: skip
    # The benchmark posts flows with commands of their own (cp steps): its engines allow them.
    env = {"FLOWENGINE_FLOWS_DIR": str(flows), "FLOWENGINE_INLINE_COMMANDS": "true",
           **({"PYTHONPATH": str(source.resolve())} if source else {}),
           **{f"FLOWENGINE_{k.upper()}": v for k, v in (settings or {}).items()}}  # fmt: skip
    return server(argv, workdir, env)


def bare(workdir: Path, body: bytes) -> contextlib.AbstractContextManager[Server]:
    path = workdir / "status.json"
    path.write_bytes(body)
    return server([sys.executable, str(BENCH / "bare.py"), "--host", HOST, "--body", str(path)], workdir)


# measurements


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def p95(values: list[float]) -> float:
    return sorted(values)[math.ceil(0.95 * len(values)) - 1] if values else math.nan


def sqlite_txn_rate(path: Path, duration: float) -> float:
    """One-row transactions/s: BEGIN IMMEDIATE; INSERT (~1 KB blob); COMMIT, with db.py's settings."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, doc BLOB NOT NULL)")
    blob, count = os.urandom(1024), 0
    start = time.perf_counter()
    end = start + duration
    while time.perf_counter() < end:
        for _ in range(100):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO runs (id, doc) VALUES (?, ?)", (os.urandom(16).hex(), blob))
            conn.execute("COMMIT")
        count += 100
    elapsed = time.perf_counter() - start
    conn.close()
    return count / elapsed


class Load:
    """The load generator, in one long-lived process of its own."""

    def __init__(self, pool: ProcessPoolExecutor) -> None:
        self.pool = pool

    def rate(self, server: Server, request: bytes, conns: int, duration: float) -> dict:
        """Requests/s; also the CPU share the server and the load generator used (1.0 = one core)."""
        cpu = cpu_seconds(server.pid)
        result = self.pool.submit(run_load, HOST, server.port, request, conns, duration).result(timeout=duration + 60)
        result["server_cpu"] = (cpu_seconds(server.pid) - cpu) / result["seconds"]
        if result["failed"]:
            print(f"    ! {result['failed']} failed responses, first: {result['first_error']}", file=sys.stderr)
        return result


def cpu_note(result: dict) -> str:
    return f"(cpu: server {result['server_cpu']:.0%}, load generator {result['cpu']:.0%})"


def create_vs_sqlite(load: Load, srv: Server, workdir: Path, args: argparse.Namespace) -> dict:
    body = json.dumps({"Flow": {"DataWells": [UPLOAD_WELL]}}).encode()
    request = encode_request("POST", "/api/v1/flow/bench-create", f"{HOST}:{srv.port}", body, JSON)
    load.rate(srv, request, args.create_conns, args.warmup)
    rounds, txns = [], []
    for i in range(args.rounds):  # alternate, so drift on the machine hits both alike
        rounds.append(load.rate(srv, request, args.create_conns, args.duration))
        txns.append(sqlite_txn_rate(workdir / f"ceiling-{i}.db", args.duration))
        print(f"  round {i + 1}: {rounds[-1]['rate']:,.0f} runs/s {cpu_note(rounds[-1])}, {txns[-1]:,.0f} sqlite txn/s")
    runs = median([r["rate"] for r in rounds])
    return {"runs_per_s": runs, "sqlite_txn_per_s": median(txns), "ratio": runs / median(txns),
            "conns": args.create_conns, "rounds": {"engine": rounds, "sqlite_txn_per_s": txns}}  # fmt: skip


def status_vs_bare(load: Load, srv: Server, workdir: Path, args: argparse.Namespace) -> dict:
    client = Client(HOST, srv.port)
    try:
        doc = expect(client.request("POST", "/api/v1/flow/bench-status", json.dumps(chain_flow(1)).encode(), JSON), 201)
        target = f"/api/v1/flow/status/{json.loads(doc)['ID']}"
        body = expect(client.request("GET", target), 200)
    finally:
        client.close()
    with bare(workdir, body) as bare_srv:
        servers = {"engine": srv, "bare": bare_srv}
        requests = {k: encode_request("GET", target, f"{HOST}:{v.port}") for k, v in servers.items()}
        rounds: dict[str, list[dict]] = {"engine": [], "bare": []}
        for key in rounds:
            load.rate(servers[key], requests[key], args.status_conns, args.warmup)
        for i in range(args.rounds):  # alternate engine and bare
            for key in rounds:
                rounds[key].append(load.rate(servers[key], requests[key], args.status_conns, args.duration))
            e, b = rounds["engine"][-1], rounds["bare"][-1]
            print(f"  round {i + 1}: engine {e['rate']:,.0f} GET/s {cpu_note(e)},")
            print(f"           bare {b['rate']:,.0f} GET/s {cpu_note(b)}")
    engine_rate, bare_rate = (median([r["rate"] for r in rounds[k]]) for k in ("engine", "bare"))
    return {"engine_per_s": engine_rate, "bare_per_s": bare_rate, "ratio": engine_rate / bare_rate,
            "conns": args.status_conns, "document_bytes": len(body), "rounds": rounds}  # fmt: skip


def expect(answer: tuple[int, bytes], status: int) -> bytes:
    if answer[0] != status:
        raise RuntimeError(f"expected {status}, got {answer[0]}: {answer[1][:500]!r}")
    return answer[1]


def epoch(stamp: str) -> float:
    """An RFC 3339 millisecond timestamp of the run document, as epoch seconds."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def start_and_upload(client: Client, flow: dict) -> tuple[str, float]:
    """Create a run, PUT its upload; returns (status target, perf_counter when the PUT answered)."""
    doc = json.loads(expect(client.request("POST", "/api/v1/flow/bench-latency", json.dumps(flow).encode(), JSON), 201))
    url = doc["WaitingURLs"][0]
    put = urlsplit(url["PutURL"])
    expect(client.request("PUT", f"{put.path}?{put.query}", b"x" * 1024, url.get("Headers") or {}), 200)
    return f"/api/v1/flow/status/{doc['ID']}", time.perf_counter()


def wait_done(client: Client, target: str, pause: float, timeout: float = 10.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        doc = json.loads(client.request("GET", target)[1])
        if doc["Status"] in ("COMPLETE", "ERROR", "STOPPED"):
            if doc["Status"] != "COMPLETE":
                raise RuntimeError(f"run {doc['ID']} ended {doc['Status']}: {doc.get('Error')} {doc.get('Logs')}")
            return doc
        time.sleep(pause)
    raise RuntimeError(f"{target} not COMPLETE after {timeout:g}s")


def upload_latency(srv: Server, n: int) -> dict:
    """PUT answered -> status shows RUNNING/COMPLETE (tight polling), and landed -> step Started (server)."""
    client = Client(HOST, srv.port)
    observed, landed_to_started = [], []
    try:
        for _ in range(n):
            target, put_done = start_and_upload(client, chain_flow(1))
            for _ in range(10_000):
                doc = json.loads(client.request("GET", target)[1])
                if doc["Status"] in ("RUNNING", "COMPLETE"):
                    break
            else:
                raise RuntimeError(f"{target} did not advance: {doc['Status']}")
            observed.append((time.perf_counter() - put_done) * 1000)
            doc = wait_done(client, target, 0.002)
            landed = next(a["Landed"] for a in doc["Artifacts"] if a["EdgeName"] == "in")
            landed_to_started.append((epoch(doc["Steps"][0]["Started"]) - epoch(landed)) * 1000)
    finally:
        client.close()
    return {
        "put_to_advanced_ms": {"median": median(observed), "p95": p95(observed)},
        "landed_to_started_ms": {"median": median(landed_to_started), "p95": p95(landed_to_started)},
        "n": n,
    }


def hop_latency(srv: Server, n: int, steps: int) -> dict:
    """Next step's Started minus the previous step's Finished, over n runs of a chain of cp steps."""
    client = Client(HOST, srv.port)
    hops, durations = [], []
    try:
        for _ in range(n):
            target, _ = start_and_upload(client, chain_flow(steps))
            doc = wait_done(client, target, 0.005)
            times = [(epoch(s["Started"]), epoch(s["Finished"])) for s in doc["Steps"]]
            hops += [(nxt[0] - prev[1]) * 1000 for prev, nxt in itertools.pairwise(times)]
            durations += [(f - s) * 1000 for s, f in times]
    finally:
        client.close()
    return {"hop_ms": {"median": median(hops), "p95": p95(hops)}, "step_ms": {"median": median(durations),
            "p95": p95(durations)}, "hops": len(hops), "runs": n, "steps": steps}  # fmt: skip


# report


def table(results: dict) -> str:
    c, s, u, h = results["create"], results["status"], results["upload"], results["hop"]
    verdict = {True: "ok", False: "MISS"}
    rows = [
        ("figure (medians)", "engine", "ceiling", "ratio", "target"),
        (f"runs created /s ({c['conns']} conns)", f"{c['runs_per_s']:,.0f}",
         f"{c['sqlite_txn_per_s']:,.0f} sqlite txn/s", f"{c['ratio']:.1%}",
         f">= 3,000/s {verdict[c['runs_per_s'] >= 3000]}"),
        (f"status GET /s ({s['conns']} conns)", f"{s['engine_per_s']:,.0f}", f"{s['bare_per_s']:,.0f} bare GET/s",
         f"{s['ratio']:.1%}", f">= 50% {verdict[s['ratio'] >= 0.5]}"),
        ("PUT answered -> RUNNING seen", f"{u['put_to_advanced_ms']['median']:.2f} ms",
         f"p95 {u['put_to_advanced_ms']['p95']:.2f} ms", "", f"n={u['n']}"),
        ("upload landed -> step Started", f"{u['landed_to_started_ms']['median']:.0f} ms",
         f"p95 {u['landed_to_started_ms']['p95']:.0f} ms", "", "(server clock, 1 ms res.)"),
        ("step hop Finished -> Started", f"{h['hop_ms']['median']:.0f} ms", f"p95 {h['hop_ms']['p95']:.0f} ms", "",
         f"< 20 ms {verdict[h['hop_ms']['median'] < 20]} (n={h['hops']})"),
        ("one cp step, Started -> Finished", f"{h['step_ms']['median']:.0f} ms", f"p95 {h['step_ms']['p95']:.0f} ms",
         "", "(for scale)"),
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    m = results["machine"]
    head = (
        f"flowengine bench: {m['cores']} cores, Python {m['python']}, {results['settings']['rounds']} rounds x "
        f"{results['settings']['duration']:g}s per throughput figure, {results['seconds']:.0f}s in all\n"
        f"load average (1 min) before {m['loadavg_before']:.2f}, after {m['loadavg_after']:.2f}: "
        "other work on the machine skews every figure"
    )
    return "\n".join([head, *lines])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per throughput round (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per throughput figure; medians shown")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the rounds")
    parser.add_argument("--create-conns", type=int, default=32)
    parser.add_argument("--status-conns", type=int, default=64)
    parser.add_argument("--uploads", type=int, default=200, help="runs for the upload-to-advance latency")
    parser.add_argument("--chains", type=int, default=100, help="runs for the step hop latency")
    parser.add_argument("--chain-steps", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--profile", type=Path, help="run the engine under cProfile; .prof files go here")
    args = parser.parse_args()
    if args.profile:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict = {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": os.getloadavg()[0],
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="flowengine-bench-") as tmp, \
            ProcessPoolExecutor(1, mp_context=ctx) as pool:  # fmt: skip
        workdir, load = Path(tmp), Load(pool)
        print(f"machine: {os.cpu_count()} cores; work dir {workdir}")
        with engine(workdir, "throughput", args.profile) as srv:
            print(f"1. runs created/s vs SQLite one-row txn/s ({args.create_conns} conns)")
            results["create"] = create_vs_sqlite(load, srv, workdir, args)
            print(f"2. status GET/s, engine vs bare Starlette ({args.status_conns} conns)")
            results["status"] = status_vs_bare(load, srv, workdir, args)
        with engine(workdir, "latency", args.profile) as srv:
            print(f"3. upload-to-advance latency ({args.uploads} runs)")
            results["upload"] = upload_latency(srv, args.uploads)
            print(f"4. step hop latency ({args.chains} runs of {args.chain_steps} steps)")
            results["hop"] = hop_latency(srv, args.chains, args.chain_steps)
    results["seconds"] = time.monotonic() - started
    results["machine"]["loadavg_after"] = os.getloadavg()[0]
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
