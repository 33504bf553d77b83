"""Persistence in PostgreSQL: several engines on one database (psycopg 3, asyncio, a connection pool).

The same semantics as sqlite.py, method for method (tests/test_persistence_contract.py holds both
to them). What differs is that writers are concurrent here:

- Inside a transaction `load_run` locks the run's row (`FOR NO KEY UPDATE`: it blocks every other
  writer of the row, not a row that would only refer to it), so events on one run are applied one
  after the other, whichever engine applies them. A waiting transaction then reads the row as the
  other committed it.
- `claim_waits` inserts, and leaves the keys another transaction holds to the database: an insert
  of a key another transaction has just inserted waits for it to end. Keys are inserted in key
  order, so two claims never wait for each other in a circle; counter rows are likewise always
  changed in one order (see the migration's trigger). Each connection changes counter rows of its
  own (migration 0011), summed when read: creations on several connections share no row.
- Keys and IDs compare byte by byte (`COLLATE "C"` on their columns), as in SQLite.
- Periodic work any engine may do (timers, lease expiry, retention, webhook deliveries, leasing
  the queue) is claimed with `SKIP LOCKED`: what another engine is claiming is left to it, never
  waited for, and never done twice. The reconciler runs on one engine at a time: the one holding
  its advisory lock (`lead`). Engines wake one another with NOTIFY (`publish`, `listen`): a hint.

Every connection is in autocommit mode: a read outside a transaction is one round trip. The
schema is versioned (migrations/postgres/); it changes only through `flowengine migrate` (migrate
below), never when an engine starts: replicas of the version before may still be serving, and
starting ones must not race to change a shared schema. An engine refuses a schema other than its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from flowengine.core.machine import Run
from flowengine.core.queue import Attempt, State
from flowengine.errors import Error, conflict, insufficient_storage
from flowengine.identity.records import Credential, Pairing, Role, Team, User
from flowengine.persistence import redacted
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
from flowengine.persistence.migrations import Migration, failed, latest, pending

CONNECT_TIMEOUT = 10  # seconds to open a connection (unless the URL says otherwise)
POOL_TIMEOUT = 10.0  # seconds a query waits for a free connection before the database counts as unavailable
MIGRATION_LOCK = 0x666C6F77656E67  # the advisory lock `flowengine migrate` holds: one migration at a time
CHANNEL = "flowengine"  # what engines on one database LISTEN and NOTIFY on
FOLD_INTERVAL = 60.0  # seconds between folds of ended connections' counter rows (PostgresDatabase.fold_counts)
# The counter tables and their keys, in the one order counter rows are changed in (see migration 0002).
_COUNTERS = (("status_counts", "team, status"), ("flow_counts", "team, flow, status"))
# The engine's own long-lived connections (leadership, LISTEN) notice a vanished server within a minute.
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
log = logging.getLogger("flowengine.persistence")
_encode = msgspec.json.Encoder().encode
_decode_run = msgspec.json.Decoder(Run).decode
_WEBHOOK = ", ".join(f.name for f in msgspec.structs.fields(WebhookRecord))
_DELIVERY = ", ".join(f.name for f in msgspec.structs.fields(DeliveryRecord))
_ATTEMPT = ", ".join(f.name for f in msgspec.structs.fields(DeliveryAttempt))
_TREE = "replace(key, '/', chr(1)) COLLATE \"C\""  # a key in tree order: '/' before every character a key may hold


def _connect_options(url: str) -> dict[str, Any]:
    """Options a connection gets unless the URL sets them."""
    given = conninfo_to_dict(url)
    options: dict[str, Any] = {"autocommit": True}
    if "connect_timeout" not in given:
        options["connect_timeout"] = CONNECT_TIMEOUT
    if "application_name" not in given:
        options["application_name"] = "flowengine"
    return options


def _connect(url: str) -> psycopg.Connection:
    """A connection of its own, for a migration or a schema check (not from the pool)."""
    try:
        return psycopg.connect(url, **_connect_options(url))
    except psycopg.OperationalError as exc:
        raise _domain_error(exc, redacted(url)) from None


def _schema_version(conn: psycopg.Connection) -> int:
    if conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None:  # type: ignore[index]
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]  # type: ignore[index]


def check_schema(url: str) -> None:
    """Refuse a database whose schema is not the one this engine knows: a newer one (an engine of
    a later version migrated it), or an older one (`flowengine migrate` has not been run)."""
    where = redacted(url)
    with _connect(url) as conn:
        try:
            version = _schema_version(conn)
        except psycopg.Error as exc:
            raise _domain_error(exc, where) from None
    if pending("postgres", version, where):
        raise Error(
            "unavailable", "schema_too_old",
            f"the database {where} has schema version {version}, this flowengine needs {latest('postgres')}: "
            "run `flowengine migrate` (with this engine's settings) first",
        )  # fmt: skip


def migrate(url: str) -> list[Migration]:
    """Apply the migrations the database lacks, each in a transaction with its row in
    schema_migrations; returns them. Several at once take turns (an advisory lock): the later ones
    find nothing left to do."""
    where = redacted(url)
    with _connect(url) as conn:
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))  # released when the connection closes
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            todo = pending("postgres", _schema_version(conn), where)
        except psycopg.Error as exc:
            raise _domain_error(exc, where) from None
        for migration in todo:
            try:
                with conn.transaction():
                    conn.execute(migration.sql)  # several statements: no parameters
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
            except psycopg.Error as exc:
                raise failed(migration, where, _line(exc)) from None
    return list(todo)


_CREDENTIAL = (
    'id, kind, team, "user", display_name, key_prefix, key_hash, created, expires, revoked, last_used, paired_with'
)
_PAIRING = 'device_hash, user_code, created, expires, "interval", last_poll, team, "user", device_name, confirmed'
_FILE = "store, key, team, name, size, content_type, created, expires"
_WORKFLOW = "id, team, slug, version, status, created, updated, source"
_TASK = ", ".join(f.name for f in msgspec.structs.fields(TaskRecord))  # the columns are its fields, in order
_UPLOAD = "id, team, store, key, native_id, file_size, part_size, part_count, created, expires"
_MODEL = (
    "id, team, display_name, model_type, store, storage_key, file_size, file_hash, model_path, status, created, updated"
)


class _Held:
    """The connection a transaction holds, as a context its queries enter (and leave open)."""

    __slots__ = ("conn",)

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn

    async def __aenter__(self) -> psycopg.AsyncConnection:
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Queries:
    """Every query, on a connection `_connection()` lends: one from the pool (PostgresDatabase, each
    query committed at once) or the one a transaction holds (_Transaction)."""

    _lock = ""  # what load_run adds to lock the run's row: only inside a transaction
    _claim = ""  # what a queue read adds to take its rows, skipping those another transaction holds

    def _connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection]:
        raise NotImplementedError

    def _atomic(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection]:
        """A connection inside a transaction, for queries that must be whole together."""
        raise NotImplementedError

    # the engine's own state

    async def mark_clean_stop(self, engine: str) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO engine_state (name, value) VALUES (%s, '1')"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (clean_stop_name(engine),),
            )

    async def take_clean_stop(self, engine: str) -> bool:
        async with self._connection() as conn:
            name = clean_stop_name(engine)
            cur = await conn.execute("DELETE FROM engine_state WHERE name = %s RETURNING value", (name,))
            return bool(await cur.fetchall())

    # definitions

    async def put_definition(self, digest: str, body: bytes) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO definitions (hash, body) VALUES (%s, %s) ON CONFLICT DO NOTHING", (digest, body)
            )

    async def definition(self, digest: str) -> bytes:
        async with self._connection() as conn:
            cur = await conn.execute("SELECT body FROM definitions WHERE hash = %s", (digest,))
            return (await cur.fetchone())[0]  # type: ignore[index]

    # runs

    async def insert_runs(self, rows: list[NewRun]) -> None:
        """New runs and their counts, in one statement (so whole even outside a transaction). The
        counter rows are this connection's (their shard defaults to its backend's pid: see migration
        0011), changed in key order, status_counts first (see the migration's trigger)."""
        if not rows:
            return
        by_status = sorted(Counter((r.run.team, r.run.status) for r in rows).items())
        by_flow = sorted(Counter((r.run.team, r.run.flow, r.run.status) for r in rows).items())
        async with self._connection() as conn:
            await conn.execute(
                """WITH by_status AS (
                    INSERT INTO status_counts AS c (team, status, n)
                    SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[])
                    ON CONFLICT (team, status, shard) DO UPDATE SET n = c.n + excluded.n RETURNING 1
                ), by_flow AS (
                    INSERT INTO flow_counts AS c (team, flow, status, n)
                    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[])
                    WHERE (SELECT count(*) FROM by_status) >= 0  -- after status_counts: the one order
                    ON CONFLICT (team, flow, status, shard) DO UPDATE SET n = c.n + excluded.n RETURNING 1
                )
                INSERT INTO runs (id, team, flow, status, created, updated, wake_at, definition, doc)
                SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[],
                                     %s::float8[], %s::text[], %s::bytea[])
                WHERE (SELECT count(*) FROM by_flow) >= 0""",
                (
                    [t for (t, _), _ in by_status], [s for (_, s), _ in by_status], [n for _, n in by_status],
                    [t for (t, _, _), _ in by_flow], [f for (_, f, _), _ in by_flow], [s for (_, _, s), _ in by_flow],
                    [n for _, n in by_flow],
                    [r.run.id for r in rows], [r.run.team for r in rows], [r.run.flow for r in rows],
                    [r.run.status for r in rows],
                    [r.run.created for r in rows], [r.run.updated for r in rows], [r.wake_at for r in rows],
                    [r.definition for r in rows], [_encode(r.run) for r in rows],
                ),
            )  # fmt: skip

    async def save_run(self, run: Run, wake_at: float | None) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE runs SET status = %s, updated = %s, wake_at = %s, doc = %s WHERE id = %s",
                (run.status, run.updated, wake_at, _encode(run), run.id),
            )

    async def load_run(self, run_id: str) -> RunRow | None:
        """The run as committed; inside a transaction, its row stays locked until the transaction ends."""
        async with self._connection() as conn:
            cur = await conn.execute(f"SELECT doc, definition FROM runs WHERE id = %s{self._lock}", (run_id,))
            row = await cur.fetchone()
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
        it (an index range, however deep); `after`: only those whose ID sorts after it. An `offset`
        skips rows one by one instead."""
        where, params = _filters(team, status, flow)
        if before is not None:
            where.append("id < %s")
            params.append(before)
        if after is not None:
            where.append("id > %s")
            params.append(after)
        async with self._connection() as conn:
            cur = await conn.execute(
                f"SELECT doc FROM runs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT %s OFFSET %s",
                [*params, limit, offset],
            )
            return [_decode_run(r[0]) for r in await cur.fetchall()]

    async def count_runs(self, team: str | None, status: str | None, flow: str | None) -> int:
        """How many runs match the filters, from the counters (a few rows, however many runs)."""
        table = "flow_counts" if flow else "status_counts"
        where, params = _filters(team, status, flow)
        return await self._value(f"SELECT coalesce(sum(n), 0)::bigint FROM {table} WHERE {' AND '.join(where)}", params)

    async def count_by_status(self) -> dict[str, int]:
        async with self._connection() as conn:
            cur = await conn.execute("SELECT status, sum(n)::bigint FROM status_counts GROUP BY status")
            return dict(await cur.fetchall())

    async def last_run_id(self) -> str | None:
        return await self._value("SELECT max(id) FROM runs")

    async def runs_with_status(self, status: str, after: str, until: str, limit: int) -> list[RunRow]:
        """Up to `limit` runs with that status and an ID in (after, until], in ID order: one batch of a scan."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT doc, definition FROM runs WHERE status = %s AND id > %s AND id <= %s ORDER BY id LIMIT %s",
                (status, after, until, limit),
            )
            return [RunRow(_decode_run(doc), definition) for doc, definition in await cur.fetchall()]

    async def due_runs(self, now: float, limit: int = 500) -> list[str]:
        async with self._connection() as conn:
            cur = await conn.execute("SELECT id FROM runs WHERE wake_at <= %s ORDER BY wake_at LIMIT %s", (now, limit))
            return [r[0] for r in await cur.fetchall()]

    async def claim_run(self, run_id: str, due: float | None = None) -> RunRow | None:
        """Inside a transaction: the run, locked as load_run locks it, unless another transaction holds it."""
        skip = " SKIP LOCKED" if self._lock else ""
        when = "" if due is None else " AND wake_at <= %s"
        params = (run_id,) if due is None else (run_id, due)
        row = await self._row(f"SELECT doc, definition FROM runs WHERE id = %s{when}{self._lock}{skip}", params)
        return RunRow(_decode_run(row[0]), row[1]) if row else None

    async def next_wake(self) -> float | None:
        return await self._value("SELECT min(wake_at) FROM runs")

    # waits: which run edge an object key fills

    async def claim_waits(self, waits: list[tuple[Wait, float | None]]) -> Wait | None:
        """Store waits, each with when the reconciler should first look (None: never). If a key is
        awaited already, store none of them and return the wait that collided (the first, in the
        order given; of two waits for one key, the second)."""
        if not waits:
            return None
        ordered = sorted(waits, key=lambda pair: (pair[0].location, pair[0].key))  # one order: no deadlock
        async with self._atomic() as conn:
            cur = await conn.execute(
                "INSERT INTO waits (location, key, run_id, edge, next_check)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[])"
                " ON CONFLICT DO NOTHING RETURNING location, key",
                (
                    [w.location for w, _ in ordered], [w.key for w, _ in ordered], [w.run_id for w, _ in ordered],
                    [w.edge for w, _ in ordered], [first for _, first in ordered],
                ),
            )  # fmt: skip
            inserted = await cur.fetchall()
            if len(inserted) == len(waits):
                return None
            await self._drop(conn, [location for location, _ in inserted], [key for _, key in inserted])
        unclaimed = set(inserted)
        for wait, _ in waits:
            if (wait.location, wait.key) not in unclaimed:
                return wait
            unclaimed.remove((wait.location, wait.key))  # of two waits for one key, the first was inserted
        raise AssertionError("a wait was not inserted, yet none collided")

    async def wait_for(self, location: str, key: str) -> Wait | None:
        async with self._connection() as conn:
            cur = await conn.execute("SELECT run_id, edge FROM waits WHERE location = %s AND key = %s", (location, key))
            row = await cur.fetchone()
        return Wait(location, key, row[0], row[1]) if row else None

    async def drop_waits(self, waits: list[Wait]) -> None:
        if waits:
            async with self._connection() as conn:
                await self._drop(conn, [w.location for w in waits], [w.key for w in waits])

    @staticmethod
    async def _drop(conn: psycopg.AsyncConnection, locations: list[str], keys: list[str]) -> None:
        await conn.execute(
            "DELETE FROM waits WHERE (location, key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
            (locations, keys),
        )

    async def count_waits(self) -> int:
        return await self._value("SELECT count(*) FROM waits")

    async def wait_locations(self) -> list[str]:
        """The locations anything waits in (a few): one index seek each, however many waits."""
        async with self._connection() as conn:
            cur = await conn.execute(
                """WITH RECURSIVE found (location) AS (
                    SELECT min(location) FROM waits
                    UNION ALL
                    SELECT (SELECT min(location) FROM waits WHERE location > found.location)
                    FROM found WHERE found.location IS NOT NULL
                ) SELECT location FROM found WHERE location IS NOT NULL"""
            )
            return [r[0] for r in await cur.fetchall()]

    async def unscheduled_waits(self, location: str, after: str, limit: int) -> list[Wait]:
        """Waits the reconciler never asks about (embedded-store uploads), by key after `after`: one batch."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT key, run_id, edge FROM waits WHERE location = %s AND key > %s AND next_check IS NULL"
                " ORDER BY key LIMIT %s",
                (location, after, limit),
            )
            return [Wait(location, *r) for r in await cur.fetchall()]

    # The reconciler's walk through a location's waits, in key order (see runtime/landing.py).

    async def due_waits(
        self, location: str, after: str, now: float, limit: int, scan: int
    ) -> tuple[list[Wait], str | None]:
        """Up to `limit` waits due by `now` among the next `scan` the reconciler asks about in
        `location` (by key, after `after`); and, when fewer were due, the last key looked at, or None
        when no more follow it."""
        window = (
            "SELECT key, run_id, edge, next_check FROM waits"
            " WHERE location = %s AND key > %s AND next_check IS NOT NULL ORDER BY key LIMIT %s"
        )
        async with self._connection() as conn:
            cur = await conn.execute(
                f"SELECT key, run_id, edge FROM ({window}) AS w WHERE next_check <= %s ORDER BY key LIMIT %s",
                (location, after, scan, now, limit),
            )
            rows = await cur.fetchall()
            if len(rows) == limit:
                return [Wait(location, *r) for r in rows], None
            cur = await conn.execute(f"SELECT count(*), max(key) FROM ({window}) AS w", (location, after, scan))
            count, last = await cur.fetchone()  # type: ignore[misc]
        return [Wait(location, *r) for r in rows], last if count == scan else None

    async def last_wait_key(self, location: str, prefix: str) -> str | None:
        """The greatest key awaited in `location` that starts with `prefix`."""
        return await self._value(
            "SELECT max(key) FROM waits WHERE location = %s AND key >= %s AND key < %s",
            (location, prefix, prefix_end(prefix)),
        )

    async def settled_waits(
        self, location: str, first: str, last: str | None, prefix: str, limit: int
    ) -> tuple[int, str | None]:
        """The waits one listing has answered for: those from `first` through `last` (to the end of
        `prefix` when `last` is None) both in byte order and in tree order ('/' before every other
        character, the order of a server that lists directory by directory), at most `limit` of them
        in byte order, and none from the first that is in one span but not in the other. Returns how
        many, and the last one."""
        end = last + "\x01" if last is not None else prefix_end(prefix)  # keys hold no control characters
        span = "SELECT key FROM waits WHERE location = %s AND key >= %s AND key < %s ORDER BY key LIMIT %s"
        outside = f"{_TREE} < replace(%s, '/', chr(1))"
        params: list[Any] = [location, first, end, limit, first]
        if last is not None:
            outside += f" OR {_TREE} > replace(%s, '/', chr(1))"
            params.append(last)
        async with self._connection() as conn:
            cur = await conn.execute(f"SELECT min(key) FROM ({span}) AS s WHERE {outside}", params)
            stop = (await cur.fetchone())[0]  # type: ignore[index]
            cur = await conn.execute(
                f"SELECT count(*), max(key) FROM ({span}) AS s", (location, first, stop or end, limit)
            )
            count, through = await cur.fetchone()  # type: ignore[misc]
        return count, through

    async def waits_at(self, location: str, keys: list[str]) -> list[Wait]:
        """The waits for any of these keys (at most a listing's worth)."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT key, run_id, edge FROM waits WHERE location = %s AND key = ANY(%s::text[]) ORDER BY key",
                (location, keys),
            )
            return [Wait(location, *r) for r in await cur.fetchall()]

    async def back_off_waits(self, location: str, first: str, last: str, now: float, base: float, most: float) -> None:
        """The waits from `first` through `last` were asked about one by one: ask again after twice as
        long as the time before (`base` at first, `most` at most)."""
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE waits SET next_check = %s + least(%s * (1 << least(checks, 30)), %s), checks = checks + 1"
                " WHERE location = %s AND key >= %s AND key <= %s AND next_check IS NOT NULL",
                (now, base, most, location, first, last),
            )

    # expiries: when a run's object is past retention and is to be deleted

    async def add_expiries(self, run_id: str, expiries: dict[str, float]) -> None:
        if expiries:
            async with self._connection() as conn:
                await conn.execute(
                    "INSERT INTO expiries (run_id, edge, expires_at)"
                    " SELECT %s, * FROM unnest(%s::text[], %s::float8[]) ON CONFLICT DO NOTHING",
                    (run_id, list(expiries), list(expiries.values())),
                )

    async def claim_expiries(self, now: float, lease: float, limit: int) -> list[tuple[str, str]]:
        """One statement: the due rows no other transaction is claiming are locked and put off at once."""
        rows = await self._rows(
            "UPDATE expiries AS e SET expires_at = %s FROM (SELECT run_id, edge, expires_at FROM expiries"
            " WHERE expires_at <= %s ORDER BY expires_at, run_id, edge LIMIT %s FOR UPDATE SKIP LOCKED) AS due"
            " WHERE e.run_id = due.run_id AND e.edge = due.edge RETURNING e.run_id, e.edge, due.expires_at",
            (now + lease, now, limit),
        )
        return [(r[0], r[1]) for r in sorted(rows, key=lambda r: (r[2], r[0], r[1]))]

    async def drop_expiry(self, run_id: str, edge: str) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM expiries WHERE run_id = %s AND edge = %s", (run_id, edge))

    # identity: teams, users, members, credentials

    async def insert_team(self, team: Team) -> None:
        await self._execute("INSERT INTO teams (id, name, created) VALUES (%s, %s, %s)", msgspec.structs.astuple(team))

    async def team(self, *, id: str | None = None, name: str | None = None) -> Team | None:
        column, value = ("id", id) if id is not None else ("name", name)
        row = await self._row(f"SELECT id, name, created FROM teams WHERE {column} = %s", (value,))
        return Team(*row) if row else None

    async def teams(self) -> list[Team]:
        return [Team(*r) for r in await self._rows("SELECT id, name, created FROM teams ORDER BY name")]

    async def insert_user(self, user: User) -> None:
        await self._execute("INSERT INTO users (id, email, created) VALUES (%s, %s, %s)", msgspec.structs.astuple(user))

    async def user(self, *, id: str | None = None, email: str | None = None) -> User | None:
        column, value = ("id", id) if id is not None else ("email", email)
        row = await self._row(f"SELECT id, email, created FROM users WHERE {column} = %s", (value,))
        return User(*row) if row else None

    async def put_member(self, team: str, user: str, role: Role, created: float) -> None:
        await self._execute(
            'INSERT INTO members (team, "user", role, created) VALUES (%s, %s, %s, %s)'
            ' ON CONFLICT (team, "user") DO UPDATE SET role = excluded.role',
            (team, user, role, created),
        )

    async def member_role(self, team: str, user: str) -> Role | None:
        row = await self._row('SELECT role FROM members WHERE team = %s AND "user" = %s', (team, user))
        return row[0] if row else None

    async def insert_credential(self, credential: Credential) -> None:
        marks = ", ".join(["%s"] * len(msgspec.structs.fields(Credential)))  # the columns are its fields, in order
        await self._execute(
            f"INSERT INTO credentials ({_CREDENTIAL}) VALUES ({marks})", msgspec.structs.astuple(credential)
        )

    async def credential(self, *, id: str | None = None, key_hash: str | None = None) -> Credential | None:
        column, value = ("id", id) if id is not None else ("key_hash", key_hash)
        row = await self._row(f"SELECT {_CREDENTIAL} FROM credentials WHERE {column} = %s", (value,))
        return Credential(*row) if row else None

    async def credentials(self, team: str | None, kind: str | None, limit: int, offset: int) -> list[Credential]:
        rows = await self._rows(
            f"SELECT {_CREDENTIAL} FROM credentials WHERE (%s::text IS NULL OR team = %s)"
            " AND (%s::text IS NULL OR kind = %s) ORDER BY created, id LIMIT %s OFFSET %s",
            (team, team, kind, kind, limit, offset),
        )
        return [Credential(*r) for r in rows]

    async def count_credentials(self, team: str | None, kind: str | None) -> int:
        row = await self._row(
            "SELECT count(*) FROM credentials"
            " WHERE (%s::text IS NULL OR team = %s) AND (%s::text IS NULL OR kind = %s)",
            (team, team, kind, kind),
        )
        return row[0]  # type: ignore[index]

    async def revoke_credentials(self, ids: list[str], at: float) -> None:
        await self._execute("UPDATE credentials SET revoked = %s WHERE id = ANY(%s) AND revoked IS NULL", (at, ids))

    async def touch_credential(self, id: str, at: float) -> None:
        await self._execute("UPDATE credentials SET last_used = %s WHERE id = %s", (at, id))

    # devices waiting to be paired

    async def insert_pairing(self, pairing: Pairing) -> None:
        marks = ", ".join(["%s"] * len(msgspec.structs.fields(Pairing)))
        await self._execute(f"INSERT INTO pairings ({_PAIRING}) VALUES ({marks})", msgspec.structs.astuple(pairing))

    async def pairing(self, *, device_hash: str | None = None, user_code: str | None = None) -> Pairing | None:
        column, value = ("device_hash", device_hash) if device_hash is not None else ("user_code", user_code)
        row = await self._row(f"SELECT {_PAIRING} FROM pairings WHERE {column} = %s", (value,))
        return Pairing(*row) if row else None

    async def confirm_pairing(self, user_code: str, team: str, user: str, device_name: str, at: float) -> None:
        await self._execute(
            'UPDATE pairings SET team = %s, "user" = %s, device_name = %s, confirmed = %s WHERE user_code = %s',
            (team, user, device_name, at, user_code),
        )

    async def polled_pairing(self, device_hash: str, at: float, interval: int) -> None:
        await self._execute(
            'UPDATE pairings SET last_poll = %s, "interval" = %s WHERE device_hash = %s', (at, interval, device_hash)
        )

    async def take_pairing(self, device_hash: str) -> bool:
        return await self._row("DELETE FROM pairings WHERE device_hash = %s RETURNING 1", (device_hash,)) is not None

    async def count_pairings(self, now: float) -> int:
        return (await self._row("SELECT count(*) FROM pairings WHERE expires > %s", (now,)))[0]  # type: ignore[index]

    async def drop_pairings(self, expired_before: float) -> None:
        await self._execute("DELETE FROM pairings WHERE expires < %s", (expired_before,))

    # files presigned for the workflow/task API

    async def insert_file(self, file: FileRecord) -> None:
        await self._execute(
            f"INSERT INTO files ({_FILE}) VALUES ({', '.join(['%s'] * 8)})", msgspec.structs.astuple(file)
        )

    async def file(self, store: str, key: str) -> FileRecord | None:
        row = await self._row(f"SELECT {_FILE} FROM files WHERE store = %s AND key = %s", (store, key))
        return FileRecord(*row) if row else None

    async def claim_files(self, now: float, lease: float, limit: int) -> list[FileRecord]:
        """As claim_expiries; the rows come as they were before the claim."""
        before = ", ".join(f"due.{c}" if c == "expires" else f"f.{c}" for c in _FILE.split(", "))
        rows = await self._rows(
            f"UPDATE files AS f SET expires = %s FROM (SELECT store, key, expires FROM files WHERE expires <= %s"
            " ORDER BY expires, store, key LIMIT %s FOR UPDATE SKIP LOCKED) AS due"
            f" WHERE f.store = due.store AND f.key = due.key RETURNING {before}",
            (now + lease, now, limit),
        )
        return sorted((FileRecord(*r) for r in rows), key=lambda f: (f.expires, f.store, f.key))

    async def drop_file(self, store: str, key: str) -> None:
        await self._execute("DELETE FROM files WHERE store = %s AND key = %s", (store, key))

    async def keep_file(self, store: str, key: str, expires: float) -> None:
        await self._execute("UPDATE files SET expires = %s WHERE store = %s AND key = %s", (expires, store, key))

    # multipart uploads

    async def insert_upload(self, upload: UploadRecord) -> None:
        await self._execute(f"INSERT INTO multipart_uploads ({_UPLOAD}) VALUES ({', '.join(['%s'] * 10)})",
                            msgspec.structs.astuple(upload))  # fmt: skip

    async def upload(self, id: str) -> UploadRecord | None:
        row = await self._row(f"SELECT {_UPLOAD} FROM multipart_uploads WHERE id = %s", (id,))
        return UploadRecord(*row) if row else None

    async def claim_uploads(self, now: float, lease: float, limit: int) -> list[UploadRecord]:
        """As claim_files."""
        before = ", ".join(f"due.{c}" if c == "expires" else f"u.{c}" for c in _UPLOAD.split(", "))
        rows = await self._rows(
            f"UPDATE multipart_uploads AS u SET expires = %s FROM (SELECT id, expires FROM multipart_uploads"
            " WHERE expires <= %s ORDER BY expires, id LIMIT %s FOR UPDATE SKIP LOCKED) AS due"
            f" WHERE u.id = due.id RETURNING {before}",
            (now + lease, now, limit),
        )
        return sorted((UploadRecord(*r) for r in rows), key=lambda u: (u.expires, u.id))

    async def drop_upload(self, id: str) -> bool:
        return await self._row("DELETE FROM multipart_uploads WHERE id = %s RETURNING id", (id,)) is not None

    # model files

    async def put_model(self, model: ModelRecord) -> ModelRecord:
        row = await self._row(
            f"INSERT INTO models ({_MODEL}) VALUES ({', '.join(['%s'] * 12)}) ON CONFLICT (store, storage_key) DO"
            " UPDATE SET display_name = excluded.display_name, model_type = excluded.model_type, file_size ="
            " excluded.file_size, file_hash = excluded.file_hash, model_path = excluded.model_path,"
            f" updated = excluded.updated RETURNING {_MODEL}",
            msgspec.structs.astuple(model),
        )
        return ModelRecord(*row)

    async def model(self, id: str) -> ModelRecord | None:
        row = await self._row(f"SELECT {_MODEL} FROM models WHERE id = %s", (id,))
        return ModelRecord(*row) if row else None

    async def model_at(self, store: str, storage_key: str) -> ModelRecord | None:
        row = await self._row(
            f"SELECT {_MODEL} FROM models WHERE store = %s AND storage_key = %s", (store, storage_key)
        )
        return ModelRecord(*row) if row else None

    async def models(self, team: str, status: str | None, limit: int, offset: int) -> list[ModelRecord]:
        rows = await self._rows(
            f"SELECT {_MODEL} FROM models WHERE team = %s AND (%s::text IS NULL OR status = %s)"
            " ORDER BY id LIMIT %s OFFSET %s",
            (team, status, status, limit, offset),
        )
        return [ModelRecord(*r) for r in rows]

    async def count_models(self, team: str, status: str | None) -> int:
        return await self._value(
            "SELECT count(*) FROM models WHERE team = %s AND (%s::text IS NULL OR status = %s)", (team, status, status)
        )

    async def set_model_status(self, id: str, status: str, at: float) -> None:
        await self._execute("UPDATE models SET status = %s, updated = %s WHERE id = %s", (status, at, id))

    # workflows

    async def insert_workflow(self, workflow: WorkflowRecord, body: bytes) -> None:
        marks = ", ".join(["%s"] * len(msgspec.structs.fields(WorkflowRecord)))
        async with self._atomic() as conn:
            await conn.execute(
                f"INSERT INTO workflows ({_WORKFLOW}) VALUES ({marks})", msgspec.structs.astuple(workflow)
            )
            await conn.execute(
                "INSERT INTO workflow_versions (workflow, version, body, created) VALUES (%s, %s, %s, %s)",
                (workflow.id, workflow.version, body, workflow.created),
            )

    async def workflow(self, *, id: str | None = None, slug: str | None = None) -> WorkflowRecord | None:
        column, value = ("id", id) if id is not None else ("slug", slug)
        row = await self._row(f"SELECT {_WORKFLOW} FROM workflows WHERE {column} = %s", (value,))
        return WorkflowRecord(*row) if row else None

    async def workflow_version(self, workflow: str, version: int) -> bytes | None:
        row = await self._row(
            "SELECT body FROM workflow_versions WHERE workflow = %s AND version = %s", (workflow, version)
        )
        return bytes(row[0]) if row else None

    async def add_workflow_version(self, workflow: str, version: int, body: bytes, at: float) -> None:
        async with self._atomic() as conn:
            await conn.execute(
                "INSERT INTO workflow_versions (workflow, version, body, created) VALUES (%s, %s, %s, %s)",
                (workflow, version, body, at),
            )
            await conn.execute("UPDATE workflows SET version = %s, updated = %s WHERE id = %s", (version, at, workflow))

    async def set_workflow_status(self, workflow: str, status: str, at: float) -> None:
        await self._execute("UPDATE workflows SET status = %s, updated = %s WHERE id = %s", (status, at, workflow))

    async def workflows(self, team: str | None, limit: int, offset: int) -> list[WorkflowRecord]:
        rows = await self._rows(
            f"SELECT {_WORKFLOW} FROM workflows WHERE team IN ('', coalesce(%s, team))"  # None: every team's
            " ORDER BY slug LIMIT %s OFFSET %s",
            (team, limit, offset),
        )
        return [WorkflowRecord(*r) for r in rows]

    async def count_workflows(self, team: str | None) -> int:
        return await self._value("SELECT count(*) FROM workflows WHERE team IN ('', coalesce(%s, team))", (team,))

    # tasks: runs started through the workflow/task API, their events, and idempotency keys

    async def insert_tasks(self, tasks: list[tuple[TaskRecord, list[TaskEventRow]]]) -> None:
        """The counter rows are changed in key order (see the migration's trigger)."""
        if not tasks:
            return
        counts = sorted(Counter((task.team, task.status) for task, _ in tasks).items())
        marks = ", ".join(["%s"] * len(msgspec.structs.fields(TaskRecord)))
        async with self._atomic() as conn:
            cur = conn.cursor()
            await cur.executemany(f"INSERT INTO tasks ({_TASK}) VALUES ({marks})",
                                  [msgspec.structs.astuple(task) for task, _ in tasks])  # fmt: skip
            events = [(task.id, e.seq, e.kind, e.data, e.at) for task, rows in tasks for e in rows]
            if events:
                await cur.executemany("INSERT INTO task_events (task, seq, kind, data, at) VALUES (%s, %s, %s, %s, %s)",
                                      events)  # fmt: skip
            await conn.execute(
                "INSERT INTO task_counts AS c (team, status, n)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[])"
                " ON CONFLICT (team, status) DO UPDATE SET n = c.n + excluded.n",
                ([t for (t, _), _ in counts], [s for (_, s), _ in counts], [n for _, n in counts]),
            )

    async def save_task(self, task: str, change: TaskChange) -> None:
        async with self._atomic() as conn:
            cur = await conn.execute(
                "UPDATE tasks SET status = %s, events = events + %s, started = coalesce(started, %s),"
                " completed = coalesce(completed, %s) WHERE id = %s RETURNING events",
                (change.status, len(change.events), change.started, change.completed, task),
            )
            (last,) = await cur.fetchone()  # type: ignore[misc]
            if change.events:
                first = last - len(change.events) + 1
                await conn.cursor().executemany(
                    "INSERT INTO task_events (task, seq, kind, data, at) VALUES (%s, %s, %s, %s, %s)",
                    [(task, first + i, kind, data, at) for i, (kind, data, at) in enumerate(change.events)],
                )

    async def task(self, task: str) -> TaskRecord | None:
        row = await self._row(f"SELECT {_TASK} FROM tasks WHERE id = %s", (task,))
        return _task_record(row) if row else None

    async def task_row(self, task: str) -> TaskRow | None:
        row = await self._row(
            f"{TASK_ROW_SELECT} WHERE t.id = %s",
            (task,),
        )
        return _task_row(row) if row else None

    async def list_tasks(self, team: str | None, status: str | None, limit: int, offset: int,
                         workflow: str | None = None) -> list[TaskRow]:  # fmt: skip
        given = [(column, value) for column, value in (("t.team", team), ("t.status", status or None),
                                                       ("t.workflow", workflow)) if value is not None]  # fmt: skip
        where = " AND ".join([f"{column} = %s" for column, _ in given] or ["TRUE"])
        rows = await self._rows(
            f"{TASK_ROW_SELECT} WHERE {where} ORDER BY t.id DESC LIMIT %s OFFSET %s",
            [*(value for _, value in given), limit, offset],
        )
        return [_task_row(r) for r in rows]

    async def count_tasks(self, team: str | None, status: str | None) -> int:
        where, params = _filters(team, status, None)
        return await self._value(f"SELECT coalesce(sum(n), 0)::bigint FROM task_counts WHERE {' AND '.join(where)}",
                                 params)  # fmt: skip

    async def task_events(self, task: str, after: int) -> list[TaskEventRow]:
        rows = await self._rows(
            "SELECT seq, kind, data, at FROM task_events WHERE task = %s AND seq > %s ORDER BY seq", (task, after)
        )
        return [TaskEventRow(seq, kind, bytes(data), at) for seq, kind, data, at in rows]

    async def task_state_seq(self, task: str) -> int:
        return await self._value(
            "SELECT coalesce(max(seq), 0) FROM task_events WHERE task = %s AND kind != 'progress'", (task,)
        )

    async def idempotency_key(self, team: str, key: str, since: float) -> IdempotencyKey | None:
        row = await self._row(
            "SELECT team, key, task, fingerprint, created FROM idempotency_keys"
            " WHERE team = %s AND key = %s AND created >= %s",
            (team, key, since),
        )
        return IdempotencyKey(*row) if row else None

    async def claim_idempotency_key(self, claim: IdempotencyKey, since: float) -> bool:
        """A key another transaction has just claimed is waited for (the insert waits on its row):
        then it is the other's."""
        row = await self._row(
            "INSERT INTO idempotency_keys AS k (team, key, task, fingerprint, created) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (team, key) DO UPDATE SET task = excluded.task, fingerprint = excluded.fingerprint,"
            " created = excluded.created WHERE k.created < %s RETURNING 1",
            (*msgspec.structs.astuple(claim), since),
        )
        return row is not None

    async def drop_idempotency_keys(self, before: float, limit: int) -> int:
        async with self._connection() as conn:
            cur = await conn.execute(
                "DELETE FROM idempotency_keys WHERE (team, key) IN"
                " (SELECT team, key FROM idempotency_keys WHERE created < %s ORDER BY created LIMIT %s)",
                (before, limit),
            )
            return cur.rowcount

    # the step queue

    async def insert_attempts(self, attempts: list[Attempt]) -> None:
        if not attempts:
            return
        marks = ", ".join(["%s"] * len(ATTEMPT_FIELDS))
        async with self._atomic() as conn, conn.cursor() as cur:
            await cur.executemany(
                f"INSERT INTO attempts ({ATTEMPT_COLUMNS}) VALUES ({marks})", [attempt_row(a) for a in attempts]
            )

    async def save_attempt(self, attempt: Attempt) -> None:
        sets = ", ".join(f"{name} = %s" for name in ATTEMPT_FIELDS[1:])
        row = attempt_row(attempt)
        await self._execute(f"UPDATE attempts SET {sets} WHERE id = %s", (*row[1:], row[0]))

    async def attempt(self, id: str) -> Attempt | None:
        """Inside a transaction, the row stays locked until it ends (a claim of the queue skips it)."""
        row = await self._row(f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE id = %s{self._lock}", (id,))
        return attempt_from(row) if row else None

    async def attempt_of(self, run_id: str, step: str, attempt: int) -> Attempt | None:
        row = await self._row(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = %s AND step = %s AND attempt = %s"
            " ORDER BY id DESC LIMIT 1",
            (run_id, step, attempt),
        )
        return attempt_from(row) if row else None

    async def run_attempts(self, run_id: str) -> list[Attempt]:
        rows = await self._rows(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = %s ORDER BY step, attempt, created", (run_id,)
        )
        return [attempt_from(r) for r in rows]

    async def open_attempts(self, run_id: str, step: str) -> list[Attempt]:
        rows = await self._rows(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = %s AND step = %s AND state != 'done'",
            (run_id, step),
        )
        return [attempt_from(r) for r in rows]

    async def offered_steps(self, run_id: str) -> list[str]:
        rows = await self._rows(
            "SELECT DISTINCT step FROM attempts WHERE run_id = %s AND state = 'offered' ORDER BY step", (run_id,)
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
            "%s", "jsonb_exists(%s::jsonb, tool)", "labels::jsonb <@ %s::jsonb",
            tools, labels, team, community, region, region_before, limit, self._claim,
        )  # fmt: skip
        return [attempt_from(r) for r in await self._rows(query, params)]

    async def held_attempts(self, worker: str, states: list[State]) -> list[Attempt]:
        rows = await self._rows(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE worker = %s AND state = ANY(%s) ORDER BY id",
            (worker, list(states)),
        )
        return [attempt_from(r) for r in rows]

    async def due_attempts(self, now: float, limit: int) -> list[Attempt]:
        rows = await self._rows(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE id IN ("
            " SELECT id FROM attempts WHERE state = 'offered' AND offer_expires <= %s"
            " UNION SELECT id FROM attempts WHERE state = 'running' AND lease_expires <= %s"
            " UNION SELECT id FROM attempts WHERE state IN ('queued', 'running') AND deadline <= %s"
            f") ORDER BY id LIMIT %s{self._claim}",
            (now, now, now, limit),
        )
        return [attempt_from(r) for r in rows]

    async def extend_leases(self, worker: str, session: str, until: float, ids: list[str] | None = None) -> None:
        only = "" if ids is None else " AND id = ANY(%s)"
        await self._execute(
            "UPDATE attempts SET lease_expires = greatest(lease_expires, %s)"
            f" WHERE worker = %s AND session = %s AND state = 'running'{only}",
            (until, worker, session, *(() if ids is None else (ids,))),
        )

    async def attempts_running(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for worker, id in await self._rows("SELECT worker, id FROM attempts WHERE state = 'running' ORDER BY id"):
            found.setdefault(worker, []).append(id)
        return found

    # agents

    async def put_agent(self, agent: AgentRecord) -> None:
        marks = ", ".join(["%s"] * len(msgspec.structs.fields(AgentRecord)))
        updates = ", ".join(f"{f.name} = excluded.{f.name}" for f in msgspec.structs.fields(AgentRecord)[1:])
        await self._execute(
            f"INSERT INTO agents ({AGENT_COLUMNS}) VALUES ({marks}) ON CONFLICT (id) DO UPDATE SET {updates}",
            agent_row(agent),
        )

    async def agent(self, *, id: str | None = None, team: str = "", name: str = "") -> AgentRecord | None:
        if id is not None:
            row = await self._row(f"SELECT {AGENT_COLUMNS} FROM agents WHERE id = %s", (id,))
        else:
            row = await self._row(f"SELECT {AGENT_COLUMNS} FROM agents WHERE team = %s AND name = %s", (team, name))
        return agent_from(row) if row else None

    async def agents(self, team: str | None) -> list[AgentRecord]:
        if team is None:
            rows = await self._rows(f"SELECT {AGENT_COLUMNS} FROM agents ORDER BY name, id")
        else:
            rows = await self._rows(f"SELECT {AGENT_COLUMNS} FROM agents WHERE team = %s ORDER BY name, id", (team,))
        return [agent_from(r) for r in rows]

    async def agent_rows(self, team: str | None, limit: int | None = None, offset: int = 0) -> list[AgentRow]:
        of_team, params = ("", ()) if team is None else ("WHERE g.team = %s", (team,))
        rows = await self._rows(
            f"SELECT {AGENT_COLUMNS_OF_G}, (SELECT coalesce(json_agg(json_build_array(a.run_id, a.step, a.attempt)"
            " ORDER BY a.id), '[]') FROM attempts a WHERE a.worker = g.id AND a.state = 'running') FROM agents g"
            f" {of_team} ORDER BY g.name, g.id LIMIT %s OFFSET %s",
            (*params, limit, offset),  # LIMIT NULL: none
        )
        return [AgentRow(agent_from(r[:-1]), msgspec.convert(r[-1], list[RunningStep])) for r in rows]

    async def count_agents(self, team: str) -> int:
        return await self._value("SELECT count(*) FROM agents WHERE team = %s", (team,))

    async def touch_agent(self, id: str, at: float, completed: int = 0) -> None:
        await self._execute(
            "UPDATE agents SET last_heartbeat = greatest(last_heartbeat, %s),"
            " tasks_completed = tasks_completed + %s WHERE id = %s",
            (at, completed, id),
        )

    async def set_agent_tools(self, id: str, session: str, tools: list[str]) -> None:
        await self._execute(
            "UPDATE agents SET tools = %s WHERE id = %s AND session = %s", (agent_json(tools), id, session)
        )

    # webhooks

    async def insert_webhook(self, webhook: WebhookRecord) -> None:
        marks = ", ".join(["%s"] * len(msgspec.structs.fields(WebhookRecord)))
        await self._execute(f"INSERT INTO webhooks ({_WEBHOOK}) VALUES ({marks})", msgspec.structs.astuple(webhook))

    async def webhook(self, id: str) -> WebhookRecord | None:
        row = await self._row(f"SELECT {_WEBHOOK} FROM webhooks WHERE id = %s", (id,))
        return WebhookRecord(*row) if row else None

    async def webhooks(self, team: str | None) -> list[WebhookRecord]:
        if team is None:
            rows = await self._rows(f"SELECT {_WEBHOOK} FROM webhooks ORDER BY id")
        else:
            rows = await self._rows(f"SELECT {_WEBHOOK} FROM webhooks WHERE team = %s ORDER BY id", (team,))
        return [WebhookRecord(*r) for r in rows]

    async def update_webhook(self, webhook: WebhookRecord) -> None:
        w = webhook
        await self._execute(
            "UPDATE webhooks SET display_name = %s, url = %s, secret = %s, events = %s, status = %s, updated = %s"
            " WHERE id = %s",
            (w.display_name, w.url, w.secret, w.events, w.status, w.updated, w.id),
        )

    async def delete_webhook(self, id: str) -> None:
        async with self._connection() as conn:  # one statement: whole even outside a transaction
            await conn.execute(
                "WITH d AS (DELETE FROM webhook_deliveries WHERE webhook = %s RETURNING id),"
                " a AS (DELETE FROM webhook_attempts WHERE delivery IN (SELECT id FROM d))"
                " DELETE FROM webhooks WHERE id = %s",
                (id, id),
            )

    async def insert_deliveries(self, deliveries: list[DeliveryRecord]) -> None:
        marks = ", ".join(["%s"] * len(msgspec.structs.fields(DeliveryRecord)))
        async with self._connection() as conn:
            await conn.cursor().executemany(
                f"INSERT INTO webhook_deliveries ({_DELIVERY}) VALUES ({marks})",
                [msgspec.structs.astuple(d) for d in deliveries],
            )

    async def claim_deliveries(self, now: float, lease_until: float, limit: int) -> list[DeliveryRecord]:
        # SKIP LOCKED: a row another engine is claiming right now is left to it, not waited for
        rows = await self._rows(
            "UPDATE webhook_deliveries SET due = %s WHERE id IN (SELECT id FROM webhook_deliveries"
            " WHERE status = 'pending' AND due <= %s ORDER BY due LIMIT %s FOR UPDATE SKIP LOCKED)"
            f" RETURNING {_DELIVERY}",
            (lease_until, now, limit),
        )
        return [_delivery(r) for r in rows]

    async def record_delivery_attempt(self, attempt: DeliveryAttempt, status: str, due: float | None) -> None:
        a = attempt
        async with self._connection() as conn:  # one statement: whole even outside a transaction
            await conn.execute(
                f"WITH a AS (INSERT INTO webhook_attempts ({_ATTEMPT}) VALUES (%s, %s, %s, %s, %s, %s)),"
                " d AS (UPDATE webhook_deliveries SET status = %s, due = %s, tries = tries + 1, attempts = %s,"
                " updated = %s WHERE id = %s RETURNING webhook)"
                " UPDATE webhooks SET last_delivered = %s WHERE %s AND id IN (SELECT webhook FROM d)",
                (*msgspec.structs.astuple(a), status, due, a.n, a.at, a.delivery, a.at, status == "delivered"),
            )

    async def delivery(self, id: str) -> DeliveryRecord | None:
        row = await self._row(f"SELECT {_DELIVERY} FROM webhook_deliveries WHERE id = %s", (id,))
        return _delivery(row) if row else None

    async def deliveries(self, webhook: str, limit: int, offset: int) -> list[DeliveryRecord]:
        rows = await self._rows(
            f"SELECT {_DELIVERY} FROM webhook_deliveries WHERE webhook = %s ORDER BY id DESC LIMIT %s OFFSET %s",
            (webhook, limit, offset),
        )
        return [_delivery(r) for r in rows]

    async def count_deliveries(self, webhook: str) -> int:
        return await self._value("SELECT count(*) FROM webhook_deliveries WHERE webhook = %s", (webhook,))

    async def delivery_attempts(self, deliveries: list[str]) -> list[DeliveryAttempt]:
        rows = await self._rows(
            f"SELECT {_ATTEMPT} FROM webhook_attempts WHERE delivery = ANY(%s) ORDER BY delivery, n", (deliveries,)
        )
        return [DeliveryAttempt(*r) for r in rows]

    async def resend_delivery(self, id: str, now: float) -> None:
        await self._execute(
            "UPDATE webhook_deliveries SET status = 'pending', tries = 0, due = %s, updated = %s WHERE id = %s",
            (now, now, id),
        )

    async def _execute(self, query: str, params: Any = ()) -> None:
        async with self._connection() as conn:
            await conn.execute(query, params)

    async def _row(self, query: str, params: Any = ()) -> Any:
        async with self._connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchone()

    async def _rows(self, query: str, params: Any = ()) -> list[Any]:
        async with self._connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def _value(self, query: str, params: Any = ()) -> Any:
        async with self._connection() as conn:
            cur = await conn.execute(query, params)
            return (await cur.fetchone())[0]  # type: ignore[index]


class _Transaction(_Queries):
    """The queries of one transaction, on the connection it holds."""

    _lock = " FOR NO KEY UPDATE"
    _claim = " FOR UPDATE SKIP LOCKED"

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self._held = _Held(conn)

    def _connection(self) -> _Held:
        return self._held

    def _atomic(self) -> _Held:
        return self._held


class _Leadership:
    """The loops this engine leads: session advisory locks on a connection of its own, kept for the
    engine's life. The database frees them when the connection ends (the engine died, or its machine:
    the keepalives tell), and another engine takes them on its next try."""

    def __init__(self, url: str, where: str) -> None:
        self.url = url
        self.where = where
        self.led: set[str] = set()
        self._conn: psycopg.AsyncConnection | None = None
        self._turn = asyncio.Lock()

    async def lead(self, name: str) -> bool:
        async with self._turn:
            try:
                if self._conn is None or self._conn.closed:
                    self.led.clear()  # what the lost connection held, another engine may hold now
                    self._conn = await psycopg.AsyncConnection.connect(
                        self.url, **_connect_options(self.url), **_KEEPALIVE
                    )
                if name in self.led:
                    await self._conn.execute("SELECT 1")  # the lock lives as long as the connection
                    return True
                cur = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(name),))
                row = await cur.fetchone()
            except psycopg.Error as exc:
                await self.close()
                raise _domain_error(exc, self.where) from None
            if row is not None and row[0]:
                self.led.add(name)
            return name in self.led

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
        self._conn = None
        self.led.clear()


def _lock_key(name: str) -> int:
    """A lock's name as an advisory lock's 64-bit key."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class PostgresDatabase(_Queries):
    """Several engines on one PostgreSQL database, each with a pool of up to `pool_size` connections.
    The pool opens on first use (the constructor does no I/O but the schema check)."""

    shared = True

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.where = redacted(url)
        self._leadership = _Leadership(url, self.where)
        check_schema(url)
        self.pool = AsyncConnectionPool(
            url, kwargs=_connect_options(url), min_size=1, max_size=pool_size, open=False, timeout=POOL_TIMEOUT,
            name="flowengine",
        )  # fmt: skip
        self._opened = False
        self._opening = asyncio.Lock()
        self._checking: asyncio.Task[None] | None = None  # the pool's idle connections, looked at after one broke
        self._next_fold = 0.0  # when housekeeping next folds the counters (time.monotonic)

    async def _open(self) -> None:
        async with self._opening:
            if not self._opened:
                await self.pool.open()
                self._opened = True

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A connection from the pool; the driver's failures become domain errors. When one turns out
        broken (the server restarted, or ended it), the idle ones are likely broken too: they are
        checked, and replaced where need be, before the next query takes one."""
        if not self._opened:
            await self._open()
        if self._checking is not None:
            await asyncio.shield(self._checking)  # a query given up on does not stop the check
        try:
            async with self.pool.connection() as conn:
                try:
                    yield conn
                except psycopg.OperationalError:
                    if conn.broken and self._checking is None:
                        self._checking = asyncio.create_task(self._check_pool())
                    raise
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.IntegrityError) as exc:
            raise _domain_error(exc, self.where) from exc

    async def _check_pool(self) -> None:
        try:
            await self.pool.check()
        except Exception:
            log.exception("checking the database connections failed")
        finally:
            self._checking = None

    @asynccontextmanager
    async def _atomic(self) -> AsyncIterator[psycopg.AsyncConnection]:
        async with self._connection() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Transaction]:
        """All or nothing, on one connection of the pool held until the end: commits when the block
        ends, rolls back if it raises."""
        async with self._atomic() as conn:
            yield _Transaction(conn)

    async def housekeeping(self) -> None:
        """Fold the counters of ended connections, once every FOLD_INTERVAL (at once on the first
        call: a replica that starts again folds what its former connections left). PostgreSQL's own
        autovacuum and checkpoints do what SQLite needs done by hand."""
        now = time.monotonic()
        if now >= self._next_fold:
            self._next_fold = now + FOLD_INTERVAL
            await self.fold_counts()

    async def fold_counts(self) -> None:
        """Add the counter rows of connections that have ended (their shard, a pid no backend has
        now) into shard 0, and delete them: the rows stay a few per live connection, however many
        connections replicas have opened and closed. Each table in one statement, so a count read
        meanwhile sees the rows before or after, never both. Rows locked by a transaction (a pid
        that came back) are left to a later fold, never waited for; folds on several replicas at
        once take disjoint rows and add to shard 0 in key order."""
        for table, key in _COUNTERS:
            await self._execute(
                f"""WITH gone AS (
                    DELETE FROM {table} WHERE ({key}, shard) IN (
                        SELECT {key}, shard FROM {table}
                        WHERE shard <> 0 AND shard NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)
                        FOR UPDATE SKIP LOCKED)
                    RETURNING {key}, n)
                INSERT INTO {table} AS c ({key}, shard, n)
                SELECT {key}, 0, sum(n) FROM gone GROUP BY {key} HAVING sum(n) <> 0 ORDER BY {key}
                ON CONFLICT ({key}, shard) DO UPDATE SET n = c.n + excluded.n"""
            )

    async def lead(self, name: str) -> bool:
        return await self._leadership.lead(name)

    async def publish(self, messages: list[str]) -> None:
        if messages:
            await self._execute("SELECT pg_notify(%s, m) FROM unnest(%s::text[]) AS m", (CHANNEL, messages))

    async def listen(self, heard: Callable[[str], None], listening: Callable[[], None]) -> None:
        """On a connection of its own, until it ends (then a domain error)."""
        try:
            conn = await psycopg.AsyncConnection.connect(self.url, **_connect_options(self.url), **_KEEPALIVE)
            async with conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                listening()
                async for notification in conn.notifies():
                    heard(notification.payload)
        except psycopg.Error as exc:
            raise _domain_error(exc, self.where) from None

    async def close(self) -> None:
        await self._leadership.close()
        if self._opened:
            await self.pool.close()


_TASK_BODY = [f.name for f in msgspec.structs.fields(TaskRecord)].index("body")


def _task_record(row: Any) -> TaskRecord:
    values = list(row)
    values[_TASK_BODY] = bytes(values[_TASK_BODY])  # bytea may come as a memoryview
    return TaskRecord(*values)


def _filters(team: str | None, status: str | None, flow: str | None) -> tuple[list[str], list[Any]]:
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if team is not None:
        where.append("team = %s")
        params.append(team)
    if status:
        where.append("status = %s")
        params.append(status)
    if flow:
        where.append("flow = %s")
        params.append(flow)
    return where, params


def _domain_error(exc: psycopg.Error, where: str) -> Error:
    if isinstance(exc, psycopg.errors.DiskFull):
        return insufficient_storage("the database change")
    if isinstance(exc, psycopg.errors.IntegrityError):  # a unique name taken meanwhile: another won
        return conflict(f"the change conflicts with what is stored: {_line(exc)}")
    # Unreachable, restarted, out of connections, a lock or a statement timed out, a deadlock broken...
    return Error("unavailable", "database_unavailable", f"the database {where} is unavailable: {_line(exc)}")


def _line(exc: psycopg.Error) -> str:
    """The driver's message on one line (the server's come with a hint or a caret under a query)."""
    return " ".join(str(exc).split())


def _delivery(row: Any) -> DeliveryRecord:
    return DeliveryRecord(*row[:4], bytes(row[4]), *row[5:])  # bytea may come as a memoryview


_TASK_WIDTH = len(msgspec.structs.fields(TaskRecord))


def _task_row(row: Any) -> TaskRow:
    """A row of TASK_ROW_SELECT."""
    return TaskRow(_task_record(row[:_TASK_WIDTH]), _decode_run(row[_TASK_WIDTH]),
                   task_agent_from(tuple(row[_TASK_WIDTH + 1 :])))  # fmt: skip
