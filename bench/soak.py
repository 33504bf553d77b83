"""Sustained run creation: does anything grow or slow down over time?

    python bench/soak.py                   # 60 s of creations at 32 connections, a line every 6 s
    python bench/soak.py --seconds 600     # longer

Each line: runs created/s over the interval, the SQLite WAL and database file sizes, and the
server's resident memory. The WAL should stay flat (checkpoints let it start over) and so should
the memory (the run and document caches are bounded); the rate should not fall as the database
grows. run.py's 3 s rounds are too short to show any of these.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from load import JSON, encode_request, run_load
from run import HOST, UPLOAD_WELL, engine


def megabytes(path: Path) -> float:
    return path.stat().st_size / 1e6 if path.exists() else 0.0


def resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=6.0)
    parser.add_argument("--conns", type=int, default=32)
    args = parser.parse_args()
    body = json.dumps({"Flow": {"DataWells": [UPLOAD_WELL]}}).encode()
    tmp = Path(tempfile.mkdtemp(prefix="flowengine-soak-"))
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool, \
                engine(tmp, "soak") as srv:  # fmt: skip
            db = tmp / "soak" / "flowengine.db"
            request = encode_request("POST", "/api/v1/flow/bench-soak", f"{HOST}:{srv.port}", body, JSON)
            print(f"{'time':>6} {'runs/s':>8} {'failed':>7} {'WAL MB':>7} {'DB MB':>7} {'RSS MB':>7}")
            elapsed = 0.0
            while elapsed < args.seconds:
                result = pool.submit(run_load, HOST, srv.port, request, args.conns, args.interval).result(
                    timeout=args.interval + 60
                )
                elapsed += args.interval
                wal = megabytes(db.with_name(db.name + "-wal"))
                print(f"{elapsed:5.0f}s {result['rate']:8,.0f} {result['failed']:7} {wal:7.1f} {megabytes(db):7.1f} "
                      f"{resident_mb(srv.pid):7.0f}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
