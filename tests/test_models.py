"""`/api/v1/models*`: model files presigned, uploaded, registered against their stored bytes, listed,
disabled, and synced by agents; on the embedded store and on S3."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import httpx
from live import Server, admin
from uploading import MIB, PART, Session, complete, content, md5_of, upload_parts

WEIGHTS = b"safetensors" * 1000
DIGEST = "sha256:" + hashlib.sha256(WEIGHTS).hexdigest()
PATH = "models/checkpoints/sdxl base_1.0-fp16.safetensors"


def presign(session: Session, size: int = len(WEIGHTS), headers: dict | None = None, **fields: Any) -> httpx.Response:
    body = {"file_name": "sdxl.safetensors", "file_size": size, "model_type": "checkpoints", "model_path": PATH,
            **fields}  # fmt: skip
    return session.client.post("/api/v1/models/presign", json=body, headers=headers)


def uploaded(session: Session, data: bytes = WEIGHTS) -> str:
    answer = presign(session, len(data))
    assert answer.status_code == 200, answer.text
    presigned = answer.json()
    assert presigned["upload_headers"] == {"Content-Length": str(len(data)), "If-None-Match": "*"}
    assert httpx.put(presigned["upload_url"], content=data, headers=presigned["upload_headers"]).status_code == 200
    return presigned["storage_key"]


def register(session: Session, key: str, headers: dict | None = None, **fields: Any) -> httpx.Response:
    body = {"display_name": "SDXL base", "model_type": "checkpoints", "storage_key": key, "file_size": len(WEIGHTS),
            "file_hash": DIGEST, "model_path": PATH, **fields}  # fmt: skip
    return session.client.post("/api/v1/models", json=body, headers=headers)


def agent_key(server: Server, team: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin(server, 'keys', 'create', '--team', team, '--kind', 'agent')}"}


def test_a_model_is_uploaded_registered_against_its_bytes_and_synced_by_agents(serve_files):
    server, stored = serve_files()
    session = Session(server, "models")
    key = uploaded(session)
    assert key.startswith(f"models/{session.team}/")
    assert register(session, key, file_hash="sha256:" + "0" * 64).json()["field"] == "file_hash"
    assert register(session, key, file_size=len(WEIGHTS) + 1).json()["field"] == "file_size"
    created = register(session, key)
    assert created.status_code == 201, created.text
    model_id = created.json()["id"]
    model = session.client.get(f"/api/v1/models/{model_id}").json()
    assert {k: model[k] for k in ("display_name", "model_type", "storage_key", "file_size", "file_hash",
                                  "model_path", "model_status")} == {
        "display_name": "SDXL base", "model_type": "checkpoints", "storage_key": key, "file_size": len(WEIGHTS),
        "file_hash": DIGEST, "model_path": PATH, "model_status": "active"}  # fmt: skip
    # Registered again: the same model, its metadata updated.
    again = register(session, key, display_name="SDXL base 1.0", file_hash=DIGEST.upper().replace("SHA256", "sha256"))
    assert (again.status_code, again.json()["id"]) == (200, model_id)
    assert session.client.get(f"/api/v1/models/{model_id}").json()["display_name"] == "SDXL base 1.0"

    # An agent of the team gets it with a URL to download it from; another team's agent does not.
    listed = httpx.get(f"{server.url}/api/v1/agent/models", headers=agent_key(server, "models")).json()
    (synced,) = listed["model_list"]
    assert (synced["id"], synced["model_path"], synced["file_hash"]) == (model_id, PATH, DIGEST)
    assert httpx.get(synced["download_url"]).content == WEIGHTS
    other = Session(server, "others", "bob@example.com")
    assert (
        httpx.get(f"{server.url}/api/v1/agent/models", headers=agent_key(server, "others")).json()["model_list"] == []
    )
    assert other.client.get(f"/api/v1/models/{model_id}").status_code == 404
    assert other.client.post(f"/api/v1/models/{model_id}/disable").status_code == 404
    assert register(other, key).json()["field"] == "storage_key"  # another team's file

    # Disabled: agents stop syncing it; enabled again, they take it up.
    disabled = session.client.post(f"/api/v1/models/{model_id}/disable")
    assert (disabled.status_code, disabled.json()["model_status"]) == (200, "disabled")
    assert (
        httpx.get(f"{server.url}/api/v1/agent/models", headers=agent_key(server, "models")).json()["model_list"] == []
    )
    assert session.client.post(f"/api/v1/models/{model_id}/enable").json()["model_status"] == "active"
    assert stored.md5(key) == hashlib.md5(WEIGHTS).hexdigest()


def test_a_model_file_too_big_for_one_put_goes_up_in_parts(serve_files):
    server, stored = serve_files()
    session = Session(server, "bigmodel")
    size = PART + MIB
    answer = presign(session, size)
    key = answer.json()["storage_key"]
    initiated = session.initiate(key, size)
    etags = upload_parts(session, initiated, size, [1, 2])
    assert complete(session, initiated["upload_id"], etags).status_code == 200
    digest = hashlib.sha256()
    for chunk in content(size):
        digest.update(chunk)
    created = register(session, key, file_size=size, file_hash=f"sha256:{digest.hexdigest()}")
    assert created.status_code == 201, created.text
    assert stored.md5(key) == md5_of(content(size))


def test_who_may_presign_register_and_list(start_server):
    server = start_server()
    session = Session(server, "callers")
    device = admin(server, "keys", "create", "--team", "callers", "--kind", "device", "--user", "ann@example.com")
    integration = admin(server, "keys", "create", "--team", "callers", "--kind", "integration")
    agent = admin(server, "keys", "create", "--team", "callers", "--kind", "agent")
    bearer = lambda key: {"Authorization": f"Bearer {key}"}  # noqa: E731
    assert presign(session, headers=bearer(device)).status_code == 200  # JWT or dk-, as the reference says
    assert presign(session, headers=bearer(integration)).status_code == 401
    assert presign(session, headers=bearer(agent)).status_code == 401
    key = uploaded(session)
    assert register(session, key, headers=bearer(integration)).status_code == 201  # the dual-auth surface
    assert session.client.get("/api/v1/models", headers=bearer(agent)).status_code == 401
    assert session.client.get("/api/v1/agent/models", headers=bearer(integration)).status_code == 401
    assert session.client.get("/api/v1/models", headers=bearer(device)).json()["page_meta"]["total_count"] == 1


PRESIGN_PROBLEMS = [
    ({"model_type": ""}, "model_type", "length >= 1"),
    ({"model_type": "x" * 51}, "model_type", "length <= 50"),
    ({"model_path": "/etc/passwd"}, "model_path", "relative"),
    ({"model_path": "models/../../etc"}, "model_path", "'..'"),
    ({"model_path": "models\\checkpoints\\a.bin"}, "model_path", "backslash"),
    ({"model_path": "models/a?b.bin"}, "model_path", "letters, digits"),
    ({"model_path": ""}, "model_path", "length >= 1"),
    ({"file_size": 0}, "file_size", ">= 1"),
    ({"file_size": 6 * 1024**4}, "file_size", "limit"),  # over max_multipart_size
    ({"file_name": ""}, "file_name", "length >= 1"),
]


def test_presign_refuses_each_bad_field_by_name(server: Server):
    session = Session(server, "fields")
    for fields, field, says in PRESIGN_PROBLEMS:
        answer = presign(session, **fields)
        assert (answer.status_code, answer.json()["field"]) == (400, field), (fields, answer.text)
        assert says in answer.json()["error_message"], answer.text
    assert (
        presign(session, model_path="loras/détail v2.safetensors").status_code == 200
    )  # \w takes letters of any script


def test_register_refuses_each_bad_field_by_name(server: Server):
    session = Session(server, "register")
    key = uploaded(session)
    never = presign(session).json()["storage_key"]  # presigned, nothing uploaded
    for fields, field in [
        ({"display_name": ""}, "display_name"),
        ({"display_name": "x" * 256}, "display_name"),
        ({"model_type": "x" * 51}, "model_type"),
        ({"file_hash": "a1b2c3"}, "file_hash"),  # no sha256: prefix
        ({"file_hash": "md5:" + "0" * 32}, "file_hash"),
        ({"model_path": "a/../b"}, "model_path"),
        ({"storage_key": "inputs/whatever"}, "storage_key"),
        ({"storage_key": f"models/{session.team}/not-presigned"}, "storage_key"),
        ({"storage_key": never}, "storage_key"),
    ]:
        answer = register(session, key, **fields)
        assert (answer.status_code, answer.json()["field"]) == (400, field), (fields, answer.text)
    assert session.client.get("/api/v1/models").json()["page_meta"]["total_count"] == 0


def test_a_registered_model_outlives_the_input_retention_an_unregistered_upload_does_not(start_server):
    server = start_server(input_retention=2, sweep_interval=0.2)
    session = Session(server, "retention")
    kept, dropped = uploaded(session), uploaded(session, WEIGHTS[:-1])
    assert register(session, kept).status_code == 201
    objects = server.data_dir / "objects" / "default"
    deadline = time.monotonic() + 15
    while (objects / dropped).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (objects / dropped).exists() and (objects / kept).exists()


def test_models_list_by_page_and_status(server: Server):
    session = Session(server, "pages")
    ids = [register(session, uploaded(session), display_name=f"m{i}").json()["id"] for i in range(3)]
    session.client.post(f"/api/v1/models/{ids[1]}/disable")
    page = session.client.get("/api/v1/models", params={"per_page": 2, "current_page": 2}).json()
    assert [m["id"] for m in page["model_list"]] == [ids[2]]
    assert page["page_meta"] == {"current_page": 2, "per_page": 2, "total_count": 3}
    active = session.client.get("/api/v1/models", params={"model_status": "active"}).json()
    assert [m["id"] for m in active["model_list"]] == [ids[0], ids[2]]
    assert session.client.get("/api/v1/models", params={"model_status": "gone"}).status_code == 400
