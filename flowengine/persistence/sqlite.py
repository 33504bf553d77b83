"""Persistence: runs, their flow definitions, and the keys they wait on, in SQLite.

Every state change is one `transaction()`. WAL with synchronous=NORMAL survives a killed
process (kill -9) without losing a committed transaction; only a power cut can drop the last few.

Nothing that serves a request or a background loop reads a number of rows that grows with the
database: listings page by key (`id < ?`), totals come from counters kept in the same transaction
as every new run and every change of a run's status, and scans over runs or waits go in batches.
The schema is versioned (migrations/sqlite/); opening an older database upgrades it in place.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import msgspec

from flowengine.core.machine import Run
from flowengine.core.queue import Attempt, State
from flowengine.errors import Error, conflict, insufficient_storage
from flowengine.identity.records import Credential, Pairing, Role, Team, User
from flowengine.persistence.base import (
    AGENT_COLUMNS,
    AGENT_COLUMNS_OF_G,
    ATTEMPT_COLUMNS,
    ATTEMPT_FIELDS,
    TASK_ROW_SELECT,
    AgentRecord,
    AgentRow,
    DeliveryAttempt,
    DeliveryRecord,
    FileRecord,
    IdempotencyKey,
    ModelRecord,
    NewRun,
    RunningStep,
    RunRow,
    TaskChange,
    TaskEventRow,
    TaskRecord,
    TaskRow,
    UploadRecord,
    Wait,
    WebhookRecord,
    WorkflowRecord,
    agent_from,
    agent_json,
    agent_row,
    attempt_from,
    attempt_row,
    clean_stop_name,
    prefix_end,
    queued_attempts_query,
    task_agent_from,
)
from flowengine.persistence.migrations import Migration, failed, pending

WAL_KEEP = 64 << 20  # bytes of WAL file kept for reuse after a checkpoint; the rest is truncated
_CREDENTIAL = (
    "id, kind, team, user, display_name, key_prefix, key_hash, created, expires, revoked, last_used, paired_with"
)
_PAIRING = "device_hash, user_code, created, expires, interval, last_poll, team, user, device_name, confirmed"
_FILE = "store, key, team, name, size, content_type, created, expires"
_WORKFLOW = "id, team, slug, version, status, created, updated, source"
_TASK = ", ".join(f.name for f in msgspec.structs.fields(TaskRecord))  # the columns are its fields, in order
_UPLOAD = "id, team, store, key, native_id, file_size, part_size, part_count, created, expires"
_MODEL = (
    "id, team, display_name, model_type, store, storage_key, file_size, file_hash, model_path, status, created, updated"
)
_encode = msgspec.json.Encoder().encode
_decode_run = msgspec.json.Decoder(Run).decode


_WEBHOOK = ", ".join(f.name for f in msgspec.structs.fields(WebhookRecord))
# An attempt's columns that its lease changes (the others are set once, when it is queued).
_FIXED = {"id", "run_id", "step", "attempt", "team", "tool", "labels", "pool", "region", "timeout", "created"}
_LEASE_COLUMNS = [i for i, name in enumerate(ATTEMPT_FIELDS) if name not in _FIXED]
_SAVE_ATTEMPT = (f"UPDATE attempts SET {', '.join(f'{ATTEMPT_FIELDS[i]} = ?' for i in _LEASE_COLUMNS)}"
                 " WHERE id = ?")  # fmt: skip
_DELIVERY = ", ".join(f.name for f in msgspec.structs.fields(DeliveryRecord))
_ATTEMPT = ", ".join(f.name for f in msgspec.structs.fields(DeliveryAttempt))
_TREE = "replace(key, '/', char(1))"  # a key in tree order: '/' before every character a key may hold


def _filters(team: str | None, status: str | None, flow: str | None) -> tuple[list[str], list[str]]:
    where, params = ["TRUE"], []
    if team is not None:
        where.append("team = ?")
        params.append(team)
    if status:
        where.append("status = ?")
        params.append(status)
    if flow:
        where.append("flow = ?")
        params.append(flow)
    return where, params


def _credential_filters(team: str | None, kind: str | None) -> tuple[str, list[str]]:
    """A WHERE clause for the credentials of a team and of a kind (None: any)."""
    where, params = [], []
    for column, value in (("team", team), ("kind", kind)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    return (f" WHERE {' AND '.join(where)}" if where else ""), params


class SqliteDatabase:
    """The embedded default: one SQLite file under the data dir, one connection, written by one engine."""

    shared = False  # one engine: the data dir's lock keeps a second one out

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as exc:
            raise Error("unavailable", "database_unavailable", f"cannot open the database {self.path}: {exc}") from exc
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
        self._turn = asyncio.Lock()  # one transaction at a time on the one connection
        try:
            _migrate(conn, self.path)  # an older database is upgraded in place, a newer one refused
        except BaseException:
            conn.close()
            raise

    # between engines: there is only this one

    async def lead(self, name: str) -> bool:
        return True

    async def publish(self, messages: list[str]) -> None:
        """Nobody else to tell."""

    async def listen(self, heard: Callable[[str], None], listening: Callable[[], None]) -> None:
        """Nobody else to hear from: listens for good."""
        listening()
        await asyncio.Event().wait()

    async def housekeeping(self) -> None:
        """Copy the WAL into the database, in a worker thread (see checkpoint)."""
        await asyncio.to_thread(self.checkpoint)

    async def close(self) -> None:
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

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteDatabase]:
        """All or nothing. The queries inside run on this one connection, so the transaction is this
        object; transactions take turns. None yields to the event loop once it has begun: every
        query here is a plain call that returns at once."""
        async with self._turn:
            with self._transaction():
                yield self

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN .. COMMIT, or ROLLBACK; SQLite's failures become domain errors."""
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
            raise _domain_error(exc) from exc
        except sqlite3.IntegrityError as exc:  # a unique name taken meanwhile: the caller checked, another won
            raise conflict(f"the change conflicts with what is stored: {exc}") from exc

    # the engine's own state

    async def mark_clean_stop(self, engine: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO engine_state VALUES (?, 1)", (clean_stop_name(engine),))

    async def take_clean_stop(self, engine: str) -> bool:
        async with self.transaction():
            name = clean_stop_name(engine)
            taken = self.conn.execute("DELETE FROM engine_state WHERE name = ? RETURNING value", (name,))
            return bool(taken.fetchall())

    # definitions

    async def put_definition(self, digest: str, body: bytes) -> None:
        self.conn.execute("INSERT OR IGNORE INTO definitions (hash, body) VALUES (?, ?)", (digest, body))

    async def definition(self, digest: str) -> bytes:
        return self.conn.execute("SELECT body FROM definitions WHERE hash = ?", (digest,)).fetchone()[0]

    # runs

    async def insert_runs(self, rows: list[NewRun]) -> None:
        """New runs, counted in the same statements' transaction: one counter update per flow and
        status among them rather than a trigger's two per run (which cost a creation some 5 us)."""
        self.conn.executemany(
            "INSERT INTO runs (id, team, flow, status, created, updated, wake_at, definition, doc)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(r.run.id, r.run.team, r.run.flow, r.run.status, r.run.created, r.run.updated, r.wake_at, r.definition,
              _encode(r.run)) for r in rows],
        )  # fmt: skip
        by_flow = Counter((r.run.team, r.run.flow, r.run.status) for r in rows)
        self.conn.executemany(
            "INSERT INTO flow_counts VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET n = n + excluded.n",
            [(*key, n) for key, n in by_flow.items()],
        )
        by_status = Counter((r.run.team, r.run.status) for r in rows)
        self.conn.executemany(
            "INSERT INTO status_counts VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET n = n + excluded.n",
            [(*key, n) for key, n in by_status.items()],
        )

    async def save_run(self, run: Run, wake_at: float | None) -> None:
        self.conn.execute(
            "UPDATE runs SET status = ?, updated = ?, wake_at = ?, doc = ? WHERE id = ?",
            (run.status, run.updated, wake_at, _encode(run), run.id),
        )

    async def load_run(self, run_id: str) -> RunRow | None:
        row = self.conn.execute("SELECT doc, definition FROM runs WHERE id = ?", (run_id,)).fetchone()
        return RunRow(_decode_run(row[0]), row[1]) if row else None

    async def list_runs(
        self,
        team: str | None,
        status: str | None,
        flow: str | None,
        limit: int,
        *,
        before: str | None = None,
        after: str | None = None,
        offset: int = 0,
    ) -> list[Run]:
        """Runs newest first (by ID), with the filters given; `before`: only those whose ID sorts before
        it, which is how a page follows the one before (an index range, however deep); `after`: only
        those whose ID sorts after it. An `offset` skips rows one by one instead: its cost grows with it."""
        where, params = _filters(team, status, flow)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        if after is not None:
            where.append("id > ?")
            params.append(after)
        rows = self.conn.execute(
            f"SELECT doc FROM runs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [_decode_run(r[0]) for r in rows]

    async def count_runs(self, team: str | None, status: str | None, flow: str | None) -> int:
        """How many runs match the filters, from the counters (a few rows, however many runs)."""
        table = "flow_counts" if flow else "status_counts"
        where, params = _filters(team, status, flow)
        return self.conn.execute(f"SELECT coalesce(sum(n), 0) FROM {table} WHERE {' AND '.join(where)}",
                                 params).fetchone()[0]  # fmt: skip

    async def last_run_id(self) -> str | None:
        return self.conn.execute("SELECT max(id) FROM runs").fetchone()[0]

    async def runs_with_status(self, status: str, after: str, until: str, limit: int) -> list[RunRow]:
        """Up to `limit` runs with that status and an ID in (after, until], in ID order: one batch of a scan."""
        rows = self.conn.execute(
            "SELECT doc, definition FROM runs WHERE status = ? AND id > ? AND id <= ? ORDER BY id LIMIT ?",
            (status, after, until, limit),
        )
        return [RunRow(_decode_run(doc), definition) for doc, definition in rows]

    async def due_runs(self, now: float, limit: int = 500) -> list[str]:
        rows = self.conn.execute("SELECT id FROM runs WHERE wake_at <= ? ORDER BY wake_at LIMIT ?", (now, limit))
        return [r[0] for r in rows]

    async def claim_run(self, run_id: str, due: float | None = None) -> RunRow | None:
        """Nobody else holds a run here: as load_run, with the timer's condition."""
        when, params = ("", (run_id,)) if due is None else (" AND wake_at <= ?", (run_id, due))
        row = self.conn.execute(f"SELECT doc, definition FROM runs WHERE id = ?{when}", params).fetchone()
        return RunRow(_decode_run(row[0]), row[1]) if row else None

    async def next_wake(self) -> float | None:
        return self.conn.execute("SELECT min(wake_at) FROM runs").fetchone()[0]

    # waits: which run edge an object key fills

    async def claim_waits(self, waits: list[tuple[Wait, float | None]]) -> Wait | None:
        """Store waits, each with when the reconciler should first look (None: never). If a key is
        awaited already, store none of them and return the wait that collided."""
        for i, (wait, first_check) in enumerate(waits):
            inserted = self.conn.execute(
                "INSERT OR IGNORE INTO waits (location, key, run_id, edge, next_check, checks)"
                " VALUES (?, ?, ?, ?, ?, 0)",
                (wait.location, wait.key, wait.run_id, wait.edge, first_check),
            ).rowcount
            if not inserted:
                await self.drop_waits([w for w, _ in waits[:i]])
                return wait
        return None

    async def wait_locations(self) -> list[str]:
        """The locations anything waits in (a few), one index seek each, however many waits."""
        found: list[str] = []
        while row := self.conn.execute(
            "SELECT location FROM waits WHERE location > ? ORDER BY location LIMIT 1", (found[-1] if found else "",)
        ).fetchone():
            found.append(row[0])
        return found

    async def unscheduled_waits(self, location: str, after: str, limit: int) -> list[Wait]:
        """Waits the reconciler never asks about (embedded-store uploads), by key after `after`: one batch."""
        rows = self.conn.execute(
            "SELECT key, run_id, edge FROM waits WHERE location = ? AND key > ? AND next_check IS NULL"
            " ORDER BY key LIMIT ?",
            (location, after, limit),
        )
        return [Wait(location, *r) for r in rows]

    async def wait_for(self, location: str, key: str) -> Wait | None:
        row = self.conn.execute(
            "SELECT run_id, edge FROM waits WHERE location = ? AND key = ?", (location, key)
        ).fetchone()
        return Wait(location, key, row[0], row[1]) if row else None

    async def drop_waits(self, waits: list[Wait]) -> None:
        self.conn.executemany("DELETE FROM waits WHERE location = ? AND key = ?", [(w.location, w.key) for w in waits])

    # The reconciler's walk through a location's waits, in key order (see runtime/landing.py).

    async def due_waits(
        self, location: str, after: str, now: float, limit: int, scan: int
    ) -> tuple[list[Wait], str | None]:
        """Up to `limit` waits due by `now` among the next `scan` the reconciler asks about in
        `location` (by key, after `after`); and, when fewer were due, the last key looked at, or None
        when no more follow it."""
        window = (
            "SELECT key, run_id, edge, next_check FROM waits"
            " WHERE location = ? AND key > ? AND next_check IS NOT NULL ORDER BY key LIMIT ?"
        )
        rows = self.conn.execute(
            f"SELECT key, run_id, edge FROM ({window}) WHERE next_check <= ? LIMIT ?",
            (location, after, scan, now, limit),
        ).fetchall()
        if len(rows) == limit:
            return [Wait(location, *r) for r in rows], None
        count, last = self.conn.execute(
            f"SELECT count(*), max(key) FROM ({window})", (location, after, scan)
        ).fetchone()
        return [Wait(location, *r) for r in rows], last if count == scan else None

    async def last_wait_key(self, location: str, prefix: str) -> str | None:
        """The greatest key awaited in `location` that starts with `prefix`."""
        return self.conn.execute(
            "SELECT max(key) FROM waits WHERE location = ? AND key >= ? AND key < ?",
            (location, prefix, prefix_end(prefix)),
        ).fetchone()[0]

    async def settled_waits(
        self, location: str, first: str, last: str | None, prefix: str, limit: int
    ) -> tuple[int, str | None]:
        """The waits one listing has answered for: those from `first` through `last` (to the end of
        `prefix` when `last` is None) both in byte order and in tree order ('/' before every other
        character, the order of a server that lists directory by directory), at most `limit` of them
        in byte order, and none from the first that is in one span but not in the other. Returns how
        many, and the last one."""
        end = last + "\x01" if last is not None else prefix_end(prefix)  # keys hold no control characters
        span = "SELECT key FROM waits WHERE location = ? AND key >= ? AND key < ? ORDER BY key LIMIT ?"
        outside = self.conn.execute(
            f"SELECT min(key) FROM ({span}) WHERE {_TREE} < replace(?, '/', char(1))"
            f" OR (? IS NOT NULL AND {_TREE} > replace(?, '/', char(1)))",
            (location, first, end, limit, first, last, last),
        ).fetchone()[0]
        return self.conn.execute(
            f"SELECT count(*), max(key) FROM ({span})", (location, first, outside or end, limit)
        ).fetchone()

    async def waits_at(self, location: str, keys: list[str]) -> list[Wait]:
        """The waits for any of these keys (at most a listing's worth)."""
        marks = ", ".join("?" * len(keys))
        rows = self.conn.execute(
            f"SELECT key, run_id, edge FROM waits WHERE location = ? AND key IN ({marks}) ORDER BY key",
            (location, *keys),
        )
        return [Wait(location, *r) for r in rows]

    async def back_off_waits(self, location: str, first: str, last: str, now: float, base: float, most: float) -> None:
        """The waits from `first` through `last` were asked about one by one: ask again after twice as
        long as the time before (`base` at first, `most` at most)."""
        self.conn.execute(
            "UPDATE waits SET next_check = ? + min(? * (1 << min(checks, 30)), ?), checks = checks + 1"
            " WHERE location = ? AND key >= ? AND key <= ? AND next_check IS NOT NULL",
            (now, base, most, location, first, last),
        )

    # expiries: when a run's object is past retention and is to be deleted

    async def add_expiries(self, run_id: str, expiries: dict[str, float]) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO expiries (run_id, edge, expires_at) VALUES (?, ?, ?)",
            [(run_id, edge, at) for edge, at in expiries.items()],
        )

    async def claim_expiries(self, now: float, lease: float, limit: int) -> list[tuple[str, str]]:
        async with self.transaction():
            rows = self.conn.execute(
                "SELECT run_id, edge FROM expiries WHERE expires_at <= ? ORDER BY expires_at, run_id, edge LIMIT ?",
                (now, limit),
            ).fetchall()
            self.conn.executemany(
                "UPDATE expiries SET expires_at = ? WHERE run_id = ? AND edge = ?", [(now + lease, *r) for r in rows]
            )
        return [(r[0], r[1]) for r in rows]

    async def drop_expiry(self, run_id: str, edge: str) -> None:
        self.conn.execute("DELETE FROM expiries WHERE run_id = ? AND edge = ?", (run_id, edge))

    async def count_by_status(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT status, sum(n) FROM status_counts GROUP BY status").fetchall())

    async def count_waits(self) -> int:
        return self.conn.execute("SELECT count(*) FROM waits").fetchone()[0]

    # identity: teams, users, members, credentials

    async def insert_team(self, team: Team) -> None:
        self.conn.execute("INSERT INTO teams (id, name, created) VALUES (?, ?, ?)", msgspec.structs.astuple(team))

    async def team(self, *, id: str | None = None, name: str | None = None) -> Team | None:
        column, value = ("id", id) if id is not None else ("name", name)
        row = self.conn.execute(f"SELECT id, name, created FROM teams WHERE {column} = ?", (value,)).fetchone()
        return Team(*row) if row else None

    async def teams(self) -> list[Team]:
        return [Team(*r) for r in self.conn.execute("SELECT id, name, created FROM teams ORDER BY name")]

    async def insert_user(self, user: User) -> None:
        self.conn.execute("INSERT INTO users (id, email, created) VALUES (?, ?, ?)", msgspec.structs.astuple(user))

    async def user(self, *, id: str | None = None, email: str | None = None) -> User | None:
        column, value = ("id", id) if id is not None else ("email", email)
        row = self.conn.execute(f"SELECT id, email, created FROM users WHERE {column} = ?", (value,)).fetchone()
        return User(*row) if row else None

    async def put_member(self, team: str, user: str, role: Role, created: float) -> None:
        self.conn.execute(
            "INSERT INTO members (team, user, role, created) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO UPDATE SET role = excluded.role",
            (team, user, role, created),
        )

    async def member_role(self, team: str, user: str) -> Role | None:
        row = self.conn.execute("SELECT role FROM members WHERE team = ? AND user = ?", (team, user)).fetchone()
        return row[0] if row else None

    async def insert_credential(self, credential: Credential) -> None:
        marks = ", ".join("?" * len(msgspec.structs.fields(Credential)))  # the columns are its fields, in order
        self.conn.execute(
            f"INSERT INTO credentials ({_CREDENTIAL}) VALUES ({marks})", msgspec.structs.astuple(credential)
        )

    async def credential(self, *, id: str | None = None, key_hash: str | None = None) -> Credential | None:
        column, value = ("id", id) if id is not None else ("key_hash", key_hash)
        row = self.conn.execute(f"SELECT {_CREDENTIAL} FROM credentials WHERE {column} = ?", (value,)).fetchone()
        return Credential(*row) if row else None

    async def credentials(self, team: str | None, kind: str | None, limit: int, offset: int) -> list[Credential]:
        clause, params = _credential_filters(team, kind)
        rows = self.conn.execute(
            f"SELECT {_CREDENTIAL} FROM credentials{clause} ORDER BY created, id LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [Credential(*r) for r in rows]

    async def count_credentials(self, team: str | None, kind: str | None) -> int:
        clause, params = _credential_filters(team, kind)
        return self.conn.execute(f"SELECT count(*) FROM credentials{clause}", params).fetchone()[0]

    async def revoke_credentials(self, ids: list[str], at: float) -> None:
        self.conn.executemany(
            "UPDATE credentials SET revoked = ? WHERE id = ? AND revoked IS NULL", [(at, i) for i in ids]
        )

    async def touch_credential(self, id: str, at: float) -> None:
        self.conn.execute("UPDATE credentials SET last_used = ? WHERE id = ?", (at, id))

    # devices waiting to be paired

    async def insert_pairing(self, pairing: Pairing) -> None:
        marks = ", ".join("?" * len(msgspec.structs.fields(Pairing)))
        self.conn.execute(f"INSERT INTO pairings ({_PAIRING}) VALUES ({marks})", msgspec.structs.astuple(pairing))

    async def pairing(self, *, device_hash: str | None = None, user_code: str | None = None) -> Pairing | None:
        column, value = ("device_hash", device_hash) if device_hash is not None else ("user_code", user_code)
        row = self.conn.execute(f"SELECT {_PAIRING} FROM pairings WHERE {column} = ?", (value,)).fetchone()
        return Pairing(*row) if row else None

    async def confirm_pairing(self, user_code: str, team: str, user: str, device_name: str, at: float) -> None:
        self.conn.execute(
            "UPDATE pairings SET team = ?, user = ?, device_name = ?, confirmed = ? WHERE user_code = ?",
            (team, user, device_name, at, user_code),
        )

    async def polled_pairing(self, device_hash: str, at: float, interval: int) -> None:
        self.conn.execute(
            "UPDATE pairings SET last_poll = ?, interval = ? WHERE device_hash = ?", (at, interval, device_hash)
        )

    async def take_pairing(self, device_hash: str) -> bool:
        return self.conn.execute("DELETE FROM pairings WHERE device_hash = ?", (device_hash,)).rowcount == 1

    async def count_pairings(self, now: float) -> int:
        return self.conn.execute("SELECT count(*) FROM pairings WHERE expires > ?", (now,)).fetchone()[0]

    async def drop_pairings(self, expired_before: float) -> None:
        self.conn.execute("DELETE FROM pairings WHERE expires < ?", (expired_before,))

    # files presigned for the workflow/task API

    async def insert_file(self, file: FileRecord) -> None:
        self.conn.execute(f"INSERT INTO files ({_FILE}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", msgspec.structs.astuple(file))

    async def file(self, store: str, key: str) -> FileRecord | None:
        row = self.conn.execute(f"SELECT {_FILE} FROM files WHERE store = ? AND key = ?", (store, key)).fetchone()
        return FileRecord(*row) if row else None

    async def claim_files(self, now: float, lease: float, limit: int) -> list[FileRecord]:
        async with self.transaction():
            files = [FileRecord(*r) for r in self.conn.execute(
                f"SELECT {_FILE} FROM files WHERE expires <= ? ORDER BY expires, store, key LIMIT ?", (now, limit)
            )]  # fmt: skip
            self.conn.executemany(
                "UPDATE files SET expires = ? WHERE store = ? AND key = ?",
                [(now + lease, f.store, f.key) for f in files],
            )
        return files

    async def drop_file(self, store: str, key: str) -> None:
        self.conn.execute("DELETE FROM files WHERE store = ? AND key = ?", (store, key))

    async def keep_file(self, store: str, key: str, expires: float) -> None:
        self.conn.execute("UPDATE files SET expires = ? WHERE store = ? AND key = ?", (expires, store, key))

    # multipart uploads

    async def insert_upload(self, upload: UploadRecord) -> None:
        self.conn.execute(f"INSERT INTO multipart_uploads ({_UPLOAD}) VALUES ({', '.join('?' * 10)})",
                          msgspec.structs.astuple(upload))  # fmt: skip

    async def upload(self, id: str) -> UploadRecord | None:
        row = self.conn.execute(f"SELECT {_UPLOAD} FROM multipart_uploads WHERE id = ?", (id,)).fetchone()
        return UploadRecord(*row) if row else None

    async def claim_uploads(self, now: float, lease: float, limit: int) -> list[UploadRecord]:
        async with self.transaction():
            uploads = [UploadRecord(*r) for r in self.conn.execute(
                f"SELECT {_UPLOAD} FROM multipart_uploads WHERE expires <= ? ORDER BY expires, id LIMIT ?", (now, limit)
            )]  # fmt: skip
            self.conn.executemany(
                "UPDATE multipart_uploads SET expires = ? WHERE id = ?", [(now + lease, u.id) for u in uploads]
            )
        return uploads

    async def drop_upload(self, id: str) -> bool:
        return self.conn.execute("DELETE FROM multipart_uploads WHERE id = ?", (id,)).rowcount > 0

    # model files

    async def put_model(self, model: ModelRecord) -> ModelRecord:
        row = self.conn.execute(
            f"INSERT INTO models ({_MODEL}) VALUES ({', '.join('?' * 12)}) ON CONFLICT (store, storage_key) DO UPDATE"
            " SET display_name = excluded.display_name, model_type = excluded.model_type, file_size ="
            " excluded.file_size, file_hash = excluded.file_hash, model_path = excluded.model_path,"
            f" updated = excluded.updated RETURNING {_MODEL}",
            msgspec.structs.astuple(model),
        ).fetchone()
        return ModelRecord(*row)

    async def model(self, id: str) -> ModelRecord | None:
        row = self.conn.execute(f"SELECT {_MODEL} FROM models WHERE id = ?", (id,)).fetchone()
        return ModelRecord(*row) if row else None

    async def model_at(self, store: str, storage_key: str) -> ModelRecord | None:
        query = f"SELECT {_MODEL} FROM models WHERE store = ? AND storage_key = ?"
        row = self.conn.execute(query, (store, storage_key)).fetchone()
        return ModelRecord(*row) if row else None

    async def models(self, team: str, status: str | None, limit: int, offset: int) -> list[ModelRecord]:
        rows = self.conn.execute(
            f"SELECT {_MODEL} FROM models WHERE team = ? AND (? IS NULL OR status = ?) ORDER BY id LIMIT ? OFFSET ?",
            (team, status, status, limit, offset),
        )
        return [ModelRecord(*r) for r in rows]

    async def count_models(self, team: str, status: str | None) -> int:
        query = "SELECT count(*) FROM models WHERE team = ? AND (? IS NULL OR status = ?)"
        return self.conn.execute(query, (team, status, status)).fetchone()[0]

    async def set_model_status(self, id: str, status: str, at: float) -> None:
        self.conn.execute("UPDATE models SET status = ?, updated = ? WHERE id = ?", (status, at, id))

    # workflows

    async def insert_workflow(self, workflow: WorkflowRecord, body: bytes) -> None:
        marks = ", ".join("?" * len(msgspec.structs.fields(WorkflowRecord)))
        self.conn.execute(f"INSERT INTO workflows ({_WORKFLOW}) VALUES ({marks})", msgspec.structs.astuple(workflow))
        self.conn.execute(
            "INSERT INTO workflow_versions (workflow, version, body, created) VALUES (?, ?, ?, ?)",
            (workflow.id, workflow.version, body, workflow.created),
        )

    async def workflow(self, *, id: str | None = None, slug: str | None = None) -> WorkflowRecord | None:
        column, value = ("id", id) if id is not None else ("slug", slug)
        row = self.conn.execute(f"SELECT {_WORKFLOW} FROM workflows WHERE {column} = ?", (value,)).fetchone()
        return WorkflowRecord(*row) if row else None

    async def workflow_version(self, workflow: str, version: int) -> bytes | None:
        row = self.conn.execute(
            "SELECT body FROM workflow_versions WHERE workflow = ? AND version = ?", (workflow, version)
        ).fetchone()
        return row[0] if row else None

    async def add_workflow_version(self, workflow: str, version: int, body: bytes, at: float) -> None:
        self.conn.execute(
            "INSERT INTO workflow_versions (workflow, version, body, created) VALUES (?, ?, ?, ?)",
            (workflow, version, body, at),
        )
        self.conn.execute("UPDATE workflows SET version = ?, updated = ? WHERE id = ?", (version, at, workflow))

    async def set_workflow_status(self, workflow: str, status: str, at: float) -> None:
        self.conn.execute("UPDATE workflows SET status = ?, updated = ? WHERE id = ?", (status, at, workflow))

    async def workflows(self, team: str | None, limit: int, offset: int) -> list[WorkflowRecord]:
        rows = self.conn.execute(
            f"SELECT {_WORKFLOW} FROM workflows WHERE team IN ('', coalesce(?, team))"  # None: every team's
            " ORDER BY slug LIMIT ? OFFSET ?",
            (team, limit, offset),
        )
        return [WorkflowRecord(*r) for r in rows]

    async def count_workflows(self, team: str | None) -> int:
        query = "SELECT count(*) FROM workflows WHERE team IN ('', coalesce(?, team))"
        return self.conn.execute(query, (team,)).fetchone()[0]

    # tasks: runs started through the workflow/task API, their events, and idempotency keys

    async def insert_tasks(self, tasks: list[tuple[TaskRecord, list[TaskEventRow]]]) -> None:
        marks = ", ".join("?" * len(msgspec.structs.fields(TaskRecord)))
        self.conn.executemany(f"INSERT INTO tasks ({_TASK}) VALUES ({marks})",
                              [msgspec.structs.astuple(task) for task, _ in tasks])  # fmt: skip
        self.conn.executemany(
            "INSERT INTO task_events (task, seq, kind, data, at) VALUES (?, ?, ?, ?, ?)",
            [(task.id, e.seq, e.kind, e.data, e.at) for task, events in tasks for e in events],
        )
        self.conn.executemany(
            "INSERT INTO task_counts VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET n = n + excluded.n",
            [(*key, n) for key, n in Counter((task.team, task.status) for task, _ in tasks).items()],
        )

    async def save_task(self, task: str, change: TaskChange) -> None:
        (last,) = self.conn.execute(
            "UPDATE tasks SET status = ?, events = events + ?, started = coalesce(started, ?),"
            " completed = coalesce(completed, ?) WHERE id = ? RETURNING events",
            (change.status, len(change.events), change.started, change.completed, task),
        ).fetchone()
        first = last - len(change.events) + 1
        self.conn.executemany(
            "INSERT INTO task_events (task, seq, kind, data, at) VALUES (?, ?, ?, ?, ?)",
            [(task, first + i, kind, data, at) for i, (kind, data, at) in enumerate(change.events)],
        )

    async def task(self, task: str) -> TaskRecord | None:
        row = self.conn.execute(f"SELECT {_TASK} FROM tasks WHERE id = ?", (task,)).fetchone()
        return TaskRecord(*row) if row else None

    async def task_row(self, task: str) -> TaskRow | None:
        row = self.conn.execute(
            f"{TASK_ROW_SELECT} WHERE t.id = ?",
            (task,),
        ).fetchone()
        return _task_row(row) if row else None

    async def list_tasks(self, team: str | None, status: str | None, limit: int, offset: int,
                         workflow: str | None = None) -> list[TaskRow]:  # fmt: skip
        given = [(column, value) for column, value in (("t.team", team), ("t.status", status or None),
                                                       ("t.workflow", workflow)) if value is not None]  # fmt: skip
        where = " AND ".join([f"{column} = ?" for column, _ in given] or ["TRUE"])
        rows = self.conn.execute(
            f"{TASK_ROW_SELECT} WHERE {where} ORDER BY t.id DESC LIMIT ? OFFSET ?",
            [*(value for _, value in given), limit, offset],
        )
        return [_task_row(r) for r in rows]

    async def count_tasks(self, team: str | None, status: str | None) -> int:
        where, params = _filters(team, status, None)
        return self.conn.execute(f"SELECT coalesce(sum(n), 0) FROM task_counts WHERE {' AND '.join(where)}",
                                 params).fetchone()[0]  # fmt: skip

    async def task_events(self, task: str, after: int) -> list[TaskEventRow]:
        rows = self.conn.execute(
            "SELECT seq, kind, data, at FROM task_events WHERE task = ? AND seq > ? ORDER BY seq", (task, after)
        )
        return [TaskEventRow(*r) for r in rows]

    async def task_state_seq(self, task: str) -> int:
        return self.conn.execute(
            "SELECT coalesce(max(seq), 0) FROM task_events WHERE task = ? AND kind != 'progress'", (task,)
        ).fetchone()[0]

    async def idempotency_key(self, team: str, key: str, since: float) -> IdempotencyKey | None:
        row = self.conn.execute(
            "SELECT team, key, task, fingerprint, created FROM idempotency_keys"
            " WHERE team = ? AND key = ? AND created >= ?",
            (team, key, since),
        ).fetchone()
        return IdempotencyKey(*row) if row else None

    async def claim_idempotency_key(self, claim: IdempotencyKey, since: float) -> bool:
        return bool(self.conn.execute(
            "INSERT INTO idempotency_keys (team, key, task, fingerprint, created) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT DO UPDATE SET task = excluded.task, fingerprint = excluded.fingerprint,"
            " created = excluded.created WHERE created < ?",
            (*msgspec.structs.astuple(claim), since),
        ).rowcount)  # fmt: skip

    async def drop_idempotency_keys(self, before: float, limit: int) -> int:
        return self.conn.execute(
            "DELETE FROM idempotency_keys WHERE (team, key) IN"
            " (SELECT team, key FROM idempotency_keys WHERE created < ? ORDER BY created LIMIT ?)",
            (before, limit),
        ).rowcount

    # the step queue

    async def insert_attempts(self, attempts: list[Attempt]) -> None:
        marks = ", ".join("?" * len(ATTEMPT_FIELDS))
        self.conn.executemany(
            f"INSERT INTO attempts ({ATTEMPT_COLUMNS}) VALUES ({marks})", [attempt_row(a) for a in attempts]
        )

    async def save_attempt(self, attempt: Attempt) -> None:
        """Only the columns a lease changes: SQLite rewrites an index whenever one of its columns is
        SET, changed or not, and (run_id, step, attempt) never changes."""
        row = attempt_row(attempt)
        self.conn.execute(_SAVE_ATTEMPT, (*(row[i] for i in _LEASE_COLUMNS), attempt.id))

    async def attempt(self, id: str) -> Attempt | None:
        row = self.conn.execute(f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE id = ?", (id,)).fetchone()
        return attempt_from(row) if row else None

    async def attempt_of(self, run_id: str, step: str, attempt: int) -> Attempt | None:
        row = self.conn.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = ? AND step = ? AND attempt = ?"
            " ORDER BY id DESC LIMIT 1",
            (run_id, step, attempt),
        ).fetchone()
        return attempt_from(row) if row else None

    async def run_attempts(self, run_id: str) -> list[Attempt]:
        rows = self.conn.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = ? ORDER BY step, attempt, created", (run_id,)
        )
        return [attempt_from(r) for r in rows]

    async def open_attempts(self, run_id: str, step: str) -> list[Attempt]:
        rows = self.conn.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = ? AND step = ? AND state != 'done'", (run_id, step)
        )
        return [attempt_from(r) for r in rows]

    async def offered_steps(self, run_id: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT DISTINCT step FROM attempts WHERE run_id = ? AND state = 'offered' ORDER BY step", (run_id,)
        )
        return [r[0] for r in rows]

    async def queued_attempts(
        self,
        tools: list[str],
        labels: list[str],
        team: str | None,
        community: bool,
        region: str,
        region_before: float,
        limit: int,
    ) -> list[Attempt]:
        query, params = queued_attempts_query(
            "?",
            "tool IN (SELECT value FROM json_each(?))",
            "NOT EXISTS (SELECT 1 FROM json_each(labels) WHERE value NOT IN (SELECT value FROM json_each(?)))",
            tools, labels, team, community, region, region_before, limit,
        )  # fmt: skip
        return [attempt_from(r) for r in self.conn.execute(query, params)]

    async def held_attempts(self, worker: str, states: list[State]) -> list[Attempt]:
        rows = self.conn.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE worker = ? AND state IN ({', '.join('?' * len(states))})"
            " ORDER BY id",
            (worker, *states),
        )
        return [attempt_from(r) for r in rows]

    async def due_attempts(self, now: float, limit: int) -> list[Attempt]:
        rows = self.conn.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE id IN ("
            " SELECT id FROM attempts WHERE state = 'offered' AND offer_expires <= ?"
            " UNION SELECT id FROM attempts WHERE state = 'running' AND lease_expires <= ?"
            " UNION SELECT id FROM attempts WHERE state IN ('queued', 'running') AND deadline <= ?"
            ") ORDER BY id LIMIT ?",
            (now, now, now, limit),
        )
        return [attempt_from(r) for r in rows]

    async def extend_leases(self, worker: str, session: str, until: float, ids: list[str] | None = None) -> None:
        only = "" if ids is None else f" AND id IN ({', '.join('?' * len(ids))})"
        self.conn.execute(
            "UPDATE attempts SET lease_expires = max(lease_expires, ?)"
            f" WHERE worker = ? AND session = ? AND state = 'running'{only}",
            (until, worker, session, *(ids or ())),
        )

    async def attempts_running(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for worker, id in self.conn.execute("SELECT worker, id FROM attempts WHERE state = 'running' ORDER BY id"):
            found.setdefault(worker, []).append(id)
        return found

    # agents

    async def put_agent(self, agent: AgentRecord) -> None:
        marks = ", ".join("?" * len(msgspec.structs.fields(AgentRecord)))
        self.conn.execute(f"INSERT OR REPLACE INTO agents ({AGENT_COLUMNS}) VALUES ({marks})", agent_row(agent))

    async def agent(self, *, id: str | None = None, team: str = "", name: str = "") -> AgentRecord | None:
        if id is not None:
            row = self.conn.execute(f"SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?", (id,)).fetchone()
        else:
            row = self.conn.execute(
                f"SELECT {AGENT_COLUMNS} FROM agents WHERE team = ? AND name = ?", (team, name)
            ).fetchone()
        return agent_from(row) if row else None

    async def agents(self, team: str | None) -> list[AgentRecord]:
        if team is None:
            rows = self.conn.execute(f"SELECT {AGENT_COLUMNS} FROM agents ORDER BY name, id")
        else:
            rows = self.conn.execute(f"SELECT {AGENT_COLUMNS} FROM agents WHERE team = ? ORDER BY name, id", (team,))
        return [agent_from(r) for r in rows]

    async def agent_rows(self, team: str | None, limit: int | None = None, offset: int = 0) -> list[AgentRow]:
        of_team, params = ("", ()) if team is None else ("WHERE g.team = ?", (team,))
        rows = self.conn.execute(
            f"SELECT {AGENT_COLUMNS_OF_G}, (SELECT json_group_array(json_array(run_id, step, attempt)) FROM"
            " (SELECT a.run_id, a.step, a.attempt FROM attempts a WHERE a.worker = g.id AND a.state = 'running'"
            f" ORDER BY a.id)) FROM agents g {of_team} ORDER BY g.name, g.id LIMIT ? OFFSET ?",
            (*params, -1 if limit is None else limit, offset),  # LIMIT -1: none
        )
        return [AgentRow(agent_from(r[:-1]), msgspec.json.decode(r[-1], type=list[RunningStep])) for r in rows]

    async def count_agents(self, team: str) -> int:
        return self.conn.execute("SELECT count(*) FROM agents WHERE team = ?", (team,)).fetchone()[0]

    async def touch_agent(self, id: str, at: float, completed: int = 0) -> None:
        self.conn.execute(
            "UPDATE agents SET last_heartbeat = max(last_heartbeat, ?), tasks_completed = tasks_completed + ?"
            " WHERE id = ?",
            (at, completed, id),
        )

    async def set_agent_tools(self, id: str, session: str, tools: list[str]) -> None:
        self.conn.execute("UPDATE agents SET tools = ? WHERE id = ? AND session = ?", (agent_json(tools), id, session))

    # webhooks

    async def insert_webhook(self, webhook: WebhookRecord) -> None:
        marks = ", ".join("?" * len(msgspec.structs.fields(WebhookRecord)))
        self.conn.execute(f"INSERT INTO webhooks ({_WEBHOOK}) VALUES ({marks})", msgspec.structs.astuple(webhook))

    async def webhook(self, id: str) -> WebhookRecord | None:
        row = self.conn.execute(f"SELECT {_WEBHOOK} FROM webhooks WHERE id = ?", (id,)).fetchone()
        return WebhookRecord(*row) if row else None

    async def webhooks(self, team: str | None) -> list[WebhookRecord]:
        if team is None:
            rows = self.conn.execute(f"SELECT {_WEBHOOK} FROM webhooks ORDER BY id")
        else:
            rows = self.conn.execute(f"SELECT {_WEBHOOK} FROM webhooks WHERE team = ? ORDER BY id", (team,))
        return [WebhookRecord(*r) for r in rows]

    async def update_webhook(self, webhook: WebhookRecord) -> None:
        w = webhook
        self.conn.execute(
            "UPDATE webhooks SET display_name = ?, url = ?, secret = ?, events = ?, status = ?, updated = ?"
            " WHERE id = ?",
            (w.display_name, w.url, w.secret, w.events, w.status, w.updated, w.id),
        )

    async def delete_webhook(self, id: str) -> None:
        self.conn.execute(
            "DELETE FROM webhook_attempts WHERE delivery IN (SELECT id FROM webhook_deliveries WHERE webhook = ?)",
            (id,),
        )
        self.conn.execute("DELETE FROM webhook_deliveries WHERE webhook = ?", (id,))
        self.conn.execute("DELETE FROM webhooks WHERE id = ?", (id,))

    async def insert_deliveries(self, deliveries: list[DeliveryRecord]) -> None:
        marks = ", ".join("?" * len(msgspec.structs.fields(DeliveryRecord)))
        self.conn.executemany(
            f"INSERT INTO webhook_deliveries ({_DELIVERY}) VALUES ({marks})",
            [msgspec.structs.astuple(d) for d in deliveries],
        )

    async def claim_deliveries(self, now: float, lease_until: float, limit: int) -> list[DeliveryRecord]:
        rows = self.conn.execute(
            "UPDATE webhook_deliveries SET due = ? WHERE id IN (SELECT id FROM webhook_deliveries"
            f" WHERE status = 'pending' AND due <= ? ORDER BY due LIMIT ?) RETURNING {_DELIVERY}",
            (lease_until, now, limit),
        ).fetchall()
        return [DeliveryRecord(*r) for r in rows]

    async def record_delivery_attempt(self, attempt: DeliveryAttempt, status: str, due: float | None) -> None:
        a = attempt
        self.conn.execute(
            f"INSERT INTO webhook_attempts ({_ATTEMPT}) VALUES (?, ?, ?, ?, ?, ?)", msgspec.structs.astuple(a)
        )
        self.conn.execute(
            "UPDATE webhook_deliveries SET status = ?, due = ?, tries = tries + 1, attempts = ?, updated = ?"
            " WHERE id = ?",
            (status, due, a.n, a.at, a.delivery),
        )
        if status == "delivered":
            self.conn.execute(
                "UPDATE webhooks SET last_delivered = ? WHERE id = (SELECT webhook FROM webhook_deliveries"
                " WHERE id = ?)",
                (a.at, a.delivery),
            )

    async def delivery(self, id: str) -> DeliveryRecord | None:
        row = self.conn.execute(f"SELECT {_DELIVERY} FROM webhook_deliveries WHERE id = ?", (id,)).fetchone()
        return DeliveryRecord(*row) if row else None

    async def deliveries(self, webhook: str, limit: int, offset: int) -> list[DeliveryRecord]:
        rows = self.conn.execute(
            f"SELECT {_DELIVERY} FROM webhook_deliveries WHERE webhook = ? ORDER BY id DESC LIMIT ? OFFSET ?",
            (webhook, limit, offset),
        )
        return [DeliveryRecord(*r) for r in rows]

    async def count_deliveries(self, webhook: str) -> int:
        return self.conn.execute("SELECT count(*) FROM webhook_deliveries WHERE webhook = ?", (webhook,)).fetchone()[0]

    async def delivery_attempts(self, deliveries: list[str]) -> list[DeliveryAttempt]:
        marks = ", ".join("?" * len(deliveries))
        rows = self.conn.execute(
            f"SELECT {_ATTEMPT} FROM webhook_attempts WHERE delivery IN ({marks}) ORDER BY delivery, n", deliveries
        )
        return [DeliveryAttempt(*r) for r in rows]

    async def resend_delivery(self, id: str, now: float) -> None:
        self.conn.execute(
            "UPDATE webhook_deliveries SET status = 'pending', tries = 0, due = ?, updated = ? WHERE id = ?",
            (now, now, id),
        )


def migrate(path: Path | str) -> list[Migration]:
    """Apply the migrations the database at `path` lacks (creating it if there is none); returns them."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.OperationalError as exc:
        raise Error("unavailable", "database_unavailable", f"cannot open the database {path}: {exc}") from None
    try:
        return _migrate(conn, str(path))
    finally:
        conn.close()


def _migrate(conn: sqlite3.Connection, where: str) -> list[Migration]:
    """The migrations the database lacks, one transaction each, each recorded in schema_migrations.
    The version is read inside the transaction: two processes opening one file take turns. Databases
    from before that table have only `user_version` (0 or 1): it counts as their version, and is
    kept equal to it."""
    applied: list[Migration] = []
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                    " applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
                )
                recorded = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] or 0
                todo = pending("sqlite", max(recorded, conn.execute("PRAGMA user_version").fetchone()[0]), where)
                if todo:
                    _apply(conn, todo[0], where)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise _domain_error(exc) from exc
        if not todo:
            return applied
        applied.append(todo[0])


def _apply(conn: sqlite3.Connection, migration: Migration, where: str) -> None:
    try:
        for statement in _statements(migration.sql):
            conn.execute(statement)
    except sqlite3.Error as exc:
        raise failed(migration, where, exc) from exc
    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (migration.version, migration.name))
    conn.execute(f"PRAGMA user_version = {migration.version:d}")


def _statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one by one (a trigger's body holds semicolons of its own)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""


def _domain_error(exc: sqlite3.OperationalError) -> Error:
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL:  # made by hand: no code
        return insufficient_storage("the database change")
    # Locked past the busy timeout (another process holds it), an I/O error, a read-only file...
    return Error("unavailable", "database_unavailable", f"the database refused the change: {exc}")


_TASK_WIDTH = len(msgspec.structs.fields(TaskRecord))


def _task_row(row: Any) -> TaskRow:
    """A row of TASK_ROW_SELECT."""
    return TaskRow(TaskRecord(*row[:_TASK_WIDTH]), _decode_run(row[_TASK_WIDTH]),
                   task_agent_from(tuple(row[_TASK_WIDTH + 1 :])))  # fmt: skip
