"""The task library (flows/tasks/*.yaml), and inline flows that may use it but not define commands."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from live import wait_for_status

LIBRARY = """
Description: tools
Tasks:
  - Name: upper
    Inputs: [{Name: text}]
    Outputs: [{Name: loud, ContentType: text/plain}]
    Exec: ["sh", "-c", "tr a-z A-Z < \\"$0\\" > \\"$1\\"", "${text}", "${loud}"]
"""

BROKEN = """
Tasks:
  - Name: nothing-to-run
    Inputs: [{Name: a}]
  - Name: upper
    Exec: ["true"]
  - Name: fine
    Exec: ["true"]
"""


def uses(task: str) -> dict:
    return {
        "Flow": {
            "DataWells": [{"Edge": "in", "Source": "upload"}, {"Edge": "out"}],
            "Steps": [
                {"ID": "s", "Uses": task, "Inputs": [{"Slot": "text", "Edge": "in"}],
                 "Outputs": [{"Slot": "loud", "Edge": "out"}]}
            ],
        }
    }  # fmt: skip


OWN_COMMAND = {
    "Flow": {
        "DataWells": [{"Edge": "in", "Source": "upload"}],
        "Tasks": [{"Name": "pwn", "Exec": ["id"]}],
        "Steps": [{"ID": "s", "Uses": "pwn"}],
    }
}


@pytest.fixture
def library(flows_dir: Path) -> Path:
    (flows_dir / "tasks").mkdir()
    path = flows_dir / "tasks" / "text.yaml"
    path.write_text(LIBRARY)
    return path


def run_upper(client, body: dict, data: bytes) -> dict:
    run = client.post("/api/v1/flow/loud", json=body)
    assert run.status_code == 201, run.text
    assert client.put(run.json()["WaitingURLs"][0]["PutURL"], content=data).status_code == 200
    done = wait_for_status(client, run.json()["ID"], {"COMPLETE", "ERROR"})
    assert done["Status"] == "COMPLETE", done
    out = next(a for a in done["Artifacts"] if a["EdgeName"] == "out")
    return {"doc": done, "out": client.get(out["GetURL"]).content}


def test_by_default_an_inline_flow_may_not_define_a_command(library, start_server):
    server = start_server(inline_commands=False)
    with server.client() as client:
        answer = client.post("/api/v1/flow/evil", json=OWN_COMMAND)
        assert answer.status_code == 403, answer.text
        error = answer.json()
        assert error["Code"] == "inline_commands_disabled" and error["Location"] == "body.Flow.Tasks[0]"
        assert "'pwn' defines a command" in error["Message"] and "(upper)" in error["Message"]
        assert client.get("/api/v1/flow/runs").json()["Total"] == 0


def test_an_inline_flow_uses_the_library_by_name(library, start_server):
    server = start_server(inline_commands=False)
    with server.client() as client:
        assert run_upper(client, uses("upper"), b"quiet please")["out"] == b"QUIET PLEASE"
        answer = client.post("/api/v1/flow/loud", json=uses("nope"))
        assert answer.status_code == 422 and answer.json()["Problems"][0]["Path"] == "Steps[0].Uses"


def test_a_run_keeps_the_task_it_started_with_when_the_library_changes(library, start_server):
    server = start_server(inline_commands=False)
    with server.client() as client:
        first = client.post("/api/v1/flow/loud", json=uses("upper")).json()
        library.write_text(LIBRARY.replace("tr a-z A-Z", "rev"))
        time.sleep(1.1)  # the library is looked at once a second
        assert run_upper(client, uses("upper"), b"abc")["out"] == b"cba"
        assert client.put(first["WaitingURLs"][0]["PutURL"], content=b"abc").status_code == 200
        done = wait_for_status(client, first["ID"], {"COMPLETE"})
        out = next(a for a in done["Artifacts"] if a["EdgeName"] == "out")
        assert client.get(out["GetURL"]).content == b"ABC"


def test_the_library_is_listed_with_its_problems_and_its_valid_tasks_still_work(library, start_server):
    (library.parent / "zz-broken.yaml").write_text(BROKEN)
    (library.parent / "zz-not-yaml.yaml").write_text("Tasks: [")
    server = start_server(inline_commands=False)
    with server.client() as client:
        listed = client.get("/api/v1/tasks").json()
        assert [(t["Name"], t["File"], t["Runs"]) for t in listed["Tasks"]] == [
            ("upper", "text.yaml", "exec"), ("fine", "zz-broken.yaml", "exec"),
        ]  # fmt: skip
        assert listed["Tasks"][0]["Inputs"] == [{"Name": "text"}] and listed["Tasks"][0]["Description"] == "tools"
        paths = [p["Path"] for p in listed["Problems"]]
        assert paths[:2] == ["zz-broken.yaml: Tasks[0]", "zz-broken.yaml: Tasks[1].Name"]
        assert "already defined in text.yaml" in listed["Problems"][1]["Message"]
        assert paths[2].startswith("zz-not-yaml.yaml")
        assert run_upper(client, uses("upper"), b"x")["out"] == b"X"


def test_a_flow_file_uses_the_library_and_validate_checks_both(library, flows_dir, start_server):
    import subprocess
    import sys

    (flows_dir / "loud.yaml").write_text(
        "DataWells: [{Edge: in, Source: upload}, {Edge: out}]\n"
        "Steps: [{ID: s, Uses: upper, Inputs: [{Slot: text, Edge: in}], Outputs: [{Slot: loud, Edge: out}]}]\n"
    )
    checked = subprocess.run([sys.executable, "-m", "flowengine.cli", "validate", str(flows_dir)],
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{flows_dir}/tasks/text.yaml: ok" in checked.stdout and f"{flows_dir}/loud.yaml: ok" in checked.stdout
    server = start_server(inline_commands=False)
    with server.client() as client:
        run = client.post("/api/v1/flow/loud").json()
        assert client.put(run["WaitingURLs"][0]["PutURL"], content=b"hey").status_code == 200
        assert wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})["Status"] == "COMPLETE"


def test_by_default_an_inline_flow_may_not_define_a_store_but_uses_the_operators(start_server):
    """A store of the flow's own would make the engine connect wherever it says (with the operator's
    S3 credentials): refused, before anything is contacted. The operator's stores work by name."""
    server = start_server(inline_stores=False)
    own = {"Flow": {"Stores": [{"Name": "mine", "Type": "s3", "Params": {"endpoint": "127.0.0.1:9", "bucket": "b"}}],
                    "DataWells": [{"Edge": "in", "Store": "mine", "Source": "upload"}]}}  # fmt: skip
    with server.client() as client:
        answer = client.post("/api/v1/flow/mine", json=own)
        assert answer.status_code == 403, answer.text
        assert (answer.json()["Code"], answer.json()["Location"]) == ("inline_stores_disabled", "body.Flow.Stores[0]")
        assert "use a store the operator defined (default)" in answer.json()["Message"]
        named = client.post("/api/v1/flow/ok", json={"Flow": {"DataWells": [{"Edge": "in", "Store": "default",
                                                                               "Source": "upload"}]}})  # fmt: skip
        assert named.status_code == 201, named.text
        assert client.get("/api/v1/flow/runs").json()["Total"] == 1
