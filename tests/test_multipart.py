"""`/api/v1/uploads/multipart/*`: large files in parts, on the embedded store and on S3, end to end."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from live import Server, admin, metric
from uploading import (
    GIB,
    MIB,
    MULTIPART,
    PART,
    Session,
    Stored,
    complete,
    content,
    md5_of,
    part_content,
    put_part,
    upload_parts,
)

from flowengine.stores.base import multipart_etag


def test_a_file_goes_up_in_parts_resumes_and_completes_to_its_presigned_key(serve_files):
    server, stored = serve_files()
    session = Session(server, "parts")
    size = 3 * PART + 3 * MIB  # four parts, the last one shorter
    key = session.presign(size)
    initiated = session.initiate(key, size)
    assert (initiated["storage_key"], initiated["part_size"], initiated["part_count"]) == (key, PART, 4)

    etags = upload_parts(session, initiated, size, [1, 3])
    # The client stops here, and resumes: the upload says which parts it holds.
    described = session.client.get(f"{MULTIPART}/{initiated['upload_id']}/parts").json()
    assert [(p["part_number"], p["size"]) for p in described["parts"]] == [(1, PART), (3, PART)]
    assert {p["part_number"]: f'"{p["etag"]}"' for p in described["parts"]} == etags
    etags |= upload_parts(session, initiated, size, [2, 4])

    done = complete(session, initiated["upload_id"], etags)
    assert done.status_code == 200, done.text
    assert (done.json()["file_key"], done.json()["file_size"]) == (key, size)
    assert stored.md5(key) == md5_of(content(size))
    assert stored.uploads_under_way() == 0
    # Done: the upload is gone, and the key is taken.
    assert session.client.get(f"{MULTIPART}/{initiated['upload_id']}/parts").status_code == 404
    assert session.post("initiate", storage_key=key, file_size=size).status_code == 412


def test_a_part_takes_only_its_signed_size_and_a_part_sent_again_replaces_it(serve_files):
    server, stored = serve_files()
    session = Session(server, "sizes")
    size = PART + MIB
    key = session.presign(size)
    initiated = session.initiate(key, size)
    urls = session.part_urls(initiated["upload_id"], [1, 2])
    assert urls[1]["upload_headers"] == {"Content-Length": str(PART)}
    assert urls[2]["upload_headers"] == {"Content-Length": str(MIB)}
    assert httpx.put(urls[2]["upload_url"], content=b"x" * (MIB - 1)).status_code in (400, 403)  # another length
    tampered = urls[2]["upload_url"].replace("partNumber=2", "partNumber=1")
    assert httpx.put(tampered, content=b"x" * MIB, headers=urls[2]["upload_headers"]).status_code == 403

    first = put_part(urls[1], b"a" * PART).headers["ETag"]
    second = put_part(urls[1], part_content(size, PART, 1)).headers["ETag"]
    last = put_part(urls[2], part_content(size, PART, 2)).headers["ETag"]
    assert first != second
    never = complete(session, initiated["upload_id"], {1: "0" * 32, 2: last})
    assert (never.status_code, never.json()["field"]) == (400, "parts[0].etag")
    assert second.strip('"') in never.json()["error_message"]
    if stored.minio is None:
        # The embedded store keeps a re-sent part's last version only. SeaweedFS keeps each (its ListParts
        # lists both) and would assemble the one named: there, naming the first is not an error.
        stale = complete(session, initiated["upload_id"], {1: first, 2: last})
        assert (stale.status_code, stale.json()["field"]) == (400, "parts[0].etag")
    assert complete(session, initiated["upload_id"], {1: second, 2: last}).status_code == 200
    assert stored.md5(key) == md5_of(content(size))


def test_an_aborted_upload_leaves_nothing_and_the_key_can_be_sent_again(serve_files):
    server, stored = serve_files()
    session = Session(server, "abort")
    size = PART + MIB
    key = session.presign(size)
    initiated = session.initiate(key, size)
    upload_parts(session, initiated, size, [1])
    assert stored.uploads_under_way() == 1
    assert session.post("abort", upload_id=initiated["upload_id"]).status_code == 204
    assert stored.uploads_under_way() == 0
    assert session.post("abort", upload_id=initiated["upload_id"]).status_code == 404
    again = session.initiate(key, size)
    etags = upload_parts(session, again, size, [1, 2])
    assert complete(session, again["upload_id"], etags).status_code == 200
    assert stored.md5(key) == md5_of(content(size))


def test_an_incomplete_upload_is_aborted_by_the_sweeper(serve_files):
    server, stored = serve_files(multipart_ttl=2, sweep_interval=0.2)
    session = Session(server, "sweep")
    size = PART + MIB
    initiated = session.initiate(session.presign(size), size)
    upload_parts(session, initiated, size, [1])
    deadline = time.monotonic() + 15
    while stored.uploads_under_way() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stored.uploads_under_way() == 0
    assert session.client.get(f"{MULTIPART}/{initiated['upload_id']}/parts").status_code == 404


def test_only_a_users_session_may_send_parts_and_only_for_its_team(start_server):
    server = start_server(multipart_part_size=PART)
    session = Session(server, "mine")
    other = Session(server, "theirs", "bob@example.com")
    size = PART + 1
    key = session.presign(size)
    for kind in ("integration", "device", "agent"):
        user = ("--user", "ann@example.com") if kind == "device" else ()
        credential = admin(server, "keys", "create", "--team", "mine", "--kind", kind, *user)
        answer = httpx.post(f"{server.url}{MULTIPART}/initiate", json={"storage_key": key, "file_size": size},
                            headers={"Authorization": f"Bearer {credential}"})  # fmt: skip
        assert answer.status_code == 401, (kind, answer.text)
    assert httpx.post(f"{server.url}{MULTIPART}/initiate", json={}).status_code == 401  # even on an open engine
    missing_team = httpx.post(f"{server.url}{MULTIPART}/initiate", json={"storage_key": key, "file_size": size},
                              headers={"Authorization": session.headers["Authorization"]})  # fmt: skip
    assert missing_team.status_code == 400

    # Another team's key is unknown to it; another team's upload is not found.
    theirs = other.post("initiate", storage_key=key, file_size=size)
    assert (theirs.status_code, theirs.json()["field"]) == (400, "storage_key")
    upload_id = session.initiate(key, size)["upload_id"]
    assert other.post("presign-parts", upload_id=upload_id, part_numbers=[1]).status_code == 404
    assert other.client.get(f"{MULTIPART}/{upload_id}/parts").status_code == 404
    assert other.post("abort", upload_id=upload_id).status_code == 404
    assert other.post("complete", upload_id=upload_id, parts=[{"part_number": 1, "etag": "x"}]).status_code == 404
    assert session.client.get(f"{MULTIPART}/{upload_id}/parts").status_code == 200


BAD_REQUESTS = [
    ("initiate", {"file_size": 1}, 400, "storage_key"),
    ("initiate", {"storage_key": "KEY", "file_size": 0}, 400, "file_size"),
    ("initiate", {"storage_key": "KEY", "file_size": "big"}, 400, "file_size"),
    ("initiate", {"storage_key": "KEY", "file_size": PART}, 400, "file_size"),  # not the presigned size
    ("initiate", {"storage_key": "inputs/elsewhere", "file_size": PART + 1}, 400, "storage_key"),
    ("initiate", {"storage_key": "KEY", "file_size": PART + 1}, 409, "storage_key"),  # one under way already
    ("presign-parts", {"upload_id": "UPLOAD", "part_numbers": [3]}, 400, "part_numbers[0]"),
    ("presign-parts", {"upload_id": "UPLOAD", "part_numbers": [0]}, 400, "part_numbers[0]"),
    ("presign-parts", {"upload_id": "UPLOAD", "part_numbers": []}, 400, "part_numbers"),
    ("presign-parts", {"upload_id": "UPLOAD", "part_numbers": [1], "storage_key": "x"}, 400, "storage_key"),
    ("presign-parts", {"upload_id": "nope", "part_numbers": [1]}, 404, "upload_id"),
    ("complete", {"upload_id": "UPLOAD", "parts": [{"part_number": 1, "etag": "x"}]}, 400, "parts"),
    ("complete", {"upload_id": "UPLOAD", "parts": [{"part_number": n, "etag": "x"} for n in (2, 1)]}, 400, "parts"),
    ("complete", {"upload_id": "UPLOAD", "parts": [{"part_number": n, "etag": "x"} for n in (1, 2)]}, 400, "parts[0]"),
    ("complete", {"upload_id": "UPLOAD"}, 400, "parts"),
    ("abort", {}, 400, "upload_id"),
]


def test_bad_requests_are_4xx_naming_the_field(start_server):
    session = Session(start_server(multipart_part_size=PART), "fields")
    key = session.presign(PART + 1)
    upload_id = session.initiate(key, PART + 1)["upload_id"]
    for action, body, status, field in BAD_REQUESTS:
        filled = {k: upload_id if v == "UPLOAD" else key if v == "KEY" else v for k, v in body.items()}
        answer = session.post(action, **filled)
        assert (answer.status_code, answer.json()["field"]) == (status, field), (action, body, answer.text)


def test_a_file_over_the_single_put_limit_is_presigned_for_parts_and_refused_whole(server: Server):
    session = Session(server, "limits")
    size = 600_000_000  # over max_upload_size (500 MB)
    answer = session.client.post("/api/v1/r/files/presign", json={"file_name": "a", "file_size": size,
                                                                   "content_type": "text/plain"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    url = urlsplit(answer.json()["upload_url"])
    # The headers alone: the engine refuses the body before it comes.
    conn = http.client.HTTPConnection(url.netloc, timeout=10)
    conn.putrequest("PUT", f"{url.path}?{url.query}")
    for name, value in answer.json()["upload_headers"].items():
        conn.putheader(name, value)
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()
    assert session.initiate(answer.json()["file_key"], size)["part_count"] == 6


@pytest.mark.slow
def test_a_file_of_several_gib_goes_through_with_the_engines_memory_flat(serve_files):
    """3 GiB in 100 MiB parts (the default), made as they are sent. Every MiB starts with its offset: reading
    those back at each part's ends shows the parts assembled in place, and the object's ETag (S3's digest
    of the parts' digests) shows it was made of exactly the bytes each part's PUT answered for."""
    server, stored = serve_files(multipart_part_size=104_857_600)
    session = Session(server, "big")
    size = 3 * GIB + 123
    key = session.presign(size)
    initiated = session.initiate(key, size)
    part_size, count = initiated["part_size"], initiated["part_count"]
    assert (part_size, count) == (104_857_600, 31)
    etags = upload_parts(session, initiated, size, list(range(1, count + 1)))
    done = complete(session, initiated["upload_id"], etags)
    assert done.status_code == 200, done.text
    try:
        assert stored.info(key) == (size, multipart_etag([bytes.fromhex(etags[n].strip('"')) for n in range(1, 32)]))
        for start in range(0, size, part_size):
            for offset in (start, min(start + part_size, size - 1) // MIB * MIB):
                assert stored.read(key, offset, 8) == offset.to_bytes(8, "big"), offset
        with server.client() as client:
            rss = metric(client, "process_resident_memory_bytes")
        assert rss is not None and rss < 400 * MIB, rss  # parts stream through the engine, or not through it at all
    finally:
        stored.delete(key)


def test_the_readmes_script_as_printed_sends_a_file_in_parts(start_server, tmp_path: Path):
    server = start_server(multipart_part_size=PART)
    session = Session(server, "readme")
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("\n## Large files: multipart uploads\n", 1)[1].split("\n## ", 1)[0]
    (script,) = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    size = 2 * PART + 12_345
    scan = tmp_path / "readme"
    scan.mkdir()
    with open(scan / "scan.tif", "wb") as f:
        for chunk in content(size):
            f.write(chunk)
    token = session.headers["Authorization"].removeprefix("Bearer ")
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script.replace("127.0.0.1:1234", server.url[7:])],
                          cwd=scan, env={**os.environ, "TOKEN": token, "TEAM": session.team}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    completed = json.loads(done.stdout)
    assert completed["file_size"] == size and not list(scan.glob("part.*"))
    assert Stored(server, None).md5(completed["file_key"]) == md5_of(content(size))
