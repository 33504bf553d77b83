"""Runs on S3 stores, end to end: the real service, a real S3 server (SeaweedFS), plain HTTP clients.

A run's WaitingURLs point straight at S3; the client PUTs there exactly like the reference curl
(`-H "Content-Type: ..." --data-binary`) plus the Headers the WaitingURL lists; the engine notices
the object (a posted bucket notification, SeaweedFS's own filer webhook, or the reconciler), runs
its steps (which read from and write to S3), and the COMPLETE run lists presigned GET URLs.

Servers that only notifications may advance run with reconcile_interval 3600: their reconciler
never looks, so a run that advances did so because of the notification. Every test works under a
store prefix of its own, so tests sharing a server or the bucket cannot see each other's objects.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlsplit

import httpx
import pytest
import s3server
from live import Server, free_port, metric, wait_for_status

from flowengine.stores.s3 import S3Store

pytestmark = pytest.mark.backends("sqlite", "postgres")  # what goes through the database, on each

TOKEN = "events-token-for-tests"
BODY = b"hello from the s3 flow tests\n"
# A step that changes what it copies, so the output proves the step read the input and wrote the output.
UPPER = {
    "Name": "upper",
    "Inputs": [{"Name": "src"}],
    "Outputs": [{"Name": "dst"}],
    "Exec": ["sh", "-c", 'tr a-z A-Z < "$0" > "$1"', "${src}", "${dst}"],
}


# --- servers -------------------------------------------------------------------------------------


def _serve(factory: pytest.TempPathFactory, s3: dict[str, Any], **settings: Any) -> Iterator[Server]:
    root = factory.mktemp("engine")
    (root / "flows").mkdir()
    creds = {"s3_access_key": s3["access_key"], "s3_secret_key": s3["secret_key"]}
    server = Server(root / "data", root / "flows", **creds, **settings).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def notified(s3: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Only notifications advance runs here: the reconciler looks once an hour."""
    yield from _serve(tmp_path_factory, s3, events_token=TOKEN, reconcile_interval=3600)


@pytest.fixture(scope="module")
def reconciled(s3: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No notifications arrive here: only the reconciler (every 0.2 s) notices objects."""
    yield from _serve(tmp_path_factory, s3, reconcile_interval=0.2)


@pytest.fixture
def api(reconciled: Server) -> Iterator[httpx.Client]:
    with reconciled.client() as client:
        yield client


# --- flows and S3 helpers ------------------------------------------------------------------------


def new_prefix() -> str:
    return f"flow-{uuid.uuid4().hex[:12]}"


def store_def(s3: dict[str, Any], prefix: str, *, name: str = "s3", endpoint: str | None = None) -> dict:
    params = {
        "endpoint": endpoint or s3["endpoint"],
        "bucket": s3["bucket"],
        "prefix": prefix,
        "region": "us-east-1",
        "secure": False,
    }
    return {"Name": name, "Type": "s3", "Params": params}


def upper_flow(store: dict, **well: Any) -> dict:
    """An upload well `doc` and an output well `shout`, both on `store`, and one step between them."""
    name = store["Name"]
    return {
        "Flow": {
            "Stores": [store],
            "DataWells": [
                {"Edge": "doc", "Store": name, "Source": "upload", "Key": "${RUN_ID}/doc.txt", **well},
                {"Edge": "shout", "Store": name, "Key": "${RUN_ID}/shout.txt"},
            ],
            "Tasks": [UPPER],
            "Steps": [
                {
                    "ID": "upper",
                    "Uses": "upper",
                    "Inputs": [{"Slot": "src", "Edge": "doc"}],
                    "Outputs": [{"Slot": "dst", "Edge": "shout"}],
                }
            ],
        }
    }


def start_run(client: httpx.Client, flow: dict, name: str = "s3flow") -> dict:
    response = client.post(f"/api/v1/flow/{name}", json=flow)
    assert response.status_code == 201, response.text
    doc = response.json()
    assert doc["Status"] == "WAITING"
    assert [w["Artifact"]["EdgeName"] for w in doc["WaitingURLs"]] == ["doc"]
    return doc


def put(waiting: dict, data: bytes, content_type: str = "text/plain", **overrides: str | None) -> httpx.Response:
    """PUT like `curl -X PUT -H "Content-Type: ..." --data-binary @file URL`, plus the listed Headers.

    `overrides` replace a header (name with '_' for '-'); None leaves it out.
    """
    headers: dict[str, str | None] = {"Content-Type": content_type, **waiting.get("Headers", {})}
    headers.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return httpx.put(waiting["PutURL"], content=data, headers={k: v for k, v in headers.items() if v is not None})


def s3_view(s3: dict[str, Any], prefix: str, endpoint: str | None = None) -> S3Store:
    """An S3Store on the same bucket and prefix as a flow's store: what the engine sees."""
    return S3Store(
        "check",
        endpoint or s3["endpoint"],
        s3["bucket"],
        prefix=prefix,
        secure=False,
        access_key=s3["access_key"],
        secret_key=s3["secret_key"],
    )


def stat(store: S3Store, key: str) -> Any:
    return asyncio.run(store.stat(key))


def read(store: S3Store, key: str) -> bytes:
    async def collect() -> bytes:
        return b"".join([chunk async for chunk in store.read(key)])

    return asyncio.run(collect())


def s3_record(bucket: str, full_key: str, size: int, etag: str, *, minio: bool = True) -> dict:
    """One bucket-notification record as MinIO (or AWS S3) posts it: the key URL-encoded, '+' for space."""
    return {
        "eventVersion": "2.0" if minio else "2.1",
        "eventSource": "minio:s3" if minio else "aws:s3",
        "awsRegion": "" if minio else "us-east-1",
        "eventTime": "2026-03-03T11:00:00.000Z",
        "eventName": "s3:ObjectCreated:Put" if minio else "ObjectCreated:Put",
        "userIdentity": {"principalId": "testkey"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "17A9B2C3D4E5F607"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "testkey"}, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {
                "key": quote_plus(full_key, safe=""),
                "size": size,
                "eTag": etag,
                "contentType": "text/plain",
                "sequencer": "17A9B2C3D4E5F607",
            },
        },
    }


def notify(client: httpx.Client, records: list[dict]) -> httpx.Response:
    body = {"EventName": records[0]["eventName"] if records else "", "Records": records}
    return client.post("/api/v1/events/s3", json=body, headers={"Authorization": f"Bearer {TOKEN}"})


def artifact(doc: dict, edge: str) -> dict:
    return next(a for a in doc["Artifacts"] if a["EdgeName"] == edge)


def check_complete(doc: dict, body: bytes = BODY, content_type: str = "text/plain") -> None:
    """The run is COMPLETE and its output, fetched through its presigned GetURL, is the step's work."""
    assert doc["Status"] == "COMPLETE", doc
    assert doc["WaitingURLs"] == []
    doc_in = artifact(doc, "doc")
    assert (doc_in["Size"], doc_in["ContentType"]) == (len(body), content_type)
    assert doc_in["ETag"] == hashlib.md5(body).hexdigest()
    out = artifact(doc, "shout")
    assert "X-Amz-Signature=" in out["GetURL"]
    got = httpx.get(out["GetURL"])
    assert got.status_code == 200
    assert got.content == body.upper()
    assert out["Size"] == len(body)
    source = httpx.get(doc_in["GetURL"])
    assert source.status_code == 200 and source.content == body


# --- the whole flow, three ways of noticing the upload ------------------------------------------


def test_bucket_notification_advances_the_run(notified: Server, s3: dict[str, Any]) -> None:
    prefix = new_prefix()
    with notified.client() as client:
        doc = start_run(client, upper_flow(store_def(s3, prefix)))
        waiting = doc["WaitingURLs"][0]
        assert waiting["PutURL"].startswith(f"http://{s3['endpoint']}/{s3['bucket']}/{prefix}/")
        assert "X-Amz-Signature=" in waiting["PutURL"]
        assert put(waiting, BODY).status_code == 200

        time.sleep(0.5)  # the object is in S3, but nobody told the engine
        assert client.get(f"/api/v1/flow/status/{doc['ID']}").json()["Status"] == "WAITING"
        assert stat(s3_view(s3, prefix), waiting["Artifact"]["ObjectName"]).size == len(BODY)

        full_key = f"{prefix}/{waiting['Artifact']['ObjectName']}"
        answer = notify(client, [s3_record(s3["bucket"], full_key, len(BODY), hashlib.md5(BODY).hexdigest())])
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"Received": 1, "Matched": 1}
        # Applied before the answer: the run left WAITING at once.
        assert client.get(f"/api/v1/flow/status/{doc['ID']}").json()["Status"] != "WAITING"
        check_complete(wait_for_status(client, doc["ID"], {"COMPLETE", "ERROR"}))


def test_reconciler_alone_advances_the_run(api: httpx.Client, s3: dict[str, Any]) -> None:
    doc = start_run(api, upper_flow(store_def(s3, new_prefix())))
    assert put(doc["WaitingURLs"][0], BODY).status_code == 200
    check_complete(wait_for_status(api, doc["ID"], {"COMPLETE", "ERROR"}, timeout=10))
    assert (metric(api, "flowengine_reconciler_checks_total") or 0) >= 1
    assert (metric(api, "flowengine_landing_lag_seconds_count", via="reconciler") or 0) >= 1


def test_seaweedfs_filer_webhook_advances_the_run(start_server: Callable[..., Server]) -> None:
    """A second SeaweedFS whose filer POSTs its own events to /api/v1/events/seaweedfs."""
    port, token = free_port(), "filer-webhook-token"
    creds = {"access_key": "hookkey", "secret_key": "hooksecret123"}
    server = start_server(
        port=port,
        events_token=token,
        reconcile_interval=3600,
        s3_access_key=creds["access_key"],
        s3_secret_key=creds["secret_key"],
    )
    pushing = s3server.start(
        bucket="pushed", webhook_url=f"{server.url}/api/v1/events/seaweedfs", webhook_token=token, **creds
    )
    try:
        info = {"endpoint": pushing["endpoint"], "bucket": "pushed", **creds}
        with server.client() as client:
            doc = start_run(client, upper_flow(store_def(info, new_prefix())))
            assert put(doc["WaitingURLs"][0], BODY).status_code == 200
            check_complete(wait_for_status(client, doc["ID"], {"COMPLETE", "ERROR"}, timeout=15))
    finally:
        s3server.stop(pushing)


def test_step_reads_from_and_writes_to_s3(api: httpx.Client, s3: dict[str, Any]) -> None:
    prefix = new_prefix()
    view = s3_view(s3, prefix)
    doc = start_run(api, upper_flow(store_def(s3, prefix)))
    run_id = doc["ID"]
    assert put(doc["WaitingURLs"][0], BODY).status_code == 200
    done = wait_for_status(api, run_id, {"COMPLETE", "ERROR"}, timeout=10)
    assert done["Status"] == "COMPLETE", done
    assert [(s["ID"], s["Status"], s["Attempts"]) for s in done["Steps"]] == [("upper", "COMPLETE", 1)]
    out = artifact(done, "shout")
    assert (out["StoreName"], out["ObjectName"]) == ("s3", f"{run_id}/shout.txt")
    # The step's output is an object in the bucket, under the store's prefix: the engine stored it there.
    info = stat(view, f"{run_id}/shout.txt")
    assert info is not None and info.size == len(BODY) and info.content_type == "text/plain"
    assert out["ETag"] == info.etag
    assert read(view, f"{run_id}/shout.txt") == BODY.upper()
    assert read(view, f"{run_id}/doc.txt") == BODY


def test_reference_curl_upload(api: httpx.Client, s3: dict[str, Any], tmp_path: Path) -> None:
    """A well that declares nothing extra: the reference's curl command, as it stands, is enough."""
    doc = start_run(api, upper_flow(store_def(s3, new_prefix())))
    waiting = doc["WaitingURLs"][0]
    assert waiting.get("Headers", {}) == {}
    assert parse_qs(urlsplit(waiting["PutURL"]).query)["X-Amz-SignedHeaders"] == ["host"]
    (tmp_path / "input.txt").write_bytes(BODY)
    curl = ["curl", "-X", "PUT", "-H", "Content-Type: text/plain", "--data-binary", "@input.txt", waiting["PutURL"]]
    done = subprocess.run(curl, cwd=tmp_path, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b""  # S3 answers a successful PUT with an empty body, an error with XML
    check_complete(wait_for_status(api, doc["ID"], {"COMPLETE", "ERROR"}, timeout=10))


# --- what a presigned PUT URL enforces -----------------------------------------------------------


def test_put_url_signs_length_type_and_no_overwrite(api: httpx.Client, s3: dict[str, Any]) -> None:
    prefix = new_prefix()
    flow = upper_flow(store_def(s3, prefix), Size=len(BODY), ContentType="text/plain", Overwrite=False)
    doc = start_run(api, flow)
    waiting = doc["WaitingURLs"][0]
    assert waiting["Headers"] == {"Content-Length": str(len(BODY)), "Content-Type": "text/plain", "If-None-Match": "*"}
    query = parse_qs(urlsplit(waiting["PutURL"]).query)
    assert query["X-Amz-SignedHeaders"] == ["content-length;content-type;host;if-none-match"]
    key = waiting["Artifact"]["ObjectName"]
    view = s3_view(s3, prefix)

    assert put(waiting, BODY, If_None_Match=None).status_code == 403  # a signed header left out
    assert put(waiting, BODY, Content_Type="text/html").status_code == 403  # a signed header changed
    assert put(waiting, BODY, Content_Type=None).status_code == 403
    assert put(waiting, BODY + b"!", Content_Length=None).status_code == 403  # wrong length
    assert put(waiting, BODY[:-1], Content_Length=None).status_code == 403
    # No Content-Length at all: httpx streams a generator with Transfer-Encoding: chunked.
    no_length = httpx.put(
        waiting["PutURL"], content=iter([BODY]), headers={"Content-Type": "text/plain", "If-None-Match": "*"}
    )
    assert no_length.status_code == 403
    signature = query["X-Amz-Signature"][0]
    forged = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    tampered = {
        **waiting,
        "PutURL": waiting["PutURL"].replace(f"X-Amz-Signature={signature}", f"X-Amz-Signature={forged}"),
    }
    assert put(tampered, BODY).status_code == 403
    assert stat(view, key) is None  # none of those stored anything

    assert put(waiting, BODY).status_code == 200
    assert put(waiting, BODY).status_code == 412  # If-None-Match: * and the key exists
    assert put(waiting, b"X" * len(BODY)).status_code == 412
    assert read(view, key) == BODY  # the first upload stands
    check_complete(wait_for_status(api, doc["ID"], {"COMPLETE", "ERROR"}, timeout=10))


def test_put_url_expires_with_the_well_ttl(api: httpx.Client, s3: dict[str, Any]) -> None:
    prefix = new_prefix()
    doc = start_run(api, upper_flow(store_def(s3, prefix), TTL=1))
    waiting = doc["WaitingURLs"][0]
    query = parse_qs(urlsplit(waiting["PutURL"]).query)
    signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    ends = signed + int(query["X-Amz-Expires"][0])
    created = datetime.fromisoformat(doc["Created"]).timestamp()
    # The URL dies with the well's TTL (rounded up to a whole second), which the TTL field names.
    assert created < ends <= created + 2
    assert waiting["TTL"] == datetime.fromtimestamp(ends, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    time.sleep(max(0.0, ends + 0.5 - time.time()))
    assert put(waiting, BODY).status_code == 403
    assert stat(s3_view(s3, prefix), waiting["Artifact"]["ObjectName"]) is None
    failed = wait_for_status(api, doc["ID"], {"ERROR", "COMPLETE"})
    assert failed["Status"] == "ERROR" and "expired" in failed["Error"]


# --- objects a well refuses ----------------------------------------------------------------------


def test_object_over_max_size_fails_the_run(notified: Server, s3: dict[str, Any]) -> None:
    """The notification claims a small object; the engine stats it and believes the store."""
    prefix = new_prefix()
    with notified.client() as client:
        doc = start_run(client, upper_flow(store_def(s3, prefix), MaxSize=8))
        waiting = doc["WaitingURLs"][0]
        assert put(waiting, BODY).status_code == 200  # no signed length: S3 takes it, the engine refuses it
        full_key = f"{prefix}/{waiting['Artifact']['ObjectName']}"
        answer = notify(client, [s3_record(s3["bucket"], full_key, 4, "0" * 32)])
        assert answer.json() == {"Received": 1, "Matched": 1}
        failed = wait_for_status(client, doc["ID"], {"ERROR", "COMPLETE"})
    assert failed["Status"] == "ERROR"
    assert f"is {len(BODY)} bytes, over the limit of 8" in failed["Error"]
    assert failed["Steps"][0]["Status"] == "IDLE"  # the step never ran
    assert failed["Artifacts"] == [] and failed["WaitingURLs"] == []


def test_object_of_a_type_not_accepted_fails_the_run(api: httpx.Client, s3: dict[str, Any]) -> None:
    doc = start_run(api, upper_flow(store_def(s3, new_prefix()), Accept=["image/*"]))
    waiting = doc["WaitingURLs"][0]
    assert waiting.get("Headers", {}) == {}  # Accept is checked on landing, not signed
    assert put(waiting, BODY, content_type="text/plain").status_code == 200
    failed = wait_for_status(api, doc["ID"], {"ERROR", "COMPLETE"}, timeout=10)
    assert failed["Status"] == "ERROR"
    assert "has type 'text/plain', not one of image/*" in failed["Error"]
    assert failed["Steps"][0]["Status"] == "IDLE"


def test_accepted_type_advances(api: httpx.Client, s3: dict[str, Any]) -> None:
    """The other side of the Accept check: a matching type goes through."""
    doc = start_run(api, upper_flow(store_def(s3, new_prefix()), Accept=["text/*"]))
    assert put(doc["WaitingURLs"][0], BODY, content_type="text/plain").status_code == 200
    check_complete(wait_for_status(api, doc["ID"], {"COMPLETE", "ERROR"}, timeout=10))


# --- a store that is down ------------------------------------------------------------------------


def test_store_down_makes_runs_wait_and_shows_on_readyz(
    start_server: Callable[..., Server], s3: dict[str, Any]
) -> None:
    closed = free_port()  # bound and released: nothing listens there
    server = start_server(reconcile_interval=0.2, s3_access_key=s3["access_key"], s3_secret_key=s3["secret_key"])
    with server.client() as client:
        assert client.get("/readyz").status_code == 200
        down = store_def(s3, new_prefix(), name="offline-s3", endpoint=f"127.0.0.1:{closed}")
        doc = start_run(client, upper_flow(down))
        assert doc["WaitingURLs"][0]["PutURL"].startswith(f"http://127.0.0.1:{closed}/")
        time.sleep(1.0)  # the first check was due 1 s after the run was created: the reconciler asks and fails
        now = client.get(f"/api/v1/flow/status/{doc['ID']}").json()
        assert now["Status"] == "WAITING" and "Error" not in now
        assert now["WaitingURLs"][0]["Artifact"]["EdgeName"] == "doc"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["Status"] == "degraded"
        assert "offline-s3" in ready.json()["Stores"]
        static = {
            "Stores": [down],
            "DataWells": [{"Edge": "ref", "Store": "offline-s3", "Source": "static", "Key": "k"}],
        }
        refused = client.post("/api/v1/flow/needs-static", json={"Flow": static})
        assert refused.status_code == 503
        assert refused.json()["Code"] == "store_unavailable" and refused.json()["Location"] == "DataWells[0].Store"


# --- retention -------------------------------------------------------------------------------------


def test_sweeper_deletes_expired_objects_from_s3(start_server: Callable[..., Server], s3: dict[str, Any]) -> None:
    server = start_server(
        reconcile_interval=0.2,
        input_retention=1,
        output_retention=1,
        sweep_interval=0.3,
        s3_access_key=s3["access_key"],
        s3_secret_key=s3["secret_key"],
    )
    prefix = new_prefix()
    view = s3_view(s3, prefix)
    with server.client() as client:
        doc = start_run(client, upper_flow(store_def(s3, prefix)))
        run_id = doc["ID"]
        assert put(doc["WaitingURLs"][0], BODY).status_code == 200
        assert stat(view, f"{run_id}/doc.txt") is not None
        done = wait_for_status(client, run_id, {"COMPLETE", "ERROR"}, timeout=10)
        assert done["Status"] == "COMPLETE", done

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (stat(view, f"{run_id}/doc.txt") or stat(view, f"{run_id}/shout.txt")):
            time.sleep(0.1)
        assert stat(view, f"{run_id}/doc.txt") is None
        assert stat(view, f"{run_id}/shout.txt") is None

        swept = client.get(f"/api/v1/flow/status/{run_id}").json()
    assert swept["Status"] == "COMPLETE"
    for edge in ("doc", "shout"):
        art = artifact(swept, edge)
        assert art["Expired"] is True
        assert "GetURL" not in art and "Expires" not in art


def test_a_store_that_went_down_does_not_hold_up_retention_elsewhere(
    start_server: Callable[..., Server], s3: dict[str, Any]
) -> None:
    """Objects due on a store that has since gone away wait; the other stores' objects are still swept."""
    creds = {"access_key": s3["access_key"], "secret_key": s3["secret_key"]}
    doomed = s3server.start(bucket="doomed", **creds)
    try:
        server = start_server(reconcile_interval=0.2, input_retention=3, output_retention=3, sweep_interval=0.3,
                              s3_access_key=s3["access_key"], s3_secret_key=s3["secret_key"])  # fmt: skip
        with server.client() as client:
            first = start_run(client, upper_flow(store_def({"endpoint": doomed["endpoint"], "bucket": "doomed"},
                                                           new_prefix())))  # fmt: skip
            assert put(first["WaitingURLs"][0], BODY).status_code == 200
            assert wait_for_status(client, first["ID"], {"COMPLETE", "ERROR"})["Status"] == "COMPLETE"
            s3server.stop(doomed)  # gone before its objects are due (3 s after they landed)

            prefix = new_prefix()
            view = s3_view(s3, prefix)
            second = start_run(client, upper_flow(store_def(s3, prefix)))
            run_id = second["ID"]
            assert put(second["WaitingURLs"][0], BODY).status_code == 200
            assert wait_for_status(client, run_id, {"COMPLETE", "ERROR"})["Status"] == "COMPLETE"
            assert stat(view, f"{run_id}/shout.txt") is not None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (
                stat(view, f"{run_id}/doc.txt") or stat(view, f"{run_id}/shout.txt")
            ):
                time.sleep(0.2)
            assert stat(view, f"{run_id}/doc.txt") is None
            assert stat(view, f"{run_id}/shout.txt") is None
    finally:
        s3server.stop(doomed)


def test_operator_store_from_config_creates_its_bucket_and_lifecycle_rules(
    start_server: Callable[..., Server], s3: dict[str, Any], tmp_path: Path
) -> None:
    """A store defined in config.yaml carries its own credentials; flows name it and carry none."""
    from minio import Minio

    bucket = f"made-{uuid.uuid4().hex[:8]}"
    params = {"endpoint": s3["endpoint"], "bucket": bucket, "secure": False, "create_bucket": True,
              "access_key": s3["access_key"], "secret_key": s3["secret_key"]}  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(f"stores:\n  - Name: media\n    Type: s3\n    Params: {params!r}\n".replace("True", "true"))
    server = start_server(config=str(config), reconcile_interval=0.2)
    minio = Minio(s3["endpoint"], s3["access_key"], s3["secret_key"], secure=False)
    deadline = time.monotonic() + 10
    while not minio.bucket_exists(bucket) and time.monotonic() < deadline:
        time.sleep(0.05)  # the engine prepares operator stores at start, in the background
    assert minio.bucket_exists(bucket)
    rules = {r.rule_filter.prefix: r.expiration.days for r in minio.get_bucket_lifecycle(bucket).rules if r.expiration}
    assert rules == {"inputs/": 1, "outputs/": 7}
    with server.client() as client:
        run = client.post("/api/v1/flow/uses-media", json={"Flow": {"DataWells": [{"Edge": "doc", "Store": "media",
                                                                                 "Source": "upload"}]}})  # fmt: skip
        assert run.status_code == 201, run.text
        waiting = run.json()["WaitingURLs"][0]
        assert waiting["Artifact"]["ObjectName"].startswith("inputs/uses-media/")
        assert put(waiting, BODY).status_code == 200
        done = wait_for_status(client, run.json()["ID"], {"COMPLETE", "ERROR"}, timeout=10)
    assert done["Status"] == "COMPLETE", done
    assert httpx.get(done["Artifacts"][0]["GetURL"]).content == BODY


def test_direct_upload_and_webhook_into_s3_wells(notified: Server, s3: dict[str, Any]) -> None:
    """Bodies the engine receives itself go straight on to S3 and advance the run at once."""
    store = store_def(s3, new_prefix())
    flow = upper_flow(store)
    with notified.client() as client:
        doc = start_run(client, flow)
        direct = client.post(f"/api/v1/upload/{doc['ID']}/doc", content=BODY, headers={"Content-Type": "text/plain"})
        assert direct.status_code == 200, direct.text
        check_complete(wait_for_status(client, doc["ID"], {"COMPLETE", "ERROR"}, timeout=10))
        hooked = {**flow["Flow"], "DataWells": [{**flow["Flow"]["DataWells"][0], "Source": "webhook"},
                                                flow["Flow"]["DataWells"][1]]}  # fmt: skip
        run = client.post("/api/v1/flow/hooked", json={"Flow": hooked}).json()
        url = run["WaitingURLs"][0]["PutURL"]
        assert "/api/v1/hook/" in url  # the engine's own signed URL, not S3's
        assert httpx.post(url, content=BODY, headers={"Content-Type": "text/plain"}).status_code == 200
        check_complete(wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"}, timeout=10))
    stored = asyncio.run(s3_view(s3, store["Params"]["prefix"]).stat(f"{doc['ID']}/doc.txt"))
    assert stored is not None and stored.size == len(BODY)  # the direct upload is in the bucket
