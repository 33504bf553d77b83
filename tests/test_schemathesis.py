"""schemathesis against the real server's own /api/v1/openapi.json: every operation the document
lists, a bounded number of generated requests each (schema-valid ones and, for the checks that
want them, invalid ones), and every answer checked against the document: never a 5xx, only the
statuses it documents, the content types it says, bodies and headers that match their schemas,
invalid requests refused with a 4xx, undocumented methods answered 405 with `Allow`.

Schema-valid requests to routes that act on a run or an object are aimed at real ones (a run
started for them, the URLs the engine signed), so they reach the answers that matter (200s, 409s,
412s...) instead of stopping at 404 or at the signature check."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import pytest
import schemathesis
from fuzzing import shadowed
from hypothesis import HealthCheck, assume, settings
from live import Server, wait_for_status
from schemathesis.specs.openapi.checks import allow_header_conformance, positive_data_acceptance

TOKEN = "schemathesis-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = int(os.environ.get("OPENAPI_EXAMPLES", 15))  # per operation, in the fuzzing phase; more to look harder
FLOW = """
DataWells:
  - Edge: file
    Source: upload
    Overwrite: false
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


class Live:
    """The server under test, and real runs for requests to aim at."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.client = server.client()
        run = self.fresh()
        file, hooked = self.waiting(run, "file"), self.waiting(run, "hooked")
        assert httpx.put(file["PutURL"], content=b"a", headers=file["Headers"]).status_code == 200
        assert httpx.post(hooked["PutURL"], content=b"b").status_code == 200
        self.done = wait_for_status(self.client, run["ID"], {"COMPLETE"})

    def fresh(self) -> dict:
        """A new WAITING run of the flow above."""
        answer = self.client.post("/api/v1/flow/schemathesis")
        assert answer.status_code == 201, answer.text
        return answer.json()

    @staticmethod
    def waiting(run: dict, edge: str) -> dict:
        """The run's WaitingURL for `edge`."""
        return next(w for w in run["WaitingURLs"] if w["Artifact"]["EdgeName"] == edge)

    def aim(self, case: schemathesis.Case) -> None:
        """Point a schema-valid request at a real run or object; leave an invalid one as generated,
        so what makes it invalid is still what the server sees."""
        if not case.meta.generation.mode.is_positive:
            return
        path, method = case.operation.path, case.method
        if path == "/store/{store}/{key}" and method == "PUT":
            waiting = self.waiting(self.fresh(), "file")
            self.sign(case, waiting["PutURL"], **self.object_of(waiting["PutURL"]))
            case.headers = {**(case.headers or {}), **waiting["Headers"]}  # as a client does: the ones it signs
        elif path == "/store/{store}/{key}":
            url = next(a["GetURL"] for a in self.done["Artifacts"] if a["EdgeName"] == "out")
            self.sign(case, url, **self.object_of(url))
        elif path == "/api/v1/hook/{run_id}/{edge}":
            run = self.fresh()
            self.sign(case, self.waiting(run, "hooked")["PutURL"], run_id=run["ID"], edge="hooked")
        elif path == "/api/v1/upload/{run_id}/{edge}":
            case.path_parameters = {"run_id": self.fresh()["ID"], "edge": "file"}
        elif path == "/api/v1/flow/{run_id}/logs/{step_id}":
            case.path_parameters = {"run_id": self.done["ID"], "step_id": "join"}
        elif "run_id" in case.path_parameters:  # status, cancel, refresh
            case.path_parameters = {"run_id": self.fresh()["ID"]}

    @staticmethod
    def object_of(url: str) -> dict[str, str]:
        """The store and key of an embedded-store URL."""
        _, _, store, key = urlsplit(url).path.split("/", 3)
        return {"store": store, "key": unquote(key)}

    @staticmethod
    def sign(case: schemathesis.Case, url: str, **path_parameters: str) -> None:
        case.path_parameters = path_parameters
        case.query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def defines_s3_store(body: Any) -> bool:
    """Whether a generated body is a flow with an S3 store: the engine would connect to its Endpoint,
    whatever host that names, and a test reaches no address but loopback."""
    flow = body.get("Flow") if isinstance(body, dict) else None
    stores = flow.get("Stores") if isinstance(flow, dict) else None
    return isinstance(stores, list) and any(isinstance(s, dict) and s.get("Type") == "s3" for s in stores)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("schemathesis")
    (root / "flows").mkdir()
    (root / "flows" / "schemathesis.yaml").write_text(FLOW)
    # inline_commands off (the engine's default): a generated inline flow may never run a command here.
    server = Server(root / "data", root / "flows", events_token=TOKEN, inline_commands=False).start()
    try:
        live = Live(server)
        yield live
        live.client.close()
    finally:
        server.stop()
    log = server.log.read_text()
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def api(live: Live) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live.server.url}/api/v1/openapi.json")


schema = schemathesis.pytest.from_fixture("api")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_every_operation_answers_as_its_document_says(case: schemathesis.Case, live: Live) -> None:
    assume(not defines_s3_store(case.body))
    live.aim(case)
    excluded = [
        # A schema-valid flow may still be refused for what it means (422: an edge nothing fills...),
        # and a valid attempt number may name one that never ran: the document cannot say more.
        positive_data_acceptance,
    ]
    if shadowed(case):  # `POST /api/v1/flow/runs` starts a flow called "runs" (POST /api/v1/flow/{name})
        excluded.append(allow_header_conformance)
    case.call_and_validate(headers=AUTH, excluded_checks=excluded)
