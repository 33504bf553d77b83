"""The ceiling for status GETs: a bare Starlette app answering one route with pre-encoded bytes.

    python bench/bare.py --port P --body FILE

Served like `flowengine serve`: uvicorn with httptools and uvloop, one worker, no access log.
GET /healthz answers 200 too, so run.py can wait for it the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create_app(body: bytes) -> Starlette:
    async def status(request: Request) -> Response:
        return Response(body, 200, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response(b'{"Status":"ok"}', 200, media_type="application/json")

    return Starlette(routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/v1/flow/status/{run_id}", status, methods=["GET"]),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True, help="the bytes every status GET answers")
    args = parser.parse_args()
    app = create_app(args.body.read_bytes())
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False)  # fmt: skip


if __name__ == "__main__":
    main()
