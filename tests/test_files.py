"""`POST /api/v1/r/files/presign`: files for a run's `file` parameters, on the embedded store and S3."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import Server, make_key

from flowengine.runtime.files import MAX_NAME, safe_name

PHOTO = b"\x89PNG\r\n\x1a\n" + b"pixels" * 100


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def presign(client: httpx.Client, key: str, **fields: Any) -> httpx.Response:
    body = {"file_name": "photo.png", "file_size": len(PHOTO), "content_type": "image/png", **fields}
    return client.post("/api/v1/r/files/presign", json=body, headers=bearer(key))


def check_upload_rules(answer: httpx.Response) -> str:
    """The presigned PUT takes the file only with its signed headers, and only once; returns the key."""
    assert answer.status_code == 200, answer.text
    presigned = answer.json()
    assert presigned["upload_headers"] == {"Content-Length": str(len(PHOTO)), "If-None-Match": "*"}
    url, headers = presigned["upload_url"], presigned["upload_headers"]
    assert httpx.put(url, content=PHOTO).status_code == 403  # without the signed headers
    assert httpx.put(url, content=PHOTO[:-1], headers={"If-None-Match": "*"}).status_code == 403  # another length
    assert httpx.put(url, content=PHOTO, headers=headers).status_code == 200
    assert httpx.put(url, content=PHOTO, headers=headers).status_code == 412  # no overwrite
    return presigned["file_key"]


def test_a_presigned_file_is_taken_once_with_its_signed_headers(server: Server):
    key = make_key(server, "files")
    with server.client() as client:
        file_key = check_upload_rules(presign(client, key))
    team = next(line.split()[0] for line in admin_teams(server) if line.endswith(" files"))
    assert file_key.startswith(f"inputs/{team}/") and file_key.endswith("/photo.png")
    stored = server.data_dir / "objects" / "default" / file_key
    assert stored.read_bytes() == PHOTO


def admin_teams(server: Server) -> list[str]:
    from live import admin

    return admin(server, "teams", "list").splitlines()


@pytest.mark.parametrize(
    ("fields", "status", "field"),
    [
        ({"file_size": "big"}, 400, "file_size"),
        ({"file_size": -1}, 400, "file_size"),
        ({"file_size": 6 * 1024**4}, 400, "file_size"),  # over max_multipart_size, the 5 TiB default
        ({"content_type": "not a type"}, 400, "content_type"),
        ({"file_name": ""}, 400, "file_name"),
    ],
)
def test_bad_fields_are_400_naming_the_field_in_the_references_shape(server: Server, fields, status, field):
    key = make_key(server, "fields")
    with server.client() as client:
        answer = presign(client, key, **fields)
        assert answer.status_code == status, answer.text
        body = answer.json()
        assert set(body) == {"error_message", "error_code", "field"} and body["field"] == field


def test_missing_fields_and_credentials(server: Server):
    key, agent = make_key(server, "missing"), make_key(server, "missing", "agent")
    with server.client() as client:
        answer = client.post("/api/v1/r/files/presign", json={"file_name": "a.png"}, headers=bearer(key))
        assert answer.status_code == 400 and answer.json()["field"] == "file_size"
        assert client.post("/api/v1/r/files/presign", json={}).status_code == 401  # even on an open engine
        assert presign(client, agent).status_code == 401


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("photo.png", "photo.png"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\my photo (1).PNG", "my_photo_1_.PNG"),
        (".hidden", "hidden"),
        ("ünïcödé.jpg", "_n_c_d_.jpg"),
        ("", "file"),
        ("a" * 300 + ".tar.gz", "a" * (MAX_NAME - 3) + ".gz"),
    ],
)
def test_file_names_are_made_safe_for_keys(name: str, safe: str):
    assert safe_name(name) == safe and len(safe_name(name)) <= MAX_NAME


def test_files_are_deleted_after_the_input_retention(start_server):
    server = start_server(input_retention=1, sweep_interval=0.2)
    key = make_key(server, "short")
    with server.client() as client:
        file_key = check_upload_rules(presign(client, key))
    stored = server.data_dir / "objects" / "default" / file_key
    deadline = time.monotonic() + 10
    while stored.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not stored.exists()


def test_on_s3_the_upload_rules_are_s3s(start_server, s3: dict[str, Any], tmp_path: Path):
    prefix = f"files-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"files_store: media\nstores:\n  - Name: media\n    Type: s3\n    Params: {{endpoint: '{s3['endpoint']}', "
        f"bucket: {s3['bucket']}, prefix: {prefix}, secure: false, access_key: {s3['access_key']}, "
        f"secret_key: {s3['secret_key']}}}\n"
    )
    server = start_server(config=str(config))
    key = make_key(server, "s3files")
    with server.client() as client:
        answer = presign(client, key)
        assert "X-Amz-Signature=" in answer.json()["upload_url"]
        check_upload_rules(answer)
