"""Helpers of the dashboard's tests: flow files to run, workflows and a team running their tasks, and an
httpx client that signs in as a browser would."""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from live import Server, admin, make_key

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

DATA = Path(__file__).resolve().parent / "data"
PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 50
LIBRARY = """
Tasks:
  - Name: hello
    Outputs: [{Name: text}]
    Flags: [{Name: name, Type: string, Default: you}]
    Exec: [sh, -c, 'printf "hi %s" "$1" > "$0"', "${text}", "${name}"]
"""
# A team's own workflow: the operator's library task, run with a parameter.
HELLO = {
    "workflow_slug": "team-hello",
    "display_name": "Hello from a team",
    "parameters": [{"key": "name", "type": "string", "step": "hi", "flag": "name", "default": "there"}],
    "flow": {"DataWells": [{"Edge": "text"}],
             "Steps": [{"ID": "hi", "Uses": "hello", "Outputs": [{"Slot": "text", "Edge": "text"}]}]},
}  # fmt: skip


class Team:
    """A team's integration key, and calls of the workflow/task API with it."""

    def __init__(self, server: Server, name: str) -> None:
        self.key = make_key(server, name)
        self.id = next(line.split()[0] for line in admin(server, "teams", "list").splitlines() if line.endswith(name))
        self.api = httpx.Client(base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {self.key}"},
                                timeout=10)  # fmt: skip

    def start(self, slug: str, parameters: dict[str, Any] | None = None) -> str:
        answer = self.api.post(f"/r/workflows/slug/{slug}/run", json={"parameters": parameters or {}})
        assert answer.status_code == 202, answer.text
        return answer.json()["task_id"]

    def upload(self) -> str:
        presigned = self.api.post("/r/files/presign", json={"file_name": "photo.png", "file_size": len(PNG),
                                                              "content_type": "image/png"}).json()  # fmt: skip
        assert httpx.put(presigned["upload_url"], content=PNG, headers=presigned["upload_headers"]).status_code == 200
        return presigned["file_key"]

    def slow(self) -> str:
        """A task that runs for a minute, once it has started."""
        task = self.start("img2img", {"input_image": self.upload(), "pause": 60})
        self.wait(task, {"running"})
        return task

    def status(self, task: str) -> str:
        return self.api.get(f"/r/tasks/{task}").json()["task_status"]

    def wait(self, task: str, statuses: set[str], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while (status := self.status(task)) not in statuses:
            assert time.monotonic() < deadline, f"task {task} still {status}"
            time.sleep(0.05)

    def create(self, doc: dict[str, Any]) -> str:
        answer = self.api.post("/workflows", json=doc)
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    def workflow(self, id: str) -> dict[str, Any]:
        return self.api.get(f"/r/workflows/{id}").json()


def wait_for_workflows(team: Team) -> dict[str, str]:
    """The operator's workflows' IDs by slug, once the engine has taken them from their flow files."""
    deadline = time.monotonic() + 20
    while len(found := {w["workflow_slug"]: w["id"] for w in team.api.get("/r/workflows").json()["workflow_list"]}) < 2:
        assert time.monotonic() < deadline, found
        time.sleep(0.1)
    return found


def install_workflows(flows_dir: Path) -> None:
    """The operator's workflows `greet` (nothing required) and `img2img` (a file), and a task library."""
    for name in ("img2img", "greet"):
        shutil.copy(DATA / f"{name}.yaml", flows_dir)
    (flows_dir / "tasks").mkdir()
    (flows_dir / "tasks" / "lib.yaml").write_text(LIBRARY)


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
