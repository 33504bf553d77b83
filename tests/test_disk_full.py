"""A full disk under the real server: 507 with a clear message, nothing half-stored, and normal
service once space is freed. The data dir is a 4 MB tmpfs, so the tests need root (to mount it)."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from live import Server

FLOW = "DataWells:\n  - Edge: file\n    Source: upload\n"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the data dir needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(path: Path) -> None:
    """Write `path` until the disk is full."""
    with open(path, "wb", buffering=0) as f:
        for block in (1 << 16, 1 << 12):
            try:
                while True:
                    f.write(bytes(block))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


def files_under(*dirs: Path) -> list[Path]:
    return [p for d in dirs if d.exists() for p in d.rglob("*") if p.is_file()]


def assert_full(answer: httpx.Response) -> None:
    assert answer.status_code == 507, answer.text
    assert answer.json()["Code"] == "insufficient_storage"
    assert "disk is full" in answer.json()["Message"]


def test_a_full_disk_answers_507_keeps_nothing_half_stored_and_service_resumes(
    small_disk: Path, start_server: Callable[..., Server], flows_dir: Path
) -> None:
    (flows_dir / "upload.yaml").write_text(FLOW)
    server = start_server(data_dir=small_disk / "data")
    data = server.data_dir
    with server.client() as client:
        run = client.post("/api/v1/flow/upload").json()
        [well] = run["WaitingURLs"]
        (small_disk / "reserve").write_bytes(bytes(6 * 4096))
        fill(small_disk / "filler")

        created = 1
        for _ in range(500):  # the database's log has some room left: creations succeed until it is used up
            answer = client.post("/api/v1/flow/upload")
            if answer.status_code != 201:
                break
            created += 1
        assert_full(answer)
        assert client.get("/api/v1/flow/runs").json()["Total"] == created  # the refused one is not there

        # Room for the upload and its metadata, none for the database: the stored object is taken back.
        (small_disk / "reserve").unlink()
        assert_full(httpx.put(well["PutURL"], content=b"u" * 20_000))
        # Room for neither: spooling the body fails.
        assert_full(client.post(f"/api/v1/upload/{run['ID']}/file", content=b"d" * 100_000))
        assert client.get(f"/api/v1/flow/status/{run['ID']}").json()["Status"] == "WAITING"
        assert files_under(data / "objects", data / "meta", data / "tmp") == []

        (small_disk / "filler").unlink()
        body = b"after" * 4000
        assert httpx.put(well["PutURL"], content=body).status_code == 200
        doc = client.get(f"/api/v1/flow/status/{run['ID']}").json()
        assert doc["Status"] == "COMPLETE"
        assert doc["Artifacts"][0]["ETag"] == hashlib.md5(body).hexdigest()
        assert httpx.get(doc["Artifacts"][0]["GetURL"]).content == body
        assert client.post("/api/v1/flow/upload").status_code == 201
        assert client.get("/api/v1/flow/runs").json()["Total"] == created + 1
