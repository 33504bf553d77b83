"""Where the engine's time goes under one of run.py's loads, sampled with py-spy (pip install py-spy).

    python bench/spy.py create     # POSTs of an inline flow, as run.py's figure 1
    python bench/spy.py status     # GETs of one run's status, as run.py's figure 2
    python bench/spy.py task       # tasks submitted through the workflow/task API, as bench/tasks.py

Starts the engine as run.py does, drives the load from its own process, records the server
with `py-spy record --format raw` meanwhile, and prints the functions with the most samples:
by self time (the function itself was on top) and by total time (anywhere on the stack).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from load import JSON, Client, encode_request, run_load
from run import HOST, UPLOAD_WELL, chain_flow, engine, expect
from tasks import SLUG, bearer, task_engine


def status_target(port: int) -> str:
    client = Client(HOST, port)
    try:
        doc = expect(client.request("POST", "/api/v1/flow/bench-status", json.dumps(chain_flow(1)).encode(), JSON), 201)
        return f"/api/v1/flow/status/{json.loads(doc)['ID']}"
    finally:
        client.close()


def short(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `func (file.py)`: one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rstrip(')').rsplit(':', 1)[0].rsplit('/', 1)[-1]})" if where else name


def _idle_worker(frames: list[str]) -> bool:
    """A thread-pool worker waiting for work (shown with --native): not CPU the server spends."""
    return any(f.startswith("_worker (thread.py)") for f in frames) and any("SimpleQueue_get" in f for f in frames)


def top(stacks: Path, count: int) -> str:
    """Tables of the functions with the most samples in py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [short(f) for f in stack.split(";") if f]
        if not frames or _idle_worker(frames):
            continue
        samples = int(n)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            anywhere[frame] += samples
    out = [f"{total} samples"]
    for title, counter in (("self", own), ("total (inclusive)", anywhere)):
        out.append(f"\n-- top {count} by {title} --")
        out += [f"{n / total:6.1%}  {name}" for name, n in counter.most_common(count)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("load", choices=["create", "status", "task"])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--conns", type=int, help="default: 64 for status, 32 otherwise")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--native", action="store_true",
                        help="C frames too (sockets, SQLite, the GC); pauses the server for each sample")  # fmt: skip
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        sys.exit("py-spy is not installed: pip install py-spy")
    conns = args.conns or (64 if args.load == "status" else 32)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flowengine-profile-")))
        pool = stack.enter_context(ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")))
        if args.load == "task":
            srv, key = stack.enter_context(task_engine(workdir))
            body = json.dumps({"parameters": {"label": "bench", "seconds": 600}}).encode()
            request = encode_request("POST", f"/api/v1/r/workflows/slug/{SLUG}/run", f"{HOST}:{srv.port}", body,
                                     {**JSON, **bearer(key)})  # fmt: skip
        elif args.load == "create":
            srv = stack.enter_context(engine(workdir, "profile"))
            body = json.dumps({"Flow": {"DataWells": [UPLOAD_WELL]}}).encode()
            request = encode_request("POST", "/api/v1/flow/bench-profile", f"{HOST}:{srv.port}", body, JSON)
        else:
            srv = stack.enter_context(engine(workdir, "profile"))
            request = encode_request("GET", status_target(srv.port), f"{HOST}:{srv.port}")
        pool.submit(run_load, HOST, srv.port, request, conns, 1.0).result(timeout=60)  # warm up
        loaded = pool.submit(run_load, HOST, srv.port, request, conns, args.seconds + 1.0)
        raw = workdir / "stacks.txt"
        subprocess.run(["py-spy", "record", "--pid", str(srv.pid), "--duration", str(int(args.seconds)),
                        "--rate", "250", "--format", "raw", "--output", str(raw),
                        "--native" if args.native else "--nonblocking"],
                       check=True, capture_output=True, timeout=args.seconds + 60)  # fmt: skip
        result = loaded.result(timeout=args.seconds + 60)
        print(f"{args.load}: {result['rate']:,.0f} req/s over {conns} conns while sampled ({result['failed']} failed)")
        print(top(raw, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
