"""The one interface every read and write of engine state goes through.

Two implementations: `sqlite.SqliteDatabase` (the embedded default) and, for several engines on one
database, `postgres.PostgresDatabase`; `open_database(config)` opens the one configured. No SQL lives
outside them, and tests/test_persistence_contract.py holds both to the same meaning. Every method is
a coroutine. A change that must be whole is made inside `transaction()`, whose object has the same
methods: inside it, loading a run locks that run against other writers until the commit, so events
on one run never interleave (on SQLite there is one writer anyway). Failures of the database itself are domain errors:
`insufficient_storage` (disk full) or `unavailable` (locked, unreachable).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Literal, Protocol

import msgspec

from flowengine.core.machine import Run
from flowengine.core.queue import Attempt, State
from flowengine.identity.records import Credential, Role, Team, User


class Wait(msgspec.Struct, frozen=True, gc=False):
    location: str  # a store's location ("local:default", "s3:bucket")
    key: str  # the object's full key in that location
    run_id: str
    edge: str


class NewRun(msgspec.Struct, frozen=True, gc=False):
    run: Run
    definition: str
    wake_at: float | None  # machine.next_wake(run)


class RunRow(msgspec.Struct, frozen=True, gc=False):  # see machine.Run
    run: Run
    definition: str  # hash of the flow definition the run follows


MAX_KEY = "\U0010ffff"  # after every key, as far as a comparison goes


def prefix_end(prefix: str) -> str:
    """The least string after every string that starts with `prefix` (in code point order, which is
    UTF-8's byte order: SQLite's, and PostgreSQL's with COLLATE "C")."""
    stem = prefix.rstrip(MAX_KEY)
    if not stem:
        return MAX_KEY
    after = ord(stem[-1]) + 1
    return stem[:-1] + chr(0xE000 if 0xD800 <= after <= 0xDFFF else after)  # past the surrogates: not UTF-8


class FileRecord(msgspec.Struct, frozen=True):
    """A file a team presigned an upload for (`POST /api/v1/r/files/presign`), by its key in the files store."""

    store: str
    key: str  # the file_key clients pass as a file parameter
    team: str
    name: str
    size: int  # declared, and signed into the upload URL as Content-Length
    content_type: str
    created: float
    expires: float  # when the sweeper deletes the object (input_retention after the presign)


class WorkflowRecord(msgspec.Struct, frozen=True):
    """A workflow as stored; each version's body (a prepared `core.workflows.WorkflowIn`, JSON) apart."""

    id: str
    team: str  # '' for an operator's (declared in a flow file): every team's to see and run
    slug: str  # unique
    version: int  # the current one
    status: Literal["active", "disabled"]
    created: float
    updated: float
    source: str  # "file:<flow file>" (the operator's) or "api" (a team's)


class AgentRecord(msgspec.Struct, frozen=True):
    """An agent as registered (one per team and name); its session changes with each registration."""

    id: str
    team: str
    name: str
    labels: list[str]
    tools: list[str]
    region: str
    capacity: int
    community: bool
    system: dict[str, str | int | float | bool | None]  # GPU model, VRAM, OS, versions: as the agent says
    session: str
    last_heartbeat: float
    connected_at: float
    tasks_completed: int


ATTEMPT_FIELDS = [f.name for f in msgspec.structs.fields(Attempt)]  # the attempts table's columns, in order
ATTEMPT_COLUMNS = ", ".join(ATTEMPT_FIELDS)
AGENT_FIELDS = [f.name for f in msgspec.structs.fields(AgentRecord)]
AGENT_COLUMNS = ", ".join(AGENT_FIELDS)
_LABELS = ATTEMPT_FIELDS.index("labels")
_encode = msgspec.json.Encoder().encode


def attempt_row(attempt: Attempt) -> tuple:
    row = list(msgspec.structs.astuple(attempt))
    row[_LABELS] = _encode(row[_LABELS]).decode()
    return tuple(row)


def attempt_from(row: tuple) -> Attempt:
    values = list(row)
    values[_LABELS] = msgspec.json.decode(values[_LABELS])
    return Attempt(**dict(zip(ATTEMPT_FIELDS, values, strict=True)))


def agent_row(agent: AgentRecord) -> tuple:
    return tuple(_encode(v).decode() if isinstance(v, list | dict) else v for v in msgspec.structs.astuple(agent))


def agent_from(row: tuple) -> AgentRecord:
    values = dict(zip(AGENT_FIELDS, row, strict=True))
    for name in ("labels", "tools", "system"):
        values[name] = msgspec.json.decode(values[name])
    values["community"] = bool(values["community"])
    return AgentRecord(**values)


class Queries(Protocol):
    # the engine's own state
    async def mark_clean_stop(self) -> None: ...

    async def take_clean_stop(self) -> bool:
        """Whether the last engine on this database stopped cleanly; the next start has to ask anew."""
        ...

    # definitions: flows as stored, by the hash of their encoding
    async def put_definition(self, digest: str, body: bytes) -> None: ...

    async def definition(self, digest: str) -> bytes: ...

    # runs
    async def insert_runs(self, rows: list[NewRun]) -> None:
        """New runs, counted (see count_runs) in the same transaction."""
        ...

    async def save_run(self, run: Run, wake_at: float | None) -> None: ...

    async def load_run(self, run_id: str) -> RunRow | None:
        """The run as committed; inside a transaction, locked until it ends."""
        ...

    async def list_runs(
        self,
        team: str,
        status: str | None,
        flow: str | None,
        limit: int,
        *,
        before: str | None = None,
        offset: int = 0,
    ) -> list[Run]:
        """A team's runs ('' for those of no team), newest first (by ID); `before`: only those whose
        ID sorts before it (a page after another, at the cost of the first); `offset` skips rows one
        by one."""
        ...

    async def count_runs(self, team: str, status: str | None, flow: str | None) -> int:
        """How many runs match, from counters: the cost does not grow with the runs."""
        ...

    async def count_by_status(self) -> dict[str, int]: ...

    async def last_run_id(self) -> str | None: ...

    async def runs_with_status(self, status: str, after: str, until: str, limit: int) -> list[RunRow]:
        """Up to `limit` runs with that status and an ID in (after, until], in ID order: one batch of a scan."""
        ...

    async def due_runs(self, now: float, limit: int = 500) -> list[str]:
        """Runs whose next timer (TTL, retry) is due by `now`."""
        ...

    async def next_wake(self) -> float | None: ...

    # waits: which run's edge an object key fills
    async def claim_waits(self, waits: list[tuple[Wait, float | None]]) -> Wait | None:
        """Store waits, each with when the reconciler should first look (None: never). If a key is
        awaited already, store none of them and return the wait that collided."""
        ...

    async def wait_for(self, location: str, key: str) -> Wait | None: ...

    async def drop_waits(self, waits: list[Wait]) -> None: ...

    async def count_waits(self) -> int: ...

    async def wait_locations(self) -> list[str]:
        """The locations anything waits in (a few)."""
        ...

    async def unscheduled_waits(self, location: str, after: str, limit: int) -> list[Wait]:
        """Waits the reconciler never asks about (embedded-store uploads), by key after `after`: one batch."""
        ...

    # the reconciler's walk through a location's waits, in key order (see runtime/landing.py)
    async def due_waits(
        self, location: str, after: str, now: float, limit: int, scan: int
    ) -> tuple[list[Wait], str | None]: ...

    async def last_wait_key(self, location: str, prefix: str) -> str | None: ...

    async def settled_waits(
        self, location: str, first: str, last: str | None, prefix: str, limit: int
    ) -> tuple[int, str | None]: ...

    async def waits_at(self, location: str, keys: list[str]) -> list[Wait]: ...

    async def back_off_waits(
        self, location: str, first: str, last: str, now: float, base: float, most: float
    ) -> None: ...

    # expiries: when a run's object is past retention and is to be deleted
    async def add_expiries(self, run_id: str, expiries: dict[str, float]) -> None: ...

    async def due_expiries(self, now: float, limit: int) -> list[tuple[str, str]]: ...

    async def drop_expiry(self, run_id: str, edge: str) -> None: ...

    # identity: teams, users, members, credentials (identity/directory.py decides; this stores)
    async def insert_team(self, team: Team) -> None: ...

    async def team(self, *, id: str | None = None, name: str | None = None) -> Team | None: ...

    async def teams(self) -> list[Team]: ...

    async def insert_user(self, user: User) -> None: ...

    async def user(self, *, id: str | None = None, email: str | None = None) -> User | None: ...

    async def put_member(self, team: str, user: str, role: Role, created: float) -> None: ...

    async def member_role(self, team: str, user: str) -> Role | None: ...

    async def insert_credential(self, credential: Credential) -> None: ...

    async def credential(self, *, id: str | None = None, key_hash: str | None = None) -> Credential | None: ...

    async def credentials(self, team: str | None, kind: str | None, limit: int, offset: int) -> list[Credential]:
        """Oldest first; None: any team, any kind."""
        ...

    async def revoke_credentials(self, ids: list[str], at: float) -> None: ...

    async def touch_credential(self, id: str, at: float) -> None: ...

    # files presigned for the workflow/task API
    async def insert_file(self, file: FileRecord) -> None: ...

    async def file(self, store: str, key: str) -> FileRecord | None: ...

    async def due_files(self, now: float, limit: int) -> list[FileRecord]: ...

    async def drop_file(self, store: str, key: str) -> None: ...

    # workflows: immutable versions, the current one named by the workflow's row
    async def insert_workflow(self, workflow: WorkflowRecord, body: bytes) -> None:
        """A new workflow, its version `workflow.version` having `body`."""
        ...

    async def workflow(self, *, id: str | None = None, slug: str | None = None) -> WorkflowRecord | None: ...

    async def workflow_version(self, workflow: str, version: int) -> bytes | None: ...

    async def add_workflow_version(self, workflow: str, version: int, body: bytes, at: float) -> None:
        """A new version, which becomes the current one."""
        ...

    async def set_workflow_status(self, workflow: str, status: str, at: float) -> None: ...

    async def workflows(self, team: str, limit: int, offset: int) -> list[WorkflowRecord]:
        """The workflows a team sees: its own and the operator's, by slug."""
        ...

    async def count_workflows(self, team: str) -> int: ...

    # the step queue: attempts (core/queue.py decides every change; this stores)
    async def insert_attempts(self, attempts: list[Attempt]) -> None: ...

    async def save_attempt(self, attempt: Attempt) -> None:
        """Write every field of an attempt that exists."""
        ...

    async def attempt(self, id: str) -> Attempt | None: ...

    async def attempt_of(self, run_id: str, step: str, attempt: int) -> Attempt | None:
        """The queue's row for that attempt of that step of that run (the latest, if there are several)."""
        ...

    async def open_attempts(self, run_id: str, step: str) -> list[Attempt]:
        """The step's attempts not done yet."""
        ...

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
        """The oldest queued attempts a worker may take: a tool among `tools`, every label among `labels`,
        of `team` (or of the community pool if `community`; None: of any team), and of no region, the
        worker's `region`, or created by `region_before`. Inside a transaction they stay the caller's
        until it ends; PostgreSQL skips rows another transaction holds."""
        ...

    async def held_attempts(self, worker: str, states: list[State]) -> list[Attempt]:
        """A worker's attempts in those states (offered, running)."""
        ...

    async def due_attempts(self, now: float, limit: int) -> list[Attempt]:
        """Attempts whose offer, lease or deadline has passed by `now`."""
        ...

    async def extend_leases(self, worker: str, session: str, until: float, ids: list[str] | None = None) -> None:
        """Every running lease of that worker's session (of those `ids`, if given) now lasts until `until`."""
        ...

    async def attempts_running(self) -> dict[str, list[str]]:
        """Running attempts' ids by worker."""
        ...

    # agents
    async def put_agent(self, agent: AgentRecord) -> None:
        """Insert or replace, by id."""
        ...

    async def agent(self, *, id: str | None = None, team: str = "", name: str = "") -> AgentRecord | None:
        """By id, or by team and name."""
        ...

    async def agents(self, team: str | None) -> list[AgentRecord]:
        """A team's agents (None: every team's), by name."""
        ...

    async def touch_agent(self, id: str, at: float, completed: int = 0) -> None:
        """A heartbeat at `at`; `completed` more tasks done."""
        ...


class Database(Queries, Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Queries]:
        """All or nothing: commits when the block ends, rolls back if it raises. No I/O other than
        the database's inside it: it holds locks (and, on SQLite, the one connection)."""
        ...

    async def housekeeping(self) -> None:
        """What the database needs now and then (SQLite: copy the WAL into the file); the engine
        calls it every second."""
        ...

    async def close(self) -> None: ...
