"""Flow-API run webhooks over real HTTP: a run (or its flow file) names a `Webhook`; when the run ends
COMPLETE, ERROR or STOPPED, the engine POSTs the run document there, signed both ways with the
operator's key. The receiver is webhook_receiver.py's: a small HTTP server on loopback that records
every request and answers as a test scripts it."""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import Server, free_port, wait_for_status
from webhook_receiver import DELAYS, Receiver, verify

from flowengine.config import load_config
from flowengine.errors import Error

pytestmark = pytest.mark.backends("sqlite", "postgres")

KEY = "whsec_" + base64.b64encode(b"the operator's webhook key, 32 b").decode()
MAKE = """
Name: make
DataWells:
  - {Edge: out}
Steps:
  - {ID: make, Uses: make, Outputs: [{Slot: out, Edge: out}]}
Tasks:
  - Name: make
    Exec: [sh, -c, 'test "$0" != fail && echo made > "$1"', "${mode}", "${out}"]
    Outputs: [{Name: out}]
    Flags: [{Name: mode, Type: string, Default: ok}]
"""
FAILS = MAKE.replace("Name: make\nDataWells", "Name: fails\nDataWells").replace("Default: ok", "Default: fail")
WAITS = """
Name: waits
DataWells:
  - {Edge: in, Source: upload}
  - {Edge: out}
Steps:
  - {ID: copy, Uses: copy, Inputs: [{Slot: in, Edge: in}], Outputs: [{Slot: out, Edge: out}]}
Tasks:
  - Name: copy
    Exec: [cp, "${in}", "${out}"]
    Inputs: [{Name: in}]
    Outputs: [{Name: out}]
"""


@pytest.fixture
def start(start_server: Callable[..., Server], flows_dir: Path) -> Callable[..., Server]:
    for name, text in {"make": MAKE, "fails": FAILS, "waits": WAITS}.items():
        (flows_dir / f"{name}.yaml").write_text(text)

    def started(**settings: Any) -> Server:
        defaults = {"webhook_allow_private": "true", "webhook_retry_delays": DELAYS, "webhook_timeout": 1}
        return start_server(**{**defaults, **settings})

    return started


def start_run(client: httpx.Client, flow: str, body: dict[str, Any] | None = None) -> str:
    answer = client.post(f"/api/v1/flow/{flow}", json=body) if body is not None else client.post(f"/api/v1/flow/{flow}")
    assert answer.status_code == 201, answer.text
    return answer.json()["ID"]


def webhook_key(server: Server) -> str:
    """What `flowengine webhook-key` prints for the server's data dir."""
    done = subprocess.run([sys.executable, "-m", "flowengine.cli", "webhook-key", "--data-dir", str(server.data_dir)],
                          capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def without_urls(doc: dict[str, Any]) -> dict[str, Any]:
    """A run document without its download URLs, which are minted per minute."""
    artifacts = [{k: v for k, v in a.items() if k not in ("GetURL", "Expires")} for a in doc["Artifacts"]]
    return {**doc, "Artifacts": artifacts}


def test_each_end_is_delivered_once_with_the_run_document_signed_with_the_generated_key(start, receiver):
    engine = start()
    key = webhook_key(engine)
    assert key.startswith("whsec_") and len(base64.b64decode(key.removeprefix("whsec_"))) == 32
    with engine.client() as client:
        complete = start_run(client, "make", {"Webhook": receiver.url})
        error = start_run(client, "fails", {"Webhook": receiver.url})
        stopped = start_run(client, "waits", {"Webhook": receiver.url})
        assert client.post(f"/api/v1/flow/{stopped}/cancel").status_code == 200
        requests = receiver.wait(3)
        time.sleep(1)
        assert len(receiver.requests) == 3  # once each
        bodies = {}
        for request in requests:
            verify(request, key)  # both schemes, with the key the CLI prints
            bodies[json.loads(request["body"])["ID"]] = (request, json.loads(request["body"]))
        assert {bodies[complete][1]["Status"], bodies[error][1]["Status"], bodies[stopped][1]["Status"]} == {
            "COMPLETE", "ERROR", "STOPPED"}  # fmt: skip
        assert bodies[error][1]["Error"] and bodies[error][1]["FailedStep"] == "make"
        for run_id, (request, body) in bodies.items():
            status = client.get(f"/api/v1/flow/status/{run_id}").json()
            assert without_urls(body) == without_urls(status)
            assert request["headers"]["content-type"] == "application/json"
        assert len({r["headers"]["webhook-id"] for r in requests}) == 3
        (artifact,) = bodies[complete][1]["Artifacts"]
        assert httpx.get(artifact["GetURL"]).content == b"made\n"  # the URL works for the receiver
        assert client.post(f"/api/v1/flow/{complete}/cancel").status_code == 200  # ended runs: nothing more
        time.sleep(0.5)
        assert len(receiver.requests) == 3


def test_a_configured_key_signs_instead_of_the_generated_one(start, receiver):
    engine = start(webhook_signing_key=KEY)
    assert webhook_key(engine) != KEY  # the CLI reads the setting as the server does: here, not set for it
    with engine.client() as client:
        start_run(client, "make", {"Webhook": receiver.url})
        (request,) = receiver.wait(1)
    verify(request, KEY)
    with pytest.raises(AssertionError):
        verify(request, webhook_key(engine))


def test_a_flow_files_webhook_is_its_runs_default_and_a_body_overrides_or_drops_it(start, receiver, flows_dir):
    other = Receiver()
    try:
        (flows_dir / "make.yaml").write_text(MAKE + f"Webhook: {receiver.url}\n")
        engine = start()
        with engine.client() as client:
            by_default = start_run(client, "make")
            overridden = start_run(client, "make", {"Webhook": other.url})
            dropped = start_run(client, "make", {"Webhook": ""})
            inline = start_run(client, "mine", {"Flow": {**_inline(), "Webhook": other.url}})
            for run_id in (by_default, overridden, dropped, inline):
                wait_for_status(client, run_id, {"COMPLETE"})
            receiver.wait(1)
            other.wait(2)
            time.sleep(1)
        assert [json.loads(r["body"])["ID"] for r in receiver.requests] == [by_default]
        assert sorted(json.loads(r["body"])["ID"] for r in other.requests) == sorted([overridden, inline])
    finally:
        other.close()


def test_a_failed_attempt_is_retried_under_the_same_webhook_id(start, receiver):
    engine = start(webhook_signing_key=KEY)
    receiver.script = [500, 503, 302]
    with engine.client() as client:
        run_id = start_run(client, "make", {"Webhook": receiver.url})
        requests = receiver.wait(4)
    assert [r["status"] for r in requests] == [500, 503, 302, 200]
    assert len({r["headers"]["webhook-id"] for r in requests}) == 1
    assert [verify(r, KEY)["ID"] for r in requests] == [run_id] * 4
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(requests)]
    assert gaps[1] >= 0.2 and gaps[2] >= 0.4  # the schedule's delays
    time.sleep(1)
    assert len(receiver.requests) == 4


def test_a_restart_loses_no_delivery_and_sends_none_twice(start, receiver):
    engine = start(webhook_signing_key=KEY, webhook_timeout=2)
    with engine.client() as client:
        sent = start_run(client, "make", {"Webhook": receiver.url})
        receiver.wait(1)
        receiver.hold.clear()  # the next attempt is taken and not answered
        cut = start_run(client, "make", {"Webhook": receiver.url})
        deadline = time.monotonic() + 20
        while receiver.received < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    engine.kill9()  # the second delivery under way, nothing recorded it as sent
    receiver.hold.set()
    engine.start()
    requests = receiver.wait(3)
    time.sleep(1.5)
    engine.stop()
    engine.start()  # a clean restart: nothing is pending, nothing is sent
    time.sleep(1.5)
    assert len(receiver.requests) == 3
    ids = [json.loads(r["body"])["ID"] for r in requests]
    assert ids.count(sent) == 1 and ids.count(cut) == 2
    cut_ids = {r["headers"]["webhook-id"] for r in requests if json.loads(r["body"])["ID"] == cut}
    assert len(cut_ids) == 1  # the repeat carries the same webhook-id: a receiver takes it once


def _inline(webhook: str | None = None) -> dict[str, Any]:
    flow = {
        "DataWells": [{"Edge": "out"}],
        "Steps": [{"ID": "make", "Uses": "make", "Outputs": [{"Slot": "out", "Edge": "out"}]}],
        "Tasks": [{"Name": "make", "Exec": ["sh", "-c", 'echo made > "$0"', "${out}"], "Outputs": [{"Name": "out"}]}],
    }
    return flow if webhook is None else {**flow, "Webhook": webhook}


BAD = [
    "http://example.com/hook",  # https only, unless private addresses are allowed
    "https://127.0.0.1/hook",
    "https://[::1]/hook",
    "https://10.1.2.3/hook",
    "https://169.254.169.254/latest",
    "https://user:pw@example.com/hook",
    "https://example.com/" + "a" * 2048,
    "ftp://example.com/",
    "not a url",
]


def test_bad_webhooks_are_422s_naming_the_field_and_start_no_run(start, flows_dir):
    (flows_dir / "private.yaml").write_text(MAKE.replace("Name: make\nData", "Name: private\nData")
                                            + "Webhook: https://192.168.1.1/hook\n")  # fmt: skip
    engine = start(webhook_allow_private="false")
    with engine.client() as client:
        for url in BAD:
            answer = client.post("/api/v1/flow/make", json={"Webhook": url})
            assert answer.status_code == 422, (url, answer.text)
            assert answer.json()["Location"] == "body.Webhook", answer.json()
            answer = client.post("/api/v1/flow/mine", json={"Flow": _inline(url)})
            assert answer.status_code == 422, (url, answer.text)
            assert [p["Path"] for p in answer.json()["Problems"]] == ["Webhook"], answer.json()
        answer = client.post("/api/v1/flow/make", json={"Webhook": 3})
        assert answer.status_code == 422 and answer.json()["Location"] == "body.Webhook", answer.text
        answer = client.post("/api/v1/flow/private")
        assert answer.status_code == 422 and answer.json()["Problems"][0]["Path"] == "Webhook", answer.text
        listed = {f["Name"]: f for f in client.get("/api/v1/flow").json()["Flows"]}
        assert not listed["private"]["Valid"] and listed["private"]["Problems"][0]["Path"] == "Webhook"
        assert client.get("/api/v1/flow/runs").json()["Total"] == 0
        assert start_run(client, "make", {"Webhook": "https://example.com/hook"})  # a public name is taken


def test_a_private_address_is_taken_only_where_the_operator_allows_it(start, receiver):
    refused = start(webhook_allow_private="false")
    with refused.client() as client:
        answer = client.post("/api/v1/flow/make", json={"Webhook": receiver.url})
        assert answer.status_code == 422 and answer.json()["Location"] == "body.Webhook"
        named = start_run(client, "make", {"Webhook": f"https://localhost:{free_port()}/hook"})  # resolved when sent
        wait_for_status(client, named, {"COMPLETE"})
    refused.stop()
    allowed = start(webhook_allow_private="true")
    with allowed.client() as client:
        start_run(client, "make", {"Webhook": receiver.url})
    receiver.wait(1)


def test_flowengine_validate_names_a_bad_webhook(tmp_path):
    flow = tmp_path / "make.yaml"
    flow.write_text(MAKE + "Webhook: http://127.0.0.1/hook\n")
    config = tmp_path / "config.yaml"
    config.write_text("webhook_allow_private: false\n")
    command = [sys.executable, "-m", "flowengine.cli", "validate", "--config", str(config), str(flow)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and "Webhook" in done.stdout and "https://" in done.stdout, done.stdout
    config.write_text("webhook_allow_private: true\n")
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout


def test_a_run_complete_when_it_starts_is_delivered_too(start, receiver):
    engine = start()
    seed = {"Flow": {"DataWells": [{"Edge": "file", "Source": "upload", "Key": "shared/reference.txt"}]}}
    static = {"Flow": {"DataWells": [{"Edge": "ref", "Source": "static", "Key": "shared/reference.txt"}]},
              "Webhook": receiver.url}  # fmt: skip
    with engine.client() as client:
        put = client.post("/api/v1/flow/seed", json=seed).json()["WaitingURLs"][0]["PutURL"]
        assert httpx.put(put, content=b"reference").status_code in (200, 201, 204)
        answer = client.post("/api/v1/flow/uses-static", json=static)
        assert answer.status_code == 201 and answer.json()["Status"] == "COMPLETE", answer.text
        (request,) = receiver.wait(1)
    body = verify(request, webhook_key(engine))
    assert body["ID"] == answer.json()["ID"] and body["Status"] == "COMPLETE"


def test_a_signing_key_that_is_not_whsec_base64_is_refused_naming_its_variable():
    with pytest.raises(Error) as caught:
        load_config(None, {"FLOWENGINE_WEBHOOK_SIGNING_KEY": "not-a-key"})
    assert caught.value.message.startswith("FLOWENGINE_WEBHOOK_SIGNING_KEY: 'not-a-key' is not"), caught.value.message
    assert load_config(None, {"FLOWENGINE_WEBHOOK_SIGNING_KEY": KEY}).webhook_signing_key == KEY
