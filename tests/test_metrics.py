"""GET /metrics: the Prometheus text format, with what an operator watches."""

from __future__ import annotations

import time

import pytest
from live import metric, wait_for_status
from test_logs import FAILING

pytestmark = pytest.mark.backends("sqlite", "postgres")  # what goes through the database, on each

COPY = {
    "Flow": {
        "DataWells": [{"Edge": "in", "Source": "upload"}, {"Edge": "out"}],
        "Tasks": [
            {"Name": "cp", "Inputs": [{"Name": "i"}], "Outputs": [{"Name": "o"}], "Exec": ["cp", "${i}", "${o}"]}
        ],
        "Steps": [
            {
                "ID": "c",
                "Uses": "cp",
                "Inputs": [{"Slot": "i", "Edge": "in"}],
                "Outputs": [{"Slot": "o", "Edge": "out"}],
            }
        ],
    }
}


def test_metrics_count_runs_steps_bytes_and_the_event_loop(client):
    done = client.post("/api/v1/flow/copy", json=COPY).json()
    assert client.put(done["WaitingURLs"][0]["PutURL"], content=b"x" * 1000).status_code == 200
    failed = client.post("/api/v1/flow/flaky", json=FAILING).json()
    assert client.put(failed["WaitingURLs"][0]["PutURL"], content=b"y" * 24).status_code == 200
    client.post("/api/v1/flow/copy", json=COPY)  # stays WAITING
    wait_for_status(client, done["ID"], {"COMPLETE"})
    wait_for_status(client, failed["ID"], {"ERROR"})
    time.sleep(0.6)  # a couple of event-loop lag samples

    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain; version=")
    assert metric(client, "flowengine_runs", status="COMPLETE") == 1
    assert metric(client, "flowengine_runs", status="ERROR") == 1
    assert metric(client, "flowengine_runs", status="WAITING") == 1
    assert metric(client, "flowengine_waiting_uploads") == 1
    assert metric(client, "flowengine_transitions_total", kind="run.created") == 3
    assert metric(client, "flowengine_transitions_total", kind="step.failed") == 2
    assert metric(client, "flowengine_step_duration_seconds_count", outcome="succeeded") == 1
    assert metric(client, "flowengine_step_duration_seconds_count", outcome="failed") == 2
    assert metric(client, "flowengine_upload_bytes_total", source="upload") == 1024
    assert (metric(client, "flowengine_event_loop_lag_seconds_count") or 0) >= 1
    assert (metric(client, "process_resident_memory_bytes") or 0) > 10_000_000
