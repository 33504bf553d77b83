"""The reconciler notices S3 uploads no notification reported, within a bounded number of store
requests per tick, by listing where waiting keys lie close and asking key by key where they lie apart.

Against the real SeaweedFS (the `s3` fixture), which lists directory by directory ('a/b' before
'a-b'), and an in-memory store that lists in byte order as S3 and MinIO do.
"""

from __future__ import annotations

import asyncio
import io
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from live import Server, wait_for_status
from minio import Minio

from flowengine.config import Config
from flowengine.core import machine
from flowengine.core.ids import uuid7
from flowengine.core.machine import Run
from flowengine.core.spec import Flow
from flowengine.runtime import landing
from flowengine.runtime.engine import Engine
from flowengine.stores.base import KeyPage, ObjectInfo
from flowengine.stores.s3 import S3Store

pytestmark = pytest.mark.backends("sqlite", "postgres")


def s3_params(s3: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {"endpoint": s3["endpoint"], "bucket": s3["bucket"], "prefix": prefix, "secure": False}


def waiting_flow(name: str, params: dict[str, Any]) -> dict:
    """One upload well on S3, under the default key inputs/{name}/{run}/in; no steps."""
    return {"Flow": {"Name": name, "Stores": [{"Name": "s3", "Type": "s3", "Params": params}],
                     "DataWells": [{"Edge": "in", "Store": "s3", "Source": "upload"}]}}  # fmt: skip


def put(client: Minio, bucket: str, key: str) -> None:
    client.put_object(bucket, key, io.BytesIO(b"landed"), 6, content_type="text/plain")


def test_uploads_among_many_waiting_runs_are_all_noticed_without_notifications(
    start_server: Callable[..., Server], s3: dict[str, Any]
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    server = start_server(reconcile_interval=0.2, reconcile_batch=20,
                          s3_access_key=s3["access_key"], s3_secret_key=s3["secret_key"])  # fmt: skip
    # "up-2/..." sorts before "up/..." byte by byte, after it directory by directory.
    with server.client() as api:
        client = Minio(s3["endpoint"], s3["access_key"], s3["secret_key"], secure=False)
        runs = []
        for i in range(300):
            name = ("up-2", "up")[i % 2]
            runs.append(api.post(f"/api/v1/flow/{name}", json=waiting_flow(name, s3_params(s3, prefix))).json())
            if i % 10 == 0:  # an object no run waits for, between the waiting keys
                put(client, s3["bucket"], f"{prefix}/inputs/{name}/{uuid7()}/in")
        landed = random.Random(1).sample(runs, 60)
        for run in landed:
            put(client, s3["bucket"], f"{prefix}/{run['WaitingURLs'][0]['Artifact']['ObjectName']}")
        for run in landed:
            assert wait_for_status(api, run["ID"], {"COMPLETE"}, timeout=60)["Artifacts"][0]["Size"] == 6
        others = {r["ID"] for r in runs} - {r["ID"] for r in landed}
        waiting = api.get("/api/v1/flow/runs", params={"status": "WAITING", "limit": 500}).json()
        assert {r["ID"] for r in waiting["Runs"]} == others


# --- in-process: every store request counted, time simulated ---------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Counted:
    """Counts the store requests the reconciler makes (listings and HEADs)."""

    def __init__(self, monkeypatch: Any, store_class: type) -> None:
        self.calls = 0
        for name in ("list_keys", "stat"):
            real = getattr(store_class, name)

            async def counted(store: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
                self.calls += 1
                return await _real(store, *args, **kwargs)

            monkeypatch.setattr(store_class, name, counted)


@pytest.fixture
def engine_for(s3: dict[str, Any], database_of: Callable[[Path], str]) -> Callable[..., Engine]:
    """engine_for(data_dir, clock, **settings): an engine on the session's S3 server and the test's backend."""

    def engine(tmp: Path, clock: Clock, **settings: Any) -> Engine:
        config = Config(data_dir=str(tmp), flows_dir=str(tmp), s3_access_key=s3["access_key"],
                        s3_secret_key=s3["secret_key"], database=database_of(tmp), **settings)  # fmt: skip
        return Engine(config, clock=clock)

    return engine


async def create(engine: Engine, name: str, params: dict[str, Any], count: int) -> list[Run]:
    plan = engine.plan(msgspec.convert(waiting_flow(name, params)["Flow"], Flow))
    return [await engine.create_run(plan) for _ in range(count)]


async def tick_until(engine: Engine, clock: Clock, done: Callable[[], Awaitable[bool]], ticks: int, batch: int,
                     counted: Counted) -> list[int]:  # fmt: skip
    """Ticks (one simulated second each) until `done`; the store requests each one made."""
    reconciler, spent = landing.Reconciler(engine), []
    for _ in range(ticks):
        if await done():
            return spent
        clock.now += 1.0
        before = counted.calls
        reported = await reconciler.tick()
        spent.append(counted.calls - before)
        assert spent[-1] == reported <= batch, spent
    raise AssertionError(f"not done after {ticks} ticks: {spent}")


async def status(engine: Engine, run: Run) -> str:
    return (await engine.get_run(run.id))[0].status


async def all_in(engine: Engine, runs: list[Run], wanted: str) -> bool:
    return [await status(engine, r) for r in runs] == [wanted] * len(runs)


def test_close_keys_are_listed_far_fewer_requests_than_keys_and_never_over_the_batch(
    tmp_path: Path, s3: dict[str, Any], engine_for: Callable[..., Engine], monkeypatch: Any
) -> None:
    counted = Counted(monkeypatch, S3Store)
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    clock = Clock()

    async def scenario() -> None:
        engine = engine_for(tmp_path, clock, reconcile_batch=8)
        runs = [*await create(engine, "near-2", s3_params(s3, prefix), 300),
                *await create(engine, "near", s3_params(s3, prefix), 300)]  # fmt: skip
        client = Minio(s3["endpoint"], s3["access_key"], s3["secret_key"], secure=False)
        landed = runs[5::40]
        for run in landed:
            put(client, s3["bucket"], f"{prefix}/{run.edges['in'].key}")
        spent = await tick_until(engine, clock, lambda: all_in(engine, landed, machine.COMPLETE),
                                 60, 8, counted)  # fmt: skip
        assert sum(spent) < len(runs) / 10  # a HEAD per waiting key would take 600 requests
        assert {r.id for r in runs if await status(engine, r) != machine.WAITING} == {r.id for r in landed}
        await engine.stop()

    asyncio.run(scenario())


def test_keys_far_apart_are_asked_about_one_by_one_less_and_less_often(
    tmp_path: Path, s3: dict[str, Any], engine_for: Callable[..., Engine], monkeypatch: Any
) -> None:
    monkeypatch.setattr(landing, "LIST_PAGE", 5)  # so that 20 other objects put keys far apart
    counted = Counted(monkeypatch, S3Store)
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    clock = Clock()

    async def scenario() -> None:
        engine = engine_for(tmp_path, clock, reconcile_batch=8, reconcile_max_interval=16)
        client = Minio(s3["endpoint"], s3["access_key"], s3["secret_key"], secure=False)
        runs = []
        for _ in range(3):
            runs += await create(engine, "apart", s3_params(s3, prefix), 1)
            for _ in range(20):  # later run IDs: these sort after this run's key, before the next one's
                put(client, s3["bucket"], f"{prefix}/inputs/apart/{uuid7()}/in")
        reconciler, spent = landing.Reconciler(engine), []
        for _ in range(90):
            clock.now += 1.0
            spent.append(await reconciler.tick())
        # Once found apart, each key is asked about after 1, 2, 4, 8, 16, 16 ... s, and listed
        # again now and then: nowhere near a request per key per second.
        assert sum(spent[30:]) <= 3 * 60 / 16 + 6 and max(spent) <= 8, spent
        put(client, s3["bucket"], f"{prefix}/{runs[1].edges['in'].key}")
        await tick_until(engine, clock, lambda: all_in(engine, [runs[1]], machine.COMPLETE), 20, 8, counted)
        assert [await status(engine, r) for r in runs] == [machine.WAITING, machine.COMPLETE, machine.WAITING]
        await engine.stop()

    asyncio.run(scenario())


# --- a store that lists in byte order, as S3 and MinIO do --------------------------------------------


class ByteOrderStore:
    """In memory, under the same prefix and location as the S3 store it stands in for."""

    def __init__(self, location: str, prefix: str) -> None:
        self.location, self.prefix, self.kind, self.name = location, prefix, "s3", "s3"
        self.objects: dict[str, ObjectInfo] = {}

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    async def list_keys(self, prefix: str, start_after: str = "", limit: int = 1000) -> KeyPage:
        keys = sorted(k for k in self.objects if k.startswith(prefix) and k > start_after)
        return KeyPage(keys[:limit], len(keys) > limit)

    async def stat(self, key: str) -> ObjectInfo | None:
        return self.objects.get(key)


def test_a_burst_of_uploads_is_taken_a_batch_of_requests_at_a_time_on_a_byte_order_server(
    tmp_path: Path, s3: dict[str, Any], engine_for: Callable[..., Engine], monkeypatch: Any
) -> None:
    counted = Counted(monkeypatch, ByteOrderStore)
    clock = Clock()

    async def scenario() -> None:
        engine = engine_for(tmp_path, clock, reconcile_batch=3)
        params = s3_params(s3, "bytes")
        runs = [*await create(engine, "b-2", params, 50), *await create(engine, "b", params, 50)]
        store = ByteOrderStore(f"s3:{s3['bucket']}", "bytes")
        engine.store_of = lambda flow, edge: store  # type: ignore[method-assign]
        landed = runs[::3]
        for run in landed:
            store.objects[run.edges["in"].key] = ObjectInfo(6, "text/plain", "etag", clock.now)
        for i in range(200):
            store.objects[f"inputs/b/{uuid7()}/in-{i}"] = ObjectInfo(1, "text/plain", "etag", clock.now)
        spent = await tick_until(engine, clock, lambda: all_in(engine, landed, machine.COMPLETE),
                                 200, 3, counted)  # fmt: skip
        assert len(spent) >= len(landed) / 3  # each found object costs a HEAD: 3 requests a tick at most
        assert {r.id for r in runs if await status(engine, r) != machine.WAITING} == {r.id for r in landed}
        await engine.stop()

    asyncio.run(scenario())


def test_a_lone_waiting_key_is_listed_on_the_backoff_schedule_not_every_tick(
    tmp_path: Path, s3: dict[str, Any], engine_for: Callable[..., Engine], monkeypatch: Any
) -> None:
    counted = Counted(monkeypatch, ByteOrderStore)
    clock = Clock()

    async def scenario() -> None:
        engine = engine_for(tmp_path, clock, reconcile_max_interval=16)
        (run,) = await create(engine, "lone", s3_params(s3, "lone"), 1)
        store = ByteOrderStore(f"s3:{s3['bucket']}", "lone")
        engine.store_of = lambda flow, edge: store  # type: ignore[method-assign]
        reconciler = landing.Reconciler(engine)
        for _ in range(64):
            clock.now += 1.0
            await reconciler.tick()
        assert counted.calls <= 9  # after 1, 2, 4, 8, 16, 16, 16, 16 s, not 64 times
        store.objects[run.edges["in"].key] = ObjectInfo(6, "text/plain", "etag", clock.now)
        await tick_until(engine, clock, lambda: all_in(engine, [run], machine.COMPLETE), 17, 200, counted)
        await engine.stop()

    asyncio.run(scenario())
