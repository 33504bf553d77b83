"""Resuming after a restart happens in the background, in batches, with the engine serving meanwhile."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import msgspec
import pytest
from live import wait_for_status

from flowengine.config import Config
from flowengine.core import machine
from flowengine.core.spec import Flow
from flowengine.persistence import open_database
from flowengine.runtime import engine as engine_module
from flowengine.runtime.engine import Engine
from flowengine.runtime.ingest import Upload, receive
from flowengine.stores.base import ObjectInfo


def flow(definition: dict) -> Flow:
    return msgspec.convert({"Name": "recover", **definition}, Flow)


UPLOAD = flow({"DataWells": [{"Edge": "file", "Source": "upload"}]})


pytestmark = pytest.mark.backends("sqlite", "postgres")


@pytest.fixture
def engine_on(database_of: Callable[[Path], str]) -> Callable[..., Engine]:
    """engine_on(data_dir, **settings): an engine on that data dir, and on the test's backend."""

    def engine(data: Path, **settings: object) -> Engine:
        return Engine(Config(data_dir=str(data), flows_dir=str(data), database=database_of(data), **settings))

    return engine


async def until(condition, timeout: float = 15.0) -> None:
    """Wait until `condition()` (a bool, or an awaitable of one) holds."""
    deadline = time.monotonic() + timeout
    while not await _holds(condition()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def _holds(result) -> bool:
    return await result if inspect.isawaitable(result) else result


async def run_of(engine: Engine, run_id: str) -> machine.Run:
    return (await engine.get_run(run_id))[0]


async def all_complete(engine: Engine, runs: list[machine.Run]) -> bool:
    return [(await run_of(engine, r.id)).status for r in runs] == [machine.COMPLETE] * len(runs)


async def step_status(engine: Engine, run_id: str, step: str, status: str) -> bool:
    return (await run_of(engine, run_id)).steps[step].status == status


async def crash(engine: Engine) -> None:
    """Stop the engine as a kill would: without recording a clean stop."""
    await engine.stop()
    db = open_database(engine.config)
    await db.take_clean_stop(engine.local.worker.id)
    await db.close()


def test_uploads_that_landed_before_a_crash_are_found_in_batches_with_the_event_loop_free_between(
    engine_on, tmp_path, monkeypatch
):
    monkeypatch.setattr(engine_module, "RECOVERY_BATCH", 50)

    async def scenario() -> None:
        first = engine_on(tmp_path)
        plan = first.plan(UPLOAD)
        runs = await asyncio.gather(*(first.create_run(plan) for _ in range(600)))
        await crash(first)
        landed = runs[::60]  # as if each upload's file was in place when the process died
        store = first.stores.local("default")
        for run in landed:
            temp = store.tmp_root / "landed"
            temp.write_bytes(b"made it")
            store.commit(temp, run.edges["file"].key, ObjectInfo(7, "text/plain", "etag", 0.0))

        second = engine_on(tmp_path)
        batches: list[tuple[int, int]] = []  # (rows read, turns the event loop gave others before)
        turns = 0
        read = second.db.unscheduled_waits

        async def spied(location: str, after: str, limit: int) -> list:
            rows = await read(location, after, limit)
            batches.append((len(rows), turns))
            return rows

        second.db.unscheduled_waits = spied  # type: ignore[method-assign]

        async def others() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        other = asyncio.create_task(others())
        await second.start()
        await until(lambda: second.recovery.done)
        other.cancel()
        assert sum(n for n, _ in batches) == 600 and max(n for n, _ in batches) == 50
        assert all(b[1] > a[1] for a, b in itertools.pairwise(batches))  # others ran between batches
        assert second.recovery.waits == 600
        statuses = {r.id: (await run_of(second, r.id)).status for r in runs}
        assert {i for i, s in statuses.items() if s == machine.COMPLETE} == {r.id for r in landed}
        await second.stop()

    asyncio.run(scenario())


def test_a_stop_before_a_crashs_recovery_is_done_leaves_the_next_start_looking(engine_on, tmp_path):
    async def scenario() -> None:
        first = engine_on(tmp_path)
        await first.create_run(first.plan(UPLOAD))
        await crash(first)
        second = engine_on(tmp_path)
        await second.start()  # its recovery has not had a turn of the event loop yet
        assert second.recovery.crashed and not second.recovery.done
        await second.stop()
        third = engine_on(tmp_path)
        await third.start()
        await until(lambda: third.recovery.done)
        assert third.recovery.crashed and third.recovery.waits == 1
        await third.stop()
        fourth = engine_on(tmp_path)
        await fourth.start()
        await until(lambda: fourth.recovery.done)
        assert not fourth.recovery.crashed and fourth.recovery.waits == 0
        await fourth.stop()

    asyncio.run(scenario())


STEP_FLOW = flow({
    "Tasks": [{"Name": "mark", "Outputs": [{"Name": "o"}], "Exec": ["sh", "-c", 'echo x > "$0"', "${o}"]}],
    "Steps": [{"ID": "mark", "Uses": "mark", "Outputs": [{"Slot": "o", "Edge": "out"}]}],
})  # fmt: skip


def test_interrupted_runs_resume_in_batches_and_their_queued_steps_run_within_the_concurrency(
    engine_on, tmp_path, monkeypatch
):
    monkeypatch.setattr(engine_module, "RECOVERY_BATCH", 4)

    async def scenario() -> None:
        first = engine_on(tmp_path)
        runs = await asyncio.gather(*(first.create_run(first.plan(STEP_FLOW)) for _ in range(30)))
        await first.stop()  # before any step could start: 30 runs RUNNING, each with a READY step, queued
        second = engine_on(tmp_path, concurrency=2)
        start, most = second.local._start, 0

        def counted(*args: object) -> None:
            nonlocal most
            start(*args)
            most = max(most, len(second.local.running))

        second.local._start = counted  # type: ignore[method-assign]
        await second.start()
        await until(lambda: all_complete(second, runs), 60)
        await until(lambda: second.recovery.done)
        assert second.recovery.runs == 30
        assert most <= 2  # the queue holds the backlog, not the process's memory
        assert [(await run_of(second, r.id)).steps["mark"].attempts for r in runs] == [1] * 30
        await second.stop()

    asyncio.run(scenario())


TWO_STEPS = flow({
    "DataWells": [{"Edge": "later", "Source": "upload"}],
    "Tasks": [
        {"Name": "first", "Outputs": [{"Name": "o"}], "Exec": ["sh", "-c", 'echo a > "$0"', "${o}"]},
        {"Name": "second", "Inputs": [{"Name": "i"}], "Outputs": [{"Name": "o"}],
         "Exec": ["sh", "-c", 'echo b; sleep 0.5; cp "$0" "$1"', "${i}", "${o}"]},
    ],
    "Steps": [
        {"ID": "first", "Uses": "first", "Outputs": [{"Slot": "o", "Edge": "a"}]},
        {"ID": "second", "Uses": "second", "Inputs": [{"Slot": "i", "Edge": "later"}],
         "Outputs": [{"Slot": "o", "Edge": "b"}]},
    ],
})  # fmt: skip


def test_a_step_an_event_dispatched_before_recovery_reached_its_run_runs_once(engine_on, tmp_path):
    two_steps = TWO_STEPS
    attempts: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"input"

    async def scenario() -> None:
        first = engine_on(tmp_path / "data")
        run = await first.create_run(first.plan(two_steps))
        await first.stop()  # step "first" READY, never started
        second = engine_on(tmp_path / "data")
        go_on = asyncio.Event()
        recover = second._recover

        async def held() -> None:
            await go_on.wait()
            await recover()

        second._recover = held  # type: ignore[method-assign]
        await second.start()
        await receive(second, run.id, "later", body(), Upload("text/plain", 5))  # dispatches "second"
        await until(lambda: step_status(second, run.id, "second", machine.RUNNING))
        go_on.set()  # recovery now finds "first" READY and "second" RUNNING, already this process's
        await until(lambda: all_complete(second, [run]))
        attempts.append((await run_of(second, run.id)).steps["second"].attempts)
        await second.stop()

    asyncio.run(scenario())
    assert attempts == [1]  # recovery left the attempt this process had started alone


def test_readiness_shows_recovery_which_looks_for_uploads_only_after_a_crash(start_server, tmp_path):
    data = tmp_path / "kept"
    server = start_server(data_dir=data)
    with server.client() as client:
        for _ in range(3):
            assert client.post("/api/v1/flow/r", json={"Flow": msgspec.to_builtins(UPLOAD)}).status_code == 201

    def recovered() -> dict:
        deadline = time.monotonic() + 10
        while (ready := httpx.get(f"{server.url}/readyz").json())["Recovery"]["Done"] is not True:
            assert time.monotonic() < deadline, ready
            time.sleep(0.05)
        assert ready["Status"] == "ready"
        return ready["Recovery"]

    server.kill9()
    server = start_server(data_dir=data, port=server.port)
    assert recovered() == {"Done": True, "Crashed": True, "Runs": 0, "Waits": 3}
    with server.client() as client:
        waiting = client.get("/api/v1/flow/runs", params={"status": "WAITING"}).json()
        assert waiting["Total"] == 3
        wait_for_status(client, waiting["Runs"][0]["ID"], {"WAITING"})
    server.stop()  # SIGTERM: a clean stop, after which no upload can be half landed
    server = start_server(data_dir=data, port=server.port)
    assert recovered() == {"Done": True, "Crashed": False, "Runs": 0, "Waits": 0}


def test_a_step_the_local_executor_ran_when_the_engine_was_killed_runs_again_once_not_counted(start_server, tmp_path):
    """kill -9 while the local executor holds a running lease: the next process reclaims it (the step was
    interrupted: not an attempt of MaxAttempts), its process is gone with the engine, and the step runs
    again, to one success."""
    data = tmp_path / "kept"
    settings = {"lease": 2, "heartbeat_interval": 0.5}
    slow = {"Name": "slow", "MaxAttempts": 1, "Inputs": [{"Name": "i"}], "Outputs": [{"Name": "o"}],
            "Exec": ["sh", "-c", 'echo started; sleep 3; echo finished; cp "$0" "$1"', "${i}", "${o}"]}  # fmt: skip
    body = {"Flow": {"DataWells": [{"Edge": "in", "Source": "upload"}], "Tasks": [slow],
                     "Steps": [{"ID": "slow", "Uses": "slow", "Inputs": [{"Slot": "i", "Edge": "in"}],
                                "Outputs": [{"Slot": "o", "Edge": "out"}]}]}}  # fmt: skip
    first = start_server(data_dir=data, **settings)
    with first.client() as client:
        run = client.post("/api/v1/flow/slow", json=body).json()
        assert httpx.put(run["WaitingURLs"][0]["PutURL"], content=b"kept").status_code in (200, 201)
    logs = data / "logs" / run["ID"]
    deadline = time.monotonic() + 15
    while not (logs / "slow.1.log").exists() or "started" not in (logs / "slow.1.log").read_text():
        assert time.monotonic() < deadline, "the step never started"  # leased, acknowledged, running
        time.sleep(0.05)
    first.kill9()
    second = start_server(data_dir=data, port=first.port, **settings)
    with second.client() as client:
        done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"}, timeout=30)
        assert done["Status"] == "COMPLETE", done  # MaxAttempts 1: the interrupted attempt was not counted
        [out] = [a for a in done["Artifacts"] if a["EdgeName"] == "out"]
        assert client.get(out["GetURL"]).content == b"kept"
    time.sleep(3)  # long enough for attempt 1's process to have finished, had it outlived its engine
    assert (logs / "slow.1.log").read_text() == "started\n"  # its process died with the engine (the reaper)
    assert (logs / "slow.2.log").read_text() == "started\nfinished\n"
    assert sorted(p.name for p in logs.iterdir()) == ["slow.1.log", "slow.2.log"]  # run once more, once
