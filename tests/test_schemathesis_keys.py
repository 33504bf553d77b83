"""schemathesis against an engine that requires credentials (`auth: keys`), with real ones: every
operation that takes a bearer credential is called as a caller it accepts (a user's session token
with its team, or an agent's key on the agent routes), so generated requests get past
authentication and reach what the route does. Same checks as test_schemathesis.py: no 5xx, only
documented statuses, bodies and headers matching their schemas."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from fuzzing import shadowed
from hypothesis import HealthCheck, settings
from live import Server, admin, make_key
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    negative_data_rejection,
    positive_data_acceptance,
)

EXAMPLES = int(os.environ.get("OPENAPI_EXAMPLES", 15))


class Callers:
    def __init__(self, server: Server) -> None:
        self.server = server
        team = admin(server, "teams", "create", "fuzzers")
        admin(server, "users", "add", "fuzz@example.com", "--team", "fuzzers")
        token = admin(server, "token", "--user", "fuzz@example.com")
        self.user = {"Authorization": f"Bearer {token}", "X-Team-ID": team}
        self.agent = {"Authorization": f"Bearer {make_key(server, 'fuzzers', 'agent')}"}

    def headers_for(self, path: str) -> dict[str, str]:
        return self.agent if path.startswith("/api/v1/agent/") else self.user


@pytest.fixture(scope="module")
def callers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callers]:
    root = tmp_path_factory.mktemp("schemathesis-keys")
    (root / "flows").mkdir()
    server = Server(root / "data", root / "flows", auth="keys", inline_commands=False, inline_stores=False).start()
    try:
        yield Callers(server)
    finally:
        server.stop()
    log = server.log.read_text()
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def api(callers: Callers) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{callers.server.url}/api/v1/openapi.json")


def takes_bearer(ctx: schemathesis.filters.HasAPIOperation) -> bool:
    return any("bearer" in need for need in ctx.operation.definition.raw.get("security", []))


schema = schemathesis.pytest.from_fixture("api").include(takes_bearer)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_every_credentialed_operation_answers_as_its_document_says(case: schemathesis.Case, callers: Callers) -> None:
    # A schema-valid body may still name a file or workflow that does not exist (a 400 or 404). And an
    # invalid request here carries a valid credential whatever was generated (the Authorization header
    # is what schemathesis drops for one kind of invalid case), and unknown query parameters are
    # ignored, as HTTP APIs do: so only 5xx, statuses and shapes are checked for invalid requests.
    excluded = [positive_data_acceptance, negative_data_rejection]
    if shadowed(case):
        excluded.append(allow_header_conformance)
    response = case.call(headers=callers.headers_for(case.operation.path))
    if case.meta.generation.mode.is_positive:  # the credential is one the route takes
        assert response.status_code != 401, response.text
    case.validate_response(response, excluded_checks=excluded)
