"""The flow API end to end: a real server on a loopback port, driven with httpx and curl."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from live import wait_for_status

pytestmark = pytest.mark.backends("sqlite", "postgres")  # what goes through the database, on each

CHECKSUM_FLOW = """
Name: checksum
Description: sha256 of an uploaded file
DataWells:
  - Edge: document
    Source: upload
  - Edge: report
    Key: "reports/${RUN_ID}.txt"
Tasks:
  - Name: sha256
    Inputs: [{Name: file}]
    Outputs: [{Name: digest, ContentType: text/plain}]
    Exec: ["sh", "-c", "sha256sum < \\"$0\\" | cut -d' ' -f1 > \\"$1\\"", "${file}", "${digest}"]
Steps:
  - ID: hash
    Uses: sha256
    Inputs: [{Slot: file, Edge: document}]
    Outputs: [{Slot: digest, Edge: report}]
"""


def inline(wells: list[dict], steps: list[dict] | None = None, tasks: list[dict] | None = None) -> dict:
    return {"Flow": {"DataWells": wells, "Steps": steps or [], "Tasks": tasks or []}}


def upload_well(edge: str = "file", **extra) -> dict:
    return {"Edge": edge, "Source": "upload", **extra}


def start(client: httpx.Client, name: str, body: dict | None = None) -> dict:
    response = (
        client.post(f"/api/v1/flow/{name}", json=body) if body is not None else client.post(f"/api/v1/flow/{name}")
    )
    assert response.status_code == 201, response.text
    return response.json()


def runs_total(client: httpx.Client) -> int:
    return client.get("/api/v1/flow/runs").json()["Total"]


@pytest.fixture
def checksum_flow(flows_dir: Path) -> None:
    (flows_dir / "checksum.yaml").write_text(CHECKSUM_FLOW)


def test_flow_file_run_with_curl_exactly_as_the_reference(checksum_flow, client, tmp_path):
    run = start(client, "checksum")
    assert run["Status"] == "WAITING"
    [waiting] = run["WaitingURLs"]
    assert waiting["Artifact"] == {
        "StoreName": "default",
        "ObjectName": f"inputs/checksum/{run['ID']}/document",
        "EdgeName": "document",
    }
    assert waiting["TTL"].endswith("Z") and "Headers" not in waiting
    payload = tmp_path / "input-image.jpg"
    payload.write_bytes(b"\xff\xd8 not really a jpeg " * 1000)
    put = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", waiting["PutURL"],
         "-H", "Content-Type: image/jpeg", "--data-binary", f"@{payload}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert put.stdout == "200"
    done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
    assert done["Status"] == "COMPLETE", done
    assert done["WaitingURLs"] == []
    arts = {a["EdgeName"]: a for a in done["Artifacts"]}
    assert arts["document"]["ContentType"] == "image/jpeg"
    assert arts["document"]["Size"] == payload.stat().st_size
    assert arts["report"]["ObjectName"] == f"reports/{run['ID']}.txt"
    assert (arts["document"]["Source"], arts["report"]["Source"]) == ("upload", "step")
    report = httpx.get(arts["report"]["GetURL"])
    assert report.status_code == 200
    assert report.text.strip() == hashlib.sha256(payload.read_bytes()).hexdigest()
    assert [s["Status"] for s in done["Steps"]] == ["COMPLETE"]


def test_reference_inline_flow_without_steps_completes_when_its_input_lands(client):
    body = inline([{"Edge": "image-input", "Store": "default", "Source": "upload", "Key": "${RUN_ID}/input.jpg"}])
    run = start(client, "test", body)
    assert run["Flow"] == "test"
    [waiting] = run["WaitingURLs"]
    assert waiting["Artifact"]["ObjectName"] == f"{run['ID']}/input.jpg"
    assert httpx.put(waiting["PutURL"], content=b"jpeg", headers={"Content-Type": "image/jpeg"}).status_code == 200
    status = client.get(f"/api/v1/flow/status/{run['ID']}").json()  # advanced at once: no polling needed
    assert status["Status"] == "COMPLETE"
    assert httpx.get(status["Artifacts"][0]["GetURL"]).content == b"jpeg"


def test_signed_headers_are_listed_and_enforced(client):
    well = upload_well(Size=5, ContentType="text/plain", Overwrite=False)
    run = start(client, "strict", inline([well]))
    [waiting] = run["WaitingURLs"]
    headers = waiting["Headers"]
    assert headers == {"Content-Length": "5", "Content-Type": "text/plain", "If-None-Match": "*"}
    url = waiting["PutURL"]
    missing = {k: v for k, v in headers.items() if k != "If-None-Match"}
    assert httpx.put(url, content=b"hello", headers=missing).status_code == 403
    assert httpx.put(url, content=b"hello!", headers={**headers, "Content-Length": "6"}).status_code == 403
    wrong_type = {**headers, "Content-Type": "text/csv"}
    assert httpx.put(url, content=b"hello", headers=wrong_type).json()["Code"] == "signature_rejected"
    tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
    assert httpx.put(tampered, content=b"hello", headers=headers).status_code == 403
    assert client.get(f"/api/v1/flow/status/{run['ID']}").json()["Status"] == "WAITING"
    assert httpx.put(url, content=b"hello", headers=headers).status_code == 200
    assert httpx.put(url, content=b"hello", headers=headers).status_code == 412
    assert client.get(f"/api/v1/flow/status/{run['ID']}").json()["Status"] == "COMPLETE"


def test_expired_put_url_is_refused_then_the_run_errors_and_refresh_revives_a_waiting_run(client):
    run = start(client, "short", inline([upload_well(TTL=1)]))  # expires within 2 s (whole seconds)
    url = run["WaitingURLs"][0]["PutURL"]
    other = start(client, "short", inline([upload_well(TTL=2)]))  # would expire within 3 s
    time.sleep(1.5)
    refreshed = client.post(f"/api/v1/flow/{other['ID']}/refresh")  # now expires 2 s from here at the earliest
    assert refreshed.status_code == 200
    assert refreshed.json()["WaitingURLs"][0]["TTL"] > other["WaitingURLs"][0]["TTL"]
    time.sleep(1.6)
    expired = httpx.put(url, content=b"late")
    assert expired.status_code == 403 and "expired" in expired.json()["Message"]
    failed = wait_for_status(client, run["ID"], {"ERROR"})
    assert failed["Error"] == "upload for edge 'file' expired"
    # The refreshed run got a new TTL from the refresh: still waiting, and its new URL works.
    status = client.get(f"/api/v1/flow/status/{other['ID']}").json()
    assert status["Status"] == "WAITING"
    assert httpx.put(status["WaitingURLs"][0]["PutURL"], content=b"ok").status_code == 200
    assert client.get(f"/api/v1/flow/status/{other['ID']}").json()["Status"] == "COMPLETE"
    assert client.post(f"/api/v1/flow/{other['ID']}/refresh").status_code == 409


def test_size_limit_is_413_and_nothing_is_stored(start_server, tmp_path):
    server = start_server(max_upload_size=1000)
    with server.client() as client:
        run = start(client, "big", inline([upload_well()]))
        url = run["WaitingURLs"][0]["PutURL"]
        assert httpx.put(url, content=b"x" * 1001).status_code == 413

        def chunks():
            yield b"x" * 600
            yield b"x" * 600

        assert httpx.put(url, content=chunks()).status_code == 413  # no Content-Length: caught while streaming
        assert client.get(f"/api/v1/flow/status/{run['ID']}").json()["Status"] == "WAITING"
        assert not list((server.data_dir / "objects" / "default").rglob("file"))
        assert httpx.put(url, content=b"x" * 1000).status_code == 200


def test_accept_and_declared_type_refuse_a_wrong_object_and_keep_waiting(client):
    run = start(client, "typed", inline([upload_well(Accept=["image/*"])]))
    url = run["WaitingURLs"][0]["PutURL"]
    refused = httpx.put(url, content=b"a,b", headers={"Content-Type": "text/csv"})
    assert refused.status_code == 415 and "image/*" in refused.json()["Message"]
    assert client.get(f"/api/v1/flow/status/{run['ID']}").json()["Status"] == "WAITING"
    assert httpx.put(url, content=b"png", headers={"Content-Type": "image/png"}).status_code == 200


def test_webhook_well_and_direct_upload(client):
    body = inline([{"Edge": "hooked", "Source": "webhook"}, upload_well("direct")])
    run = start(client, "sources", body)
    urls = {w["Artifact"]["EdgeName"]: w["PutURL"] for w in run["WaitingURLs"]}
    assert "/api/v1/hook/" in urls["hooked"]
    assert httpx.post(urls["hooked"].replace("X-Expires=", "X-Expires=1"), content=b"{}").status_code == 403
    posted = httpx.post(urls["hooked"], content=b'{"event": 1}', headers={"Content-Type": "application/json"})
    assert posted.status_code == 200 and posted.json()["Status"] == "WAITING"
    direct = client.post(f"/api/v1/upload/{run['ID']}/direct", content=b"direct bytes")
    assert direct.status_code == 200 and direct.json()["Status"] == "COMPLETE"
    again = client.post(f"/api/v1/upload/{run['ID']}/direct", content=b"again")
    assert again.status_code == 409
    assert client.post(f"/api/v1/upload/{run['ID']}/nope", content=b"x").status_code == 404
    arts = {a["EdgeName"]: a for a in client.get(f"/api/v1/flow/status/{run['ID']}").json()["Artifacts"]}
    assert httpx.get(arts["hooked"]["GetURL"]).json() == {"event": 1}
    assert httpx.get(arts["direct"]["GetURL"]).content == b"direct bytes"


def test_static_well_must_exist(client):
    seed = start(client, "seed", inline([upload_well(Key="shared/reference.txt")]))
    httpx.put(seed["WaitingURLs"][0]["PutURL"], content=b"reference", headers={"Content-Type": "text/plain"})
    static = {"Edge": "ref", "Source": "static", "Key": "shared/reference.txt"}
    run = start(client, "uses-static", inline([static]))
    assert run["Status"] == "COMPLETE" and run["Artifacts"][0]["Size"] == 9
    before = runs_total(client)
    missing = client.post("/api/v1/flow/x", json=inline([{**static, "Key": "shared/missing.txt"}]))
    assert missing.status_code == 422
    assert missing.json()["Location"] == "DataWells[0].Key"
    assert runs_total(client) == before


def test_retries_then_success_and_logs(client):
    task = {"Name": "flaky", "Outputs": [{"Name": "out"}], "MaxAttempts": 3, "Backoff": 0.05,
            "Exec": ["sh", "-c", 'echo "attempt $FLOWENGINE_ATTEMPT"; [ "$FLOWENGINE_ATTEMPT" -ge 2 ] && '
                                 'echo done > "$0"', "${out}"]}  # fmt: skip
    step = {"ID": "try", "Uses": "flaky", "Outputs": [{"Slot": "out", "Edge": "result"}]}
    run = start(client, "retry", inline([], [step], [task]))
    done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
    assert done["Status"] == "COMPLETE", done
    [state] = done["Steps"]
    assert state["Attempts"] == 2 and state["Logs"] == ["attempt 2"]
    [result] = [a for a in done["Artifacts"] if a["EdgeName"] == "result"]
    # The second attempt wrote under a key of its own, and the run points there.
    assert result["ObjectName"] == f"outputs/retry/{run['ID']}/attempt-2/result"
    assert httpx.get(result["GetURL"]).content == b"done\n"


def test_failure_after_max_attempts_reports_reason_and_logs(client):
    task = {"Name": "broken", "MaxAttempts": 2, "Backoff": 0.05,
            "Exec": ["sh", "-c", "echo reading input; echo 'fatal: bad header' >&2; exit 3"]}  # fmt: skip
    run = start(client, "fails", inline([], [{"ID": "parse", "Uses": "broken"}], [task]))
    failed = wait_for_status(client, run["ID"], {"ERROR"})
    assert failed["Error"] == "step 'parse' failed after 2 attempt(s): exited with status 3"
    assert failed["FailedStep"] == "parse"
    assert failed["Logs"] == ["reading input", "fatal: bad header"]
    log = client.get(f"/api/v1/flow/{run['ID']}/logs/parse", params={"attempt": 1})
    assert log.status_code == 200 and log.text == "reading input\nfatal: bad header\n"
    assert log.headers["content-type"].startswith("text/plain")
    assert client.get(f"/api/v1/flow/{run['ID']}/logs/parse").text == log.text  # the last attempt by default
    assert client.get(f"/api/v1/flow/{run['ID']}/logs/parse", params={"attempt": 3}).status_code == 400
    assert client.get(f"/api/v1/flow/{run['ID']}/logs/nope").json()["Location"] == "path.stepID"


def test_timeout_kills_the_step(client):
    task = {"Name": "slow", "Timeout": 0.5, "Exec": ["sleep", "30"]}
    run = start(client, "slow", inline([], [{"ID": "nap", "Uses": "slow"}], [task]))
    failed = wait_for_status(client, run["ID"], {"ERROR"}, timeout=10)
    assert "timed out after 0.5s" in failed["Error"]


def test_independent_steps_run_in_parallel_and_a_join_waits_for_both(client):
    def stamp(name: str) -> dict:
        return {"Name": name, "Inputs": [{"Name": "src"}], "Outputs": [{"Name": "out"}],
                "Exec": ["sh", "-c", 'sleep 0.6; cp "$0" "$1"', "${src}", "${out}"]}  # fmt: skip

    join = {"Name": "join", "Inputs": [{"Name": "a"}, {"Name": "b"}], "Outputs": [{"Name": "out"}],
            "Exec": ["sh", "-c", 'cat "$0" "$1" > "$2"', "${a}", "${b}", "${out}"]}  # fmt: skip

    def copy(step_id: str, task: str, out: str) -> dict:
        return {"ID": step_id, "Uses": task, "Inputs": [{"Slot": "src", "Edge": "in"}],
                "Outputs": [{"Slot": "out", "Edge": out}]}  # fmt: skip

    steps = [
        copy("left", "l", "a"),
        copy("right", "r", "b"),
        {"ID": "both", "Uses": "join", "Inputs": [{"Slot": "a", "Edge": "a"}, {"Slot": "b", "Edge": "b"}],
         "Outputs": [{"Slot": "out", "Edge": "joined"}]},
    ]  # fmt: skip
    run = start(client, "fan", inline([upload_well("in")], steps, [stamp("l"), stamp("r"), join]))
    httpx.put(run["WaitingURLs"][0]["PutURL"], content=b"ab")
    done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
    assert done["Status"] == "COMPLETE", done
    steps_by_id = {s["ID"]: s for s in done["Steps"]}
    left, right, both = steps_by_id["left"], steps_by_id["right"], steps_by_id["both"]
    assert left["Started"] < right["Finished"] and right["Started"] < left["Finished"]  # overlapped
    assert both["Started"] >= max(left["Finished"], right["Finished"])
    joined = next(a for a in done["Artifacts"] if a["EdgeName"] == "joined")
    assert httpx.get(joined["GetURL"]).content == b"abab"


def test_python_task(flows_dir, client):
    (flows_dir / "pytasks.py").write_text(
        "from pathlib import Path\n"
        "def upper(inputs, flags, workdir):\n"
        "    out = Path(workdir) / 'upper.txt'\n"
        "    text = Path(inputs['text']).read_text()\n"
        "    print('converting', len(text), 'chars')\n"
        "    out.write_text(text.upper() * flags['times'])\n"
        "    return {'result': out}\n"
    )
    task = {"Name": "upper", "Inputs": [{"Name": "text"}], "Outputs": [{"Name": "result"}],
            "Flags": [{"Name": "times", "Default": 1}], "Python": "pytasks:upper"}  # fmt: skip
    step = {"ID": "up", "Uses": "upper", "Flags": {"times": 2},
            "Inputs": [{"Slot": "text", "Edge": "in"}], "Outputs": [{"Slot": "result", "Edge": "out"}]}  # fmt: skip
    run = start(client, "py", inline([upload_well("in")], [step], [task]))
    httpx.put(run["WaitingURLs"][0]["PutURL"], content=b"abc")
    done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
    assert done["Status"] == "COMPLETE", done
    out = next(a for a in done["Artifacts"] if a["EdgeName"] == "out")
    assert httpx.get(out["GetURL"]).content == b"ABCABC"
    assert done["Steps"][0]["Logs"] == ["converting 3 chars"]


def test_cancel_stops_a_running_step(client):
    task = {"Name": "long", "Exec": ["sh", "-c", "echo started; sleep 2; echo still running"]}
    run = start(client, "long", inline([], [{"ID": "wait", "Uses": "long"}], [task]))
    wait_for_status(client, run["ID"], {"RUNNING"})
    time.sleep(0.3)
    cancelled = client.post(f"/api/v1/flow/{run['ID']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["Status"] == "STOPPED"
    assert client.post(f"/api/v1/flow/{run['ID']}/cancel").json()["Status"] == "STOPPED"  # idempotent
    time.sleep(2.5)
    assert client.get(f"/api/v1/flow/{run['ID']}/logs/wait").text == "started\n"  # killed before it went on


def test_lists_flows_and_runs_with_filters_and_pages(checksum_flow, flows_dir, client):
    (flows_dir / "broken.yaml").write_text("Name: broken\nSteps: [{ID: a, Uses: missing}]\n")
    flows = {f["Name"]: f for f in client.get("/api/v1/flow").json()["Flows"]}
    assert flows["checksum"]["Valid"] and flows["checksum"]["Inputs"] == ["document"]
    assert not flows["broken"]["Valid"] and flows["broken"]["Problems"][0]["Path"] == "Steps[0].Uses"
    ids = [start(client, "checksum")["ID"] for _ in range(3)]
    start(client, "other", inline([]))
    page = client.get("/api/v1/flow/runs", params={"flow": "checksum", "limit": 2}).json()
    assert page["Total"] == 3 and [r["ID"] for r in page["Runs"]] == ids[::-1][:2]
    rest = client.get("/api/v1/flow/runs", params={"flow": "checksum", "limit": 2, "offset": 2}).json()
    assert [r["ID"] for r in rest["Runs"]] == [ids[0]]
    complete = client.get("/api/v1/flow/runs", params={"status": "complete"}).json()
    assert [r["Flow"] for r in complete["Runs"]] == ["other"]
    assert client.get("/api/v1/flow/runs", params={"limit": 0}).status_code == 400
    assert client.get("/api/v1/flow/runs", params={"status": "DONE"}).json()["Location"] == "query.status"


BAD_BODIES = [
    (b"{not json", 400, "malformed_json", "body"),
    (b'{"Flow": []}', 422, "invalid_field", "body.Flow"),
    (b'{"Flow": {"DataWells": [{"Edge": 5}]}}', 422, "invalid_field", "body.Flow.DataWells[0].Edge"),
    (b'{"Flow": {"Bogus": 1}}', 422, "invalid_field", "body.Flow"),
    (b'{"Flows": {}}', 422, "invalid_field", "body"),
    (b'"a string"', 422, "invalid_field", "body"),
]


@pytest.mark.parametrize(("body", "status", "code", "location"), BAD_BODIES)
def test_bad_bodies_get_a_clear_4xx_and_store_nothing(client, body, status, code, location):
    response = client.post("/api/v1/flow/x", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()
    assert error["Code"] == code and error["Location"] == location and error["Message"]
    assert runs_total(client) == 0


def test_invalid_flow_gets_every_problem_at_once(client):
    body = inline(
        [{"Edge": "a", "Source": "carrier-pigeon"}, {"Edge": "b", "Source": "upload", "Key": "../../etc/passwd"}],
        [{"ID": "s", "Uses": "nothing"}],
    )
    response = client.post("/api/v1/flow/x", json=body)
    assert response.status_code == 422
    paths = {p["Path"] for p in response.json()["Problems"]}
    assert {"DataWells[0].Source", "DataWells[1].Key", "Steps[0].Uses"} <= paths
    assert runs_total(client) == 0


def test_oversized_json_body_is_413(client):
    response = client.post("/api/v1/flow/x", content=b" " * (1_048_577), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["Code"] == "too_large"


def test_unknown_things_are_404(client):
    assert client.post("/api/v1/flow/no-such-flow").json()["Code"] == "not_found"
    assert client.post("/api/v1/flow/..%2F..%2Fetc").status_code == 404
    for path in ("/api/v1/flow/status/nope", "/api/v1/flow/nope/cancel", "/api/v1/flow/nope/refresh"):
        method = client.get if "status" in path else client.post
        response = method(path)
        assert response.status_code == 404 and response.json()["Location"] == "path.runID"
    assert client.get("/no/such/route").json()["Code"] == "not_found"


def test_head_of_a_status_goes_through_the_router_and_answers_like_get_without_a_body(client):
    run = start(client, "head", inline([upload_well()]))
    get, head = (client.request(m, f"/api/v1/flow/status/{run['ID']}") for m in ("GET", "HEAD"))
    assert head.status_code == 200 and head.content == b"" and head.headers["content-type"] == "application/json"
    assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))
    assert client.head("/api/v1/flow/status/nope").status_code == 404


def test_path_tricks_in_keys_are_refused(client, server):
    run = start(client, "k", inline([upload_well()]))
    url = httpx.URL(run["WaitingURLs"][0]["PutURL"])
    for path in ("/store/default/inputs/../../../escaped", "/store/default/inputs/%2E%2E/%2E%2E/%2E%2E/escaped"):
        sneaky = f"{server.url}{path}?{url.query.decode()}"
        curl = ["curl", "-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", sneaky]
        put = subprocess.run([*curl, "--data-binary", "x"], capture_output=True, text=True)
        assert put.stdout in ("400", "404"), path
    assert not list(server.data_dir.parent.rglob("escaped"))
    assert httpx.put(f"{server.url}/store/nope/a?X-Expires=1&X-Signature=x", content=b"x").status_code == 403
    assert not (server.data_dir / "objects" / "nope").exists()  # an unsigned request opens no store
    unsigned = httpx.put(f"{server.url}/store/default/inputs/k/{run['ID']}/file", content=b"x")
    assert unsigned.status_code == 403


def test_a_step_writing_to_a_finished_run_is_refused(client):
    run = start(client, "done", inline([upload_well()]))
    url = run["WaitingURLs"][0]["PutURL"]
    client.post(f"/api/v1/flow/{run['ID']}/cancel")
    late = httpx.put(url, content=b"x")
    assert late.status_code == 409
    assert (
        client.post(f"/api/v1/upload/{run['ID']}/file", content=b"x")
        .json()["Message"]
        .endswith("it takes no more uploads")
    )


def test_kill_9_restart_resumes_waiting_and_running_runs(start_server, tmp_path):
    task = {"Name": "slow-copy", "Inputs": [{"Name": "src"}], "Outputs": [{"Name": "out"}],
            "Exec": ["sh", "-c", 'sleep 1; cp "$0" "$1"', "${src}", "${out}"]}  # fmt: skip
    step = {"ID": "copy", "Uses": "slow-copy", "Inputs": [{"Slot": "src", "Edge": "in"}],
            "Outputs": [{"Slot": "out", "Edge": "out"}]}  # fmt: skip
    body = inline([upload_well("in")], [step], [task])
    data = tmp_path / "kept-data"
    server = start_server(data_dir=data)
    with server.client() as client:
        waiting = start(client, "restart", body)
        running = start(client, "restart", body)
        httpx.put(running["WaitingURLs"][0]["PutURL"], content=b"running")
        wait_for_status(client, running["ID"], {"RUNNING"})
        time.sleep(0.2)
    server.kill9()
    server = start_server(data_dir=data, port=server.port)
    with server.client() as client:
        put = httpx.put(waiting["WaitingURLs"][0]["PutURL"], content=b"waiting")  # the old URL still works
        assert put.status_code == 200
        # The interrupted step ran again, as a second attempt; the other once.
        for run, content, attempts in ((waiting, b"waiting", 1), (running, b"running", 2)):
            done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
            assert done["Status"] == "COMPLETE", done
            assert done["Steps"][0]["Attempts"] == attempts
            out = next(a for a in done["Artifacts"] if a["EdgeName"] == "out")
            assert httpx.get(out["GetURL"]).content == content


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"Status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["Status"] == "ready"


def test_documents_are_json_with_pascal_case(checksum_flow, client):
    run = start(client, "checksum")
    raw = client.get(f"/api/v1/flow/status/{run['ID']}")
    assert raw.headers["content-type"] == "application/json"
    assert set(json.loads(raw.content)) >= {"ID", "Status", "WaitingURLs", "Steps", "Artifacts", "Created"}


def test_inline_flows_can_be_switched_off(start_server, flows_dir):
    (flows_dir / "collect.yaml").write_text("DataWells: [{Edge: file, Source: upload}]\n")
    server = start_server(inline_flows="false")
    with server.client() as client:
        refused = client.post("/api/v1/flow/x", json=inline([upload_well()]))
        assert refused.status_code == 403 and refused.json()["Location"] == "body.Flow"
        assert runs_total(client) == 0
        assert start(client, "collect")["Status"] == "WAITING"


def test_the_same_definition_posted_again_makes_a_new_run_each_time_named_by_its_url(client):
    body = inline([upload_well()])
    runs = [start(client, "alpha", body), start(client, "alpha", body), start(client, "beta", body)]
    assert len({r["ID"] for r in runs}) == 3 and [r["Flow"] for r in runs] == ["alpha", "alpha", "beta"]
    keys = [r["WaitingURLs"][0]["Artifact"]["ObjectName"] for r in runs]
    assert keys == [f"inputs/{r['Flow']}/{r['ID']}/file" for r in runs]
    invalid = inline([upload_well(Store="nowhere")])
    assert [client.post("/api/v1/flow/alpha", json=invalid).status_code for _ in range(2)] == [422, 422]


def test_a_key_too_long_for_any_run_is_refused_before_anything_is_stored(client):
    before = runs_total(client)
    long_key = upload_well(Key="${FLOW_NAME}/" * 8 + "${RUN_ID}")  # 8 names of 128 characters
    refused = client.post(f"/api/v1/flow/{'n' * 128}", json=inline([long_key]))
    assert refused.status_code == 422 and refused.json()["Code"] == "invalid_key"
    assert refused.json()["Location"] == "DataWells[0].Key" and "longer than 1024 bytes" in refused.json()["Message"]
    assert runs_total(client) == before


def test_two_runs_cannot_wait_for_the_same_key(client):
    body = inline([upload_well(Key="fixed/input.bin")])
    first = start(client, "fixed", body)
    before = runs_total(client)
    second = client.post("/api/v1/flow/fixed", json=body)
    assert second.status_code == 409 and second.json()["Location"] == "DataWells[0].Key"
    assert runs_total(client) == before
    httpx.put(first["WaitingURLs"][0]["PutURL"], content=b"x")  # once filled, the key is free again
    assert start(client, "fixed", inline([upload_well(Key="fixed/input.bin", Overwrite=False)]))["Status"] == "WAITING"


def test_concurrent_creations_share_a_commit_but_not_a_fate(server):
    from concurrent.futures import ThreadPoolExecutor

    def post(body: dict) -> httpx.Response:
        with server.client() as c:
            return c.post("/api/v1/flow/race", json=body)

    with ThreadPoolExecutor(16) as pool:
        racing = list(pool.map(post, [inline([upload_well(Key="race/${EDGE}")])] * 8))
        others = list(pool.map(post, [inline([upload_well()])] * 8))
    assert sorted(a.status_code for a in racing) == [201] + [409] * 7
    assert all(a.status_code == 201 for a in others)
    with server.client() as c:
        assert all(c.get(f"/api/v1/flow/status/{a.json()['ID']}").json()["Status"] == "WAITING" for a in others)
        assert runs_total(c) == 9


def test_an_upload_in_place_before_a_crash_advances_its_run_on_restart(start_server, tmp_path):
    from flowengine.stores.base import ObjectInfo
    from flowengine.stores.local import LocalStore
    from flowengine.stores.signing import Signer

    data = tmp_path / "crashed"
    server = start_server(data_dir=data)
    with server.client() as client:
        run = start(client, "crash", inline([upload_well()]))
    server.kill9()
    # As if the process died right after the upload's rename, before its run advanced.
    store = LocalStore("default", data, Signer(b"unused for writing"))
    key = run["WaitingURLs"][0]["Artifact"]["ObjectName"]
    temp = store.tmp_root / "landed"
    temp.write_bytes(b"made it")
    store.commit(temp, key, ObjectInfo(7, "text/plain", "etag", 0.0))
    server = start_server(data_dir=data, port=server.port)
    with server.client() as client:
        done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
    assert done["Status"] == "COMPLETE" and done["Artifacts"][0]["Size"] == 7


def test_two_edges_of_one_run_cannot_share_a_key(client):
    body = inline([upload_well("a", Key="same"), upload_well("b", Key="same")])
    refused = client.post("/api/v1/flow/twins", json=body)
    assert refused.status_code == 422 and refused.json()["Location"] == "DataWells[1].Key"
    assert "'a' and 'b'" in refused.json()["Message"]
    assert runs_total(client) == 0


def test_concurrency_bounds_parallel_steps(start_server):

    def nap(step_id: str) -> dict:
        return {"ID": step_id, "Uses": "nap"}

    task = {"Name": "nap", "Exec": ["sleep", "0.4"]}
    server = start_server(concurrency=1)
    with server.client() as client:
        run = start(client, "serial", inline([], [nap("a"), nap("b")], [task]))
        done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
    a, b = sorted(done["Steps"], key=lambda s: s["Started"])
    assert b["Started"] >= a["Finished"]  # one slot: the second waited for the first


def test_direct_upload_is_checked_against_the_well(client):
    run = start(client, "checked", inline([upload_well("sized", Size=3), upload_well("capped", MaxSize=2)]))
    wrong = client.post(f"/api/v1/upload/{run['ID']}/sized", content=b"four")
    assert wrong.status_code == 400 and wrong.json()["Code"] == "size_mismatch"
    big = client.post(f"/api/v1/upload/{run['ID']}/capped", content=b"abc")
    assert big.status_code == 413 and big.json()["Code"] == "too_large"
    assert client.post(f"/api/v1/upload/{run['ID']}/sized", content=b"one").json()["Status"] == "WAITING"
    assert client.post(f"/api/v1/upload/{run['ID']}/capped", content=b"ok").json()["Status"] == "COMPLETE"


def test_a_flows_own_embedded_store_takes_uploads_after_a_restart(start_server, tmp_path):
    data = tmp_path / "scratch-data"
    server = start_server(data_dir=data)
    body = {"Flow": {"Stores": [{"Name": "scratch"}], "DataWells": [{**upload_well(), "Store": "scratch"}]}}
    with server.client() as client:
        run = start(client, "scratch", body)
    server.stop()
    server = start_server(data_dir=data, port=server.port)
    assert httpx.put(run["WaitingURLs"][0]["PutURL"], content=b"kept").status_code == 200
    with server.client() as client:
        assert client.get(f"/api/v1/flow/status/{run['ID']}").json()["Status"] == "COMPLETE"


def test_retention_sweeps_embedded_objects_and_step_logs(start_server, flows_dir):
    server = start_server(input_retention=1, output_retention=1, sweep_interval=0.3)
    task = {"Name": "say", "Outputs": [{"Name": "out"}], "Exec": ["sh", "-c", 'echo said; echo hi > "$0"', "${out}"]}
    with server.client() as client:
        run = start(client, "kept", inline([upload_well()], [{"ID": "s", "Uses": "say", "Outputs": [
            {"Slot": "out", "Edge": "said"}]}], [task]))  # fmt: skip
        httpx.put(run["WaitingURLs"][0]["PutURL"], content=b"input")
        done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
        assert done["Status"] == "COMPLETE", done
        assert client.get(f"/api/v1/flow/{run['ID']}/logs/s").text == "said\n"
        objects = server.data_dir / "objects" / "default"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            doc = client.get(f"/api/v1/flow/status/{run['ID']}").json()
            # One sweep deletes the logs, then each object: on PostgreSQL it yields between them.
            if (all(a.get("Expired") for a in doc["Artifacts"]) and not (server.data_dir / "logs" / run["ID"]).exists()
                    and not list(objects.rglob(f"*{run['ID']}*"))):  # fmt: skip
                break
            time.sleep(0.1)
        assert all(a.get("Expired") and "GetURL" not in a for a in doc["Artifacts"]), doc["Artifacts"]
        assert not list(objects.rglob(f"*{run['ID']}*"))
        assert not (server.data_dir / "logs" / run["ID"]).exists()
        assert client.get(f"/api/v1/flow/{run['ID']}/logs/s").status_code == 404


def test_a_flow_over_the_size_limits_is_a_quick_422_and_stores_nothing(client):
    # 9,000 steps in one cycle, about 900 KB: it kept the event loop busy for 21 s when cycles were
    # found by asking every step what it can reach.
    task = {"Name": "pass", "Inputs": [{"Name": "in"}], "Outputs": [{"Name": "out"}], "Exec": ["cp", "${in}", "${out}"]}
    steps = [
        {"ID": f"s{i}", "Uses": "pass", "Inputs": [{"Slot": "in", "Edge": f"e{i}"}],
         "Outputs": [{"Slot": "out", "Edge": f"e{(i + 1) % 9000}"}]}
        for i in range(9000)
    ]  # fmt: skip
    body = json.dumps(inline([], steps, [task]), separators=(",", ":")).encode()
    assert 800_000 < len(body) < 1_048_576
    answer = client.post("/api/v1/flow/ring", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["Problems"] == [
        {"Path": "Steps", "Message": "9000 Steps is over the limit of 1000 in one flow"}
    ]
    assert client.get("/healthz").status_code == 200
    assert runs_total(client) == 0
