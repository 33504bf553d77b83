"""The ASGI application: routes, the engine's lifespan, and turning errors into JSON."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from flowengine import version
from flowengine.api import (
    agent,
    browser,
    credentials,
    events,
    flow,
    models,
    openapi,
    pairing,
    ui,
    upload,
    uploads,
    webhooks,
    workflows,
)
from flowengine.api.documents import RenderedDocuments
from flowengine.api.errors import ERROR_HANDLERS, error_response
from flowengine.api.http import json_response, send_json
from flowengine.api.openapi import Answer, ApiRoute, Operation
from flowengine.api.r import files as r_files
from flowengine.api.r import tasks as r_tasks
from flowengine.api.r import workflows as r_workflows
from flowengine.config import Config
from flowengine.core.lru import LRU
from flowengine.errors import Error
from flowengine.runtime import overview
from flowengine.runtime.engine import Engine, Recovery

log = logging.getLogger("flowengine")


class Health(msgspec.Struct, rename="pascal"):
    status: Literal["ok"]


async def healthz(request: Request) -> Response:
    return json_response(Health("ok"))


class Readiness(msgspec.Struct, rename="pascal"):
    """Ready unless a store does not answer or a background loop keeps failing. Recovery after a
    restart does not count against it: the engine serves meanwhile, and `Recovery` shows how far
    it has come."""

    status: Literal["ready", "degraded"]
    stores: dict[str, str]  # stores that do not answer, with why
    loops: dict[str, str]  # background loops whose last iteration failed, with the error
    recovery: Recovery


async def readyz(request: Request) -> Response:
    engine = request.app.state.engine
    stores, loops = await engine.store_problems(), engine.loops.failing()
    ready = not stores and not loops
    status = "ready" if ready else "degraded"
    return json_response(Readiness(status, stores, loops, engine.recovery), 200 if ready else 503)


async def metrics(request: Request) -> Response:
    engine = request.app.state.engine
    await engine.metrics.read_database(engine.db)
    return Response(generate_latest(engine.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


SERVICE = "service"
ABOUT = (
    "A flow engine for file-processing pipelines: a run answers at once WAITING with presigned upload URLs, the "
    "client uploads straight to object storage, the engine runs the flow's steps, and the run ends COMPLETE with "
    "download URLs, or ERROR with the reason."
)
HEALTHZ = Operation(summary="Alive", tag=SERVICE, answers={200: Answer("the engine answers", Health)})
READYZ = Operation(
    summary="Ready: every store answers and every background loop's last turn succeeded",
    tag=SERVICE,
    answers={
        200: Answer("ready", Readiness),
        503: Answer(
            "degraded: the stores that do not answer and the loops whose last turn failed, with why", Readiness
        ),
    },
)
METRICS = Operation(
    summary="Metrics, in Prometheus' text format",
    tag=SERVICE,
    answers={200: Answer("the metrics (Prometheus text format)", str, "text/plain")},
)
DOCUMENT = Operation(
    summary="This document: OpenAPI 3.1, every route of the service",
    tag=SERVICE,
    answers={200: Answer("the OpenAPI document", dict[str, Any])},
)
routes = [
    ApiRoute("/healthz", healthz, get=HEALTHZ),
    ApiRoute("/readyz", readyz, get=READYZ),
    ApiRoute("/metrics", metrics, get=METRICS),
    ApiRoute("/api/v1/openapi.json", openapi.openapi_json, get=DOCUMENT),
]


class HotRoutes:
    """The ASGI entry point: the two busiest routes (creating a run, polling its status) are
    matched here by hand, ahead of Starlette's middleware and router, which cost about a tenth of
    a run's creation (bench/README.md). Everything else, and these routes whenever `hot_route`
    declines, goes through the Starlette app; errors go to the same handlers either way. What a
    browser may do (browser.py) is decided here first, for every route. The dashboard (/ui) is an
    app of its own: HTML pages, not an API (nor in its OpenAPI document)."""

    def __init__(self, app: Starlette, public_url: str, dashboard: Starlette) -> None:
        self.app = app
        self.dashboard = dashboard
        self.presigned = browser.presigned_cors(app)
        self.public_url = public_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if browser.is_presigned(scope["path"]):
            await self.presigned(scope, receive, send)
            return
        try:
            browser.refuse_cross_site(scope, self.public_url)
        except Error as exc:
            await error_response(exc, scope["path"])(scope, receive, send)
            return
        if ui.is_dashboard(scope["path"]):
            await self.dashboard(scope, receive, send)
            return
        handler = flow.hot_route(scope)
        if handler is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        try:
            status, body = await handler(scope, receive)
        except Exception as exc:
            handle = next(h for kind, h in ERROR_HANDLERS.items() if isinstance(exc, kind))
            response = await handle(Request(scope, receive), exc)
            await response(scope, receive, send)
            return
        await send_json(send, status, body)


def create_app(config: Config, engine: Engine | None = None) -> HotRoutes:
    dashboard = ui.create_dashboard()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.engine = dashboard.state.engine = running = engine or Engine(config)
        app.state.documents = RenderedDocuments(running)
        running.webhooks.render_run = app.state.documents.for_webhook
        app.state.inline_plans = LRU(flow.INLINE_PLANS)
        app.state.pairing = pairing.Service(running)
        await running.start()
        gc.freeze()  # what is loaded by now lives as long as the process: full collections need not walk it each time
        running.spawn(overview.log_overview(running))
        try:
            yield
        finally:
            await app.state.engine.stop()

    app = Starlette(
        routes=[
            *flow.routes,
            *upload.routes,
            *events.routes,
            *r_files.routes,
            *r_workflows.routes,
            *r_tasks.routes,
            *workflows.routes,
            *uploads.routes,
            *credentials.routes,
            *models.routes,
            *pairing.routes,
            *agent.routes,
            *webhooks.routes,
            *routes,
        ],
        exception_handlers=ERROR_HANDLERS,
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # an API answers the URL it was given, 404 or not
    app.state.openapi = openapi.document(app.routes, title="flowengine", version=version(), description=ABOUT)
    return HotRoutes(app, config.public_url, dashboard)
