"""Server CPU per request of two checkouts of the engine, under the same load, in alternating rounds.

    git worktree add /tmp/before HEAD~3          # any older checkout
    python bench/compare.py /tmp/before .        # creations, as run.py's figure 1
    python bench/compare.py /tmp/before . --load status --rounds 8

Requests per second on a shared machine move with its neighbours, often by a third. The server's
own CPU time per request (user + system, from /proc) moves much less, and alternating the two
servers' rounds makes what drift remains hit both alike. Prints the minimum and the median.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from load import JSON, encode_request, run_load
from run import HOST, UPLOAD_WELL, cpu_seconds, engine
from spy import status_target


def request_for(load: str, port: int) -> bytes:
    if load == "status":
        return encode_request("GET", status_target(port), f"{HOST}:{port}")
    body = json.dumps({"Flow": {"DataWells": [UPLOAD_WELL]}}).encode()
    return encode_request("POST", "/api/v1/flow/bench-compare", f"{HOST}:{port}", body, JSON)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs=2, type=Path, help="two source trees, each with a flowengine/ package")
    parser.add_argument("--load", choices=["create", "status"], default="create")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    conns = 32 if args.load == "create" else 64
    samples: list[list[float]] = [[], []]
    rates: list[list[float]] = [[], []]
    with tempfile.TemporaryDirectory(prefix="flowengine-compare-") as tmp, contextlib.ExitStack() as stack, \
            ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # fmt: skip
        servers = [stack.enter_context(engine(Path(tmp), f"engine-{i}", source=src))
                   for i, src in enumerate(args.checkouts)]  # fmt: skip
        requests = [request_for(args.load, srv.port) for srv in servers]
        for srv, request in zip(servers, requests, strict=True):
            pool.submit(run_load, HOST, srv.port, request, conns, 1.0).result(timeout=60)  # warm up
        for r in range(args.rounds):
            for i in (0, 1) if r % 2 == 0 else (1, 0):
                before = cpu_seconds(servers[i].pid)
                result = pool.submit(run_load, HOST, servers[i].port, requests[i], conns, args.seconds).result(
                    timeout=args.seconds + 60
                )
                samples[i].append((cpu_seconds(servers[i].pid) - before) / max(result["ok"], 1) * 1e6)
                rates[i].append(result["rate"])
    print(f"{args.load}, {conns} connections, {args.rounds} rounds of {args.seconds:g}s each, alternating")
    print(f"{'checkout':40} {'CPU us/request: min':>20} {'median':>7} {'requests/s: median':>19}")
    for src, cpu, rate in zip(args.checkouts, samples, rates, strict=True):
        print(f"{src!s:40} {min(cpu):20.0f} {statistics.median(cpu):7.0f} {statistics.median(rate):19,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
