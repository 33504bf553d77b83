"""Versioned schemas: numbered migrations applied in order and recorded, databases from before them,
newer schemas refused, `flowengine migrate`, and several migrations at once on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import msgspec
import pgserver
import psycopg
import pytest
from live import free_port

from flowengine.config import Config
from flowengine.core import machine
from flowengine.errors import Error
from flowengine.persistence import open_database, postgres
from flowengine.persistence.base import NewRun
from flowengine.persistence.migrations import Migration, latest, migrations
from flowengine.persistence.sqlite import SqliteDatabase

NAMES = [m.name for m in migrations("sqlite")]


def flowengine(*args: str, database: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWENGINE_")}
    if database:
        env["FLOWENGINE_DATABASE"] = database
    return subprocess.run([sys.executable, "-m", "flowengine", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def sqlite_rows(path: Path, query: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()


def postgres_rows(url: str, query: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


# SQLite: upgraded in place when opened


def test_a_new_sqlite_database_records_each_migration_applied(tmp_path: Path):
    path = tmp_path / "flowengine.db"
    asyncio.run(SqliteDatabase(path).close())
    assert [row[0] for row in sqlite_rows(path, "SELECT name FROM schema_migrations ORDER BY version")] == NAMES
    assert sqlite_rows(path, "PRAGMA user_version") == [(latest("sqlite"),)]
    asyncio.run(SqliteDatabase(path).close())  # opened again: nothing more to apply
    assert len(sqlite_rows(path, "SELECT * FROM schema_migrations")) == len(NAMES)


def runs_of_two_flows() -> dict[str, machine.Run]:
    statuses = [machine.WAITING, machine.COMPLETE, machine.ERROR]
    return {f"r{i:02d}": machine.Run(f"r{i:02d}", "ab"[i % 2], statuses[i % 3], 1.0, 1.0, {}, {}) for i in range(50)}


async def counts(db: SqliteDatabase) -> dict[tuple[str | None, str | None], int]:
    return {(s, f): await db.count_runs("", s, f) for s in (None, machine.WAITING, machine.ERROR) for f in (None, "a")}


def truth(runs: dict[str, machine.Run]) -> dict[tuple[str | None, str | None], int]:
    return {
        (s, f): sum(1 for r in runs.values() if s in (None, r.status) and f in (None, r.flow))
        for s in (None, machine.WAITING, machine.ERROR)
        for f in (None, "a")
    }


def sqlite_with_runs(path: Path, runs: dict[str, machine.Run]) -> None:
    async def insert() -> None:
        db = SqliteDatabase(path)
        async with db.transaction() as tx:
            await tx.insert_runs([NewRun(run, "digest", None) for run in runs.values()])
        await db.close()

    asyncio.run(insert())


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


def sqlite_of_an_earlier_version(path: Path, runs: dict[str, machine.Run], version: int) -> None:
    """A database as an earlier release left it: version 0 (no counters, no version) or 1 (counters and
    `user_version` 1, from before numbered migrations: no schema_migrations table), holding `runs`."""
    conn = sqlite3.connect(path)
    for statement in _VERSION_0:
        conn.execute(statement)
    conn.executemany(
        "INSERT INTO runs (id, flow, status, created, updated, definition, doc) VALUES (?, ?, ?, 1, 1, 'digest', ?)",
        [(r.id, r.flow, r.status, msgspec.json.encode(r)) for r in runs.values()],
    )
    if version >= 1:
        conn.executescript(migrations("sqlite")[0].sql)
        conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def test_a_database_of_the_version_before_counts_is_upgraded_in_place(tmp_path: Path):
    path = tmp_path / "db.sqlite"
    runs = runs_of_two_flows()
    sqlite_of_an_earlier_version(path, runs, 0)

    async def upgraded() -> tuple[dict, dict, list[str]]:
        db = SqliteDatabase(path)  # opening it upgrades it
        before = await counts(db)
        async with db.transaction() as tx:
            run = runs["r00"]
            run.status = machine.COMPLETE
            await tx.save_run(run, None)
        listed = [r.id for r in await db.list_runs("", machine.WAITING, "a", 3)]
        after = await counts(db)
        await db.close()
        return before, after, listed

    before, after, listed = asyncio.run(upgraded())
    assert before == truth({**runs, "r00": machine.Run("r00", "a", machine.WAITING, 1.0, 1.0, {}, {})})
    assert after == truth(runs) and listed == ["r48", "r42", "r36"]
    assert [row[0] for row in sqlite_rows(path, "SELECT name FROM schema_migrations")] == NAMES


def test_a_data_dir_from_before_numbered_migrations_keeps_working(tmp_path: Path):
    """Data dirs of the version before this scheme have user_version 1 and no schema_migrations."""
    path = tmp_path / "flowengine.db"
    runs = runs_of_two_flows()
    sqlite_of_an_earlier_version(path, runs, 1)

    async def reopened() -> tuple[int, int]:
        db = SqliteDatabase(path)
        found = (await db.count_runs("", None, None), len(await db.list_runs("", None, None, 100)))
        await db.close()
        return found

    assert asyncio.run(reopened()) == (50, 50)
    applied = [row[0] for row in sqlite_rows(path, "SELECT name FROM schema_migrations")]
    assert applied == NAMES[1:]  # version 1 already: only what came after it was applied


def test_a_sqlite_database_newer_than_the_engine_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "flowengine.db"
    asyncio.run(SqliteDatabase(path).close())
    newer = latest("sqlite") + 1
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (?, '0099_from_the_future')", (newer,))
    with pytest.raises(Error) as caught:
        SqliteDatabase(path)
    assert caught.value.code == "schema_too_new"
    assert f"schema version {newer}, newer than this flowengine knows ({latest('sqlite')})" in caught.value.message
    assert len(sqlite_rows(path, "SELECT * FROM schema_migrations")) == len(NAMES) + 1

    served = flowengine("serve", "--data-dir", str(tmp_path), "--port", "0", cwd=tmp_path)
    assert served.returncode == 1 and served.stderr.count("\n") == 1, served.stderr
    assert served.stderr.startswith(f"flowengine: the database {path} has schema version {newer}, newer than")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_migration_that_fails_leaves_the_schema_as_it_was(backend: str, tmp_path: Path, request, monkeypatch):
    cluster = request.getfixturevalue("postgres_cluster") if backend == "postgres" else None  # started as it is
    broken = Migration(latest(backend) + 1, "0099_broken", "CREATE TABLE half_done (x integer);\nSELECT nothing_here;")
    real = migrations(backend)
    monkeypatch.setattr(
        f"flowengine.persistence.{backend}.pending", lambda _, version, _where: (*real, broken)[version:]
    )
    if cluster is None:
        path = tmp_path / "flowengine.db"
        with pytest.raises(Error) as caught:
            SqliteDatabase(path)
        tables = sqlite_rows(path, "SELECT name FROM sqlite_master WHERE name = 'half_done'")
        versions = sqlite_rows(path, "SELECT max(version) FROM schema_migrations")
    else:
        url = cluster.create(template="template0")
        with pytest.raises(Error) as caught:
            postgres.migrate(url)
        tables = postgres_rows(url, "SELECT to_regclass('half_done') WHERE to_regclass('half_done') IS NOT NULL")
        versions = postgres_rows(url, "SELECT max(version) FROM schema_migrations")
    assert caught.value.code == "migration_failed" and "nothing_here" in caught.value.message
    assert "migration 0099_broken failed on the database" in caught.value.message
    assert f"which stays at version {latest(backend)}" in caught.value.message
    assert tables == []  # none of it: it ran in a transaction of its own
    assert versions == [(latest(backend),)]  # the ones before it stay applied


def test_flowengine_migrate_on_sqlite_says_what_it_did(tmp_path: Path):
    first = flowengine("migrate", "--data-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    where = f"sqlite:///{tmp_path / 'flowengine.db'}"
    assert first.stdout == "".join(f"applied {name}\n" for name in NAMES) + f"{where}: schema version {len(NAMES)}\n"
    again = flowengine("migrate", "--data-dir", str(tmp_path))
    assert again.stdout == f"{where}: schema version {len(NAMES)}, already up to date\n"


# PostgreSQL: only `flowengine migrate` changes a shared schema


def test_an_engine_refuses_a_postgres_database_until_flowengine_migrate_has_run(
    postgres_cluster: pgserver.Cluster, tmp_path: Path
):
    url = postgres_cluster.create(template="template0")
    try:
        with pytest.raises(Error) as caught:
            open_database(Config(data_dir=str(tmp_path), database=url))
        assert caught.value.code == "schema_too_old" and "run `flowengine migrate`" in caught.value.message
        served = flowengine("serve", "--data-dir", str(tmp_path), "--port", "0", database=url)
        assert served.returncode == 1 and served.stderr.count("\n") == 1, served.stderr
        assert served.stderr == (
            f"flowengine: the database {url} has schema version 0, this flowengine needs {len(NAMES)}: "
            "run `flowengine migrate` (with this engine's settings) first\n"
        )

        migrated = flowengine("migrate", database=url)
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stdout == "".join(f"applied {n}\n" for n in NAMES) + f"{url}: schema version {len(NAMES)}\n"
        assert postgres_rows(url, "SELECT version, name FROM schema_migrations ORDER BY version") == [
            (i + 1, name) for i, name in enumerate(NAMES)
        ]
        again = flowengine("migrate", database=url)
        assert again.stdout == f"{url}: schema version {len(NAMES)}, already up to date\n"
        asyncio.run(open_database(Config(data_dir=str(tmp_path), database=url)).close())
    finally:
        postgres_cluster.drop(url)


def test_a_postgres_database_newer_than_the_engine_is_refused_by_serve_and_migrate(postgres_url: str, tmp_path: Path):
    newer = latest("postgres") + 1
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, '0099_from_the_future')", (newer,))
    expected = f"has schema version {newer}, newer than this flowengine knows ({latest('postgres')})"
    for command in (["serve", "--data-dir", str(tmp_path), "--port", "0"], ["migrate"]):
        done = flowengine(*command, database=postgres_url)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr


def test_a_password_in_the_url_is_never_shown(postgres_cluster: pgserver.Cluster):
    url = postgres_cluster.url("no_such_database").replace("postgres@", "postgres:s3cret-pw@")
    done = flowengine("migrate", database=url)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "s3cret-pw" not in done.stderr and "postgres:***@127.0.0.1" in done.stderr
    assert 'database "no_such_database" does not exist' in done.stderr


def test_a_database_that_does_not_answer_stops_serve_and_migrate_with_one_line(tmp_path: Path):
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/flowengine"
    for command in (["serve", "--data-dir", str(tmp_path), "--port", "0"], ["migrate"]):
        done = flowengine(*command, database=closed)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"flowengine: the database {closed} is unavailable: connection failed:")


def test_several_migrations_at_once_take_turns(postgres_cluster: pgserver.Cluster):
    """Replicas' deploy jobs may all run `flowengine migrate`: each applies what is left when its
    turn comes, so exactly one applies each migration and none fails."""
    url = postgres_cluster.create(template="template0")
    start = threading.Barrier(4)
    results: list[list[Migration] | Exception] = []

    def one() -> None:
        start.wait()
        try:
            results.append(postgres.migrate(url))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert [r for r in results if isinstance(r, Exception)] == []
        assert sorted(len(r) for r in results) == [0, 0, 0, len(NAMES)]  # type: ignore[arg-type]
        assert postgres_rows(url, "SELECT count(*) FROM schema_migrations") == [(len(NAMES),)]
    finally:
        postgres_cluster.drop(url)


def test_postgres_counters_of_version_10_become_shard_0_and_stay_exact(
    postgres_cluster: pgserver.Cluster, tmp_path: Path
):
    """0011 gives each connection counter rows of its own: the counts a database of version 10 holds
    become the folded shard 0, and go on changing right."""
    url = postgres_cluster.create(template="template0")
    runs = runs_of_two_flows()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                         " applied_at timestamptz NOT NULL DEFAULT now())")  # fmt: skip
            for migration in migrations("postgres")[:10]:
                conn.execute(migration.sql)
                conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (migration.version, migration.name))
            for run in runs.values():  # as version 10's insert_runs: the runs, then their counts
                conn.execute(
                    "INSERT INTO runs (id, flow, status, created, updated, definition, doc)"
                    " VALUES (%s, %s, %s, 1, 1, 'digest', %s)", (run.id, run.flow, run.status, msgspec.json.encode(run))
                )  # fmt: skip
            conn.execute("INSERT INTO flow_counts SELECT team, flow, status, count(*) FROM runs GROUP BY 1, 2, 3")
            conn.execute("INSERT INTO status_counts SELECT team, status, count(*) FROM runs GROUP BY 1, 2")
        assert [m.name for m in postgres.migrate(url)] == NAMES[10:]
        assert postgres_rows(url, "SELECT DISTINCT shard FROM status_counts UNION SELECT shard FROM flow_counts") == [
            (0,)
        ]

        async def counted() -> tuple[dict, dict]:
            db = open_database(Config(data_dir=str(tmp_path), database=url))
            before = await counts(db)  # type: ignore[arg-type]
            async with db.transaction() as tx:
                await tx.save_run(msgspec.structs.replace(runs["r00"], status=machine.ERROR), None)
            after = await counts(db)  # type: ignore[arg-type]
            await db.close()
            return before, after

        before, after = asyncio.run(counted())
        assert before == truth(runs)
        assert after == truth({**runs, "r00": msgspec.structs.replace(runs["r00"], status=machine.ERROR)})
    finally:
        postgres_cluster.drop(url)


def test_serve_on_postgres_refuses_an_embedded_store_unless_it_is_declared_shared(postgres_url: str, tmp_path: Path):
    done = flowengine("serve", "--data-dir", str(tmp_path), "--port", "0", database=postgres_url)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("flowengine: store 'default' is the embedded local store, which other engines")
    assert "local_store_shared: true" in done.stderr
    config = tmp_path / "config.yaml"
    config.write_text(
        "stores:\n  - {Name: default, Type: s3, Params: {endpoint: '127.0.0.1:1', bucket: b, secure: false}}\n"
        "  - {Name: scratch, Type: local}\n"
    )
    done = flowengine("serve", "--config", str(config), "--data-dir", str(tmp_path), "--port", "0",
                      database=postgres_url)  # fmt: skip
    assert done.returncode == 1 and "store 'scratch' is the embedded local store" in done.stderr, done.stderr
