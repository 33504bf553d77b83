"""The run document cache: reused while nothing in it can change, re-rendered the moment something does."""

from __future__ import annotations

import asyncio

import msgspec

from flowengine.api.documents import RenderedDocuments
from flowengine.config import Config
from flowengine.core import machine
from flowengine.core.spec import Flow
from flowengine.runtime.engine import Engine

FLOW = msgspec.convert({"Name": "docs", "DataWells": [{"Edge": "in", "Source": "upload"}]}, Flow)


def test_documents_are_reused_until_the_run_or_the_minute_changes_or_an_artifact_expires(tmp_path):
    now = [1_000_070.0]  # 10 s before a minute turns
    engine = Engine(Config(data_dir=str(tmp_path), flows_dir=str(tmp_path), input_retention=30), clock=lambda: now[0])
    docs = RenderedDocuments(engine)

    async def scenario() -> None:
        run = await engine.create_run(engine.plan(FLOW))
        first = docs.get(run, FLOW, "http://h")
        assert docs.get(run, FLOW, "http://h") is first  # nothing changed: the same bytes object
        assert docs.get(run, FLOW, "http://other") is not first  # another base URL, other URLs

        now[0] += 1
        landed = await engine.apply(run.id, machine.Landed("in", machine.ObjectMeta(1, "text/plain", "e")))
        done = docs.get(landed, FLOW, "http://h")
        assert b'"Status":"COMPLETE"' in done and b"GetURL" in done
        now[0] += 20  # past the minute: download URLs are minted anew
        assert docs.get(landed, FLOW, "http://h") is not done
        again = docs.get(landed, FLOW, "http://h")
        now[0] += 10  # the input's 30 s retention is over
        expired = docs.get(landed, FLOW, "http://h")
        assert expired is not again and b'"Expired":true' in expired and b"GetURL" not in expired

        await engine.db.close()

    asyncio.run(scenario())
