"""Persistence: runs, their flow definitions, and the keys they wait on, in SQLite.

Every state change is one `transaction()`. WAL with synchronous=NORMAL survives a killed
process (kill -9) without losing a committed transaction; only a power cut can drop the last few.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import sqlite_utils

from flowengine.core.machine import Run
from flowengine.errors import insufficient_storage

WAL_KEEP = 64 << 20  # bytes of WAL file kept for reuse after a checkpoint; the rest is truncated
_encode = msgspec.json.Encoder().encode
_decode_run = msgspec.json.Decoder(Run).decode


class Wait(msgspec.Struct, frozen=True, gc=False):
    location: str  # a store's location ("local:default", "s3:bucket")
    key: str  # the object's full key in that location
    run_id: str
    edge: str


class RunRow(msgspec.Struct, frozen=True, gc=False):  # see machine.Run
    run: Run
    definition: str  # hash of the flow definition the run follows


class Database:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.conn = conn
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        # SQLite would copy the WAL into the database on the committing thread, the event loop's,
        # fsync included, every 1,000 pages. checkpoint() does it from a worker thread instead.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={WAL_KEEP}")  # a burst's WAL shrinks again once reset
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()  # close() waits for a checkpoint under way
        self._closed = False
        self._create_schema()

    def _create_schema(self) -> None:
        db = self.db
        db["definitions"].create({"hash": str, "body": bytes}, pk="hash", if_not_exists=True)
        db["runs"].create(
            {"id": str, "flow": str, "status": str, "created": float, "updated": float,
             "wake_at": float, "definition": str, "doc": bytes},
            pk="id", not_null={"flow", "status", "created", "doc"}, if_not_exists=True,
        )  # fmt: skip
        db["waits"].create(
            {"location": str, "key": str, "run_id": str, "edge": str, "next_check": float, "checks": int},
            pk=("location", "key"), if_not_exists=True,
        )  # fmt: skip
        db["expiries"].create(
            {"run_id": str, "edge": str, "expires_at": float}, pk=("run_id", "edge"), if_not_exists=True
        )
        db["expiries"].create_index(["expires_at"], if_not_exists=True)
        # Run IDs are UUIDv7, in creation order: listings sort by id, so `created` needs no index.
        db["runs"].create_index(["status", "id"], if_not_exists=True)
        db["runs"].create_index(["flow", "id"], if_not_exists=True)
        db["runs"].create_index(["wake_at"], if_not_exists=True)
        # Only waits the reconciler asks about (S3): embedded-store waits have none, and cost no index write.
        self.conn.execute("DROP INDEX IF EXISTS idx_waits_next_check")  # the full index of earlier versions
        self.conn.execute("CREATE INDEX IF NOT EXISTS waits_due ON waits (next_check) WHERE next_check IS NOT NULL")

    def close(self) -> None:
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
            self.conn.close()
            self._closed = True

    def checkpoint(self) -> tuple[int, int]:
        """Copy committed transactions from the WAL into the database file, on a connection of its
        own so that it can run in a worker thread. Returns the WAL's frames and how many of them are
        now in the database (all of them, unless a writer kept the lock for the whole busy timeout).

        PASSIVE first: it copies the bulk without holding up the writer. Then RESTART, which holds
        writers off for the little written meanwhile and so lets the next commit start the WAL over;
        under steady load, passive checkpoints alone never catch up and the WAL grows without end."""
        with self._checkpoint_lock:
            if self._closed:
                return 0, 0
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                self._checkpointer.execute("PRAGMA busy_timeout=5000")
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            _, frames, copied = self._checkpointer.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            return frames, copied

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing. A full disk is a domain error (insufficient_storage), not an sqlite3 one."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:  # a failed COMMIT may have rolled back already
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL:
                raise insufficient_storage("the database change") from exc
            raise

    # definitions

    def put_definition(self, digest: str, body: bytes) -> None:
        self.conn.execute("INSERT OR IGNORE INTO definitions (hash, body) VALUES (?, ?)", (digest, body))

    def definition(self, digest: str) -> bytes:
        return self.conn.execute("SELECT body FROM definitions WHERE hash = ?", (digest,)).fetchone()[0]

    # runs

    def insert_run(self, run: Run, definition: str, wake_at: float | None) -> None:
        self.conn.execute(
            "INSERT INTO runs (id, flow, status, created, updated, wake_at, definition, doc)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (run.id, run.flow, run.status, run.created, run.updated, wake_at, definition, _encode(run)),
        )

    def save_run(self, run: Run, wake_at: float | None) -> None:
        self.conn.execute(
            "UPDATE runs SET status = ?, updated = ?, wake_at = ?, doc = ? WHERE id = ?",
            (run.status, run.updated, wake_at, _encode(run), run.id),
        )

    def load_run(self, run_id: str) -> RunRow | None:
        row = self.conn.execute("SELECT doc, definition FROM runs WHERE id = ?", (run_id,)).fetchone()
        return RunRow(_decode_run(row[0]), row[1]) if row else None

    def list_runs(self, status: str | None, flow: str | None, limit: int, offset: int) -> tuple[list[Run], int]:
        where, params = [], []
        if status:
            where.append("status = ?")
            params.append(status)
        if flow:
            where.append("flow = ?")
            params.append(flow)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = self.conn.execute(f"SELECT count(*) FROM runs{clause}", params).fetchone()[0]
        rows = self.conn.execute(
            f"SELECT doc FROM runs{clause} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [_decode_run(r[0]) for r in rows], total

    def runs_with_status(self, status: str) -> list[RunRow]:
        rows = self.conn.execute("SELECT doc, definition FROM runs WHERE status = ?", (status,))
        return [RunRow(_decode_run(doc), definition) for doc, definition in rows]

    def due_runs(self, now: float, limit: int = 500) -> list[str]:
        rows = self.conn.execute("SELECT id FROM runs WHERE wake_at <= ? ORDER BY wake_at LIMIT ?", (now, limit))
        return [r[0] for r in rows]

    def next_wake(self) -> float | None:
        return self.conn.execute("SELECT min(wake_at) FROM runs").fetchone()[0]

    # waits: which run edge an object key fills

    def claim_waits(self, waits: list[tuple[Wait, float | None]]) -> Wait | None:
        """Store waits, each with when the reconciler should first look (None: never). If a key is
        awaited already, store none of them and return the wait that collided."""
        for i, (wait, first_check) in enumerate(waits):
            inserted = self.conn.execute(
                "INSERT OR IGNORE INTO waits (location, key, run_id, edge, next_check, checks)"
                " VALUES (?, ?, ?, ?, ?, 0)",
                (wait.location, wait.key, wait.run_id, wait.edge, first_check),
            ).rowcount
            if not inserted:
                self.drop_waits([w for w, _ in waits[:i]])
                return wait
        return None

    def unscheduled_waits(self) -> list[Wait]:
        rows = self.conn.execute("SELECT location, key, run_id, edge FROM waits WHERE next_check IS NULL")
        return [Wait(*r) for r in rows]

    def wait_for(self, location: str, key: str) -> Wait | None:
        row = self.conn.execute(
            "SELECT run_id, edge FROM waits WHERE location = ? AND key = ?", (location, key)
        ).fetchone()
        return Wait(location, key, row[0], row[1]) if row else None

    def drop_waits(self, waits: list[Wait]) -> None:
        self.conn.executemany("DELETE FROM waits WHERE location = ? AND key = ?", [(w.location, w.key) for w in waits])

    def due_waits(self, now: float, limit: int) -> list[tuple[Wait, int]]:
        rows = self.conn.execute(
            "SELECT location, key, run_id, edge, checks FROM waits WHERE next_check <= ? ORDER BY next_check LIMIT ?",
            (now, limit),
        )
        return [(Wait(r[0], r[1], r[2], r[3]), r[4]) for r in rows]

    def reschedule_wait(self, wait: Wait, next_check: float, checks: int) -> None:
        self.conn.execute(
            "UPDATE waits SET next_check = ?, checks = ? WHERE location = ? AND key = ?",
            (next_check, checks, wait.location, wait.key),
        )

    # expiries: when a run's object is past retention and is to be deleted

    def add_expiries(self, run_id: str, expiries: dict[str, float]) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO expiries (run_id, edge, expires_at) VALUES (?, ?, ?)",
            [(run_id, edge, at) for edge, at in expiries.items()],
        )

    def due_expiries(self, now: float, limit: int) -> list[tuple[str, str]]:
        rows = self.conn.execute(
            "SELECT run_id, edge FROM expiries WHERE expires_at <= ? ORDER BY expires_at LIMIT ?", (now, limit)
        )
        return [(r[0], r[1]) for r in rows]

    def drop_expiry(self, run_id: str, edge: str) -> None:
        self.conn.execute("DELETE FROM expiries WHERE run_id = ? AND edge = ?", (run_id, edge))

    def count_by_status(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())

    def count_waits(self) -> int:
        return self.conn.execute("SELECT count(*) FROM waits").fetchone()[0]
