"""Persistence details that the API tests cannot see."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time

import msgspec
import pytest

from flowengine.config import Config
from flowengine.core import machine
from flowengine.persistence.base import NewRun
from flowengine.persistence.sqlite import SqliteDatabase as Database
from flowengine.runtime.engine import Engine


async def insert_runs(db: Database, count: int, first: int = 0) -> None:
    for i in range(first, first + count):
        async with db.transaction() as tx:
            await tx.insert_runs(
                [NewRun(machine.Run(f"run-{i}", "f", machine.WAITING, 1.0, 1.0, {}, {}), "digest", None)]
            )


def test_the_committing_connection_never_checkpoints_and_checkpoint_copies_the_whole_wal(tmp_path):
    db = Database(tmp_path / "flowengine.db")
    asyncio.run(insert_runs(db, 1500))  # well past SQLite's automatic checkpoint at 1,000 pages, had it been on
    frames, copied = db.checkpoint()
    assert frames > 1000 and copied == frames
    asyncio.run(db.close())
    assert db.checkpoint() == (0, 0)  # after close: nothing, and no connection reopened


def test_under_steady_writes_checkpoints_still_let_the_wal_start_over(tmp_path):
    db = Database(tmp_path / "flowengine.db")
    done = threading.Event()
    written = [0]

    def writer() -> None:  # the engine's committing connection, never idle for long
        while not done.is_set():
            asyncio.run(insert_runs(db, 1, first=written[0]))
            written[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(10):
            time.sleep(0.1)
            db.checkpoint()
    finally:
        done.set()
        thread.join()
    frames_since_start_over = db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    assert written[0] > 500 and frames_since_start_over < written[0] / 3  # not every frame of the second


def test_the_engine_checkpoints_in_the_background(tmp_path, monkeypatch):
    monkeypatch.setattr("flowengine.runtime.engine.HOUSEKEEPING_INTERVAL", 0.05)
    engine = Engine(Config(data_dir=str(tmp_path), flows_dir=str(tmp_path)))

    async def wal_frames_after_a_pause() -> int:
        await engine.start()
        await insert_runs(engine.db, 100)
        await asyncio.sleep(0.3)
        # Once everything in the WAL is in the database, the next commit starts the WAL over.
        await insert_runs(engine.db, 1, first=100)
        frames = engine.db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        await engine.stop()
        return frames

    assert asyncio.run(wal_frames_after_a_pause()) < 10  # not the hundred commits before the pause


def _run(run_id: str, flow: str, status: str) -> machine.Run:
    return machine.Run(run_id, flow, status, 1.0, 1.0, {}, {})


def _counted(db: Database) -> dict[tuple[str | None, str | None], int]:
    """Every total the listing can ask for, from the counters."""
    statuses = [None, *machine.TERMINAL, machine.WAITING, machine.RUNNING]
    return {(s, f): asyncio.run(db.count_runs("", s, f)) for s in statuses for f in (None, "a", "b", "c")}


def _truth(runs: dict[str, machine.Run]) -> dict[tuple[str | None, str | None], int]:
    statuses = [None, *machine.TERMINAL, machine.WAITING, machine.RUNNING]
    return {
        (s, f): sum(1 for r in runs.values() if s in (None, r.status) and f in (None, r.flow))
        for s in statuses
        for f in (None, "a", "b", "c")
    }


def test_counts_follow_every_insert_and_status_change_in_the_same_transaction(tmp_path):
    db = Database(tmp_path / "db.sqlite")
    rng = random.Random(7)
    runs: dict[str, machine.Run] = {}
    statuses = [machine.WAITING, machine.RUNNING, machine.COMPLETE, machine.ERROR, machine.STOPPED]

    async def changes() -> None:
        for i in range(300):
            async with db.transaction() as tx:
                if runs and rng.random() < 0.6:
                    run = runs[rng.choice(list(runs))]
                    run.status = rng.choice(statuses)
                    await tx.save_run(run, None)
                else:  # a group commit's worth, of several flows and statuses
                    count = rng.randint(1, 6)
                    new = [_run(f"r{i:04d}-{j}", rng.choice("abc"), rng.choice(statuses)) for j in range(count)]
                    await tx.insert_runs([NewRun(run, "digest", None) for run in new])
                    runs.update((run.id, run) for run in new)

    async def rolled_back() -> None:
        async with db.transaction() as tx:  # a change rolled back takes its counts with it
            run = next(iter(runs.values()))
            await tx.insert_runs([NewRun(_run("rolled-back", "a", machine.WAITING), "digest", None)])
            await tx.save_run(msgspec.structs.replace(run, status="OTHER"), None)
            raise RuntimeError

    asyncio.run(changes())
    assert _counted(db) == _truth(runs)
    with pytest.raises(RuntimeError):
        asyncio.run(rolled_back())
    assert _counted(db) == _truth(runs) != _truth({**runs, "x": _run("x", "a", machine.WAITING)})
    asyncio.run(db.close())


# The schema before versions (0): what a data dir of the first releases holds. The SQL lives here, not
# in the engine: the engine only ever upgrades from it.
_VERSION_0 = (
    "CREATE TABLE definitions (hash TEXT PRIMARY KEY, body BLOB)",
    "CREATE TABLE runs (id TEXT PRIMARY KEY, flow TEXT NOT NULL, status TEXT NOT NULL, created FLOAT NOT NULL,"
    " updated FLOAT, wake_at FLOAT, definition TEXT, doc BLOB NOT NULL)",
    "CREATE TABLE waits (location TEXT, key TEXT, run_id TEXT, edge TEXT, next_check FLOAT, checks INTEGER,"
    " PRIMARY KEY (location, key))",
    "CREATE TABLE expiries (run_id TEXT, edge TEXT, expires_at FLOAT, PRIMARY KEY (run_id, edge))",
    "CREATE INDEX idx_runs_status_id ON runs (status, id)",
    "CREATE INDEX idx_runs_flow_id ON runs (flow, id)",
)


def test_a_database_of_the_first_schema_is_upgraded_in_place(tmp_path):
    path = tmp_path / "db.sqlite"
    runs = {
        f"r{i}": _run(f"r{i}", "ab"[i % 2], [machine.WAITING, machine.COMPLETE, machine.ERROR][i % 3])
        for i in range(50)
    }
    conn = sqlite3.connect(path)
    for statement in _VERSION_0:
        conn.execute(statement)
    conn.executemany(
        "INSERT INTO runs (id, flow, status, created, updated, definition, doc) VALUES (?, ?, ?, 1, 1, 'digest', ?)",
        [(r.id, r.flow, r.status, msgspec.json.encode(r)) for r in runs.values()],
    )
    conn.commit()
    conn.close()
    upgraded = Database(path)  # opening it upgrades it

    async def change() -> list[str]:
        async with upgraded.transaction() as tx:
            run = runs["r0"]
            run.status = machine.COMPLETE
            await tx.save_run(run, None)
        return [r.id for r in await upgraded.list_runs("", machine.WAITING, "a", 3)]

    assert _counted(upgraded) == _truth(runs)
    assert asyncio.run(change()) == ["r6", "r48", "r42"]
    assert _counted(upgraded) == _truth(runs)
    asyncio.run(upgraded.close())


def test_pages_by_key_see_every_run_once_newest_first(tmp_path):
    db = Database(tmp_path / "db.sqlite")

    async def pages() -> tuple[list[str], list[str]]:
        async with db.transaction() as tx:
            for i in range(23):
                await tx.insert_runs([NewRun(_run(f"r{i:02d}", "ab"[i % 2], machine.WAITING), "digest", None)])
        seen, before = [], None
        while page := await db.list_runs("", None, "a", 5, before=before):
            seen += [r.id for r in page]
            before = page[-1].id
        offset = [r.id for r in await db.list_runs("", machine.WAITING, None, 2, offset=3)]
        await db.close()
        return seen, offset

    seen, offset = asyncio.run(pages())
    assert seen == [f"r{i:02d}" for i in range(22, -1, -2)]
    assert offset == ["r19", "r18"]


def test_a_teams_listing_and_totals_hold_only_its_runs(tmp_path):
    db = Database(tmp_path / "db.sqlite")

    async def scenario() -> tuple[list[str], list[str], list[int]]:
        async with db.transaction() as tx:
            for i in range(6):
                run = msgspec.structs.replace(_run(f"r{i}", "f", machine.WAITING), team="ab"[i % 2])
                await tx.insert_runs([NewRun(run, "digest", None)])
        a = [r.id for r in await db.list_runs("a", None, None, 10)]
        nobody = [r.id for r in await db.list_runs("", None, None, 10)]
        totals = [await db.count_runs(team, machine.WAITING, flow) for team in "ab" for flow in ("f", None)]
        await db.close()
        return a, nobody, totals

    a, nobody, totals = asyncio.run(scenario())
    assert a == ["r4", "r2", "r0"] and nobody == [] and totals == [3, 3, 3, 3]
