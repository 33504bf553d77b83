"""The persistence contract: what every method of the Database interface means, pinned down once and
held against both implementations, SQLite and PostgreSQL (each test runs on both, on a database of
its own). Keys and IDs that sort differently by bytes than by a language's collation (upper case,
accents, '-' beside '/') are there on purpose: the test server collates by a language (pgserver.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import psycopg
import pytest

from flowengine.config import Config
from flowengine.core import machine, queue
from flowengine.core.queue import Attempt, Worker
from flowengine.errors import Error
from flowengine.identity.records import Credential, Pairing, Team, User
from flowengine.persistence import open_database
from flowengine.persistence.base import (
    AgentRecord,
    Database,
    DeliveryAttempt,
    DeliveryRecord,
    FileRecord,
    IdempotencyKey,
    ModelRecord,
    NewRun,
    RunningStep,
    TaskChange,
    TaskEventRow,
    TaskRecord,
    UploadRecord,
    Wait,
    WebhookRecord,
    WorkflowRecord,
)
from flowengine.persistence.migrations import migrations
from flowengine.persistence.postgres import _lock_key

pytestmark = pytest.mark.anyio
STATUSES = [machine.WAITING, machine.RUNNING, machine.COMPLETE, machine.ERROR, machine.STOPPED]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    return "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
async def db(database_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = open_database(Config(data_dir=str(tmp_path), database=database_url))
    yield database
    await database.close()


def run(run_id: str, flow: str = "f", status: str = machine.WAITING, updated: float = 1.0) -> machine.Run:
    return machine.Run(run_id, flow, status, 1.0, updated, {}, {})


async def insert(db: Database, *runs: machine.Run, wake_at: float | None = None) -> None:
    async with db.transaction() as tx:
        await tx.insert_runs([NewRun(r, "digest", wake_at) for r in runs])


async def waits(db: Database, location: str, *keys: str, first_check: float | None = 0.0) -> list[Wait]:
    claimed = [Wait(location, key, f"run-{key}", "edge") for key in keys]
    async with db.transaction() as tx:
        assert await tx.claim_waits([(w, first_check) for w in claimed]) is None
    return claimed


# the engine's own state, definitions


async def test_a_clean_stop_is_taken_once_by_the_engine_that_made_it(db: Database):
    assert await db.take_clean_stop("local:a") is False
    await db.mark_clean_stop("local:a")
    await db.mark_clean_stop("local:a")  # twice: still one stop to take
    assert await db.take_clean_stop("local:b") is False  # another engine on the database crashed
    assert await db.take_clean_stop("local:a") is True
    assert await db.take_clean_stop("local:a") is False


async def test_a_definition_is_stored_once_by_its_digest(db: Database):
    async with db.transaction() as tx:
        await tx.put_definition("d1", b'{"Name": "first"}')
        assert await tx.definition("d1") == b'{"Name": "first"}'  # a transaction reads its own writes
    await db.put_definition("d1", b"another body")  # the digest is taken: ignored
    await db.put_definition("d2", b"\x00\xff binary")
    assert await db.definition("d1") == b'{"Name": "first"}'
    assert await db.definition("d2") == b"\x00\xff binary"


# runs


async def test_a_run_reads_back_as_saved_with_its_definition(db: Database):
    stored = machine.Run(
        "r1", "flow", machine.WAITING, 1.5, 2.5,
        {"in": machine.EdgeState("default", "k/in", "upload", deadline=9.0)},
        {"s": machine.StepState(status=machine.IDLE)},
    )  # fmt: skip
    async with db.transaction() as tx:
        await tx.insert_runs([NewRun(stored, "digest-1", 9.0)])
    loaded = await db.load_run("r1")
    assert loaded is not None and loaded.run == stored and loaded.definition == "digest-1"
    changed = msgspec.structs.replace(stored, status=machine.ERROR, updated=3.5, error="TTL")
    async with db.transaction() as tx:
        await tx.save_run(changed, None)
    assert (await db.load_run("r1")).run == changed  # type: ignore[union-attr]
    assert await db.load_run("nope") is None
    async with db.transaction() as tx:
        assert await tx.load_run("nope") is None


async def test_runs_list_newest_first_by_id_in_byte_order_with_filters_and_offset(db: Database):
    # Byte order: "A1" < "B2" < "a0" (a language would put "a0" first).
    await insert(db, run("a0", "x"), run("A1", "y"), run("B2", "x", machine.COMPLETE))
    listed = [r.id for r in await db.list_runs("", None, None, 10)]
    assert listed == ["a0", "B2", "A1"]
    assert [r.id for r in await db.list_runs("", None, "x", 10)] == ["a0", "B2"]
    assert [r.id for r in await db.list_runs("", machine.WAITING, None, 10)] == ["a0", "A1"]
    assert [r.id for r in await db.list_runs("", machine.COMPLETE, "x", 10)] == ["B2"]
    assert [r.id for r in await db.list_runs("", None, None, 10, before="a0")] == ["B2", "A1"]
    assert [r.id for r in await db.list_runs("", None, None, 1, offset=1)] == ["B2"]
    assert await db.list_runs("", None, "z", 10) == []
    assert [r.id for r in await db.list_runs("", None, None, 10, after="A1")] == ["a0", "B2"]
    assert [r.id for r in await db.list_runs("", None, None, 10, after="A1", before="a0")] == ["B2"]
    assert await db.last_run_id() == "a0"


async def test_runs_of_every_team_are_listed_and_counted_with_no_team(db: Database):
    mine, theirs = run("r1", "x"), msgspec.structs.replace(run("r2", "x"), team="t-b")
    await insert(db, mine, theirs, run("r3", "y", machine.COMPLETE))
    assert [r.id for r in await db.list_runs(None, None, None, 10)] == ["r3", "r2", "r1"]
    assert [r.id for r in await db.list_runs(None, None, "x", 10)] == ["r2", "r1"]
    assert [r.id for r in await db.list_runs("t-b", None, None, 10)] == ["r2"]
    assert await db.count_runs(None, None, None) == 3
    assert await db.count_runs(None, machine.WAITING, "x") == 2
    assert await db.count_runs("", None, None) == 2


async def test_pages_by_key_see_every_run_once_newest_first(db: Database):
    async with db.transaction() as tx:
        for i in range(23):
            await tx.insert_runs([NewRun(run(f"r{i:02d}", "ab"[i % 2]), "digest", None)])
    seen, before = [], None
    while page := await db.list_runs("", None, "a", 5, before=before):
        seen += [r.id for r in page]
        before = page[-1].id
    assert seen == [f"r{i:02d}" for i in range(22, -1, -2)]
    assert [r.id for r in await db.list_runs("", machine.WAITING, None, 2, offset=3)] == ["r19", "r18"]


async def test_an_empty_database_has_no_runs(db: Database):
    assert await db.last_run_id() is None
    assert await db.next_wake() is None
    assert await db.count_runs("", None, None) == 0
    assert await db.count_by_status() == {}
    assert await db.list_runs("", None, None, 5) == []


async def test_runs_with_a_status_are_scanned_in_id_order_batch_by_batch(db: Database):
    await insert(db, *(run(f"r{i}", status=machine.RUNNING if i % 3 else machine.WAITING) for i in range(10)))
    first = await db.runs_with_status(machine.RUNNING, "", "r8", 3)
    assert [row.run.id for row in first] == ["r1", "r2", "r4"]
    rest = await db.runs_with_status(machine.RUNNING, "r4", "r8", 10)
    assert [row.run.id for row in rest] == ["r5", "r7", "r8"]  # up to and including `until`
    assert rest[0].definition == "digest"


async def test_due_runs_come_by_their_wake_time(db: Database):
    async with db.transaction() as tx:
        await tx.insert_runs(
            [NewRun(run("late"), "d", 30.0), NewRun(run("early"), "d", 10.0), NewRun(run("never"), "d", None)]
        )
        await tx.insert_runs([NewRun(run("mid"), "d", 20.0)])
    assert await db.next_wake() == 10.0
    assert await db.due_runs(25.0) == ["early", "mid"]
    assert await db.due_runs(100.0, limit=1) == ["early"]
    assert await db.due_runs(5.0) == []
    async with db.transaction() as tx:
        await tx.save_run(run("early"), None)  # its timer is done
    assert await db.next_wake() == 20.0


# counters


def every_total(runs: dict[str, machine.Run]) -> dict[tuple[str | None, str | None], int]:
    """Every total the listing can ask for, counted from the runs themselves."""
    return {
        (s, f): sum(1 for r in runs.values() if s in (None, r.status) and f in (None, r.flow))
        for s in [None, *STATUSES]
        for f in (None, "a", "b", "c")
    }


async def counted(db: Database) -> dict[tuple[str | None, str | None], int]:
    """The same totals, from the database's counters."""
    return {(s, f): await db.count_runs("", s, f) for s in [None, *STATUSES] for f in (None, "a", "b", "c")}


async def test_counts_follow_every_insert_and_status_change_in_the_same_transaction(db: Database):
    rng = random.Random(7)
    runs: dict[str, machine.Run] = {}
    for i in range(200):
        async with db.transaction() as tx:
            if runs and rng.random() < 0.6:
                changed = msgspec.structs.replace(runs[rng.choice(sorted(runs))], status=rng.choice(STATUSES))
                await tx.save_run(changed, None)
                runs[changed.id] = changed
            else:  # a group commit's worth, of several flows and statuses
                new = [run(f"r{i:04d}-{j}", rng.choice("abc"), rng.choice(STATUSES)) for j in range(rng.randint(1, 6))]
                await tx.insert_runs([NewRun(r, "digest", None) for r in new])
                runs.update((r.id, r) for r in new)
    assert await counted(db) == every_total(runs)
    by_status = {s: n for (s, f), n in every_total(runs).items() if s and f is None and n}
    assert await db.count_by_status() == by_status

    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:  # a change rolled back takes its counts with it
            await tx.insert_runs([NewRun(run("rolled-back", "a"), "digest", None)])
            await tx.save_run(msgspec.structs.replace(next(iter(runs.values())), status="OTHER"), None)
            raise RuntimeError
    assert await counted(db) == every_total(runs) != every_total({**runs, "x": run("x", "a")})
    assert await db.load_run("rolled-back") is None


async def test_counts_stay_right_under_concurrent_transactions(db: Database):
    """Creations and status changes from many tasks at once (on PostgreSQL, on many connections):
    no count is lost, and no two transactions deadlock on the counter rows."""
    await insert(db, *(run(f"base{i:02d}", "ab"[i % 2]) for i in range(20)))
    runs = {f"base{i:02d}": run(f"base{i:02d}", "ab"[i % 2]) for i in range(20)}

    async def advance(run_id: str) -> None:
        for status in (machine.RUNNING, machine.COMPLETE):
            async with db.transaction() as tx:
                row = await tx.load_run(run_id)
                assert row is not None
                await tx.save_run(msgspec.structs.replace(row.run, status=status), None)
        runs[run_id] = msgspec.structs.replace(runs[run_id], status=machine.COMPLETE)

    async def create(n: int) -> None:
        new = [run(f"new{n:02d}-{j}", "abc"[(n + j) % 3], STATUSES[(n + j) % 5]) for j in range(3)]
        await insert(db, *new)
        runs.update((r.id, r) for r in new)

    await asyncio.gather(*(advance(run_id) for run_id in list(runs)), *(create(n) for n in range(20)))
    assert await counted(db) == every_total(runs)


async def test_creations_on_two_connections_share_no_counter_row(postgres_url: str, tmp_path: Path):
    """PostgreSQL: each connection adds to counter rows of its own, so a creation does not wait for
    another transaction's COMMIT (with one row per team and status, every creation on every replica
    waited in line for it); a count is the sum of the rows."""
    db = open_database(Config(data_dir=str(tmp_path), database=postgres_url))
    try:
        async with db.transaction() as first:
            await first.insert_runs([NewRun(run("r1", "a"), "digest", None)])
            async with db.transaction() as second:  # another connection, while the first holds its rows
                await asyncio.wait_for(second.insert_runs([NewRun(run("r2", "a"), "digest", None)]), 10)
            assert await db.count_runs("", machine.WAITING, "a") == 1  # the second's, committed
        assert await db.count_runs("", machine.WAITING, "a") == 2
        assert await db.count_by_status() == {machine.WAITING: 2}
    finally:
        await db.close()


def counter_shards(url: str) -> dict[str, set[int]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {t: {r[0] for r in conn.execute(f"SELECT shard FROM {t}")} for t in ("status_counts", "flow_counts")}


def live_backends(url: str, pids: set[int]) -> set[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (list(pids),))}


async def test_the_counters_of_ended_connections_fold_into_one_row_per_key(postgres_url: str, tmp_path: Path):
    """PostgreSQL: what connections that have ended left in their counter rows is added into shard 0
    and their rows deleted (so the rows do not grow with every connection ever opened), by two
    replicas' housekeeping at once; the rows of live connections stay theirs; every count stays exact."""
    config = Config(data_dir=str(tmp_path), database=postgres_url)
    runs: dict[str, machine.Run] = {}

    async def create(db: Database, n: int) -> None:
        new = [run(f"r{n:02d}-{j}", "abc"[(n + j) % 3], STATUSES[(n + j) % 5]) for j in range(3)]
        await insert(db, *new)
        runs.update((r.id, r) for r in new)
        async with db.transaction() as tx:  # a status change: -1 and +1 on this connection's rows
            changed = msgspec.structs.replace(new[0], status=machine.COMPLETE)
            await tx.save_run(changed, None)
        runs[changed.id] = changed

    ended = open_database(config)
    await asyncio.gather(*(create(ended, n) for n in range(20)))
    await ended.close()
    shards = counter_shards(postgres_url)
    ended_pids = shards["status_counts"] | shards["flow_counts"]
    assert len(ended_pids) > 1 and 0 not in ended_pids  # several connections, each with rows of its own
    for _ in range(100):  # a closed connection's backend exits a moment later
        if not live_backends(postgres_url, ended_pids):
            break
        await asyncio.sleep(0.05)

    one, other = open_database(config), open_database(config)
    try:
        await create(one, 99)  # a live connection's rows: not folded
        live = counter_shards(postgres_url)["status_counts"] - ended_pids
        assert live and await counted(one) == every_total(runs)
        await asyncio.gather(one.housekeeping(), other.housekeeping())
        for table, found in counter_shards(postgres_url).items():
            assert found == {0} | live, table
        assert await counted(one) == await counted(other) == every_total(runs)
        by_status = {s: n for (s, f), n in every_total(runs).items() if s and f is None and n}
        assert await one.count_by_status() == by_status
        with psycopg.connect(postgres_url, autocommit=True) as conn:  # one row per key, none holding 0
            assert conn.execute("SELECT count(*) FROM flow_counts WHERE shard = 0 AND n = 0").fetchone() == (0,)
    finally:
        await one.close()
        await other.close()


# transactions


async def test_a_transaction_that_raises_stores_nothing(db: Database):
    with pytest.raises(Error):
        async with db.transaction() as tx:
            await tx.insert_runs([NewRun(run("r1"), "digest", 5.0)])
            await tx.claim_waits([(Wait("s3:b", "k", "r1", "in"), 1.0)])
            await tx.add_expiries("r1", {"in": 5.0})
            await tx.put_definition("digest", b"{}")
            raise Error("conflict", "conflict", "refused")
    assert await db.load_run("r1") is None
    assert await db.wait_for("s3:b", "k") is None
    assert await db.claim_expiries(10.0, 60.0, 10) == []
    assert await db.count_runs("", None, None) == 0 and await db.next_wake() is None


async def test_two_transactions_on_one_run_take_turns_and_lose_no_update(db: Database):
    """Inside a transaction, loading a run locks it: a second transaction's load waits for the first
    to commit and reads what it wrote. Twenty read-modify-writes at once: all twenty count."""
    await insert(db, run("r", updated=0.0))
    order: list[str] = []
    first_loaded = asyncio.Event()

    async def first() -> None:
        async with db.transaction() as tx:
            row = await tx.load_run("r")
            first_loaded.set()
            await asyncio.sleep(0.2)  # the other transaction tries meanwhile
            await tx.save_run(msgspec.structs.replace(row.run, updated=100.0), None)  # type: ignore[union-attr]
            order.append("first commits")

    async def second() -> float:
        await first_loaded.wait()
        async with db.transaction() as tx:
            row = await tx.load_run("r")
            order.append("second loaded")
            return row.run.updated  # type: ignore[union-attr]

    _, seen = await asyncio.gather(first(), second())
    assert order == ["first commits", "second loaded"] and seen == 100.0

    async def increment() -> None:
        async with db.transaction() as tx:
            row = await tx.load_run("r")
            await asyncio.sleep(0)  # let the others in, where they can come
            await tx.save_run(msgspec.structs.replace(row.run, updated=row.run.updated + 1), None)  # type: ignore[union-attr]

    await asyncio.gather(*(increment() for _ in range(20)))
    assert (await db.load_run("r")).run.updated == 120.0  # type: ignore[union-attr]


# waits


async def test_claiming_waits_is_all_or_nothing(db: Database):
    taken = (await waits(db, "s3:b", "in/taken"))[0]
    mine = [
        Wait("s3:b", "in/new-1", "r2", "a"),
        Wait("s3:b", "in/taken", "r2", "b"),
        Wait("s3:b", "in/new-2", "r2", "c"),
    ]
    async with db.transaction() as tx:
        collided = await tx.claim_waits([(w, 1.0) for w in mine])
    assert collided == Wait("s3:b", "in/taken", "r2", "b")  # the wait that collided, as given
    assert await db.wait_for("s3:b", "in/new-1") is None and await db.wait_for("s3:b", "in/new-2") is None
    assert await db.wait_for("s3:b", "in/taken") == taken
    # The same key in another location is another key; two waits of one claim for one key collide.
    twice = [Wait("local:default", "in/taken", "r3", "a"), Wait("local:default", "in/taken", "r3", "b")]
    assert await db.claim_waits([(w, None) for w in twice]) == twice[1]
    assert await db.wait_for("local:default", "in/taken") is None
    assert await db.claim_waits([(twice[0], None)]) is None  # outside a transaction: whole too
    assert await db.count_waits() == 2


async def test_concurrent_claims_of_one_key_leave_it_to_the_first(db: Database):
    """A claim of a key another open transaction has just claimed waits for that transaction: when
    it commits, the second claim collides and stores none of its waits; when it rolls back, the
    second claim takes every key."""
    collided, stored = await claim_race(db, "s3:commit", commit_first=True)
    assert collided == Wait("s3:commit", "k2", "r2", "k2")
    assert stored == [Wait("s3:commit", "k1", "r1", "k1"), Wait("s3:commit", "k2", "r1", "k2"), None]
    collided, stored = await claim_race(db, "s3:rollback", commit_first=False)
    assert collided is None
    assert stored == [None, Wait("s3:rollback", "k2", "r2", "k2"), Wait("s3:rollback", "k3", "r2", "k3")]


async def claim_race(db: Database, location: str, commit_first: bool) -> tuple[Wait | None, list[Wait | None]]:
    """Run r1 claims k1 and k2 and keeps its transaction open a while; meanwhile run r2 claims k3
    and k2. Returns what r2's claim collided with, and the waits stored for k1, k2, k3 after both."""
    first_claimed = asyncio.Event()

    async def first() -> None:
        with contextlib.suppress(RuntimeError):
            async with db.transaction() as tx:
                assert await tx.claim_waits([(Wait(location, k, "r1", k), 1.0) for k in ("k1", "k2")]) is None
                first_claimed.set()
                await asyncio.sleep(0.2)
                if not commit_first:
                    raise RuntimeError

    async def second() -> Wait | None:
        await first_claimed.wait()
        async with db.transaction() as tx:
            return await tx.claim_waits([(Wait(location, k, "r2", k), 1.0) for k in ("k3", "k2")])

    _, collided = await asyncio.gather(first(), second())
    return collided, [await db.wait_for(location, k) for k in ("k1", "k2", "k3")]


async def test_waits_are_found_dropped_and_counted_by_location_and_key(db: Database):
    a = await waits(db, "s3:one", "k1", "k2")
    b = await waits(db, "local:default", "k1", first_check=None)
    await waits(db, "s3:another", "x")
    assert await db.wait_for("s3:one", "k2") == a[1]
    assert await db.wait_for("s3:one", "k3") is None
    assert await db.wait_locations() == ["local:default", "s3:another", "s3:one"]
    assert await db.count_waits() == 4
    async with db.transaction() as tx:
        await tx.drop_waits([a[0], b[0]])
        await tx.drop_waits([])
    assert await db.wait_for("s3:one", "k1") is None and await db.wait_for("local:default", "k1") is None
    assert await db.count_waits() == 2
    assert await db.wait_locations() == ["s3:another", "s3:one"]


async def test_unscheduled_waits_come_in_byte_order_batch_by_batch(db: Database):
    keys = ["in/b", "in/B", "in/a-b", "in/a/b", "in/é", "in/f", "in/\U0001f600"]
    await waits(db, "local:default", *keys, first_check=None)
    await waits(db, "local:default", "in/c", first_check=5.0)  # the reconciler asks about this one: not listed
    batch = await db.unscheduled_waits("local:default", "", 4)
    assert [w.key for w in batch] == ["in/B", "in/a-b", "in/a/b", "in/b"]
    rest = await db.unscheduled_waits("local:default", batch[-1].key, 10)
    assert [w.key for w in rest] == ["in/f", "in/é", "in/\U0001f600"]
    assert rest[0] == Wait("local:default", "in/f", "run-in/f", "edge")


# the reconciler's walk


async def test_due_waits_come_from_a_window_of_the_walk(db: Database):
    async with db.transaction() as tx:
        await tx.claim_waits([(Wait("s3:b", f"k{i}", f"r{i}", "e"), 10.0 if i % 2 else 100.0) for i in range(8)])
        await tx.claim_waits([(Wait("s3:b", "k9", "r9", "e"), None)])  # never asked about: not in the walk
    due, looked_to = await db.due_waits("s3:b", "", 50.0, 2, 6)  # k1 and k3 are due among k0..k5
    assert [w.key for w in due] == ["k1", "k3"] and looked_to is None  # as many as asked for
    due, looked_to = await db.due_waits("s3:b", "", 50.0, 5, 4)  # fewer due among k0..k3: where the window ended
    assert [w.key for w in due] == ["k1", "k3"] and looked_to == "k3"
    due, looked_to = await db.due_waits("s3:b", "k3", 50.0, 5, 10)  # the window reaches the end
    assert [w.key for w in due] == ["k5", "k7"] and looked_to is None
    assert due[0] == Wait("s3:b", "k5", "r5", "e")
    assert await db.due_waits("s3:b", "k7", 50.0, 5, 10) == ([], None)
    assert await db.due_waits("s3:b", "", 5.0, 5, 3) == ([], "k2")  # none due in the window


async def test_backing_off_doubles_a_keys_interval_up_to_the_most(db: Database):
    await waits(db, "s3:b", "k1", "k2", "k3", first_check=1.0)
    await waits(db, "s3:b", "k4", first_check=None)
    for now in (10.0, 20.0, 30.0, 40.0):
        async with db.transaction() as tx:
            await tx.back_off_waits("s3:b", "k2", "k4", now, 2.0, 7.0)
    # k2 and k3: checked at 10 (next 12), 20 (next 24), 30 (next 37: 8 capped at 7), 40 (next 47)
    assert [w.key for w in (await db.due_waits("s3:b", "", 46.9, 10, 10))[0]] == ["k1"]
    assert [w.key for w in (await db.due_waits("s3:b", "", 47.0, 10, 10))[0]] == ["k1", "k2", "k3"]
    assert await db.unscheduled_waits("s3:b", "", 10) == [Wait("s3:b", "k4", "run-k4", "edge")]  # untouched


async def test_the_last_key_awaited_under_a_prefix(db: Database):
    await waits(db, "s3:b", "in/a/1", "in/a/2", "in/a-1", "in/b", "inner", "out/z")
    assert await db.last_wait_key("s3:b", "in/a/") == "in/a/2"
    assert await db.last_wait_key("s3:b", "in/") == "in/b"
    assert await db.last_wait_key("s3:b", "in") == "inner"
    assert await db.last_wait_key("s3:b", "") == "out/z"
    assert await db.last_wait_key("s3:b", "none/") is None
    assert await db.last_wait_key("s3:other", "") is None


async def test_a_listing_settles_the_waits_inside_its_span_in_both_orders(db: Database):
    """Byte order: in/a-1 < in/a/1 < in/a/2 < in/b. Tree order ('/' first, a server listing folder
    by folder): in/a/1 < in/a/2 < in/a-1 < in/b."""
    await waits(db, "s3:b", "in/a-1", "in/a/1", "in/a/2", "in/b", "out/x")
    # A listing from in/a/1 to its end answers for every key after it.
    assert await db.settled_waits("s3:b", "in/a/1", None, "in/", 100) == (3, "in/b")
    assert await db.settled_waits("s3:b", "in/a/1", None, "in/", 2) == (2, "in/a/2")  # at most `limit`
    # A page from in/a-1 through in/b: in/a/1 is in its byte span, but before in/a-1 in tree order
    # (a tree-order server listed it before the page began). Settled up to it only.
    assert await db.settled_waits("s3:b", "in/a-1", "in/b", "in/", 100) == (1, "in/a-1")
    # A page through in/a/2 from in/a/1: in order both ways.
    assert await db.settled_waits("s3:b", "in/a/1", "in/a/2", "in/", 100) == (2, "in/a/2")


async def test_a_key_before_the_pages_last_in_bytes_but_after_it_in_tree_order_is_not_settled(db: Database):
    await waits(db, "s3:b", "in/w", "in/x-z", "in/x/y")
    # in/x-z < in/x/y in bytes, but after it in tree order: a tree-order page ending at in/x/y did not reach it.
    assert await db.settled_waits("s3:b", "in/w", "in/x/y", "in/", 100) == (1, "in/w")
    assert await db.settled_waits("s3:b", "in/x/y", None, "in/", 100) == (1, "in/x/y")


async def test_waits_at_the_keys_a_listing_found(db: Database):
    made = await waits(db, "s3:b", "k/B", "k/a", "k/é")
    await waits(db, "s3:c", "k/a")
    found = await db.waits_at("s3:b", ["k/é", "k/a", "k/none", "k/B"])
    assert found == [made[0], made[1], made[2]]  # in byte order
    assert await db.waits_at("s3:b", ["k/none"]) == []


# expiries


async def test_expiries_come_due_oldest_first_claimed_for_a_lease_and_are_dropped_one_by_one(db: Database):
    async with db.transaction() as tx:
        await tx.add_expiries("r1", {"out": 30.0, "": 10.0})
        await tx.add_expiries("r2", {"in": 20.0})
        await tx.add_expiries("r1", {"out": 99.0})  # already set: kept as it was
        await tx.add_expiries("r3", {})
    assert await db.claim_expiries(25.0, 50.0, 10) == [("r1", ""), ("r2", "in")]
    assert await db.claim_expiries(25.0, 50.0, 10) == []  # claimed until 75
    assert await db.claim_expiries(74.0, 50.0, 10) == [("r1", "out")]
    await db.drop_expiry("r2", "in")  # deleted; the others were not (an engine died, a store was down)
    assert await db.claim_expiries(200.0, 50.0, 1) == [("r1", "")]  # due again after the lease
    assert await db.claim_expiries(200.0, 50.0, 10) == [("r1", "out")]


async def test_concurrent_claims_of_expiries_files_and_uploads_never_share_one(db: Database):
    """Four engines sweeping at once, in batches: every due row (object, file, upload) is claimed once in all."""
    async with db.transaction() as tx:
        for i in range(40):
            await tx.add_expiries(f"r{i:02}", {"in": float(i)})
            await tx.insert_file(FileRecord("default", f"k{i:02}", "t", "a", 1, "text/plain", 0.0, float(i)))
            await tx.insert_upload(UploadRecord(f"u{i:02}", "t", "default", f"k{i:02}", "n", 10, 5, 2, 0.0, float(i)))

    async def sweep(claim) -> list:  # type: ignore[no-untyped-def]
        claimed = []
        while batch := await claim(100.0, 1000.0, 3):
            claimed += batch
            await asyncio.sleep(0)
        return claimed

    expiries = await asyncio.gather(*(sweep(db.claim_expiries) for _ in range(4)))
    files = await asyncio.gather(*(sweep(db.claim_files) for _ in range(4)))
    uploads = await asyncio.gather(*(sweep(db.claim_uploads) for _ in range(4)))
    for claimed in (expiries, files, uploads):
        every = [row for batch in claimed for row in batch]
        assert len(every) == 40 and len({repr(r) for r in every}) == 40


async def test_a_run_is_claimed_by_one_transaction_the_others_skip_it(db: Database):
    await insert(db, run("r1"), wake_at=10.0)
    async with db.transaction() as tx:
        assert await tx.claim_run("r1", due=5.0) is None  # not due yet
        claimed = await tx.claim_run("r1", due=10.0)
        assert claimed is not None and claimed.run.id == "r1"
        if db.shared:  # another engine's transaction, meanwhile: skipped, not waited for
            async with db.transaction() as other:
                assert await asyncio.wait_for(other.claim_run("r1"), 2) is None
                assert await asyncio.wait_for(other.claim_run("r1", due=10.0), 2) is None
        await tx.save_run(claimed.run, 20.0)  # the timer was applied: the next one is later
    async with db.transaction() as tx:
        assert await tx.claim_run("r1", due=10.0) is None
        assert (await tx.claim_run("r1")).run.id == "r1"  # type: ignore[union-attr]
        assert await tx.claim_run("missing") is None


# between engines


async def test_the_first_engine_to_ask_leads_until_it_dies(postgres_url: str, tmp_path: Path):
    one, other = (open_database(Config(data_dir=str(tmp_path), database=postgres_url)) for _ in range(2))
    try:
        assert await one.lead("reconciler") and await one.lead("reconciler")
        assert not await other.lead("reconciler") and await other.lead("sweeper")
        key = _lock_key("reconciler") & (2**64 - 1)
        with psycopg.connect(postgres_url, autocommit=True) as admin:  # as if `one` died: its connection ends
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                          " AND classid = %s AND objid = %s", (key >> 32, key & 0xFFFFFFFF))  # fmt: skip
        for _ in range(50):  # the backend ends a moment after it is told to, and its locks with it
            if await other.lead("reconciler"):
                break
            await asyncio.sleep(0.1)
        assert await other.lead("reconciler")
        with pytest.raises(Error) as raised:  # the one whose connection ended is told so, and no longer leads
            await one.lead("reconciler")
        assert raised.value.kind == "unavailable"
        assert not await one.lead("reconciler")  # a new connection: the lead is the other's now
    finally:
        await one.close()
        await other.close()


async def test_published_messages_reach_every_listener_on_the_database(postgres_url: str, tmp_path: Path):
    one, other = (open_database(Config(data_dir=str(tmp_path), database=postgres_url)) for _ in range(2))
    heard: asyncio.Queue[str] = asyncio.Queue()
    ready = asyncio.Event()
    listening = asyncio.create_task(other.listen(heard.put_nowait, ready.set))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        await one.publish(["run:1", "run:2\nrun:3"])
        assert [await asyncio.wait_for(heard.get(), 5) for _ in range(2)] == ["run:1", "run:2\nrun:3"]
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await one.close()
        await other.close()


# the schema


def test_both_backends_have_the_same_migrations():
    names = [m.name for m in migrations("sqlite")]
    assert names == [m.name for m in migrations("postgres")]
    versions = [m.version for m in migrations("sqlite")]
    # Increasing from 1, each once; a number reserved for a change not merged yet may be missing.
    assert versions[0] == 1 and versions == sorted(set(versions))


# failures of the database itself


async def test_lost_connections_fail_one_query_and_the_next_gets_a_new_one(postgres_url: str, tmp_path: Path):
    db = open_database(Config(data_dir=str(tmp_path), database=postgres_url))
    try:
        # a few connections open
        await asyncio.gather(db.mark_clean_stop("local:a"), db.count_waits(), db.count_waits())
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                          " AND pid <> pg_backend_pid()")  # fmt: skip
        with pytest.raises(Error) as caught:
            await db.count_waits()
        assert caught.value.kind == "unavailable" and caught.value.code == "database_unavailable"
        assert "postgresql://postgres@127.0.0.1" in caught.value.message
        assert await db.take_clean_stop("local:a") is True
    finally:
        await db.close()


async def test_a_full_disk_is_insufficient_storage_and_nothing_is_stored(postgres_url: str, tmp_path: Path):
    with psycopg.connect(postgres_url, autocommit=True) as admin:  # the server's answer when it cannot extend a file
        admin.execute("CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                      " RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full';"
                      " END $$")  # fmt: skip
        admin.execute("CREATE TRIGGER disk_full BEFORE INSERT ON expiries FOR EACH ROW EXECUTE FUNCTION disk_full()")
    db = open_database(Config(data_dir=str(tmp_path), database=postgres_url))
    try:
        with pytest.raises(Error) as caught:
            async with db.transaction() as tx:
                await tx.insert_runs([NewRun(run("r1"), "digest", None)])
                await tx.add_expiries("r1", {"out": 1.0})
        assert caught.value.kind == "insufficient_storage"
        assert await db.load_run("r1") is None and await db.count_runs("", None, None) == 0
    finally:
        await db.close()


async def test_no_free_connection_in_time_is_unavailable(postgres_url: str, tmp_path: Path, monkeypatch):
    monkeypatch.setattr("flowengine.persistence.postgres.POOL_TIMEOUT", 0.3)
    db = open_database(Config(data_dir=str(tmp_path), database=postgres_url, database_pool_size=1))
    try:
        async with db.transaction():  # holds the only connection
            with pytest.raises(Error) as caught:
                await db.count_waits()
        assert caught.value.kind == "unavailable"
        assert await db.count_waits() == 0  # free again
    finally:
        await db.close()


async def test_a_teams_listing_and_totals_hold_only_its_runs(db: Database) -> None:
    async with db.transaction() as tx:
        for i in range(6):
            await tx.insert_runs([NewRun(msgspec.structs.replace(run(f"r{i}"), team="ab"[i % 2]), "digest", None)])
    assert [r.id for r in await db.list_runs("a", None, None, 10)] == ["r4", "r2", "r0"]
    assert await db.list_runs("", None, None, 10) == []
    assert [await db.count_runs(team, machine.WAITING, flow) for team in "ab" for flow in ("f", None)] == [3] * 4
    async with db.transaction() as tx:
        stored = (await tx.load_run("r1")).run
        await tx.save_run(msgspec.structs.replace(stored, status=machine.COMPLETE), None)
    assert [await db.count_runs("b", status, None) for status in (machine.WAITING, machine.COMPLETE)] == [2, 1]
    assert await db.count_by_status() == {machine.WAITING: 5, machine.COMPLETE: 1}


async def test_teams_users_members_and_credentials(db: Database) -> None:
    team, user = Team("t1", "acme", 1.0), User("u1", "ann@example.com", 1.0)
    async with db.transaction() as tx:
        await tx.insert_team(team)
        await tx.insert_user(user)
        await tx.put_member("t1", "u1", "member", 2.0)
        await tx.put_member("t1", "u1", "admin", 3.0)  # again: the role changes
    assert await db.team(name="acme") == team and await db.team(id="t1") == team and await db.teams() == [team]
    assert await db.user(email="ann@example.com") == user and await db.member_role("t1", "u1") == "admin"
    assert await db.member_role("t2", "u1") is None and await db.team(name="nope") is None
    key = Credential("c1", "device", "t1", "u1", "laptop", "dk-abcdefgh", "hash1", 5.0, paired_with="c2")
    agent = Credential("c2", "agent", "t1", None, "agent", "ak-abcdefgh", "hash2", 6.0, expires=99.0)
    async with db.transaction() as tx:
        await tx.insert_credential(key)
        await tx.insert_credential(agent)
    assert await db.credential(key_hash="hash1") == key and await db.credential(id="c2") == agent
    assert await db.credentials("t1", None, 10, 0) == [key, agent]
    assert await db.credentials(None, "agent", 10, 0) == [agent] and await db.credentials("t2", None, 10, 0) == []
    filters = [("t1", None), (None, "agent"), ("t1", "device"), ("t2", None)]
    assert [await db.count_credentials(*f) for f in filters] == [2, 1, 1, 0]
    await db.revoke_credentials(["c1", "c2"], 7.0)
    await db.revoke_credentials(["c1"], 8.0)  # revoked once: the first time stays
    await db.touch_credential("c1", 9.0)
    found = await db.credential(id="c1")
    assert (found.revoked, found.last_used) == (7.0, 9.0) and not found.usable(10.0)


async def test_pairings_are_found_confirmed_polled_taken_once_and_swept(db: Database) -> None:
    waiting, old = Pairing("h1", "ABCD2345", 1.0, 301.0, 2), Pairing("h2", "EFGH6789", 1.0, 50.0, 2)
    async with db.transaction() as tx:
        await tx.insert_pairing(waiting)
        await tx.insert_pairing(old)
    with pytest.raises(Error) as taken:  # a user code is one pairing's
        async with db.transaction() as tx:
            await tx.insert_pairing(Pairing("h3", "ABCD2345", 2.0, 302.0, 2))
    assert taken.value.kind == "conflict" and await db.pairing(device_hash="h3") is None
    assert await db.pairing(device_hash="h1") == waiting and await db.pairing(user_code="EFGH6789") == old
    assert await db.pairing(user_code="nope") is None
    await db.polled_pairing("h1", 10.0, 7)
    await db.confirm_pairing("ABCD2345", "t1", "u1", "laptop", 11.0)
    assert await db.pairing(device_hash="h1") == Pairing("h1", "ABCD2345", 1.0, 301.0, 7, 10.0, "t1", "u1", "laptop",
                                                         11.0)  # fmt: skip
    assert [await db.count_pairings(now) for now in (40.0, 100.0, 400.0)] == [2, 1, 0]
    await db.drop_pairings(expired_before=100.0)
    assert await db.pairing(device_hash="h2") is None and await db.pairing(device_hash="h1") is not None
    assert [await db.take_pairing("h1"), await db.take_pairing("h1")] == [True, False]


async def test_files_are_found_by_store_and_key_and_come_due(db: Database) -> None:
    early = FileRecord("default", "inputs/t/a/x/a.png", "t", "a.png", 10, "image/png", 1.0, 5.0)
    late = FileRecord("default", "inputs/t/b/x/b.png", "t", "b.png", 20, "image/png", 2.0, 50.0)
    async with db.transaction() as tx:
        await tx.insert_file(late)
        await tx.insert_file(early)
    assert await db.file("default", early.key) == early and await db.file("other", early.key) is None
    assert await db.claim_files(10.0, 100.0, 10) == [early]
    assert await db.claim_files(10.0, 100.0, 10) == []  # claimed until 110
    await db.drop_file("default", early.key)
    assert await db.claim_files(100.0, 100.0, 10) == [late]


async def test_workflows_keep_every_version_and_teams_see_their_own_and_the_operators(db: Database) -> None:
    ops = WorkflowRecord("w1", "", "resize", 1, "active", 1.0, 1.0, "file:resize.yaml")
    mine = WorkflowRecord("w2", "t1", "mine", 1, "active", 2.0, 2.0, "api")
    theirs = WorkflowRecord("w3", "t2", "theirs", 1, "active", 3.0, 3.0, "api")
    async with db.transaction() as tx:
        for workflow in (mine, ops, theirs):
            await tx.insert_workflow(workflow, f"v1 of {workflow.slug}".encode())
    async with db.transaction() as tx:
        await tx.add_workflow_version("w2", 2, b"v2 of mine", 5.0)
    await db.set_workflow_status("w3", "disabled", 6.0)
    assert await db.workflow(slug="mine") == msgspec.structs.replace(mine, version=2, updated=5.0)
    assert (await db.workflow(id="w3")).status == "disabled" and await db.workflow(slug="nope") is None
    assert await db.workflow_version("w2", 1) == b"v1 of mine" and await db.workflow_version("w2", 2) == b"v2 of mine"
    assert await db.workflow_version("w2", 3) is None
    assert [w.slug for w in await db.workflows("t1", 10, 0)] == ["mine", "resize"]
    assert [w.slug for w in await db.workflows("t1", 1, 1)] == ["resize"]
    assert await db.count_workflows("t1") == 2 and await db.count_workflows("") == 1
    assert [w.slug for w in await db.workflows(None, 10, 0)] == ["mine", "resize", "theirs"]  # the dashboard's operator
    assert await db.count_workflows(None) == 3
    with pytest.raises(Error):  # the slug is unique
        async with db.transaction() as tx:
            await tx.insert_workflow(WorkflowRecord("w4", "t2", "mine", 1, "active", 7.0, 7.0, "api"), b"x")


# tasks


def task(task_id: str, team: str = "t1", status: str = "queued", created: float = 1.0) -> TaskRecord:
    return TaskRecord(task_id, team, "w1", 2, status, 1, b'{"parameters": {"n": 1}}', "agent", "team", "us-east",
                      "exec", "api_key", created)  # fmt: skip


def first_event(task_id: str, status: str = "queued") -> list[TaskEventRow]:
    return [TaskEventRow(1, "status", b'{"task_id": "%s", "status": "%s"}' % (task_id.encode(), status.encode()), 1.0)]


async def insert_tasks(db: Database, *tasks: TaskRecord) -> None:
    """Each task with its run (a run of its team), in one transaction as the engine's group commit does."""
    async with db.transaction() as tx:
        await tx.insert_runs([NewRun(msgspec.structs.replace(run(t.id), team=t.team), "digest", None) for t in tasks])
        await tx.insert_tasks([(t, first_event(t.id, t.status)) for t in tasks])


async def test_a_task_reads_back_as_inserted_with_its_first_events(db: Database) -> None:
    await insert_tasks(db, task("t-a"))
    assert await db.task("t-a") == task("t-a") and await db.task("nope") is None
    assert await db.task_events("t-a", 0) == first_event("t-a") and await db.task_events("t-a", 1) == []
    assert await db.task_state_seq("t-a") == 1 and await db.task_state_seq("nope") == 0


async def test_a_tasks_changes_number_its_events_after_the_last_and_keep_its_first_times(db: Database) -> None:
    await insert_tasks(db, task("t-a"))
    async with db.transaction() as tx:
        await tx.save_task("t-a", TaskChange("running", [("status", b'{"s": "running"}', 2.0)], started=2.0))
    async with db.transaction() as tx:  # a progress report: the status stays, the events go on
        await tx.save_task("t-a", TaskChange("running", [("progress", b'{"p": 0.5}', 3.0),
                                                         ("progress", b'{"p": 0.9}', 3.5)]))  # fmt: skip
    async with db.transaction() as tx:  # a retry's run again: the first start stays
        await tx.save_task("t-a", TaskChange("completed", [("completed", b'{"s": "completed"}', 4.0)], started=3.9,
                                             completed=4.0))  # fmt: skip
    stored = await db.task("t-a")
    assert (stored.status, stored.events, stored.started, stored.completed) == ("completed", 5, 2.0, 4.0)
    events = await db.task_events("t-a", 1)
    assert [(e.seq, e.kind, e.at) for e in events] == [(2, "status", 2.0), (3, "progress", 3.0),
                                                        (4, "progress", 3.5), (5, "completed", 4.0)]  # fmt: skip
    assert events[1].data == b'{"p": 0.5}' and [e.seq for e in await db.task_events("t-a", 3)] == [4, 5]
    assert await db.task_state_seq("t-a") == 5


async def test_a_task_change_rolled_back_leaves_no_event(db: Database) -> None:
    await insert_tasks(db, task("t-a"))
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.save_task("t-a", TaskChange("running", [("status", b"{}", 2.0)], started=2.0))
            raise RuntimeError
    assert (await db.task("t-a")) == task("t-a") and await db.task_events("t-a", 1) == []
    assert await db.count_tasks("t1", "running") == 0 and await db.count_tasks("t1", "queued") == 1


async def test_tasks_list_newest_first_with_their_runs_by_team_and_status_and_are_counted(db: Database) -> None:
    await insert_tasks(db, *(task(f"T{i:02d}", team="ab"[i % 2], status="queued") for i in range(10)))
    async with db.transaction() as tx:
        for task_id in ("T02", "T04"):
            await tx.save_task(task_id, TaskChange("completed", [("completed", b"{}", 2.0)], completed=2.0))
    listed = await db.list_tasks("a", None, 3, 0)
    assert [row.task.id for row in listed] == ["T08", "T06", "T04"]
    assert [row.run.id for row in listed] == ["T08", "T06", "T04"] and listed[0].run.team == "a"
    assert [row.task.id for row in await db.list_tasks("a", None, 3, 3)] == ["T02", "T00"]
    assert [row.task.id for row in await db.list_tasks("a", "completed", 10, 0)] == ["T04", "T02"]
    assert [row.task.id for row in await db.list_tasks("a", "queued", 10, 1)] == ["T06", "T00"]
    assert await db.list_tasks("c", None, 10, 0) == [] and await db.list_tasks("b", "completed", 10, 0) == []
    totals = {(team, status): await db.count_tasks(team, status)
              for team in "abc" for status in (None, "queued", "completed", "failed")}  # fmt: skip
    assert totals == {("a", None): 5, ("a", "queued"): 3, ("a", "completed"): 2, ("a", "failed"): 0,
                      ("b", None): 5, ("b", "queued"): 5, ("b", "completed"): 0, ("b", "failed"): 0,
                      ("c", None): 0, ("c", "queued"): 0, ("c", "completed"): 0, ("c", "failed"): 0}  # fmt: skip
    # The dashboard's: every team's (None), and one workflow's.
    await insert_tasks(db, msgspec.structs.replace(task("T10", team="a"), workflow="w9"))
    assert [row.task.id for row in await db.list_tasks("a", None, 10, 0, workflow="w9")] == ["T10"]
    assert [row.task.id for row in await db.list_tasks(None, "queued", 10, 0, workflow="w9")] == ["T10"]
    assert [row.task.id for row in await db.list_tasks("a", "completed", 10, 0, workflow="w1")] == ["T04", "T02"]
    assert await db.list_tasks("b", None, 10, 0, workflow="w9") == []
    assert [row.task.id for row in await db.list_tasks(None, None, 3, 1)] == ["T09", "T08", "T07"]
    assert await db.count_tasks(None, None) == 11 and await db.count_tasks(None, "completed") == 2


async def test_task_counts_stay_right_under_concurrent_changes(db: Database) -> None:
    """Tasks created and moved on from many transactions at once (on PostgreSQL, many connections):
    no count is lost, and runs' and tasks' counters never deadlock."""
    await insert_tasks(db, *(task(f"base{i:02d}") for i in range(20)))

    async def finish(task_id: str) -> None:
        for status in ("running", "completed"):
            async with db.transaction() as tx:
                row = await tx.load_run(task_id)
                await tx.save_run(msgspec.structs.replace(row.run, status=machine.RUNNING), None)
                await tx.save_task(task_id, TaskChange(status, [("status", b"{}", 2.0)]))

    await asyncio.gather(*(finish(f"base{i:02d}") for i in range(20)),
                         *(insert_tasks(db, task(f"new{n:02d}", status="pending")) for n in range(20)))  # fmt: skip
    assert [await db.count_tasks("t1", s) for s in (None, "pending", "completed", "queued")] == [40, 20, 20, 0]
    assert [(await db.task(f"base{i:02d}")).events for i in range(20)] == [3] * 20


async def test_an_idempotency_key_is_the_first_claims_until_it_is_old(db: Database) -> None:
    first = IdempotencyKey("t1", "key-1", "task-1", "fp-1", 10.0)
    async with db.transaction() as tx:
        assert await tx.claim_idempotency_key(first, since=0.0)
        assert not await tx.claim_idempotency_key(IdempotencyKey("t1", "key-1", "task-2", "fp-2", 11.0), since=0.0)
    assert await db.idempotency_key("t1", "key-1", since=5.0) == first
    assert await db.idempotency_key("t2", "key-1", since=5.0) is None  # another team's key is another key
    assert await db.idempotency_key("t1", "key-1", since=10.5) is None  # too old: as if gone
    later = IdempotencyKey("t1", "key-1", "task-3", "fp-3", 20.0)
    async with db.transaction() as tx:
        assert await tx.claim_idempotency_key(later, since=10.5)  # in place of the old one
    assert await db.idempotency_key("t1", "key-1", since=0.0) == later


async def test_concurrent_claims_of_one_idempotency_key_leave_it_to_the_first(db: Database) -> None:
    claims = [IdempotencyKey("t1", "k", f"task-{i}", "fp", 10.0) for i in range(8)]

    async def claim(key: IdempotencyKey) -> bool:
        async with db.transaction() as tx:
            won = await tx.claim_idempotency_key(key, since=0.0)
            await asyncio.sleep(0.01)  # hold the transaction open: the others meet it
            return won

    won = await asyncio.gather(*(claim(c) for c in claims))
    assert won.count(True) == 1
    assert (await db.idempotency_key("t1", "k", 0.0)).task == claims[won.index(True)].task


async def test_old_idempotency_keys_are_dropped_oldest_first_in_batches(db: Database) -> None:
    async with db.transaction() as tx:
        for i in range(5):
            await tx.claim_idempotency_key(IdempotencyKey("t1", f"k{i}", f"task-{i}", "fp", float(i)), since=0.0)
    assert await db.drop_idempotency_keys(before=3.5, limit=2) == 2
    assert await db.idempotency_key("t1", "k0", 0.0) is None and await db.idempotency_key("t1", "k2", 0.0)
    assert await db.drop_idempotency_keys(before=3.5, limit=10) == 2
    assert await db.drop_idempotency_keys(before=3.5, limit=10) == 0
    assert await db.idempotency_key("t1", "k4", 0.0) is not None


async def test_multipart_uploads_one_a_key_come_due_and_are_dropped_once(db: Database) -> None:
    early = UploadRecord("u1", "t", "default", "inputs/t/a", "native-1", 10, 5, 2, 1.0, 5.0)
    late = UploadRecord("u2", "t", "default", "inputs/t/b", "native-2", 10, 5, 2, 2.0, 50.0)
    async with db.transaction() as tx:
        await tx.insert_upload(late)
        await tx.insert_upload(early)
    assert await db.upload("u1") == early and await db.upload("nope") is None
    with pytest.raises(Error) as caught:  # a key has one upload under way at most
        async with db.transaction() as tx:
            await tx.insert_upload(msgspec.structs.replace(late, id="u3"))
    assert caught.value.kind == "conflict"
    assert await db.claim_uploads(10.0, 100.0, 10) == [early]
    assert await db.claim_uploads(10.0, 100.0, 10) == []  # claimed until 110
    assert await db.drop_upload("u1") and not await db.drop_upload("u1")
    assert await db.claim_uploads(100.0, 100.0, 10) == [late]


async def test_a_files_retention_can_start_again(db: Database) -> None:
    file = FileRecord("default", "inputs/t/a/x/a.bin", "t", "a.bin", 10, "application/octet-stream", 1.0, 5.0)
    async with db.transaction() as tx:
        await tx.insert_file(file)
        await tx.keep_file("default", file.key, 99.0)
    assert (await db.file("default", file.key)).expires == 99.0 and await db.claim_files(50.0, 10.0, 10) == []


async def test_models_are_kept_by_storage_key_listed_by_team_and_status(db: Database) -> None:
    first = ModelRecord("m1", "t", "SDXL", "checkpoints", "default", "models/t/1", 10, "sha256:aa", "a/b.bin",
                        "active", 1.0, 1.0)  # fmt: skip
    other = msgspec.structs.replace(first, id="m2", storage_key="models/t/2", created=2.0, updated=2.0)
    theirs = msgspec.structs.replace(first, id="m3", team="u", storage_key="models/u/3")
    for model in (first, other, theirs):
        assert await db.put_model(model) == model
    # Again at a key: the metadata changes, the ID and creation stay.
    again = msgspec.structs.replace(first, id="m9", display_name="SDXL base", created=5.0, updated=5.0)
    assert await db.put_model(again) == msgspec.structs.replace(first, display_name="SDXL base", updated=5.0)
    await db.set_model_status("m2", "disabled", 6.0)
    assert (await db.model("m2")).status == "disabled" and await db.model("nope") is None
    assert (await db.model_at("default", "models/t/2")).id == "m2" and await db.model_at("other", "models/t/2") is None
    assert [m.id for m in await db.models("t", None, 10, 0)] == ["m1", "m2"]
    assert [m.id for m in await db.models("t", "active", 10, 0)] == ["m1"]
    assert [m.id for m in await db.models("t", None, 1, 1)] == ["m2"]
    assert (
        await db.count_models("t", None),
        await db.count_models("t", "disabled"),
        await db.count_models("u", None),
    ) == (2, 1, 1)


# the step queue


def attempt(id: str, **fields: object) -> Attempt:
    values: dict = {"run_id": "run", "step": "s", "attempt": 1, "team": "t1", "tool": "exec", "labels": [],
                    "pool": "team", "region": "", "timeout": 60.0, "created": 1.0}  # fmt: skip
    values.update(fields)
    return Attempt(id=id, **values)


async def queued(db: Database, worker: dict, limit: int = 10) -> list[str]:
    found = await db.queued_attempts(
        worker.get("tools", ["exec", "python"]), worker.get("labels", []), worker.get("team"),
        worker.get("community", False), worker.get("region", ""), worker.get("region_before", 0.0), limit,
    )  # fmt: skip
    return [a.id for a in found]


async def test_attempts_are_stored_whole_and_read_back_by_id_and_by_step(db: Database):
    first = attempt("a1", labels=["gpu", "Ä"], region="eu", deadline=9.5)
    async with db.transaction() as tx:
        await tx.insert_attempts([first, attempt("a2", attempt=2), attempt("a3", step="other")])
    assert await db.attempt("a1") == first
    assert await db.attempt("nope") is None
    assert (await db.attempt_of("run", "s", 2)).id == "a2"
    assert await db.attempt_of("run", "s", 3) is None
    changed = queue.end(
        queue.ack(queue.offer(first, Worker(id="w", session="x"), "tok", 2.0, 10.0), 3.0, 30.0), "failed", 4.0
    )
    await db.save_attempt(changed)
    assert await db.attempt("a1") == changed
    assert sorted(a.id for a in await db.open_attempts("run", "s")) == ["a2"]
    assert changed.ended == 4.0
    assert [a.id for a in await db.run_attempts("run")] == ["a3", "a1", "a2"]  # by step ("other" < "s"), attempt
    assert await db.run_attempts("another") == []


async def test_queued_attempts_are_the_oldest_a_worker_may_take_by_tool_labels_team_pool_and_region(db: Database):
    async with db.transaction() as tx:
        await tx.insert_attempts([
            attempt("a-old-comfy", tool="comfyui", created=1.0),
            attempt("b-gpu", labels=["gpu"], created=2.0),
            attempt("c-plain", created=3.0),
            attempt("d-other-team", team="t2", created=4.0),
            attempt("e-other-community", team="t2", pool="community", created=5.0),
            attempt("f-eu", region="eu", created=6.0),
            attempt("g-offered", created=0.5, state="offered"),
        ])  # fmt: skip
    assert await queued(db, {"team": "t1"}) == ["c-plain"]  # f-eu: another region, not waited long enough yet
    assert await queued(db, {"team": "t1", "region_before": 6.0}) == ["c-plain", "f-eu"]
    assert await queued(db, {"team": "t1", "region": "eu"}) == ["c-plain", "f-eu"]
    assert await queued(db, {"team": "t1", "labels": ["gpu", "a100"]}) == ["b-gpu", "c-plain"]
    assert await queued(db, {"team": "t1", "community": True}) == ["c-plain", "e-other-community"]
    assert await queued(db, {"team": "t1", "tools": ["comfyui"]}) == ["a-old-comfy"]
    assert await queued(db, {"team": None}) == ["c-plain", "d-other-team", "e-other-community"]  # the local executor
    assert await queued(db, {"team": None}, limit=1) == ["c-plain"]


async def test_engines_leasing_at_once_never_take_one_attempt_twice(db: Database):
    """Two engines' claims at once share the queue (SKIP LOCKED), and an attempt a transaction has
    read (a report, an expiry: it is about to change) is skipped, not waited for."""
    async with db.transaction() as tx:
        await tx.insert_attempts([attempt(f"a{i}", created=float(i)) for i in range(4)])
    if not db.shared:
        return  # one engine: its transactions take turns
    async with db.transaction() as one, db.transaction() as other:
        assert await one.attempt("a0") is not None
        first = await asyncio.wait_for(other.queued_attempts(["exec"], [], None, False, "", 0.0, 2), 2)
        async with db.transaction() as third:
            second = await asyncio.wait_for(third.queued_attempts(["exec"], [], None, False, "", 0.0, 2), 2)
    assert [a.id for a in first] == ["a1", "a2"] and [a.id for a in second] == ["a3"]


async def test_held_due_and_extended_attempts(db: Database):
    w = Worker(id="agent-1", session="s1")
    offered = queue.offer(attempt("a1"), w, "t", 10.0, 5.0)  # offer expires at 15
    running = queue.ack(queue.offer(attempt("a2"), w, "t", 10.0, 5.0), 11.0, 30.0)  # lease until 41, deadline 101
    waiting = attempt("a3", deadline=20.0)
    async with db.transaction() as tx:
        await tx.insert_attempts([offered, running, waiting, attempt("a4")])
    assert [a.id for a in await db.held_attempts("agent-1", ["offered", "running"])] == ["a1", "a2"]
    assert [a.id for a in await db.held_attempts("agent-1", ["running"])] == ["a2"]
    assert [a.id for a in await db.due_attempts(14.0, 10)] == []
    assert [a.id for a in await db.due_attempts(20.0, 10)] == ["a1", "a3"]
    assert [a.id for a in await db.due_attempts(41.0, 10)] == ["a1", "a2", "a3"]
    await db.extend_leases("agent-1", "other-session", 80.0)
    assert (await db.attempt("a2")).lease_expires == 41.0
    await db.extend_leases("agent-1", "s1", 80.0)
    assert (await db.attempt("a2")).lease_expires == 80.0
    await db.extend_leases("agent-1", "s1", 50.0)  # never shortened
    assert (await db.attempt("a2")).lease_expires == 80.0
    await db.extend_leases("agent-1", "s1", 90.0, ids=["a1", "a9"])  # only those named
    assert (await db.attempt("a2")).lease_expires == 80.0
    await db.extend_leases("agent-1", "s1", 90.0, ids=["a2"])
    assert (await db.attempt("a2")).lease_expires == 90.0
    assert await db.attempts_running() == {"agent-1": ["a2"]}


async def test_agents_are_one_per_team_and_name_and_keep_their_heartbeats_and_counts(db: Database):
    agent = AgentRecord("ag1", "t1", "gpu-box", ["gpu"], ["comfyui"], "eu", 2, True, {"gpu": "A100", "vram": 80},
                        "s1", 5.0, 5.0, 0)  # fmt: skip
    await db.put_agent(agent)
    await db.put_agent(msgspec.structs.replace(agent, session="s2"))
    assert await db.agent(id="ag1") == msgspec.structs.replace(agent, session="s2")
    assert (await db.agent(team="t1", name="gpu-box")).id == "ag1"
    assert await db.agent(team="t2", name="gpu-box") is None
    await db.put_agent(AgentRecord("ag2", "t2", "cpu", [], ["exec"], "", 1, False, {}, "s", 1.0, 1.0, 0))
    assert [a.id for a in await db.agents("t1")] == ["ag1"]
    assert [a.id for a in await db.agents(None)] == ["ag2", "ag1"]
    await db.touch_agent("ag1", 9.0, completed=1)
    await db.touch_agent("ag1", 7.0)  # an older heartbeat arriving late does not move it back
    stored = await db.agent(id="ag1")
    assert (stored.last_heartbeat, stored.tasks_completed) == (9.0, 1)
    await db.set_agent_tools("ag1", "s2", ["exec", "python"])
    await db.set_agent_tools("ag1", "s1", ["nothing"])  # a fenced session's heartbeat: no change
    assert (await db.agent(id="ag1")).tools == ["exec", "python"]


async def test_a_runs_offered_steps_are_those_offered_and_not_acknowledged(db: Database):
    w = Worker(id="agent-1", session="s1")
    async with db.transaction() as tx:
        await tx.insert_attempts([
            queue.offer(attempt("a1", step="b"), w, "t", 1.0, 5.0),
            queue.offer(attempt("a2", step="a"), w, "t", 1.0, 5.0),
            queue.ack(queue.offer(attempt("a3", step="c"), w, "t", 1.0, 5.0), 2.0, 30.0),
            attempt("a4", step="d"),
            queue.offer(attempt("a5", step="e", run_id="other"), w, "t", 1.0, 5.0),
        ])  # fmt: skip
    assert await db.offered_steps("run") == ["a", "b"]
    assert await db.offered_steps("nope") == []


def agent(id: str, team: str = "t1", name: str = "", **fields: object) -> AgentRecord:
    made = AgentRecord(id, team, name or id, ["gpu"], ["comfyui"], "", 2, False, {"gpu": "A100"}, "s", 5.0, 5.0, 0)
    return msgspec.structs.replace(made, **fields)


async def test_agents_list_a_page_by_name_with_the_runs_they_run_now(db: Database):
    for a in (agent("ag1", name="zeta"), agent("ag2", name="alpha"), agent("ag3", name="mid"), agent("ag4", "t2")):
        await db.put_agent(a)
    w1, w2 = Worker(id="ag1", session="s"), Worker(id="ag2", session="s")
    async with db.transaction() as tx:
        await tx.insert_attempts([
            queue.ack(queue.offer(attempt("a2", run_id="r2"), w1, "t", 1.0, 5.0), 2.0, 30.0),
            queue.ack(queue.offer(attempt("a1", run_id="r1"), w1, "t", 1.0, 5.0), 2.0, 30.0),
            queue.offer(attempt("a3", run_id="r3"), w2, "t", 1.0, 5.0),  # offered, not running yet
            queue.end(queue.ack(queue.offer(attempt("a4", run_id="r4"), w2, "t", 1.0, 5.0), 2.0, 30.0), "succeeded",
                      3.0),
        ])  # fmt: skip
    rows = await db.agent_rows("t1", 10, 0)
    running = [RunningStep("r1", "s", 1), RunningStep("r2", "s", 1)]
    assert [(r.agent.name, r.running) for r in rows] == [("alpha", []), ("mid", []), ("zeta", running)]
    assert rows[2].agent == agent("ag1", name="zeta")
    assert [r.agent.name for r in await db.agent_rows("t1", 2, 1)] == ["mid", "zeta"]
    assert await db.agent_rows("t9", 10, 0) == []
    assert [r.agent.name for r in await db.agent_rows(None)] == ["ag4", "alpha", "mid", "zeta"]  # every team's, all
    assert [r.agent.name for r in await db.agent_rows("t1", offset=1)] == ["mid", "zeta"]
    assert (await db.count_agents("t1"), await db.count_agents("t2"), await db.count_agents("t9")) == (3, 1, 0)


async def test_a_task_reads_with_the_agent_its_latest_taken_attempt_went_to(db: Database):
    await insert_tasks(db, task("T1"), task("T2"), task("T3"), task("T4"))
    await db.put_agent(agent("ag1", name="first"))
    await db.put_agent(agent("ag2", name="second"))
    one, two, local = Worker(id="ag1", session="s"), Worker(id="ag2", session="s"), Worker(id="local:x", session="l")
    async with db.transaction() as tx:
        await tx.insert_attempts([
            queue.end(queue.ack(queue.offer(attempt("x1", run_id="T1"), one, "t", 1.0, 5.0), 2.0, 30.0), "expired",
                      3.0),
            queue.ack(queue.offer(attempt("x2", run_id="T1", attempt=2), two, "t", 3.0, 5.0), 4.0, 30.0),
            attempt("x3", run_id="T1", step="later"),  # queued: no worker took it
            queue.offer(attempt("x4", run_id="T2"), one, "t", 1.0, 5.0),
            queue.ack(queue.offer(attempt("x5", run_id="T3"), local, "t", 1.0, 5.0), 2.0, 30.0),  # the engine's own
        ])  # fmt: skip
    found = {row.task.id: row.agent.name if row.agent else None for row in await db.list_tasks("t1", None, 10, 0)}
    assert found == {"T1": "second", "T2": "first", "T3": None, "T4": None}
    row = await db.task_row("T1")
    assert (row.task, row.run.id, row.agent) == (task("T1"), "T1", agent("ag2", name="second"))
    assert (await db.task_row("T4")).agent is None and await db.task_row("nope") is None


# webhooks


def webhook(id: str, team: str = "t1") -> WebhookRecord:
    return WebhookRecord(id, team, "hook", "https://example.com/h", "whsec_AAAA", "task.completed task.failed",
                         "active", 1.0, 1.0)  # fmt: skip


def delivery(id: str, hook: str = "w1", due: float = 10.0) -> DeliveryRecord:
    return DeliveryRecord(id, hook, "task.completed", "task-" + id, b'{"a": 1}', "pending", 0, 0, due, 1.0, 1.0)


async def test_concurrent_claims_never_share_a_delivery_and_a_lease_hides_it_until_it_ends(db: Database):
    async with db.transaction() as tx:
        await tx.insert_webhook(webhook("w1"))
        await tx.insert_deliveries([delivery(f"d{i:03}", due=10.0 + i) for i in range(60)] + [delivery("late", due=99)])
    claims = await asyncio.gather(*(db.claim_deliveries(80.0, 200.0, 7) for _ in range(12)))
    ids = [d.id for claim in claims for d in claim]
    assert sorted(ids) == [f"d{i:03}" for i in range(60)]  # each once, none past `now`
    assert await db.claim_deliveries(199.0, 300.0, 100) == [await db.delivery("late")]  # the leased ones stay hidden
    assert {d.id for d in await db.claim_deliveries(200.0, 400.0, 100)} == set(ids)  # leases over: due again


async def test_attempts_are_recorded_in_order_and_a_delivered_one_stamps_its_webhook(db: Database):
    async with db.transaction() as tx:
        await tx.insert_webhook(webhook("w1"))
        await tx.insert_deliveries([delivery("d1")])
    for n, (status, due) in enumerate([("pending", 20.0), ("delivered", None)], 1):
        async with db.transaction() as tx:
            await tx.record_delivery_attempt(
                DeliveryAttempt("d1", n, 10.0 + n, 500 if due else 200, 0.5, ""), status, due
            )
    found = await db.delivery("d1")
    assert found is not None and (found.status, found.tries, found.attempts, found.due) == ("delivered", 2, 2, None)
    assert found.body == b'{"a": 1}' and isinstance(found.body, bytes)
    assert [(a.n, a.status_code) for a in await db.delivery_attempts(["d1"])] == [(1, 500), (2, 200)]
    assert (await db.webhook("w1")).last_delivered == 12.0  # type: ignore[union-attr]
    async with db.transaction() as tx:
        await tx.resend_delivery("d1", 50.0)
    again = await db.delivery("d1")
    assert again is not None and (again.status, again.tries, again.attempts, again.due) == ("pending", 0, 2, 50.0)


async def test_a_webhook_is_changed_listed_per_team_and_deleted_with_its_deliveries(db: Database):
    async with db.transaction() as tx:
        await tx.insert_webhook(webhook("w1"))
        await tx.insert_webhook(webhook("w2", team="t2"))
        await tx.insert_deliveries([delivery("d1"), delivery("d2", hook="w2")])
        await tx.record_delivery_attempt(DeliveryAttempt("d1", 1, 11.0, None, 1.0, "refused"), "failed", None)
    changed = msgspec.structs.replace(webhook("w1"), secret="whsec_BBBB", status="disabled", updated=5.0)
    async with db.transaction() as tx:
        await tx.update_webhook(changed)
    assert await db.webhooks("t1") == [changed]
    assert [w.id for w in await db.webhooks(None)] == ["w1", "w2"]  # every team's: the operator's dashboard
    assert await db.count_deliveries("w1") == 1 and [d.id for d in await db.deliveries("w2", 10, 0)] == ["d2"]
    async with db.transaction() as tx:
        await tx.delete_webhook("w1")
    assert (
        await db.webhook("w1") is None and await db.delivery("d1") is None and await db.delivery_attempts(["d1"]) == []
    )
    assert await db.delivery("d2") is not None
