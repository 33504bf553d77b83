"""What a web page in the user's browser may do to an engine it can reach (127.0.0.1 included):
nothing that changes state, unless it holds a presigned URL. Requests carry the headers a
browser adds (Origin, Sec-Fetch-Site), sent with httpx."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from live import Server

FLOW = """
DataWells:
  - Edge: file
    Source: upload
    ContentType: text/plain
  - Edge: callback
    Source: webhook
"""
EVENTS_AUTH = {"Authorization": "Bearer token"}
INLINE = {"Flow": {"DataWells": [{"Edge": "f", "Source": "upload"}]}}
CROSS_SITE = [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "http://evil.example"},
    {"Origin": "null"},  # a sandboxed frame, a file:// page
    {"Origin": "http://localhost:1"},  # another port is another origin
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("browser")
    (root / "flows").mkdir()
    (root / "flows" / "wells.yaml").write_text(FLOW)
    server = Server(root / "data", root / "flows", events_token="token").start()
    try:
        yield server
    finally:
        server.stop()


def runs_total(client: httpx.Client) -> int:
    return client.get("/api/v1/flow/runs").json()["Total"]


@pytest.mark.parametrize("headers", CROSS_SITE)
def test_a_cross_site_request_changes_nothing(server: Server, headers: dict[str, str]) -> None:
    with server.client() as client:
        run = client.post("/api/v1/flow/wells").json()
        before = runs_total(client)
        attempts = [
            client.post("/api/v1/flow/wells", headers=headers),
            client.post("/api/v1/flow/inline", json=INLINE, headers=headers),
            client.post(f"/api/v1/flow/{run['ID']}/cancel", headers=headers),
            client.post(f"/api/v1/flow/{run['ID']}/refresh", headers=headers),
            client.post(f"/api/v1/upload/{run['ID']}/file", content=b"x", headers=headers),
            client.post(
                "/api/v1/events/s3", json={"Records": []}, headers={**headers, "Authorization": "Bearer token"}
            ),
        ]
        for answer in attempts:
            assert answer.status_code == 403, answer.request.url
            body = answer.json()
            assert body["Code"] == "cross_site_request"
            assert body["Location"] == ("header.Sec-Fetch-Site" if "Sec-Fetch-Site" in headers else "header.Origin")
        assert runs_total(client) == before
        assert client.get(f"/api/v1/flow/status/{run['ID']}", headers=headers).json() == run  # reads are fine


@pytest.mark.parametrize(
    "headers", [{"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {}, {"Origin": "SELF"}]
)
def test_the_engines_own_pages_and_scripts_without_a_browser_may(server: Server, headers: dict[str, str]) -> None:
    headers = {k: server.url if v == "SELF" else v for k, v in headers.items()}
    with server.client() as client:
        assert client.post("/api/v1/flow/wells", headers=headers).status_code == 201
        assert client.post("/api/v1/flow/inline", json=INLINE, headers=headers).status_code == 201


def test_the_public_url_is_the_engines_own_origin_too(start_server: Callable[..., Server], flows_dir: Path) -> None:
    (flows_dir / "wells.yaml").write_text(FLOW)
    server = start_server(public_url="https://flows.example.com/engine")
    with server.client() as client:
        assert client.post("/api/v1/flow/wells", headers={"Origin": "https://flows.example.com"}).status_code == 201
        assert client.post("/api/v1/flow/wells", headers={"Origin": "https://example.com"}).status_code == 403


def test_presigned_urls_work_from_any_web_page(server: Server) -> None:
    page = {"Origin": "https://app.example", "Sec-Fetch-Site": "cross-site"}
    with server.client() as client:
        run = client.post("/api/v1/flow/wells").json()
        urls = {w["Artifact"]["EdgeName"]: w["PutURL"] for w in run["WaitingURLs"]}
        preflight = httpx.options(urls["file"], headers={
            **page, "Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "content-type",
        })  # fmt: skip
        assert preflight.status_code == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
        assert "PUT" in preflight.headers["Access-Control-Allow-Methods"]
        assert preflight.headers["Access-Control-Allow-Headers"].lower() == "content-type"
        put = httpx.put(urls["file"], content=b"from a page", headers={**page, "Content-Type": "text/plain"})
        assert put.status_code == 200
        assert put.headers["Access-Control-Allow-Origin"] == "*"  # the page may read the answer...
        assert put.headers["Access-Control-Expose-Headers"] == "ETag"  # ...and the ETag
        refused = httpx.put(urls["file"] + "0", content=b"x", headers=page)  # a tampered signature
        assert refused.status_code == 403 and refused.headers["Access-Control-Allow-Origin"] == "*"
        hook = httpx.post(urls["callback"], content=b"called back", headers=page)
        assert hook.status_code == 200 and hook.headers["Access-Control-Allow-Origin"] == "*"
        done = client.get(f"/api/v1/flow/status/{run['ID']}").json()
        assert done["Status"] == "COMPLETE"
        got = httpx.get(done["Artifacts"][0]["GetURL"], headers=page)
        assert got.status_code == 200 and got.headers["Access-Control-Allow-Origin"] == "*"


SIMPLE_TYPES = [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]


@pytest.mark.parametrize("content_type", SIMPLE_TYPES)
def test_a_json_api_takes_only_json(server: Server, content_type: str | None) -> None:
    # What a page may send to any site without asking first (no CORS preflight): refused.
    headers = {"Content-Type": content_type} if content_type else {}
    with server.client() as client:
        before = runs_total(client)
        for path, extra in (("/api/v1/flow/inline", {}), ("/api/v1/events/s3", EVENTS_AUTH)):
            answer = client.post(path, content=b'{"Flow": {}, "Records": []}', headers={**headers, **extra})
            assert answer.status_code == 415
            assert answer.json()["Code"] == "unsupported_media_type"
            assert answer.json()["Location"] == "header.Content-Type"
            assert "application/json" in answer.json()["Message"]
        assert runs_total(client) == before
        # With no body there is nothing to type: a flow file runs.
        assert client.post("/api/v1/flow/wells", headers=headers).status_code == 201
        charset = {"Content-Type": "application/json; charset=utf-8"}
        assert client.post("/api/v1/flow/inline", json=INLINE, headers=charset).status_code == 201
