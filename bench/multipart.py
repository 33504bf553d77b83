"""A multi-GiB file up to each files store: one PUT beside a multipart upload of the same size.

    python bench/multipart.py                 # 2 GiB; some minutes on a busy 2-core machine
    python bench/multipart.py --size 1GiB --parallel 1 4

For each store (the embedded store, S3 on SeaweedFS) an engine is started with that store as its
files store (`max_upload_size` raised so the single PUT is taken). The file is random bytes in a
temp folder, beside its parts as files of their own (the disk holds it three times over: 6 GiB for
the default size); curl sends them (streamed from disk, a client that costs little next to the
server), then:
  single PUT  - `POST /api/v1/r/files/presign`, one PUT of the whole file to its `upload_url`;
  multipart   - a presign, `initiate`, `presign-parts`, every part PUT (100 MiB parts, by --parallel
                threads at once), `complete`: the time from the first call to `complete`'s answer.
`complete` is also timed alone: on the embedded store it appends the parts into the object (the
kernel's copy_file_range), on S3 it is SeaweedFS's CompleteMultipartUpload. Rates are MiB/s of the
file. The engine's resident memory (`process_resident_memory_bytes`) is read after each store's
uploads. Objects are deleted after each measurement. Everything runs on loopback and is stopped at
the end; SeaweedFS comes from tests/s3server.py, the engines from tests/live.py.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import live
import s3server
from uploading import MIB, Session, Stored, complete, start_on

PART_SIZE = 104_857_600
CREDS = {"access_key": "benchkey", "secret_key": "benchsecret123"}


def size_of(text: str) -> int:
    units = {"GiB": 1024 * MIB, "MiB": MIB}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text.removesuffix(unit)) * factor)
    return int(text)


def curl_put(url: str, path: Path, headers: dict[str, str]) -> str:
    """PUT a file with curl (streamed from disk; the client costs little next to the server); its ETag."""
    args = ["curl", "-sS", "--fail-with-body", "-T", str(path), "-D", "-", "-o", "/dev/null", url]
    for name, value in headers.items():
        if name.lower() != "content-length":  # curl sends the file's own length
            args += ["-H", f"{name}: {value}"]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return next((line.split(":", 1)[1].strip() for line in done.stdout.splitlines()
                 if line.lower().startswith("etag:")), "")  # fmt: skip


def single_put(session: Session, path: Path) -> tuple[float, str]:
    size = path.stat().st_size
    body = {"file_name": "whole.bin", "file_size": size, "content_type": "application/octet-stream"}
    presigned = session.client.post("/api/v1/r/files/presign", json=body).json()
    start = time.perf_counter()
    curl_put(presigned["upload_url"], path, presigned["upload_headers"])
    return time.perf_counter() - start, presigned["file_key"]


def multipart(session: Session, parts: list[Path], parallel: int) -> tuple[float, float, str]:
    size = sum(p.stat().st_size for p in parts)
    start = time.perf_counter()
    key = session.presign(size)
    initiated = session.initiate(key, size)
    assert initiated["part_count"] == len(parts)
    numbers = list(range(1, len(parts) + 1))
    urls = session.part_urls(initiated["upload_id"], numbers)

    def send(n: int) -> tuple[int, str]:
        return n, curl_put(urls[n]["upload_url"], parts[n - 1], urls[n]["upload_headers"])

    with ThreadPoolExecutor(parallel) as pool:
        etags = dict(pool.map(send, numbers))
    completing = time.perf_counter()
    done = complete(session, initiated["upload_id"], etags)
    assert done.status_code == 200, done.text
    end = time.perf_counter()
    return end - start, end - completing, key


def make_file(folder: Path, size: int) -> tuple[Path, list[Path]]:
    """The file (random bytes: no store can shrink them) and its parts as files of their own."""
    whole = folder / "whole.bin"
    with open(whole, "wb") as out:
        for _ in range(size // MIB):
            out.write(os.urandom(MIB))
        out.write(os.urandom(size % MIB))
    parts = []
    with open(whole, "rb") as src:
        for n in range(1, -(-size // PART_SIZE) + 1):
            part = folder / f"part.{n:05d}"
            with open(part, "wb") as out:
                out.write(src.read(PART_SIZE))  # one part (100 MiB) at a time
            parts.append(part)
    return whole, parts


def measure(kind: str, whole: Path, parts: list[Path], parallels: list[int], s3: dict[str, Any] | None,
            tmp: Path) -> list[str]:  # fmt: skip
    started: list[live.Server] = []

    def start_server(config: str | None = None, **settings: Any) -> live.Server:
        server = live.Server(tmp / f"data-{kind}", tmp / "flows", config=config, **settings).start()
        started.append(server)
        return server

    (tmp / "flows").mkdir(exist_ok=True)
    rows = []
    try:
        size = whole.stat().st_size
        server = start_on(kind, start_server, tmp, s3, multipart_part_size=PART_SIZE, max_upload_size=size + 1)
        stored = Stored(server, s3)
        session = Session(server, f"bench{kind}")
        mib = size / MIB
        elapsed, key = single_put(session, whole)
        stored.delete(key)
        rows.append(f"| {kind} | single PUT | {mib:.0f} MiB | {elapsed:.1f} s | {mib / elapsed:.0f} MiB/s | |")
        for parallel in parallels:
            elapsed, completing, key = multipart(session, parts, parallel)
            stored.delete(key)
            rows.append(f"| {kind} | multipart, {parallel} at once | {mib:.0f} MiB | {elapsed:.1f} s | "
                        f"{mib / elapsed:.0f} MiB/s | {completing:.2f} s |")  # fmt: skip
        with server.client() as client:
            rss = live.metric(client, "process_resident_memory_bytes") or 0
        rows.append(f"| {kind} | engine memory after | | | {rss / MIB:.0f} MiB RSS | |")
    finally:
        for server in started:
            server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="2GiB", help="the file's size: bytes, or with MiB / GiB (default 2GiB)")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4], help="parts sent at once (default 1 4)")
    parser.add_argument("--stores", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    args = parser.parse_args()
    size = size_of(args.size)
    with tempfile.TemporaryDirectory(prefix="bench-multipart-") as tmp:
        whole, parts = make_file(Path(tmp), size)
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print("| store | upload | size | time | rate | complete |")
        print("| --- | --- | --- | --- | --- | --- |")
        for kind in args.stores:
            if kind == "s3":
                with s3server.serve(bucket="bench", **CREDS) as s3:
                    rows = measure(kind, whole, parts, args.parallel, s3, Path(tmp))
            else:
                rows = measure(kind, whole, parts, args.parallel, None, Path(tmp))
            print("\n".join(rows), flush=True)
        print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
