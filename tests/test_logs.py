"""Log lines: every run and step transition, structured, in the format the operator chose."""

from __future__ import annotations

import json
import logging
import sys

from live import wait_for_status

from flowengine.logs import Formatter

FAILING = {
    "Flow": {
        "DataWells": [{"Edge": "in", "Source": "upload"}, {"Edge": "out"}],
        "Tasks": [
            {
                "Name": "flaky",
                "Inputs": [{"Name": "i"}],
                "Outputs": [{"Name": "o"}],
                "Exec": ["sh", "-c", "echo nope >&2; exit 3", "${i}", "${o}"],
                "MaxAttempts": 2,
                "Backoff": 0,
            }
        ],
        "Steps": [
            {
                "ID": "s",
                "Uses": "flaky",
                "Inputs": [{"Slot": "i", "Edge": "in"}],
                "Outputs": [{"Slot": "o", "Edge": "out"}],
            }
        ],
    }
}


def test_every_transition_of_a_run_is_one_json_line(start_server):
    server = start_server(log_level="info", log_format="json")
    with server.client() as client:
        run = client.post("/api/v1/flow/flaky", json=FAILING).json()
        put = run["WaitingURLs"][0]["PutURL"]
        assert client.put(put, content=b"data").status_code == 200
        wait_for_status(client, run["ID"], {"ERROR"})
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    ours = [line for line in lines if line.get("logger") == "flowengine.runs" and line.get("run") == run["ID"]]
    assert [line["msg"] for line in ours] == [
        "run.created", "edge.filled", "run.running",
        "step.started", "step.failed", "step.started", "step.failed", "run.error",
    ]  # fmt: skip
    created, filled, _, started, retried, _, last, error = ours
    assert created["status"] == "WAITING" and created["flow"] == "flaky" and created["level"] == "info"
    assert (filled["edge"], filled["source"], filled["size"]) == ("in", "upload", 4)
    assert (started["step"], started["attempt"]) == ("s", 1)
    assert retried["retry"] is True and retried["error"] == "exited with status 3" and retried["duration"] >= 0
    assert last["retry"] is False and last["attempt"] == 2 and last["level"] == "warning"
    assert error["step"] == "s" and "failed after 2 attempt(s)" in error["error"] and error["duration"] > 0


def record(**fields) -> logging.LogRecord:
    rec = logging.LogRecord("flowengine.runs", logging.INFO, __file__, 1, "run.created", None, None)
    rec.fields = fields  # type: ignore[attr-defined]
    return rec


def test_logfmt_quotes_what_needs_it_and_json_is_one_line():
    line = Formatter("logfmt").format(record(run="r1", error='exit "3"\nlast line', size=5))
    assert line.split(" ", 1)[1] == (
        'level=info logger=flowengine.runs msg=run.created run=r1 error="exit \\"3\\"\\nlast line" size=5'
    )
    assert json.loads(Formatter("json").format(record(run="r1", size=5)))["size"] == 5


def test_text_puts_the_message_first_and_a_traceback_after():
    try:
        raise ValueError("bad")
    except ValueError:
        rec = record(run="r1")
        rec.exc_info = sys.exc_info()
    text = Formatter("text").format(rec)
    first, *rest = text.splitlines()
    assert first.endswith("INFO flowengine.runs: run.created run=r1")
    assert rest[-1] == "ValueError: bad"
