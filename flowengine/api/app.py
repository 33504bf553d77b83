"""The ASGI application: routes, the engine's lifespan, and turning errors into JSON."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from flowengine.api import events, flow, upload
from flowengine.api.documents import RenderedDocuments
from flowengine.api.errors import ERROR_HANDLERS
from flowengine.api.http import json_response, send_json
from flowengine.config import Config
from flowengine.core.lru import LRU
from flowengine.runtime import landing, retention
from flowengine.runtime.engine import Engine

log = logging.getLogger("flowengine")


async def healthz(request: Request) -> Response:
    return json_response({"Status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready unless a store does not answer. Recovery after a restart does not count against it: the
    engine serves meanwhile, and `Recovery` shows how far it has come."""
    engine = request.app.state.engine
    problems = await engine.store_problems()
    return json_response({"Status": "ready" if not problems else "degraded", "Stores": problems,
                          "Recovery": engine.recovery}, 200 if not problems else 503)  # fmt: skip


class HotRoutes:
    """The ASGI entry point: the two busiest routes (creating a run, polling its status) are
    matched here by hand, ahead of Starlette's middleware and router, which cost about a tenth of
    a run's creation (bench/README.md). Everything else, and these routes whenever `hot_route`
    declines, goes through the Starlette app; errors go to the same handlers either way."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = flow.hot_route(scope) if scope["type"] == "http" else None
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
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.engine = running = engine or Engine(config)
        app.state.documents = RenderedDocuments(running)
        app.state.inline_plans = LRU(flow.INLINE_PLANS)
        await running.start()
        gc.freeze()  # what is loaded by now lives as long as the process: full collections need not walk it each time
        running.spawn(landing.Reconciler(running).run())
        running.spawn(retention.run(running))
        try:
            yield
        finally:
            await app.state.engine.stop()

    app = Starlette(
        routes=[
            *flow.routes,
            *upload.routes,
            *events.routes,
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers=ERROR_HANDLERS,
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # an API answers the URL it was given, 404 or not
    return HotRoutes(app)
