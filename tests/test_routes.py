"""The two hot routes, matched by hand ahead of Starlette, agree with the router they stand in front of."""

from __future__ import annotations

import pytest
from starlette.routing import Match

from flowengine.api import flow
from flowengine.api.http import JsonEndpoint

REQUESTS = [
    ("POST", "/api/v1/flow/checksum-report"),
    ("POST", "/api/v1/flow/status"),  # a flow may be called "status"
    ("GET", "/api/v1/flow/status/0190b0c2-7d4e-7000-8000-000000000000"),
    ("GET", "/api/v1/flow/status/"),
    ("GET", "/api/v1/flow/status/a/b"),
    ("GET", "/api/v1/flow/status"),
    ("HEAD", "/api/v1/flow/status/abc"),
    ("POST", "/api/v1/flow/status/abc"),
    ("POST", "/api/v1/flow/"),
    ("POST", "/api/v1/flow/a/b"),
    ("POST", "/api/v1/flow/a/cancel"),
    ("PUT", "/api/v1/flow/x"),
    ("GET", "/api/v1/flow/x"),
    ("GET", "/api/v1/flow"),
    ("GET", "/api/v1/flow/runs"),
    ("POST", "/api/v1/flowx"),
    ("POST", "/api/v2/flow/x"),
]


def scope(method: str, path: str, root_path: str = "") -> dict:
    return {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": []}


def routed(method: str, path: str) -> tuple[object, dict] | None:
    """The endpoint and path parameters Starlette's router would give this request."""
    for route in flow.routes:
        match, child = route.matches(scope(method, path))
        if match == Match.FULL:
            return route.endpoint, child["path_params"]
    return None


@pytest.mark.parametrize(("method", "path"), REQUESTS)
def test_a_hot_route_takes_only_what_the_router_gives_the_same_handler(method, path):
    request = scope(method, path)
    handler = flow.hot_route(request)
    if handler is not None:
        endpoint, params = routed(method, path)
        assert isinstance(endpoint, JsonEndpoint) and endpoint.handler is handler
        assert request["path_params"] == params


def test_the_busy_requests_take_the_hot_path_unless_mounted_under_a_root_path():
    assert flow.hot_route(scope("POST", "/api/v1/flow/checksum-report")) is flow.start_run
    assert flow.hot_route(scope("GET", "/api/v1/flow/status/abc")) is flow.run_status
    assert flow.hot_route(scope("POST", "/api/v1/flow/x", root_path="/engine")) is None
