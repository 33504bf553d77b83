"""SQLite details that the API tests cannot see: its WAL, copied into the database from a worker thread
(the rest of what the database does is in test_persistence_contract.py, on both backends)."""

from __future__ import annotations

import asyncio
import threading
import time

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
