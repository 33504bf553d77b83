"""GET /api/v1/flow/runs: pages by cursor, totals from counters, against a real server."""

from __future__ import annotations

import httpx
import pytest
from live import wait_for_status

pytestmark = pytest.mark.backends("sqlite", "postgres")  # what goes through the database, on each

WAITING_FLOW = {"Flow": {"DataWells": [{"Edge": "file", "Source": "upload"}]}}
NO_INPUT_FLOW = {"Flow": {"DataWells": []}}  # completes as soon as it starts


def create(client: httpx.Client, name: str, body: dict) -> dict:
    response = client.post(f"/api/v1/flow/{name}", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def pages(client: httpx.Client, **params: object) -> list[dict]:
    """Every page of a listing, following Next until it is null."""
    found, cursor = [], None
    for _ in range(100):
        page = client.get("/api/v1/flow/runs", params={**params, **({"cursor": cursor} if cursor else {})}).json()
        found.append(page)
        cursor = page["Next"]
        if cursor is None:
            return found
    raise AssertionError(f"still a Next after 100 pages: {found[-1]}")


def test_cursor_pages_see_every_run_once_newest_first_and_totals_follow_each_change(client):
    uploads = [create(client, "uploads", WAITING_FLOW) for _ in range(7)]
    done = [create(client, "instant", NO_INPUT_FLOW) for _ in range(3)]
    newest_first = [r["ID"] for r in uploads[::-1]]
    waiting = pages(client, status="waiting", limit=3)
    assert [len(p["Runs"]) for p in waiting] == [3, 3, 1]
    assert [r["ID"] for p in waiting for r in p["Runs"]] == newest_first
    assert {p["Total"] for p in waiting} == {7} and {p["Limit"] for p in waiting} == {3}
    everything = pages(client, limit=4)
    assert [r["ID"] for p in everything for r in p["Runs"]] == [r["ID"] for r in done[::-1]] + newest_first
    assert everything[0]["Total"] == 10

    httpx.put(uploads[0]["WaitingURLs"][0]["PutURL"], content=b"landed")
    wait_for_status(client, uploads[0]["ID"], {"COMPLETE"})
    client.post(f"/api/v1/flow/{uploads[1]['ID']}/cancel")

    def total(**params: str) -> int:
        return client.get("/api/v1/flow/runs", params=params).json()["Total"]

    assert total(status="WAITING") == 5 and total(status="COMPLETE") == 4 and total(status="STOPPED") == 1
    assert total(flow="uploads") == 7 and total(flow="uploads", status="COMPLETE") == 1
    assert total(flow="instant", status="WAITING") == 0 and total(flow="nowhere") == 0 and total() == 10
    listed = client.get("/api/v1/flow/runs", params={"flow": "uploads", "status": "COMPLETE"}).json()
    assert [r["ID"] for r in listed["Runs"]] == [uploads[0]["ID"]] and listed["Next"] is None


def test_offset_still_pages_and_bad_cursors_are_refused(client):
    ids = [create(client, "uploads", WAITING_FLOW)["ID"] for _ in range(5)]
    page = client.get("/api/v1/flow/runs", params={"limit": 2, "offset": 2}).json()
    assert [r["ID"] for r in page["Runs"]] == ids[::-1][2:4] and page["Offset"] == 2 and page["Total"] == 5
    first = client.get("/api/v1/flow/runs", params={"limit": 2}).json()
    for bad in ("not a cursor", "%%%", first["Next"] + "x", "AAAA"):
        refused = client.get("/api/v1/flow/runs", params={"cursor": bad})
        assert refused.status_code == 400 and refused.json()["Location"] == "query.cursor", (bad, refused.text)
    both = client.get("/api/v1/flow/runs", params={"cursor": first["Next"], "offset": 1})
    assert both.status_code == 400 and both.json()["Location"] == "query.offset"


def test_runs_created_one_after_another_list_in_that_order(client):
    # Creations take well under a millisecond of the server's time: many share one, and IDs made
    # within a millisecond must still increase (they used to be random there).
    ids = [create(client, "quick", NO_INPUT_FLOW)["ID"] for _ in range(300)]
    listed = [r["ID"] for p in pages(client, flow="quick", limit=500) for r in p["Runs"]]
    assert listed == ids[::-1]
