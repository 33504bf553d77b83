"""Two uploads to one well at once, through each way in: exactly one wins, the other gets 409, and
what the run records is what is stored is what its step reads."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import Server, wait_for_status

FLOW = """
DataWells:
  - Edge: input
    Source: {source}
  - Edge: digest
Tasks:
  - Name: md5
    Inputs: [{{Name: data}}]
    Outputs: [{{Name: sum}}]
    Exec: ["sh", "-c", "md5sum < \\"$0\\" | cut -d' ' -f1 > \\"$1\\"", "${{data}}", "${{sum}}"]
Steps:
  - ID: sum
    Uses: md5
    Inputs: [{{Slot: data, Edge: input}}]
    Outputs: [{{Slot: sum, Edge: digest}}]
"""
TRIALS = 8


def slowly(content: bytes, start: threading.Barrier) -> Iterator[bytes]:
    """The body in ten pieces, from the moment both uploads are ready: the two overlap."""
    start.wait()
    step = len(content) // 10
    for i in range(0, len(content), step):
        yield content[i : i + step]
        time.sleep(0.01)


def race(method: str, url: str) -> list[tuple[bytes, httpx.Response]]:
    start = threading.Barrier(2)
    bodies = [bytes([65 + i]) * 200_000 for i in range(2)]
    answers: list[tuple[bytes, httpx.Response]] = []

    def send(body: bytes) -> None:
        answers.append((body, httpx.request(method, url, content=slowly(body, start), timeout=30)))

    threads = [threading.Thread(target=send, args=(body,)) for body in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


@pytest.mark.parametrize("way", ["presigned", "direct", "webhook"])
def test_of_two_uploads_at_once_exactly_one_wins(start_server, flows_dir: Path, way: str) -> None:
    (flows_dir / "race.yaml").write_text(FLOW.format(source="webhook" if way == "webhook" else "upload"))
    server: Server = start_server()

    def trial(_: int) -> None:
        with server.client() as client:
            run = client.post("/api/v1/flow/race").json()
            direct = f"{server.url}/api/v1/upload/{run['ID']}/input"
            answers = race(
                "PUT" if way == "presigned" else "POST", run["WaitingURLs"][0]["PutURL"] if way != "direct" else direct
            )
            assert sorted(a.status_code for _, a in answers) == [200, 409], [a.text for _, a in answers]
            [winner] = [body for body, a in answers if a.status_code == 200]
            [loser] = [a for _, a in answers if a.status_code == 409]
            assert loser.json()["Code"] == "conflict"
            doc = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
            assert doc["Status"] == "COMPLETE", doc
            artifacts = {a["EdgeName"]: a for a in doc["Artifacts"]}
            md5 = hashlib.md5(winner).hexdigest()
            assert artifacts["input"]["ETag"] == md5  # what the run records...
            assert hashlib.md5(httpx.get(artifacts["input"]["GetURL"]).content).hexdigest() == md5  # ...is stored...
            assert httpx.get(artifacts["digest"]["GetURL"]).text.strip() == md5  # ...is what its step read

    with ThreadPoolExecutor(4) as pool:  # four runs at a time, each with its own pair of racing uploads
        list(pool.map(trial, range(TRIALS)))


def test_of_two_direct_uploads_at_once_to_an_s3_well_one_wins(start_server, s3: dict[str, Any]) -> None:
    # Storing into S3 takes a while (the engine awaits the upload): the well is claimed meanwhile.
    server: Server = start_server(s3_access_key=s3["access_key"], s3_secret_key=s3["secret_key"])
    params = {"endpoint": s3["endpoint"], "bucket": s3["bucket"], "prefix": f"race-{uuid.uuid4().hex[:12]}",
              "secure": False}  # fmt: skip
    flow = {"Flow": {"Stores": [{"Name": "s3", "Type": "s3", "Params": params}],
                     "DataWells": [{"Edge": "input", "Store": "s3", "Source": "upload"}]}}  # fmt: skip
    with server.client() as client:
        for _ in range(4):
            run = client.post("/api/v1/flow/s3race", json=flow).json()
            answers = race("POST", f"{server.url}/api/v1/upload/{run['ID']}/input")
            assert sorted(a.status_code for _, a in answers) == [200, 409], [a.text for _, a in answers]
            [winner] = [body for body, a in answers if a.status_code == 200]
            doc = wait_for_status(client, run["ID"], {"COMPLETE"})
            [artifact] = doc["Artifacts"]
            assert httpx.get(artifact["GetURL"]).content == winner
            assert artifact["Size"] == len(winner)
