"""Bad input, against the real server: the requests that once answered 500, then a property-based
test (hypothesis) that starts from a valid request of every route and mutates it field by field:
a path segment, a query value, a header, the body (a JSON field, or all of it). Whatever it sends,
the answer is never a 5xx, and nothing is half-stored: runs and objects appear only when the
answer says one was created, and a run changes only when the answer says it did."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live import Server, wait_for_status

TOKEN = "fuzz-token"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 30))  # per route; FUZZ_EXAMPLES=2000 to look harder
FLOW = """
DataWells:
  - Edge: file
    Source: upload
  - Edge: hooked
    Source: webhook
  - Edge: out
Tasks:
  - Name: join
    Inputs: [{Name: a}, {Name: b}]
    Outputs: [{Name: c}]
    Exec: ["sh", "-c", "cat \\"$0\\" \\"$1\\" > \\"$2\\"", "${a}", "${b}", "${c}"]
Steps:
  - ID: join
    Uses: join
    Inputs: [{Slot: a, Edge: file}, {Slot: b, Edge: hooked}]
    Outputs: [{Slot: c, Edge: out}]
"""
INLINE = {
    "Flow": {
        "DataWells": [{"Edge": "in", "Source": "upload", "ContentType": "text/plain", "TTL": "15m", "MaxSize": 1000}],
    }
}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "flows").mkdir()
    (root / "flows" / "fuzz.yaml").write_text(FLOW)
    server = Server(root / "data", root / "flows", events_token=TOKEN).start()
    try:
        yield server
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()


@pytest.fixture(scope="module")
def done(server: Server) -> dict:
    """A COMPLETE run, for the routes that read one: its step's log, its objects."""
    with server.client() as client:
        run = client.post("/api/v1/flow/fuzz").json()
        urls = {w["Artifact"]["EdgeName"]: w["PutURL"] for w in run["WaitingURLs"]}
        assert httpx.put(urls["file"], content=b"a").status_code == 200
        assert httpx.post(urls["hooked"], content=b"b").status_code == 200
        return wait_for_status(client, run["ID"], {"COMPLETE"})


# --- the requests that answered 500 -----------------------------------------------------------------


def test_the_requests_that_answered_500_get_a_4xx_naming_the_problem(server: Server, done: dict) -> None:
    deep = b'{"event_type": "create", "key": "/buckets/b/k", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with server.client() as client:
        run = client.post("/api/v1/flow/fuzz").json()
        urls = {w["Artifact"]["EdgeName"]: w["PutURL"] for w in run["WaitingURLs"]}
        cases = [
            (client.post("/api/v1/flow/fuzz", content=b'{"Flow": {"Name": "\xff"}}', headers=JSON), 400, "body"),
            (client.post("/api/v1/events/s3", content=b'{"Records": [{"eventName": "\xff"}]}',
                         headers={**JSON, **AUTH}), 400, "body"),
            (client.post("/api/v1/events/seaweedfs", content=b'{"event_type": "create", "key": "\xff"}',
                         headers={**JSON, **AUTH}), 400, "body"),
            (client.post("/api/v1/events/seaweedfs", content=deep, headers={**JSON, **AUTH}), 400, "body"),
            (httpx.put(urls["file"].replace("X-Signature=", "X-Signature=%C3%A9"), content=b"x"), 403,
             "query.X-Signature"),
            (httpx.post(urls["hooked"].replace("X-Signature=", "X-Signature=%C2%B2"), content=b"x"), 403,
             "query.X-Signature"),
            (client.get("/api/v1/flow/runs?limit=%C2%B2"), 400, "query.limit"),
            (client.get(f"/api/v1/flow/runs?limit={'9' * 5000}"), 400, "query.limit"),
            (client.get(f"/api/v1/flow/runs?offset={'9' * 5000}"), 400, "query.offset"),
            (client.get(f"/api/v1/flow/{done['ID']}/logs/join?attempt=%C2%B2"), 400, "query.attempt"),
            (client.post(f"/api/v1/flow/{'a' * 300}"), 400, "path.name"),
        ]  # fmt: skip
        for answer, status, location in cases:
            assert (answer.status_code, answer.json()["Location"]) == (status, location), answer.text
            assert answer.json()["Message"]
        assert client.get(f"/api/v1/flow/status/{run['ID']}").json()["Status"] == "WAITING"


# --- every route, mutated --------------------------------------------------------------------------


class Request(msgspec.Struct, kw_only=True):
    """A request as fields to mutate. Path segments and query values are text (sent UTF-8 and
    percent-encoded) or bytes (each byte percent-encoded: invalid UTF-8 reaches the server)."""

    method: str
    segments: list[str | bytes]  # the path, "/"-joined
    fixed: int = 0  # how many leading segments are the route's own (not parameters)
    query: list[tuple[str, str | bytes]] = []
    headers: dict[str, bytes] = {}
    body: bytes = b""
    json_body: Any = None  # a JSON body, mutated field by field

    def target(self) -> str:
        path = "/".join(_encode(s) for s in self.segments)
        query = "&".join(f"{quote(k, safe='')}={_encode(v)}" for k, v in self.query)
        return f"/{path}" + (f"?{query}" if query else "")


def _encode(value: str | bytes) -> str:
    return quote(value, safe="") if isinstance(value, str) else "".join(f"%{b:02X}" for b in value)


def signed(url: str, method: str, **fields: Any) -> Request:
    """A request to a presigned URL: /store/{store}/{key...} or /api/v1/hook/{run}/{edge}, and its query."""
    parts = urlsplit(url)
    segments = parts.path.strip("/").split("/")
    fixed = 1 if segments[0] == "store" else 3
    return Request(method=method, segments=segments, fixed=fixed, query=parse_qsl(parts.query), **fields)


def route(method: str, path: str, fixed: int, **fields: Any) -> Request:
    return Request(method=method, segments=path.strip("/").split("/"), fixed=fixed, **fields)


TEXT = {"content-type": b"text/plain"}
JSON_BODY = {"content-type": b"application/json"}
EVENTS = {"authorization": AUTH["Authorization"].encode(), **JSON_BODY}
S3_EVENT = {"Records": [{"eventName": "s3:ObjectCreated:Put", "eventSource": "minio:s3",
                         "s3": {"bucket": {"name": "b"}, "object": {"key": "k%20x", "size": 3}}}]}  # fmt: skip
NEW_ENTRY = {"name": "k", "attributes": {"file_size": 3, "mime": "text/plain"}}
FILER_EVENT = {"event_type": "create", "key": "/buckets/b/k", "message": {"new_entry": NEW_ENTRY}}
CHANGE_A_RUN = {"cancel", "refresh", "direct upload", "presigned put", "webhook"}  # these get a fresh run each


def valid_requests(done: dict, run: dict) -> dict[str, tuple[Request, str]]:
    """A request of every route that the server would accept (`done` is a COMPLETE run, `run` a
    WAITING one), with what it creates when it succeeds: "run", "object", or "" for nothing new."""
    put_urls = {w["Artifact"]["EdgeName"]: w["PutURL"] for w in run["WaitingURLs"]}
    return {
        "run a flow file": (route("POST", "/api/v1/flow/fuzz", 3), "run"),
        "run an inline flow": (route("POST", "/api/v1/flow/inline", 3, headers=JSON_BODY, json_body=INLINE), "run"),
        "status": (route("GET", f"/api/v1/flow/status/{run['ID']}", 4), ""),
        "flows": (route("GET", "/api/v1/flow", 3), ""),
        "runs": (route("GET", "/api/v1/flow/runs", 4,
                       query=[("status", "WAITING"), ("flow", "fuzz"), ("limit", "10"), ("offset", "0")]), ""),
        "step log": (route("GET", f"/api/v1/flow/{done['ID']}/logs/join", 3, query=[("attempt", "1")]), ""),
        "cancel": (route("POST", f"/api/v1/flow/{run['ID']}/cancel", 3), ""),
        "refresh": (route("POST", f"/api/v1/flow/{run['ID']}/refresh", 3), ""),
        "direct upload": (route("POST", f"/api/v1/upload/{run['ID']}/file", 3, headers=TEXT, body=b"up"), "object"),
        "presigned put": (signed(put_urls["file"], "PUT", headers=TEXT, body=b"put"), "object"),
        "presigned get": (signed(done["Artifacts"][0]["GetURL"], "GET"), ""),
        "webhook": (signed(put_urls["hooked"], "POST", headers=TEXT, body=b"hook"), "object"),
        "s3 event": (route("POST", "/api/v1/events/s3", 4, headers=EVENTS, json_body=S3_EVENT), ""),
        "seaweedfs event": (route("POST", "/api/v1/events/seaweedfs", 4, headers=EVENTS, json_body=FILER_EVENT), ""),
        "events probe": (route("HEAD", "/api/v1/events/s3", 4), ""),
        "ready": (route("GET", "/readyz", 1), ""),
    }  # fmt: skip


ROUTES = ["run a flow file", "run an inline flow", "status", "flows", "runs", "step log", "cancel", "refresh",
          "direct upload", "presigned put", "presigned get", "webhook", "s3 event", "seaweedfs event", "events probe",
          "ready"]  # fmt: skip


NASTY_TEXT = [
    "", " ", "0", "-1", "1.5", "1e3", "0x10", "²", "٣", "１２", "9" * 5000, "-" + "9" * 30, "NaN", "a" * 300,  # noqa: RUF001
    "é", "\u202e", "😀", "\x00", "\x7f", ".", "..", "../..", "a/b", "a\\b", "%", "%ff", "${RUN_ID}", "null",
    "true", "[]", "{}", "WAITING ", "waiting", "STOPPED", "*",
]  # fmt: skip
NASTY_BYTES = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xc0\xaf", b"a\xffb"]
NASTY_JSON = [None, True, 0, -1, 2**64, 1.5, float("inf"), "", "²", "\x00", "a" * 300, [], {}, [[[]]], {"x": {}}]
text = st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=40))
raw = st.one_of(st.sampled_from(NASTY_BYTES), st.binary(max_size=20))
segment_value = st.one_of(text, raw)
# What a header may carry on the wire (h11 refuses control characters): visible latin-1, UTF-8 bytes.
header_value = st.one_of(
    st.sampled_from([b"", b"\xff\xfe", "é".encode(), "²".encode(), b"9" * 5000, b"application/json; charset=x"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40).map(lambda t: t.strip().encode("l1")),
)  # fmt: skip
HEADERS = ["content-type", "authorization", "if-none-match", "origin", "sec-fetch-site", "expect", "x-signature"]
json_value = st.one_of(st.sampled_from(NASTY_JSON), text, st.integers(), st.lists(text, max_size=3))


@st.composite
def mutated(draw: st.DrawFn, request: Request) -> Request:
    """`request` with one field changed."""
    fields = [("segment", i) for i in range(request.fixed, len(request.segments))]
    fields += [("query", i) for i in range(len(request.query))] + [("query", -1)]
    fields += [("header", name) for name in HEADERS]
    fields += [("body", None)] + ([("json", None)] if request.json_body is not None else [])
    kind, where = draw(st.sampled_from(fields))
    changed = msgspec.structs.replace(request, segments=list(request.segments), query=list(request.query),
                                      headers=dict(request.headers))  # fmt: skip
    if kind == "segment":
        changed.segments[where] = draw(segment_value)
    elif kind == "query" and where == -1:
        changed.query.append((draw(st.sampled_from(["limit", "attempt", "X-Expires", "X-SignedHeaders", "x"])),
                              draw(segment_value)))  # fmt: skip
    elif kind == "query" and draw(st.booleans()):
        changed.query[where] = (changed.query[where][0], draw(segment_value))
    elif kind == "query":
        del changed.query[where]
    elif kind == "header":
        if value := draw(st.one_of(st.none(), header_value)):
            changed.headers[where] = value
        else:
            changed.headers.pop(where, None)
    elif kind == "body":
        changed.json_body = None
        changed.body = draw(st.one_of(st.sampled_from([b"", b"{", b"[]", b"\xff" * 10, b"{}" * 1000]), st.binary()))
    else:
        changed.json_body = draw(mutate_json(request.json_body))
    return changed


def mutate_json(value: Any) -> st.SearchStrategy[Any]:
    """`value` with one of its fields (at any depth) replaced or removed."""
    if isinstance(value, dict) and value:
        return st.sampled_from(sorted(value)).flatmap(lambda key: st.one_of(
            mutate_json(value[key]).map(lambda v: {**value, key: v}),
            st.just({k: v for k, v in value.items() if k != key}),
        ))  # fmt: skip
    if isinstance(value, list) and value:
        return st.integers(0, len(value) - 1).flatmap(
            lambda i: mutate_json(value[i]).map(lambda v: [*value[:i], v, *value[i + 1 :]])
        )
    return json_value


def send(client: httpx.Client, request: Request) -> httpx.Response:
    body = request.body if request.json_body is None else json.dumps(request.json_body).encode()
    return client.request(request.method, request.target(), content=body, headers=request.headers)


def state(server: Server, client: httpx.Client, run_id: str) -> tuple[int, int, Any]:
    """(runs, stored objects, what a fresh run looks like) the invariants are about."""
    objects = sum(1 for p in (server.data_dir / "objects").rglob("*") if p.is_file())
    doc = client.get(f"/api/v1/flow/status/{run_id}").json()
    shape = (doc["Status"], sorted(w["Artifact"]["EdgeName"] for w in doc.get("WaitingURLs", [])),
             sorted((a["EdgeName"], a["ETag"]) for a in doc.get("Artifacts", [])))  # fmt: skip
    return client.get("/api/v1/flow/runs").json()["Total"], objects, shape


@pytest.fixture(scope="module")
def waiting(server: Server) -> dict:
    """A WAITING run for the routes that do not change one."""
    with server.client() as client:
        return client.post("/api/v1/flow/fuzz").json()


@pytest.mark.parametrize("name", ROUTES)
def test_a_mutated_request_never_gets_a_5xx_nor_leaves_anything_half_stored(
    server: Server, done: dict, waiting: dict, name: str
) -> None:
    client, sender = server.client(), server.client()  # the requests under test on connections of their own

    @settings(max_examples=EXAMPLES, deadline=None, derandomize="FUZZ_EXAMPLES" not in os.environ, database=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        run = client.post("/api/v1/flow/fuzz").json() if name in CHANGE_A_RUN else waiting
        valid, creates = valid_requests(done, run)[name]
        request = data.draw(mutated(valid), label="request")
        runs, objects, shape = state(server, client, run["ID"])
        answer = send(sender, request)
        assert answer.status_code < 500, answer.text
        if answer.status_code >= 400 and request.method != "HEAD":
            assert answer.json()["Code"] and answer.json()["Message"]
        after = state(server, client, run["ID"])
        ok = answer.is_success
        assert after[0] == runs + (ok and creates == "run")
        assert after[1] == objects + (ok and creates == "object")
        if not ok:
            assert after[2] == shape

    with client, sender:
        check()
