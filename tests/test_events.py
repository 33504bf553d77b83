"""POST /api/v1/events/s3 (MinIO / AWS bucket notifications) and /api/v1/events/seaweedfs (filer webhook).

Against the real service and a real S3 server. The engine under test never reconciles (interval
3600 s), so a run that advances did so because of the posted event; and a notification is only a
hint: the engine stats the object, so an event for an object that is not there changes nothing.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote_plus

import httpx
import msgspec
import pytest
from live import Server, wait_for_status

from flowengine.api.events import FilerEvent, filer_object, is_object_created

pytestmark = pytest.mark.backends("sqlite", "postgres")  # what goes through the database, on each

TOKEN = "events-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = b"an object that landed\n"
ETAG = hashlib.md5(BODY).hexdigest()
COPY = {"Name": "copy", "Inputs": [{"Name": "src"}], "Outputs": [{"Name": "dst"}], "Exec": ["cp", "${src}", "${dst}"]}
ENDPOINTS = ["/api/v1/events/s3", "/api/v1/events/seaweedfs"]


@pytest.fixture(scope="module")
def engine(s3: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("events")
    (root / "flows").mkdir()
    server = Server(
        root / "data",
        root / "flows",
        events_token=TOKEN,
        reconcile_interval=3600,
        s3_access_key=s3["access_key"],
        s3_secret_key=s3["secret_key"],
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(engine: Server) -> Iterator[httpx.Client]:
    with engine.client() as c:
        yield c


class Waiting(msgspec.Struct):
    run_id: str
    bucket: str
    full_key: str  # the object's key in the bucket, store prefix included
    put_url: str


@pytest.fixture
def waiting(client: httpx.Client, s3: dict[str, Any]) -> Callable[..., Waiting]:
    """waiting(key=..., upload=True): a new run on an S3 store of its own, its object PUT (or not)."""

    def make(key: str = "${RUN_ID}/in.txt", upload: bool = True) -> Waiting:
        prefix = f"ev-{uuid.uuid4().hex[:12]}"
        store = {
            "Name": "s3",
            "Type": "s3",
            "Params": {"endpoint": s3["endpoint"], "bucket": s3["bucket"], "prefix": prefix, "secure": False},
        }
        flow = {
            "Flow": {
                "Stores": [store],
                "DataWells": [{"Edge": "in", "Store": "s3", "Source": "upload", "Key": key}],
                "Tasks": [COPY],
                "Steps": [
                    {
                        "ID": "copy",
                        "Uses": "copy",
                        "Inputs": [{"Slot": "src", "Edge": "in"}],
                        "Outputs": [{"Slot": "dst", "Edge": "out"}],
                    }
                ],
            }
        }
        answer = client.post("/api/v1/flow/events", json=flow)
        assert answer.status_code == 201, answer.text
        doc = answer.json()
        url = doc["WaitingURLs"][0]["PutURL"]
        if upload:
            put = httpx.put(url, content=BODY, headers={"Content-Type": "text/plain"})
            assert put.status_code == 200, put.text
        object_name = doc["WaitingURLs"][0]["Artifact"]["ObjectName"]
        return Waiting(doc["ID"], s3["bucket"], f"{prefix}/{object_name}", url)

    return make


def record(
    bucket: str,
    key: str,
    event: str = "s3:ObjectCreated:Put",
    *,
    aws: bool = False,
    encode: bool = True,
    size: int = len(BODY),
) -> dict:
    """A bucket-notification record in MinIO's shape (or AWS's): the key URL-encoded, '+' for a space."""
    return {
        "eventVersion": "2.1" if aws else "2.0",
        "eventSource": "aws:s3" if aws else "minio:s3",
        "awsRegion": "us-east-1" if aws else "",
        "eventTime": "2026-03-03T11:00:00.000Z",
        "eventName": event,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE" if aws else "testkey"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "flowengine",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": {
                "key": quote_plus(key, safe="") if encode else key,
                "size": size,
                "eTag": ETAG,
                "versionId": "",
                "sequencer": "0055AED6DCD90281E5",
            },
        },
        **({} if aws else {"source": {"host": "127.0.0.1", "port": "", "userAgent": "MinIO (linux; amd64)"}}),
    }


def post_s3(client: httpx.Client, *records: dict, headers: dict[str, str] = AUTH) -> httpx.Response:
    body = {"EventName": records[0]["eventName"], "Key": "x"} if records else {}
    return client.post("/api/v1/events/s3", json={**body, "Records": list(records)}, headers=headers)


def filer_event(key: str, event_type: str = "create", directory: bool = False) -> dict:
    """One SeaweedFS filer webhook event, as `weed` posts it."""
    entry = {
        "name": key.rsplit("/", 1)[-1],
        "is_directory": directory,
        "attributes": {
            "file_size": 0 if directory else len(BODY),
            "mtime": 1772535600,
            "file_mode": 432,
            "mime": "" if directory else "text/plain",
        },
    }
    message = {"old_entry": entry} if event_type == "delete" else {"new_entry": entry}
    return {
        "event_type": event_type,
        "key": key,
        "message": {**message, "delete_chunks": event_type == "delete", "new_parent_path": key.rsplit("/", 1)[0]},
    }


def post_filer(client: httpx.Client, event: dict) -> httpx.Response:
    return client.post("/api/v1/events/seaweedfs", json=event, headers=AUTH)


def status(client: httpx.Client, run_id: str) -> dict:
    return client.get(f"/api/v1/flow/status/{run_id}").json()


def complete(client: httpx.Client, run_id: str) -> dict:
    doc = wait_for_status(client, run_id, {"COMPLETE", "ERROR", "STOPPED"})
    assert doc["Status"] == "COMPLETE", doc
    return doc


# --- authentication and bad bodies ---------------------------------------------------------------


def test_events_are_off_without_a_token(start_server: Callable[..., Server]) -> None:
    server = start_server()
    with server.client() as client:
        for path in ENDPOINTS:
            for headers in ({}, AUTH, {"Authorization": "Bearer"}):
                answer = client.post(path, json={"Records": []}, headers=headers)
                assert answer.status_code == 403
                assert answer.json()["Code"] == "events_disabled"
            assert client.head(path).status_code == 200  # MinIO's liveness probe still answers


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer wrong", f"Bearer {TOKEN}x", TOKEN, f"Basic {TOKEN}"]
)
def test_a_wrong_or_missing_token_is_401(client: httpx.Client, path: str, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for body in (b'{"Records": []}', b"{not json"):  # refused before the body is looked at
        answer = client.post(path, content=body, headers={**headers, "Content-Type": "application/json"})
        assert answer.status_code == 401
        assert answer.json()["Code"] == "unauthorized"
        assert answer.json()["Location"] == "header.Authorization"


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("body", [b"{not json", b"", b'{"Records": [', b"\xff\xfe"])
def test_malformed_json_is_400(client: httpx.Client, path: str, body: bytes) -> None:
    answer = client.post(path, content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["Code"] == "malformed_json"


@pytest.mark.parametrize(
    ("path", "body", "location", "names"),
    [
        ("s3", [], "body", "object"),
        ("s3", {"Records": "nope"}, "body.Records", "array"),
        ("s3", {"Records": [{"eventName": 5, "s3": {}}]}, "body.Records[0].eventName", "str"),
        (
            "s3",
            {
                "Records": [
                    {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "flows"}, "object": {"key": 7}}}
                ]
            },
            "body.Records[0].s3.object.key",
            "str",
        ),
        (
            "s3",
            {
                "Records": [
                    {
                        "eventName": "s3:ObjectCreated:Put",
                        "s3": {"bucket": {"name": "flows"}, "object": {"key": "k", "size": "big"}},
                    }
                ]
            },
            "body.Records[0].s3.object.size",
            "int",
        ),
        (
            "s3",
            {"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {}, "object": {"key": "k"}}}]},
            "body.Records[0].s3.bucket.name",  # a missing field is named itself
            "name",
        ),
        (
            "s3",
            {"Records": [{"s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}}]},
            "body.Records[0].eventName",
            "eventName",
        ),
        ("seaweedfs", {"event_type": 1, "key": "/buckets/b/k"}, "body.event_type", "str"),
        ("seaweedfs", {"key": "/buckets/b/k"}, "body.event_type", "event_type"),
        (
            "seaweedfs",
            {"event_type": "create", "key": "/buckets/b/k", "message": {"new_entry": {"is_directory": "y"}}},
            "body.message.new_entry.is_directory",
            "bool",
        ),
        (
            "seaweedfs",
            {
                "event_type": "create",
                "key": "/buckets/b/k",
                "message": {"new_entry": {"attributes": {"file_size": "5"}}},
            },
            "body.message.new_entry.attributes.file_size",
            "int",
        ),
    ],
)
def test_wrong_types_are_422_naming_the_field(
    client: httpx.Client, path: str, body: Any, location: str, names: str
) -> None:
    answer = client.post(f"/api/v1/events/{path}", json=body, headers=AUTH)
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert error["Code"] == "invalid_field"
    assert error["Location"] == location
    assert names in error["Message"]


def test_a_bad_record_refuses_the_whole_batch(client: httpx.Client, waiting: Callable[..., Waiting]) -> None:
    """Nothing is half-applied: a batch with one bad record advances none of its good ones."""
    run = waiting()
    bad = record(run.bucket, "other")
    bad["s3"]["object"]["size"] = "big"
    answer = post_s3(client, record(run.bucket, run.full_key), bad)
    assert answer.status_code == 422
    assert answer.json()["Location"] == "body.Records[1].s3.object.size"
    assert status(client, run.run_id)["Status"] == "WAITING"


# --- which records count -------------------------------------------------------------------------


def test_a_notification_advances_its_run_at_once(client: httpx.Client, waiting: Callable[..., Waiting]) -> None:
    run = waiting()
    time.sleep(0.3)
    assert status(client, run.run_id)["Status"] == "WAITING"  # uploaded, but nobody said so
    answer = post_s3(client, record(run.bucket, run.full_key))
    assert answer.status_code == 200
    assert answer.json() == {"Received": 1, "Matched": 1}
    assert status(client, run.run_id)["Status"] != "WAITING"  # applied before the answer
    doc = complete(client, run.run_id)
    landed = next(a for a in doc["Artifacts"] if a["EdgeName"] == "in")
    assert (landed["Size"], landed["ContentType"], landed["ETag"]) == (len(BODY), "text/plain", ETAG)


def test_records_that_are_not_object_created_are_ignored(client: httpx.Client, waiting: Callable[..., Waiting]) -> None:
    run = waiting()
    others = [
        "s3:ObjectRemoved:Delete",
        "s3:ObjectAccessed:Get",
        "s3:ObjectAccessed:Head",
        "s3:ObjectRemoved:DeleteMarkerCreated",
        "ObjectRestore:Completed",
        "s3:TestEvent",
        "s3:ObjectCreated",
    ]
    answer = post_s3(client, *(record(run.bucket, run.full_key, name) for name in others))
    assert answer.status_code == 200
    assert answer.json() == {"Received": len(others), "Matched": 0}
    time.sleep(0.2)
    assert status(client, run.run_id)["Status"] == "WAITING"
    answer = post_s3(client, record(run.bucket, run.full_key, "s3:ObjectCreated:CompleteMultipartUpload"))
    assert answer.json() == {"Received": 1, "Matched": 1}
    complete(client, run.run_id)


def test_unknown_keys_are_ignored(client: httpx.Client, waiting: Callable[..., Waiting]) -> None:
    run = waiting()
    strangers = [
        record(run.bucket, f"{run.full_key}.other"),
        record(run.bucket, run.full_key.split("/", 1)[1]),  # the key without the store prefix
        record("another-bucket", run.full_key),
        record(run.bucket, "nobody/waits/for/this"),
    ]
    answer = post_s3(client, *strangers)
    assert answer.status_code == 200
    assert answer.json() == {"Received": 4, "Matched": 0}
    assert status(client, run.run_id)["Status"] == "WAITING"
    # A batch mixing strangers with the real record advances just the one run.
    answer = post_s3(client, *strangers, record(run.bucket, run.full_key))
    assert answer.json() == {"Received": 5, "Matched": 1}
    complete(client, run.run_id)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"Records": []},
        {
            "Service": "Amazon S3",
            "Event": "s3:TestEvent",
            "Time": "2026-03-03T11:00:00.000Z",
            "Bucket": "flows",
            "RequestId": "5582815E1AEA5ADF",
            "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
        },
    ],
)
def test_batches_without_records(client: httpx.Client, body: dict) -> None:
    """AWS's s3:TestEvent (sent when a notification is configured) and empty batches are fine."""
    answer = client.post("/api/v1/events/s3", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"Received": 0, "Matched": 0}


def test_duplicate_records_are_harmless(client: httpx.Client, waiting: Callable[..., Waiting]) -> None:
    run = waiting()
    same = record(run.bucket, run.full_key)
    first = post_s3(client, same, same)
    assert first.status_code == 200
    assert first.json() == {"Received": 2, "Matched": 1}  # the second no longer finds a waiting edge
    done = complete(client, run.run_id)
    again = post_s3(client, same, same, record(run.bucket, run.full_key, aws=True))
    assert again.status_code == 200
    assert again.json() == {"Received": 3, "Matched": 0}
    time.sleep(0.2)
    after = status(client, run.run_id)
    assert after == {**done, "Artifacts": after["Artifacts"]}  # nothing changed but freshly minted URLs
    assert [(s["ID"], s["Status"], s["Attempts"]) for s in after["Steps"]] == [("copy", "COMPLETE", 1)]
    assert [(a["EdgeName"], a["Landed"]) for a in after["Artifacts"]] == [
        (a["EdgeName"], a["Landed"]) for a in done["Artifacts"]
    ]
    assert "Error" not in after


def test_one_batch_advances_every_run_it_names(client: httpx.Client, waiting: Callable[..., Waiting]) -> None:
    runs = [waiting() for _ in range(3)]
    answer = post_s3(client, *(record(r.bucket, r.full_key) for r in runs))
    assert answer.json() == {"Received": 3, "Matched": 3}
    for run in runs:
        complete(client, run.run_id)


def test_concurrent_duplicates_are_harmless(engine: Server, waiting: Callable[..., Waiting]) -> None:
    """The same notification delivered several times at once (MinIO retries, several targets)."""
    run = waiting()
    same = record(run.bucket, run.full_key)

    def deliver(_: int) -> int:
        with engine.client() as own:
            answer = post_s3(own, same)
            assert answer.status_code == 200, answer.text
            return answer.json()["Matched"]

    with ThreadPoolExecutor(6) as pool:
        matched = list(pool.map(deliver, range(6)))
    assert 1 <= sum(matched) <= 6
    with engine.client() as client:
        doc = complete(client, run.run_id)
    assert [(s["Status"], s["Attempts"]) for s in doc["Steps"]] == [("COMPLETE", 1)]
    assert "Error" not in doc


def test_a_notification_without_the_object_changes_nothing(
    client: httpx.Client, waiting: Callable[..., Waiting]
) -> None:
    """The engine stats the object: a notification alone (early, forged or stale) cannot fill an edge."""
    run = waiting(upload=False)
    answer = post_s3(client, record(run.bucket, run.full_key))
    assert answer.json() == {"Received": 1, "Matched": 1}  # a run waits for this key...
    time.sleep(0.2)
    assert status(client, run.run_id)["Status"] == "WAITING"  # ...but there is nothing there yet
    assert httpx.put(run.put_url, content=BODY, headers={"Content-Type": "text/plain"}).status_code == 200
    assert post_s3(client, record(run.bucket, run.full_key)).json() == {"Received": 1, "Matched": 1}
    complete(client, run.run_id)


def test_minio_url_encoded_keys(client: httpx.Client, waiting: Callable[..., Waiting]) -> None:
    """MinIO sends keys URL-encoded: '+' for a space, %2F for '/', %2B for a '+' in the key."""
    run = waiting(key="${RUN_ID}/my input+v2/a file.txt")
    encoded = record(run.bucket, run.full_key)["s3"]["object"]["key"]
    assert "%2F" in encoded and "+" in encoded and "%2B" in encoded and " " not in encoded
    # Unencoded, the key does not match: '+' would decode to a space.
    assert post_s3(client, record(run.bucket, run.full_key, encode=False)).json()["Matched"] == 0
    answer = post_s3(client, record(run.bucket, run.full_key))
    assert answer.json() == {"Received": 1, "Matched": 1}
    doc = complete(client, run.run_id)
    assert next(a for a in doc["Artifacts"] if a["EdgeName"] == "in")["ObjectName"].endswith("/my input+v2/a file.txt")


def test_aws_shaped_records(client: httpx.Client, waiting: Callable[..., Waiting]) -> None:
    """AWS: eventName without the 's3:' prefix, eventSource aws:s3, the same URL encoding."""
    run = waiting(key="${RUN_ID}/aws upload.txt")
    aws = record(run.bucket, run.full_key, "ObjectCreated:Put", aws=True)
    assert aws["eventSource"] == "aws:s3" and "+" in aws["s3"]["object"]["key"]
    answer = post_s3(client, aws)
    assert answer.json() == {"Received": 1, "Matched": 1}
    complete(client, run.run_id)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_head_answers_200(client: httpx.Client, path: str) -> None:
    assert client.head(path).status_code == 200


# --- SeaweedFS filer events ----------------------------------------------------------------------


def test_seaweedfs_events(client: httpx.Client, waiting: Callable[..., Waiting]) -> None:
    run = waiting()
    path = f"/buckets/{run.bucket}/{run.full_key}"
    ignored = [
        filer_event(path.rsplit("/", 1)[0], directory=True),  # the run's folder
        filer_event(path, directory=True),  # a directory where the object would be
        filer_event(f"/buckets/.system/log/{run.full_key}"),
        filer_event(f"/buckets/.uploads/{run.full_key}"),
        filer_event(path, "delete"),
        filer_event(f"/buckets/other-bucket/{run.full_key}"),
        filer_event(f"/topics/{run.bucket}/{run.full_key}"),
        filer_event(f"/buckets/{run.bucket}"),
        {"event_type": "create", "key": path},  # no message, no entry
    ]
    for event in ignored:
        answer = post_filer(client, event)
        assert answer.status_code == 200, (event, answer.text)
        assert answer.json() == {"Received": 1, "Matched": 0}, event
    assert status(client, run.run_id)["Status"] == "WAITING"
    answer = post_filer(client, filer_event(path))
    assert answer.json() == {"Received": 1, "Matched": 1}
    complete(client, run.run_id)
    assert post_filer(client, filer_event(path)).json() == {"Received": 1, "Matched": 0}  # a duplicate


# --- the parsing, directly -----------------------------------------------------------------------


def _filer(event: dict) -> FilerEvent:
    return msgspec.convert(event, FilerEvent)


@pytest.mark.parametrize(
    ("event", "found"),
    [
        (filer_event("/buckets/flows/a.txt"), ("flows", "a.txt")),
        (filer_event("/buckets/flows/p/run/in put+x.txt"), ("flows", "p/run/in put+x.txt")),
        (filer_event("/buckets/flows/a.txt", "update"), ("flows", "a.txt")),
        (filer_event("/buckets/flows/a.txt", "delete"), None),
        (filer_event("/buckets/flows/a.txt", "rename"), None),
        (filer_event("/buckets/flows/dir", directory=True), None),
        (filer_event("/buckets/.system/log/2026-03-03/x"), None),
        (filer_event("/buckets/flows"), None),
        (filer_event("/buckets/flows/"), None),
        (filer_event("/buckets/"), None),
        (filer_event("/other/flows/a.txt"), None),
        (filer_event("buckets/flows/a.txt"), None),
        ({"event_type": "create", "key": "/buckets/flows/a.txt"}, None),
        ({"event_type": "create", "key": "/buckets/flows/a.txt", "message": {}}, None),
    ],
)
def test_filer_object(event: dict, found: tuple[str, str] | None) -> None:
    assert filer_object(_filer(event)) == found


@pytest.mark.parametrize(
    ("name", "created"),
    [
        ("s3:ObjectCreated:Put", True),
        ("s3:ObjectCreated:Post", True),
        ("s3:ObjectCreated:Copy", True),
        ("s3:ObjectCreated:CompleteMultipartUpload", True),
        ("ObjectCreated:Put", True),
        ("ObjectCreated:CompleteMultipartUpload", True),
        ("s3:ObjectRemoved:Delete", False),
        ("ObjectRemoved:DeleteMarkerCreated", False),
        ("s3:ObjectAccessed:Get", False),
        ("s3:TestEvent", False),
        ("s3:ObjectCreated", False),
        ("ObjectCreated", False),
        ("", False),
        ("minio:ObjectCreated:Put", False),
    ],
)
def test_is_object_created(name: str, created: bool) -> None:
    assert is_object_created(name) is created
