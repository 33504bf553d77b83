"""A 1 GiB upload through flowengine.client: streamed from disk with progress, in constant memory.

The upload runs in a child process whose peak resident memory is read at its end: VmHWM in
/proc/self/status, the high-water mark of this process's own memory (its ru_maxrss would not do:
on Linux it keeps the parent's peak across fork and exec, here pytest's). A client that held the
file would need more than a gigabyte. The file is sparse (created at once)
with marks written at its start, middle and end, so the engine's MD5 of what it stored checks that
every byte arrived in its place. Its data dir and the file are deleted when the test ends.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from live import Server

GIB = 1 << 30
MARKS = {0: b"start of the big file", GIB // 2: b"the middle", GIB - 8: b"the end!"}
RSS_LIMIT = 100 << 20  # bytes: far below the file's size; Python with httpx, msgspec and the client take ~45 MiB

UPLOADER = textwrap.dedent("""
    import json, sys
    from flowengine.client import Client

    url, path = sys.argv[1], sys.argv[2]
    calls, last, backwards = 0, 0, False

    def progress(done, total):
        global calls, last, backwards
        calls, backwards, last = calls + 1, backwards or done < last, done

    flow = {"DataWells": [{"Edge": "big", "Source": "upload", "Key": "${RUN_ID}/big.bin"}]}
    with Client(url) as client:
        run = client.start("big", definition=flow)
        client.upload(run, "big", path, progress=progress)
        run = client.wait(run.id, timeout=300)
    art = run.artifact("big")
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    peak = int(status["VmHWM"].split()[0]) * 1024  # kB
    print(json.dumps({"status": run.status, "size": art.size, "etag": art.etag, "peak": peak, "calls": calls,
                      "last": last, "backwards": backwards}))
""")


def test_a_1_gib_upload_streams_from_disk_in_constant_memory(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(GIB)
        for offset, mark in MARKS.items():
            f.seek(offset)
            f.write(mark)
    md5 = hashlib.md5(usedforsecurity=False)
    with big.open("rb") as f:
        while chunk := f.read(8 << 20):
            md5.update(chunk)
    server = start_server(max_upload_size=2 * GIB)
    try:
        done = subprocess.run([sys.executable, "-c", UPLOADER, server.url, str(big)], capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert (result["status"], result["size"]) == ("COMPLETE", GIB)
        assert result["etag"] == md5.hexdigest()  # the engine stored exactly these bytes
        assert result["peak"] < RSS_LIMIT, f"peak RSS {result['peak'] >> 20} MiB"
        assert result["last"] == GIB and not result["backwards"] and result["calls"] > 1000  # progress, chunk by chunk
    finally:
        server.stop()
        big.unlink()
        shutil.rmtree(server.data_dir, ignore_errors=True)
