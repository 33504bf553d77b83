"""flowengine.client against a real server: runs of flow files and inline flows, uploads with
their signed headers, waiting, downloads checked byte for byte, the engine's errors as typed
exceptions, and the same through the async client."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import yaml
from live import Server, free_port, make_key

from flowengine.client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InputError,
    Invalid,
    NotFound,
    RunDoc,
    TransferError,
    UnsupportedMediaType,
    WaitTimeout,
    output_paths,
)
from flowengine.client.documents import RunPage, RunSummary
from flowengine.client.protocol import next_page

REPO = Path(__file__).resolve().parent.parent
UPPER_TASK = {
    "Name": "upper",
    "Inputs": [{"Name": "src"}],
    "Outputs": [{"Name": "dst", "ContentType": "text/plain"}],
    "Exec": ["sh", "-c", 'tr a-z A-Z < "$0" > "$1"', "${src}", "${dst}"],
}


def upper_flow(**well: Any) -> dict:
    """An upload well `doc` (with `well`'s settings), a step that upper-cases it into `loud`."""
    return {
        "DataWells": [
            {"Edge": "doc", "Source": "upload", "Key": "${RUN_ID}/doc.txt", **well},
            {"Edge": "loud", "Key": "${RUN_ID}/loud.txt"},
        ],
        "Tasks": [UPPER_TASK],
        "Steps": [{"ID": "upper", "Uses": "upper", "Inputs": [{"Slot": "src", "Edge": "doc"}],
                   "Outputs": [{"Slot": "dst", "Edge": "loud"}]}],
    }  # fmt: skip


FAILING_FLOW = {
    "DataWells": [{"Edge": "doc", "Source": "upload"}, {"Edge": "out"}],
    "Tasks": [{"Name": "boom", "Inputs": [{"Name": "src"}], "Outputs": [{"Name": "dst"}],
               "Exec": ["sh", "-c", "echo looking at the input; echo 'disk on fire' >&2; exit 3", "${src}"]}],
    "Steps": [{"ID": "burn", "Uses": "boom", "Inputs": [{"Slot": "src", "Edge": "doc"}],
               "Outputs": [{"Slot": "dst", "Edge": "out"}]}],
}  # fmt: skip


class Recorder:
    """Every request an httpx client sent (method, URL, headers), through its event hook."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> None:
        self.requests.append(request)

    def client(self, server: Server, key: str | None = None) -> Client:
        return Client(server.url, key, http=httpx.Client(timeout=30, event_hooks={"request": [self]}))


def texts(tmp_path: Path, **files: bytes) -> dict[str, Path]:
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.txt"
        paths[name].write_bytes(data)
    return paths


def test_a_flow_file_runs_and_its_outputs_download_byte_for_byte(shipped: Server, tmp_path: Path):
    files = texts(tmp_path, first=b"alpha beta\ngamma", second=b"delta\n")
    seen: list[RunDoc] = []
    moved: dict[str, list[tuple[int, int]]] = {}
    with Client(shipped.url) as client:
        assert {f.name: f.inputs for f in client.flows()}["merge-fanout"] == ["first", "second"]
        run = client.start("merge-fanout")
        assert (run.status, run.flow, [w.edge for w in run.waiting_urls]) == ("WAITING", "merge-fanout",
                                                                            ["first", "second"])  # fmt: skip
        client.upload_inputs(run, files, progress=lambda edge, done, total: moved.setdefault(edge, []).append(
            (done, total)))  # fmt: skip
        run = client.wait(run.id, timeout=60, on_update=seen.append)
        assert run.status == "COMPLETE", run
        saved = client.download_outputs(run, tmp_path / "out")
    # Progress went from nothing to every byte of each file, never backwards.
    for edge, path in files.items():
        size = path.stat().st_size
        assert moved[edge][0] == (0, size) and moved[edge][-1] == (size, size)
        assert [d for d, _ in moved[edge]] == sorted(d for d, _ in moved[edge])
    # on_update saw each new state once, ending with the one returned.
    assert seen[-1] == run and len({(d.updated, d.status) for d in seen}) == len(seen)
    merged = b"alpha beta\ngamma\ndelta\n"  # the merge task ends the first file's last line
    assert [p.name for p in saved] == ["merged.txt", "stats.json", "merged.txt.gz"]
    out = tmp_path / "out"
    assert (out / "merged.txt").read_bytes() == merged
    assert gzip.decompress((out / "merged.txt.gz").read_bytes()) == merged
    assert json.loads((out / "stats.json").read_bytes()) == {"lines": 3, "words": 4, "bytes": len(merged)}
    assert sorted(p.name for p in out.iterdir()) == ["merged.txt", "merged.txt.gz", "stats.json"]  # no temp files
    for art in run.outputs:
        assert (out / output_paths(run, out)[art.edge_name].name).stat().st_size == art.size


def test_inline_flows_from_a_dict_and_from_a_yaml_or_json_file(server: Server, tmp_path: Path):
    doc = texts(tmp_path, doc=b"quiet words\n")["doc"]
    as_yaml, as_json = tmp_path / "shout.yaml", tmp_path / "wrapped.json"
    as_yaml.write_text(yaml.safe_dump(upper_flow()))
    as_json.write_text(json.dumps({"Flow": upper_flow()}))

    async def scenario() -> list[tuple[str, bytes]]:
        done = []
        async with AsyncClient(server.url) as client:
            for name, definition in [(None, {"Flow": upper_flow()}), ("named", upper_flow()),
                                     (None, as_yaml), (None, str(as_json))]:  # fmt: skip
                run = await client.start(name, definition=definition)
                run = await client.upload(run, "doc", doc)
                run = await client.wait(run.id, timeout=60)
                assert run.status == "COMPLETE", run
                [path] = await client.download_outputs(run, tmp_path / run.id)
                done.append((run.flow, path.read_bytes()))
        return done

    assert asyncio.run(scenario()) == [("inline", b"QUIET WORDS\n"), ("named", b"QUIET WORDS\n"),
                                       ("shout", b"QUIET WORDS\n"), ("wrapped", b"QUIET WORDS\n")]  # fmt: skip


def test_an_upload_sends_exactly_the_signed_headers_and_the_key_only_to_the_api(server: Server, tmp_path: Path):
    data = b"exactly eleven!"
    doc = texts(tmp_path, doc=data)["doc"]
    recorder = Recorder()
    key = make_key(server, "clients")
    with recorder.client(server, key=key) as client:
        run = client.start(definition=upper_flow(Size=len(data), ContentType="text/plain", Overwrite=False))
        signed = run.waiting("doc").headers
        assert {k.lower() for k in signed} == {"content-length", "content-type", "if-none-match"}, signed
        client.upload(run, "doc", doc, content_type="application/x-ignored")  # the signed type wins
        assert client.wait(run.id, timeout=60).status == "COMPLETE"
    [put] = [r for r in recorder.requests if r.method == "PUT"]
    for name, value in signed.items():
        assert put.headers[name] == value
    assert put.headers["content-type"] == "text/plain" and "transfer-encoding" not in put.headers
    assert "authorization" not in put.headers  # a presigned URL carries its own authority
    api = [r for r in recorder.requests if r.url.path.startswith("/api/")]
    assert api and all(r.headers["authorization"] == f"Bearer {key}" for r in api)


def test_a_file_of_another_size_than_the_signed_one_is_refused_before_it_is_sent(server: Server, tmp_path: Path):
    doc = texts(tmp_path, doc=b"twelve bytes")["doc"]
    recorder = Recorder()
    with recorder.client(server) as client:
        run = client.start(definition=upper_flow(Size=5))
        with pytest.raises(InputError, match="takes exactly 5"):
            client.upload(run, "doc", doc)
        with pytest.raises(InputError, match="no such file"):
            client.upload(run, "doc", tmp_path / "missing.txt")
        with pytest.raises(InputError, match="does not wait for 'nope'; it waits for doc"):
            client.upload(run, "nope", doc)
    assert not [r for r in recorder.requests if r.method == "PUT"]


def test_a_url_close_to_expiry_is_refreshed_before_the_upload(server: Server, tmp_path: Path):
    doc = texts(tmp_path, doc=b"soon\n")["doc"]
    recorder = Recorder()
    with recorder.client(server) as client:
        run = client.start(definition=upper_flow(TTL="30s"))  # under the client's 60 s margin
        assert client.upload(run, "doc", doc).id == run.id
        assert client.wait(run.id, timeout=60).status == "COMPLETE"
    paths = [(r.method, r.url.path) for r in recorder.requests]
    refresh = ("POST", f"/api/v1/flow/{run.id}/refresh")
    assert refresh in paths and paths.index(refresh) < [m for m, _ in paths].index("PUT")


def test_the_engines_errors_are_typed_exceptions_carrying_its_body(shipped: Server, tmp_path: Path):
    text = texts(tmp_path, doc=b"text\n")["doc"]
    with Client(shipped.url) as client:
        with pytest.raises(NotFound) as missing:
            client.status("no-such-run")
        assert (missing.value.status, missing.value.code, missing.value.location) == (404, "not_found", "path.runID")

        with pytest.raises(Invalid) as invalid:
            client.start("bad", definition={"DataWells": [{"Edge": "a", "Source": "fax"}, {"Edge": "b bad"}]})
        assert invalid.value.status == 422 and len(invalid.value.problems) >= 2
        assert "DataWells[0].Source" in [p.path for p in invalid.value.problems]

        run = client.start("merge-fanout")
        with pytest.raises(UnsupportedMediaType) as refused:  # the well accepts text/* only
            client.upload(run, "first", text, content_type="image/png")
        assert refused.value.code == "unsupported_media_type" and "text/*" in refused.value.message
        assert "X-Signature" not in str(refused.value) and "?" not in refused.value.url  # no signature shown

        tampered = msgspec.structs.replace(run.waiting("first"), put_url=run.waiting("first").put_url[:-4] + "0000")
        with pytest.raises(Forbidden) as forbidden:
            client.put(tampered, text)
        assert forbidden.value.code == "signature_rejected"

        client.cancel(run.id)
        with pytest.raises(Conflict):
            client.refresh(run.id)  # a stopped run waits for no upload
        with pytest.raises(NotFound):
            client.logs(run.id, "no-such-step")
    with Client(f"http://127.0.0.1:{free_port()}") as nobody, pytest.raises(ConnectionFailed, match="ConnectError"):
        nobody.status("x")


def test_waiting_times_out_and_a_cancelled_run_is_stopped(server: Server):
    with Client(server.url, poll=(0.05, 0.2)) as client:
        run = client.start(definition=upper_flow())
        with pytest.raises(WaitTimeout) as late:
            client.wait(run.id, timeout=0.5)
        assert late.value.run.id == run.id and late.value.run.status == "WAITING"
        assert client.cancel(run.id).status == "STOPPED"
        assert client.wait(run.id, timeout=5).status == "STOPPED"


def test_a_failed_run_says_why_and_its_step_log_is_whole(server: Server, tmp_path: Path):
    doc = texts(tmp_path, doc=b"x")["doc"]
    with Client(server.url) as client:
        run = client.start("fails", definition=FAILING_FLOW)
        client.upload(run, "doc", doc)
        run = client.wait(run.id, timeout=60)
        assert (run.status, run.failed_step) == ("ERROR", "burn")
        assert "exited with status 3" in run.error and "disk on fire" in run.logs
        log = client.logs(run.id, "burn")
        assert "looking at the input" in log and "disk on fire" in log
        assert client.logs(run.id, "burn", attempt=1) == log


def test_listing_runs_pages_through_all_of_them(server: Server):
    flow = f"listed-{uuid.uuid4().hex[:6]}"
    with Client(server.url) as client:
        ids = [client.start(flow, definition=upper_flow()).id for _ in range(5)]
        page = client.list_runs(flow=flow, limit=2)
        assert (page.total, len(page.runs)) == (5, 2)
        assert [r.id for r in client.runs(flow=flow, page_size=2)] == ids[::-1]  # newest first, each once
        assert [r.id for r in client.runs(flow=flow, status="WAITING", page_size=50)] == ids[::-1]


def test_the_next_page_follows_a_cursor_when_the_engine_gives_one():
    summary = RunSummary(id="r", flow="f", status="WAITING", created="", updated="")
    assert next_page(RunPage(runs=[summary] * 2, total=5, limit=2, offset=0)) == {"offset": 2}
    assert next_page(RunPage(runs=[summary] * 2, total=5, limit=2, offset=0, next="abc")) == {"cursor": "abc"}
    assert next_page(RunPage(runs=[summary], total=5, limit=2, offset=4)) is None
    assert next_page(RunPage(runs=[summary] * 2, total=99, limit=2, offset=0, next=None)) is None  # the cursor's end
    assert next_page(RunPage(runs=[summary] * 2, total=99, limit=2, offset=4)) == {"offset": 6}  # an offset engine
    decoded = msgspec.json.decode(b'{"Runs": [], "Total": 0, "Limit": 2, "Offset": 0, "Next": null}', type=RunPage)
    assert decoded.next is None


def test_a_download_of_the_wrong_size_leaves_no_file(server: Server, tmp_path: Path):
    doc = texts(tmp_path, doc=b"some words\n")["doc"]
    out = tmp_path / "out"
    with Client(server.url) as client:
        run = client.start(definition=upper_flow())
        client.upload(run, "doc", doc)
        run = client.wait(run.id, timeout=60)
        art = run.artifact("loud")
        for size, problem in [(art.size + 1, "got 11 of 12 bytes"), (art.size - 1, "more than the 10 bytes")]:
            lying = msgspec.structs.replace(run, artifacts=[msgspec.structs.replace(art, size=size)])
            with pytest.raises(TransferError, match=problem):
                client.download(lying, "loud", out / "loud.txt")
            assert list(out.iterdir()) == []  # neither the file nor its temp file
        (out / "taken").mkdir()
        with pytest.raises(TransferError, match="taken: cannot write it: Is a directory"):
            client.download(run, "loud", out / "taken")
        assert client.download(run, "loud", out / "loud.txt").read_bytes() == b"SOME WORDS\n"
        assert sorted(p.name for p in out.iterdir()) == ["loud.txt", "taken"]


def test_output_file_names_never_leave_the_out_dir():
    def art(edge: str, key: str) -> dict:
        return {"StoreName": "default", "ObjectName": key, "EdgeName": edge, "Source": "step", "Size": 1,
                "ContentType": "text/plain"}  # fmt: skip

    doc = {"ID": "r", "Flow": "f", "Status": "COMPLETE", "Created": "", "Updated": "",
           "Artifacts": [art("a", "r/report.json"), art("b", "x/report.json"), art("c", "r/.."), art("d", "r/"),
                         art("e", "r/bad\x1b[2Jname"), art("f", "..\\..\\evil"),
                         {**art("in", "r/input"), "Source": "upload"}]}  # fmt: skip
    paths = output_paths(msgspec.json.decode(json.dumps(doc), type=RunDoc), Path("/out"))
    assert {e: str(p) for e, p in paths.items()} == {
        "a": "/out/report.json", "b": "/out/b-report.json", "c": "/out/c", "d": "/out/d", "e": "/out/e",
        "f": "/out/f",
    }  # fmt: skip


@pytest.fixture
def s3_server(s3: dict[str, Any], tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "s3flows").mkdir()
    creds = {"s3_access_key": s3["access_key"], "s3_secret_key": s3["secret_key"]}
    server = Server(tmp_path / "s3data", tmp_path / "s3flows", reconcile_interval=0.2, **creds).start()
    yield server
    server.stop()


def test_an_s3_store_takes_the_upload_with_its_signed_headers_and_gives_the_output_back(
    s3_server: Server, s3: dict[str, Any], tmp_path: Path
):
    data = b"to the bucket and back\n"
    doc = texts(tmp_path, doc=data)["doc"]
    store = {"Name": "s3", "Type": "s3", "Params": {"endpoint": s3["endpoint"], "bucket": s3["bucket"],
             "prefix": f"client-{uuid.uuid4().hex[:8]}", "region": "us-east-1", "secure": False}}  # fmt: skip
    flow = upper_flow(Store="s3", Size=len(data), ContentType="text/plain")
    flow["Stores"] = [store]
    flow["DataWells"][1]["Store"] = "s3"
    with Client(s3_server.url, key=make_key(s3_server, "s3-clients")) as client:
        run = client.start(definition=flow)
        assert run.waiting("doc").put_url.startswith(f"http://{s3['endpoint']}/")
        assert {k.lower() for k in run.waiting("doc").headers} >= {"content-length", "content-type"}
        client.upload(run, "doc", doc)
        run = client.wait(run.id, timeout=60)
        assert run.status == "COMPLETE", run
        [path] = client.download_outputs(run, tmp_path / "out")
    assert path.read_bytes() == data.upper()
    assert hashlib.md5(data).hexdigest() in run.artifact("doc").etag
