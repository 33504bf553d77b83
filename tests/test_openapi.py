"""The OpenAPI document: every route of the app is described (none forgotten, none invented), the
document is valid OpenAPI 3.1, its schemas are the msgspec types the API speaks, what every route of
a kind answers is listed on each, and the live server serves it with its own address.
(tests/test_schemathesis.py checks the server's answers against it.)"""

from __future__ import annotations

import typing
from typing import Any

import httpx
import msgspec
import pytest
from live import Server
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.routing import Route

from flowengine.api import openapi
from flowengine.api.app import create_app
from flowengine.api.documents import RunDoc, RunStatus, Source, StepStatus
from flowengine.api.errors import REFERENCE_PREFIXES, ErrorBody
from flowengine.api.openapi import Answer, ApiRoute, Operation, in_path
from flowengine.config import Config
from flowengine.core import machine

ERROR = {"$ref": "#/components/schemas/ErrorBody"}
# Some of the service's routes, from the README's tables.
SERVICE = {
    ("/api/v1/flow/{name}", "POST"),
    ("/api/v1/flow/status/{run_id}", "GET"),
    ("/api/v1/tasks", "GET"),
    ("/store/{store}/{key}", "PUT"),
    ("/store/{store}/{key}", "GET"),
    ("/api/v1/hook/{run_id}/{edge}", "PUT"),
    ("/api/v1/upload/{run_id}/{edge}", "POST"),
    ("/api/v1/events/s3", "POST"),
    ("/api/v1/events/s3", "HEAD"),
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/metrics", "GET"),
    ("/api/v1/openapi.json", "GET"),
    ("/api/v1/agent/register", "POST"),
    ("/api/v1/agent/lease", "POST"),
    ("/api/v1/agent/heartbeat", "POST"),
    ("/api/v1/agent/leases/{lease_id}/complete", "POST"),
    ("/api/v1/agents", "GET"),
    ("/api/v1/r/agents", "GET"),
}
METHODS = {"get", "put", "post", "delete", "head", "patch", "options", "trace"}


async def endpoint(request: Any) -> None:
    raise AssertionError("never called")


@pytest.fixture(scope="module")
def app() -> Any:
    return create_app(Config()).app


@pytest.fixture(scope="module")
def doc(app: Any) -> dict[str, Any]:
    return app.state.openapi


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p, m.upper()): op for p, item in doc["paths"].items() for m, op in item.items() if m in METHODS}


def test_every_route_of_the_app_is_described_and_nothing_else(app: Any, doc: dict[str, Any]) -> None:
    served = set()
    for route in app.routes:
        assert isinstance(route, ApiRoute), f"{route.path} says nothing of its API"
        declared = set(route.operations)
        # Starlette answers HEAD wherever it answers GET: the same answer without a body.
        assert route.methods == declared | ({"HEAD"} if "GET" in declared else set()), route.path
        served |= {(route.path_format, method) for method in declared}
    assert set(operations(doc)) == served
    assert served >= SERVICE  # a route dropped from the app (and so from the document) shows here


def test_a_route_that_says_nothing_of_its_api_cannot_be_served() -> None:
    with pytest.raises(TypeError, match="'/secret' is not an ApiRoute"):
        openapi.document([Route("/secret", endpoint)], title="t", version="1", description="")


def test_a_route_declares_exactly_the_path_parameters_of_its_path() -> None:
    listed = Operation(summary="s", tag="t", answers={200: Answer("ok")}, params=(in_path("run_id"),))
    with pytest.raises(ValueError, match=r"declares path parameters \['run_id'\], its path has \['id'\]"):
        ApiRoute("/runs/{id}", endpoint, get=listed)
    with pytest.raises(ValueError, match=r"declares path parameters \[\], its path has \['run_id'\]"):
        ApiRoute("/runs/{run_id}", endpoint, get=Operation(summary="s", tag="t", answers={}))
    with pytest.raises(ValueError, match="declares no operation"):
        ApiRoute("/x", endpoint)  # Starlette would take every method
    with pytest.raises(ValueError, match="no security scheme"):
        ApiRoute("/x", endpoint, get=Operation(summary="s", tag="t", answers={}, security=("cookie",)))


def test_two_operations_never_share_an_id() -> None:
    op = Operation(summary="s", tag="t", answers={200: Answer("ok")})
    routes = [ApiRoute("/a", endpoint, get=op), ApiRoute("/b", endpoint, get=op)]
    with pytest.raises(ValueError, match="two operations are named 'endpoint'"):
        openapi.document(routes, title="t", version="1", description="")


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    served = {**doc, "servers": [{"url": "http://127.0.0.1:1234"}]}
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in OpenAPIV31SpecValidator(served).iter_errors()
    ]
    assert errors == []
    assert doc["openapi"].startswith("3.1.")


def test_its_schemas_are_the_msgspec_types_of_the_api(doc: dict[str, Any]) -> None:
    _, expected = msgspec.json.schema_components([RunDoc, ErrorBody], ref_template="#/components/schemas/{name}")
    for name, schema in expected.items():
        assert doc["components"]["schemas"][name] == schema
    status = doc["paths"]["/api/v1/flow/status/{run_id}"]["get"]
    assert status["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RunDoc"
    }
    assert status["responses"]["404"]["content"]["application/json"]["schema"] == ERROR
    runs = {p["name"]: p for p in doc["paths"]["/api/v1/flow/runs"]["get"]["parameters"]}
    assert runs["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}
    assert runs["status"]["schema"] == {"enum": sorted(typing.get_args(RunStatus))}


def test_the_documented_values_are_the_machines() -> None:
    assert set(typing.get_args(RunStatus)) == {machine.STOPPED, machine.WAITING, *machine.TERMINAL, machine.RUNNING}
    assert set(typing.get_args(StepStatus)) == {machine.IDLE, *machine.ACTIVE_STEP, machine.COMPLETE, machine.ERROR}
    assert set(typing.get_args(Source)) == {*machine.WAITING_SOURCES, "static", machine.FROM_STEP}


def test_what_every_route_of_a_kind_answers_is_on_each(doc: dict[str, Any]) -> None:
    for (path, method), op in operations(doc).items():
        answers = op["responses"]
        assert "503" in answers and "Retry-After" in answers["503"]["headers"], (path, method)
        assert "408" in answers, (path, method)
        if method not in ("GET", "HEAD") and not path.startswith(("/store/", "/api/v1/hook/")):
            assert "cross_site_request" in answers["403"]["description"], (path, method)
        if "application/json" in op.get("requestBody", {}).get("content", {}):
            reference = path.startswith(REFERENCE_PREFIXES)  # errors in the reference's shape
            error = {"$ref": "#/components/schemas/ReferenceErrorBody"} if reference else ERROR
            for status in ("400", "413", "415") if reference else ("400", "413", "415", "422"):
                assert answers[status]["content"]["application/json"]["schema"] == error, (path, method, status)
        if method == "HEAD":
            assert all("content" not in answer for answer in answers.values()), path


def test_non_json_answers_say_their_media_type(doc: dict[str, Any]) -> None:
    paths = doc["paths"]
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert set(paths["/api/v1/flow/{run_id}/logs/{step_id}"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    get_object = paths["/store/{store}/{key}"]["get"]["responses"]["200"]
    assert get_object["content"] == {"*/*": {}} and get_object["headers"]["ETag"]["required"]
    assert paths["/store/{store}/{key}"]["put"]["requestBody"]["content"] == {"application/octet-stream": {}}


def test_security_bearer_for_events_and_the_signature_for_signed_urls(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert schemes["eventsToken"] == {**schemes["eventsToken"], "type": "http", "scheme": "bearer"}
    assert schemes["signedURL"] == {**schemes["signedURL"], "type": "apiKey", "in": "query", "name": "X-Signature"}
    ops = operations(doc)
    assert ops[("/api/v1/events/s3", "POST")]["security"] == [{"eventsToken": []}]
    assert ops[("/api/v1/events/seaweedfs", "POST")]["security"] == [{"eventsToken": []}]
    for key in [
        ("/store/{store}/{key}", "PUT"),
        ("/store/{store}/{key}", "GET"),
        ("/api/v1/hook/{run_id}/{edge}", "POST"),
    ]:
        assert ops[key]["security"] == [{"signedURL": []}]
    # The flow API takes a key or a session token, and nothing on an engine with auth: open.
    assert ops[("/api/v1/flow/{name}", "POST")]["security"] == [{}, {"bearer": []}]
    flow_answers = ops[("/api/v1/flow/status/{run_id}", "GET")]["responses"]
    assert {"400", "401", "403"} <= set(flow_answers) and "unauthorized" in flow_answers["401"]["description"]
    team = [p for p in ops[("/api/v1/flow/status/{run_id}", "GET")]["parameters"] if p["name"] == "X-Team-ID"]
    assert team == [{"name": "X-Team-ID", "in": "header", "required": False, "schema": {"type": "string"},
                     "description": "the team a session token's request is for (ignored for keys)"}]  # fmt: skip


def test_the_server_serves_it_with_the_address_it_was_asked_on(server: Server, doc: dict[str, Any]) -> None:
    answer = httpx.get(f"{server.url}/api/v1/openapi.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    served = answer.json()
    assert served["servers"] == [{"url": server.url}]
    assert served["paths"] == doc["paths"] and served["components"] == doc["components"]


def test_a_public_url_is_the_documents_server(start_server: Any) -> None:
    server = start_server(public_url="https://engine.example/base/")
    assert httpx.get(f"{server.url}/api/v1/openapi.json").json()["servers"] == [{"url": "https://engine.example/base"}]


def test_a_method_a_path_does_not_take_is_405_with_every_method_it_does(client: httpx.Client) -> None:
    # Paths served by two routes (one per handler): Allow names the methods of both, not the first's.
    allows = {"/api/v1/events/s3": "HEAD, POST", "/store/default/a/key": "GET, HEAD, PUT", "/healthz": "GET, HEAD"}
    for path, allowed in allows.items():
        answer = client.delete(path)
        assert answer.status_code == 405, path
        assert answer.headers["allow"] == allowed
        assert answer.json()["Code"] == "method_not_allowed"
