"""Helpers of the dashboard's tests: flow files to run, and an httpx client that signs in as a browser would."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
from live import Server

# Copies its upload, slowly enough that a page opened after the upload sees it RUNNING.
COPY_FLOW = """\
Name: copy
Description: Copies the uploaded file, taking a second.
DataWells:
  - {Edge: in, Source: upload, MaxSize: 1000000}
  - {Edge: out, Key: "copy/${RUN_ID}/copied.txt", ContentType: text/plain}
Steps:
  - {ID: copy, Uses: copy, Inputs: [{Slot: src, Edge: in}], Outputs: [{Slot: dst, Edge: out}]}
Tasks:
  - Name: copy
    Inputs: [{Name: src}]
    Outputs: [{Name: dst, ContentType: text/plain}]
    Exec: ["sh", "-c", 'echo copying; sleep 1.5; cp "$0" "$1"; echo copied', "${src}", "${dst}"]
"""
# Fails after printing why.
FAILING_FLOW = """\
Name: failing
DataWells:
  - {Edge: in, Source: upload}
Steps:
  - {ID: parse, Uses: parse, Inputs: [{Slot: src, Edge: in}], Outputs: [{Slot: out, Edge: parsed}]}
Tasks:
  - Name: parse
    Inputs: [{Name: src}]
    Outputs: [{Name: out}]
    Exec: ["sh", "-c", "echo reading the input; echo 'fatal: no header on line 1' >&2; exit 3"]
"""
# Never finishes by itself: for cancelling.
SLOW_FLOW = """\
Name: slow
DataWells:
  - {Edge: in, Source: upload}
Steps:
  - {ID: nap, Uses: nap, Inputs: [{Slot: src, Edge: in}]}
Tasks:
  - {Name: nap, Inputs: [{Name: src}], Exec: ["sh", "-c", "echo napping; sleep 60"]}
"""
BROKEN_FLOW = "Name: broken\nSteps: [{ID: a, Uses: missing}]\n"


def write_flows(flows_dir: Path) -> None:
    for name, text in [("copy", COPY_FLOW), ("failing", FAILING_FLOW), ("slow", SLOW_FLOW), ("broken", BROKEN_FLOW)]:
        (flows_dir / f"{name}.yaml").write_text(text)


_CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token a page carries (every form's, and the header htmx and fetch send)."""
    found = _CSRF.search(html)
    assert found, html[:500]
    return found.group(1)


@contextlib.contextmanager
def sign_in(server: Server, credential: str, team: str = "") -> Iterator[httpx.Client]:
    """A client holding a dashboard session, signed in with `credential` as a person would: the
    form fetched first (its CSRF token, the visitor's cookie), then posted."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        page = client.get("/ui/sign-in")
        answer = client.post("/ui/sign-in", data={"csrf": csrf_of(page.text), "credential": credential, "team": team,
                                                  "next": "/ui/runs"})  # fmt: skip
        assert answer.status_code == 303, answer.text
        yield client
