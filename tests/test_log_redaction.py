"""Signed URLs are credentials: no log line the engine writes may carry their signatures."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from live import Server, wait_for_status

from flowengine.api import server as edge

FLOW = """
DataWells:
  - Edge: file
    Source: upload
  - Edge: callback
    Source: webhook
"""


def signature(url: str) -> str:
    return parse_qs(urlsplit(url).query)["X-Signature"][0]


def test_the_access_log_shows_requests_without_their_signatures(
    start_server: Callable[..., Server], flows_dir: Path
) -> None:
    (flows_dir / "two.yaml").write_text(FLOW)
    server = start_server(access_log=True)
    amz = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDSECRETKEYID%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
    amz += "&X-Amz-Signature=0123456789abcdef0123456789abcdef"
    with server.client() as client:
        run = client.post("/api/v1/flow/two").json()
        urls = {w["Artifact"]["EdgeName"]: w["PutURL"] for w in run["WaitingURLs"]}
        assert httpx.put(urls["file"], content=b"data").status_code == 200
        assert httpx.post(urls["callback"], content=b"called back").status_code == 200
        done = wait_for_status(client, run["ID"], {"COMPLETE"})
        get_urls = [a["GetURL"] for a in done["Artifacts"]]
        assert all(httpx.get(url).status_code == 200 for url in get_urls)
        assert client.get(f"/store/default/some/key?{amz}").status_code == 403
    server.stop()
    log = server.log.read_text()
    assert f"PUT {urlsplit(urls['file']).path}?" in log  # the access log is on, with each request's URL
    secrets = [signature(url) for url in [*urls.values(), *get_urls]] + ["AKIDSECRETKEYID", "0123456789abcdef"]
    assert [s for s in secrets if s in log] == []
    assert len([line for line in log.splitlines() if "X-Signature=REDACTED" in line]) == 4
    assert "X-Amz-Credential=REDACTED" in log and "X-Amz-Signature=REDACTED" in log


@pytest.fixture
def redacting() -> Iterator[logging.Logger]:
    """A logger writing to a list through the redacting record factory (restored afterwards)."""
    factory = logging.getLogRecordFactory()
    edge.redact_records()
    logger = logging.getLogger("test.redaction")
    logger.propagate = False
    try:
        yield logger
    finally:
        logging.setLogRecordFactory(factory)
        logger.handlers.clear()


def test_every_record_is_redacted_its_arguments_and_tracebacks_too(redacting: logging.Logger) -> None:
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(logging.Formatter().format(record))  # type: ignore[method-assign]
    redacting.addHandler(handler)
    url = "http://127.0.0.1:1234/store/default/k?X-Expires=9&X-SignedHeaders=&X-Signature=feedface"
    redacting.warning("fetching %s failed (%d tries, %r)", url, 3, httpx.URL(url))
    redacting.warning(f"inline: {url}")
    redacting.warning("mapping %(url)s", {"url": url})
    try:
        raise RuntimeError(f"could not PUT {url}")
    except RuntimeError:
        redacting.exception("boom")
    redacting.warning("a presigned S3 URL in a URL: %s", "https://x/?next=a%26X-Amz-Signature%3Ddeadbeef%26b")
    text = "\n".join(lines)
    assert "feedface" not in text and "deadbeef" not in text
    assert text.count("X-Signature=REDACTED") == 5
    assert "(3 tries," in text  # arguments without a signature keep their type and format
    assert re.search(r"X-Amz-Signature%3DREDACTED%26b", text)
