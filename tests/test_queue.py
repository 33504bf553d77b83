"""The step queue inside the engine: attempts inserted with the run change that dispatched them,
routing by tool, labels, team pool and region preference, and the pure rules of core/queue.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from flowengine.config import Config
from flowengine.core import queue
from flowengine.core.queue import Attempt, Worker
from flowengine.core.spec import Flow
from flowengine.runtime.engine import Engine

pytestmark = pytest.mark.backends("sqlite", "postgres")


def tool_flow(labels: list[str]) -> Flow:
    return msgspec.convert({"Name": "route", "Steps": [{"ID": "s", "Uses": "t"}],
                            "Tasks": [{"Name": "t", "Tool": "render", "Labels": labels}]}, Flow)  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def engine_on(database_of: Callable[[Path], str], data: Path, clock: Clock) -> Engine:
    config = Config(data_dir=str(data), flows_dir=str(data), database=database_of(data), region_wait=5)
    return Engine(config, clock=clock)


def agent(name: str, team: str = "t1", **fields: object) -> Worker:
    return Worker(id=name, session=f"{name}.s", team=team, tools=("render",), **fields)  # type: ignore[arg-type]


def test_routing_by_tool_labels_pool_and_region_with_the_region_a_preference_not_a_wall(database_of, tmp_path):
    clock = Clock()

    async def scenario() -> None:
        engine = engine_on(database_of, tmp_path, clock)  # not started: no local executor leases meanwhile
        plain = await engine.create_run(engine.plan(tool_flow([])), team="t1")
        gpu = await engine.create_run(engine.plan(tool_flow(["gpu"])), team="t1")
        shared = await engine.create_run(engine.plan(tool_flow([])), team="t2", pool="community")
        eu = await engine.create_run(engine.plan(tool_flow([])), team="t1", region="eu")
        # Inserted with the runs: one queued attempt each, in creation order.
        rows = [await engine.db.attempt_of(r.id, "s", 1) for r in (plain, gpu, shared, eu)]
        assert [(a.state, a.tool, a.labels, a.pool, a.region) for a in rows] == [
            ("queued", "render", [], "team", ""), ("queued", "render", ["gpu"], "team", ""),
            ("queued", "render", [], "community", ""), ("queued", "render", [], "team", "eu"),
        ]  # fmt: skip

        async def offered(worker: Worker, slots: int = 10) -> list[str]:
            return [a.run_id for a in await engine.queue.offer(worker, slots)]

        assert await offered(agent("other-team", team="t3", community=False)) == []
        assert await offered(agent("us", team="t2", labels=("gpu",), region="us")) == [shared.id]  # its own team's
        assert await offered(agent("cpu", region="us")) == [plain.id]  # eu: reserved for eu a while; gpu: lacks it
        assert await offered(agent("eu", region="eu")) == [eu.id]
        assert await offered(agent("gpu-box", labels=("gpu", "a100"))) == [gpu.id]

        late = await engine.create_run(engine.plan(tool_flow([])), team="t1", region="eu")
        assert await offered(agent("cpu", region="us")) == []
        clock.now += 5  # region_wait passed: any region may take it
        assert await offered(agent("cpu", region="us")) == [late.id]
        await engine.stop()

    asyncio.run(scenario())


def test_a_step_only_agents_can_run_gets_a_schedule_to_start_deadline_and_a_local_one_none(database_of, tmp_path):
    clock = Clock()

    async def scenario() -> None:
        engine = engine_on(database_of, tmp_path, clock)
        remote = await engine.create_run(engine.plan(tool_flow([])))
        exec_flow = msgspec.convert({"Name": "local", "Steps": [{"ID": "s", "Uses": "t"}],
                                     "Tasks": [{"Name": "t", "Exec": ["true"]}]}, Flow)  # fmt: skip
        local = await engine.create_run(engine.plan(exec_flow))
        assert (await engine.db.attempt_of(remote.id, "s", 1)).deadline == clock.now + engine.config.schedule_to_start
        assert (await engine.db.attempt_of(local.id, "s", 1)).deadline is None  # the local executor may take it
        await engine.stop()

    asyncio.run(scenario())


def test_the_local_executor_takes_a_step_in_one_commit_and_runs_made_in_a_burst_all_complete(database_of, tmp_path):
    # The local executor's offer and acknowledgement are one transaction: it may start a run's step
    # in the very turn its creation commits, before the creator resumes. The creator's copy of the
    # run (its step READY) must not then replace the executor's (RUNNING) in the engine's cache:
    # the executor, finding the step not RUNNING, would drop it, and the run would never end.
    exec_flow = msgspec.convert({"Name": "local", "Steps": [{"ID": "s", "Uses": "t"}],
                                 "Tasks": [{"Name": "t", "Exec": ["true"]}]}, Flow)  # fmt: skip

    async def scenario() -> None:
        config = Config(data_dir=str(tmp_path / "data"), flows_dir=str(tmp_path), work_dir=str(tmp_path / "work"),
                        database=database_of(tmp_path))  # fmt: skip
        engine = Engine(config)
        await engine.start()
        try:
            plan = engine.plan(exec_flow)
            ids = [(await engine.create_run(plan)).id for _ in range(80)]
            async with asyncio.timeout(30):
                for run_id in ids:
                    while (run := (await engine.get_run(run_id))[0]).status != "COMPLETE":
                        assert run.status not in ("ERROR", "CANCELLED"), run
                        await asyncio.sleep(0.01)
            attempts = [await engine.db.attempt_of(run_id, "s", 1) for run_id in ids]
            assert {(a.state, a.outcome, a.worker) for a in attempts} == {("done", "succeeded", engine.local.worker.id)}
            assert all(a.offered_at == a.acked_at for a in attempts)  # offered and acknowledged in one commit
        finally:
            await engine.stop()

    asyncio.run(scenario())


def test_the_pure_rules() -> None:
    attempt = Attempt(id="a", run_id="r", step="s", attempt=1, team="t1", tool="render", labels=["gpu"],
                      pool="team", region="eu", timeout=60, created=100.0)  # fmt: skip
    assert queue.may_take(agent("x", labels=("gpu",)), attempt)
    assert not queue.may_take(agent("x"), attempt)  # label
    assert not queue.may_take(agent("x", team="t2", labels=("gpu",), community=True), attempt)  # team pool
    assert not queue.may_take(Worker(id="local", session="", labels=("gpu",), local=True), attempt)  # tool
    assert queue.in_region(agent("x", region="eu"), attempt, 100.0, 5)
    assert not queue.in_region(agent("x", region="us"), attempt, 104.9, 5)
    assert queue.in_region(agent("x", region="us"), attempt, 105.0, 5)
    assert queue.output_key("outputs/f/run/out.png", 1) == "outputs/f/run/out.png"
    assert queue.output_key("outputs/f/run/out.png", 3) == "outputs/f/run/attempt-3/out.png"
    assert queue.output_key("out.png", 2) == "attempt-2/out.png"
    # the keys of the files beyond the first of an output numbered .0 (a ComfyUI node's batch)
    assert queue.more_key("outputs/f/run/9.images.0", 3) == "outputs/f/run/9.images.3"
    assert queue.more_key("out/a.png", 1) == "out/a.1.png"
    assert queue.more_key("out/.hidden", 2) == "out/.hidden.2" and queue.more_key("plain", 2) == "plain.2"
    offered = queue.offer(attempt, agent("x"), "tok", 200.0, 10.0)
    running = queue.ack(offered, 205.0, 30.0)
    assert (running.state, running.lease_expires, running.deadline) == ("running", 235.0, 205.0 + 60 + 30)
    back = queue.requeue(running, None)
    assert (back.state, back.worker, back.token, back.lease_expires) == ("queued", "", "", None)
    reason = queue.unplaced_reason(attempt, [("box", agent("box"))], 600)
    assert reason == ("no agent took the step within 600s: it needs tool 'render', labels gpu, in its team "
                      "(box lacks label(s) gpu)")  # fmt: skip
