"""What the running engine makes of its flow files and of inline flows: the same checks as
`flowengine validate`, every problem at once, durations as strings, imports checked in a child."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from live import wait_for_status

# A flow file whose one step calls tools:run (tools.py beside it) and writes what it returns.
PYTHON_FLOW = """\
DataWells: [{Edge: out}]
Tasks: [{Name: t, Python: "%s:run", Outputs: [{Name: o}]}]
Steps: [{ID: s, Uses: t, Outputs: [{Slot: o, Edge: out}]}]
"""
TOOLS = """\
import os
from pathlib import Path
try:  # who imported this module; a step cannot write outside its scratch dir, and needs not
    open(%r, "a").write(f"{os.getpid()} {'FLOWENGINE_SECRET' in os.environ}\\n")
except OSError:
    pass
def %s(inputs, flags, workdir):
    (Path(workdir) / "o.txt").write_text("done")
    return {"o": "o.txt"}
"""


def flows(client: httpx.Client) -> dict[str, dict]:
    return {f["Name"]: f for f in client.get("/api/v1/flow").json()["Flows"]}


def test_a_python_task_that_does_not_import_is_reported_until_its_module_is_fixed(
    flows_dir: Path, start_server, tmp_path: Path
):
    server = start_server(secret="engine-secret")
    marker = tmp_path / "imported-by"
    (flows_dir / "tools.py").write_text(TOOLS % (str(marker), "walk"))
    (flows_dir / "job.yaml").write_text(PYTHON_FLOW % "tools")
    with server.client() as client:
        listed = flows(client)["job"]
        assert not listed["Valid"]
        assert listed["Problems"] == [
            {"Path": "Tasks[0].Python", "Message": "cannot call 'tools:run': module 'tools' has no 'run'"}
        ]
        refused = client.post("/api/v1/flow/job")
        assert refused.status_code == 422 and refused.json()["Problems"] == listed["Problems"]

        # Fixing the module is enough: the flow file itself is untouched.
        (flows_dir / "tools.py").write_text(TOOLS % (str(marker), "run"))
        started = client.post("/api/v1/flow/job")
        assert started.status_code == 201, started.text
        assert wait_for_status(client, started.json()["ID"], {"COMPLETE", "ERROR"})["Status"] == "COMPLETE"
    assert server.proc is not None
    imports = [line.split() for line in marker.read_text().splitlines()]
    assert str(server.proc.pid) not in [pid for pid, _ in imports]  # operator code never ran in the engine
    assert imports[0][1] == "False"  # and the import check does not pass the engine's secrets on


def test_a_module_added_later_is_found(flows_dir: Path, client: httpx.Client, tmp_path: Path):
    (flows_dir / "job.yaml").write_text(PYTHON_FLOW % "later")
    assert client.post("/api/v1/flow/job").json()["Problems"] == [
        {
            "Path": "Tasks[0].Python",
            "Message": "cannot call 'later:run': no module named 'later' in the flows directory (or installed)",
        }
    ]
    (flows_dir / "later.py").write_text(TOOLS % (str(tmp_path / "marker"), "run"))
    assert client.post("/api/v1/flow/job").status_code == 201


def test_an_inline_flow_gets_every_structural_problem_at_once(client: httpx.Client):
    body = {
        "Flow": {
            "DataWells": [{"Source": "upload"}],
            "Tasks": [{"Name": "t", "timeout": 5, "Exec": "ls"}],
            "Stepz": [],
        }
    }
    refused = client.post("/api/v1/flow/x", json=body)
    assert refused.status_code == 422
    assert refused.json()["Problems"] == [
        {"Path": "DataWells[0]", "Message": "missing key 'Edge'"},
        {"Path": "Tasks[0]", "Message": "unknown key 'timeout', did you mean 'Timeout'?"},
        {"Path": "Tasks[0].Exec", "Message": "expected a list or null, got the string 'ls'"},
        {"Path": "", "Message": "unknown key 'Stepz', did you mean 'Steps'?"},
    ]
    assert refused.json()["Location"] == "body.Flow.DataWells[0]"  # the first problem's place in the request
    assert client.get("/api/v1/flow/runs").json()["Total"] == 0


def test_task_durations_given_as_strings_are_kept(client: httpx.Client):
    task = {"Name": "slow", "Exec": ["sleep", "5"], "Timeout": "1s", "MaxAttempts": 2, "Backoff": "200ms"}
    body = {"Flow": {"Tasks": [task], "Steps": [{"ID": "nap", "Uses": "slow"}]}}
    started = client.post("/api/v1/flow/naps", json=body)
    assert started.status_code == 201, started.text
    began = time.monotonic()
    doc = wait_for_status(client, started.json()["ID"], {"COMPLETE", "ERROR"}, timeout=30)
    assert doc["Status"] == "ERROR"
    [step] = doc["Steps"]
    assert step["Attempts"] == 2 and step["Error"] == "timed out after 1s", step
    assert time.monotonic() - began < 5  # killed at 1 s each time, not after sleep's 5 s
