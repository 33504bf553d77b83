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

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

import msgspec

from flowengine.core.machine import Run
from flowengine.core.queue import Attempt, State
from flowengine.identity.records import Credential, Pairing, Role, Team, User


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


def clean_stop_name(engine: str) -> str:
    """The `engine_state` row saying that `engine` stopped cleanly."""
    return f"clean_stop:{engine}"


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


class UploadRecord(msgspec.Struct, frozen=True):
    """A multipart upload under way (`POST /api/v1/uploads/multipart/initiate`) to a file's key."""

    id: str  # the engine's (the upload_id clients name)
    team: str
    store: str
    key: str
    native_id: str  # the store's own upload ID
    file_size: int
    part_size: int  # every part's but the last
    part_count: int
    created: float
    expires: float  # when the sweeper aborts it, if it is not complete by then


class ModelRecord(msgspec.Struct, frozen=True):
    """A model file a team registered (`POST /api/v1/models`); agents sync the active ones."""

    id: str
    team: str
    display_name: str
    model_type: str
    store: str
    storage_key: str
    file_size: int
    file_hash: str  # sha256:<hex>
    model_path: str
    status: Literal["active", "disabled"]
    created: float
    updated: float


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


class TaskRecord(msgspec.Struct, frozen=True):
    """A task: a run started through the workflow/task API (its id is the run's), and what the caller
    asked for. `status` and `events` follow the run (`save_task`, in the transaction of each change)."""

    id: str
    team: str
    workflow: str
    version: int  # the workflow's version it runs
    status: str  # core.tasks.TaskStatus
    events: int  # the seq of its last event
    body: bytes  # the resolved parameters and the patched graph (runtime/tasks.TaskBody), JSON
    dispatch_target: str
    target_pool: str
    submitter_region: str
    tool_type: str
    created_via: str  # jwt | api_key | device
    created: float
    started: float | None = None  # when it first ran
    completed: float | None = None  # when it ended


class TaskEventRow(msgspec.Struct, frozen=True, gc=False):
    """One server-sent event of a task: `seq` is its SSE id, from 1 per task."""

    seq: int
    kind: str  # status | progress | completed | failed | cancelled
    data: bytes  # one line of JSON
    at: float


class TaskChange(msgspec.Struct, frozen=True, gc=False):
    """What one change of a task's run does to the task: its status, the events it adds (their seqs
    follow the task's last), and the times it first ran and ended, once known (None: unchanged)."""

    status: str
    events: list[tuple[str, bytes, float]]  # (kind, one line of JSON, at)
    started: float | None = None
    completed: float | None = None


class TaskRow(msgspec.Struct, frozen=True, gc=False):
    """A task with its run, and the agent its latest attempt that a worker took went to (None: the
    engine's own executor, or no worker took one yet), as a listing reads them."""

    task: TaskRecord
    run: Run
    agent: AgentRecord | None = None


class IdempotencyKey(msgspec.Struct, frozen=True):
    """An `Idempotency-Key` a team sent with a task submission, and the task it made."""

    team: str
    key: str
    task: str
    fingerprint: str  # of the request: the same key with another request is refused
    created: float


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
    system: dict[str, Any]  # GPU model, VRAM, OS, versions: as the agent says (runtime/agents.System)
    session: str
    last_heartbeat: float
    connected_at: float
    tasks_completed: int


ATTEMPT_FIELDS = [f.name for f in msgspec.structs.fields(Attempt)]  # the attempts table's columns, in order
ATTEMPT_COLUMNS = ", ".join(ATTEMPT_FIELDS)
AGENT_FIELDS = [f.name for f in msgspec.structs.fields(AgentRecord)]
AGENT_COLUMNS = ", ".join(AGENT_FIELDS)
_LABELS = ATTEMPT_FIELDS.index("labels")
AGENT_COLUMNS_OF_G = ", ".join(f"g.{name}" for name in AGENT_FIELDS)
# A task (t), its run (r) and its agent (g): the one its latest attempt that a worker took went to. One
# query reads a page of them; each row is the task's columns, the run's document, the agent's columns.
TASK_ROW_SELECT = (
    f"SELECT {', '.join(f't.{f.name}' for f in msgspec.structs.fields(TaskRecord))}, r.doc, {AGENT_COLUMNS_OF_G}"
    " FROM tasks t JOIN runs r ON r.id = t.id LEFT JOIN agents g ON g.id = (SELECT a.worker FROM attempts a"
    " WHERE a.run_id = t.id AND a.worker != '' ORDER BY a.id DESC LIMIT 1)"
)
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
    return tuple(agent_json(v) if isinstance(v, list | dict) else v for v in msgspec.structs.astuple(agent))


def agent_json(value: list | dict) -> str:
    """An agent's list or dict column (labels, tools, system): JSON text."""
    return _encode(value).decode()


def queued_attempts_query(
    p: str,
    tool_in: str,
    labels_within: str,
    tools: list[str],
    labels: list[str],
    team: str | None,
    community: bool,
    region: str,
    region_before: float,
    limit: int,
    claim: str = "",
) -> tuple[str, list[object]]:
    """The routing query of `queued_attempts` and its parameters, for both databases: `p` is the driver's
    placeholder; `tool_in` and `labels_within` test a column against a JSON array (the tools, the labels) as
    the database can; `claim` takes the rows (PostgreSQL's SKIP LOCKED)."""
    where = ["state = 'queued'", tool_in, labels_within, f"(region = '' OR region = {p} OR created <= {p})"]
    params: list[object] = [_encode(tools).decode(), _encode(labels).decode(), region, region_before]
    if team is not None:
        where.append(f"(team = {p} OR (pool = 'community' AND {p}))")
        params += [team, community]
    query = f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE {' AND '.join(where)} ORDER BY created, id LIMIT {p}{claim}"
    return query, [*params, limit]


def agent_from(row: tuple) -> AgentRecord:
    values = dict(zip(AGENT_FIELDS, row, strict=True))
    for name in ("labels", "tools", "system"):
        values[name] = msgspec.json.decode(values[name])
    values["community"] = bool(values["community"])
    return AgentRecord(**values)


def task_agent_from(row: tuple) -> AgentRecord | None:
    """The agent's columns of a TASK_ROW_SELECT row: None when the task has no agent."""
    return agent_from(row) if row[0] is not None else None


class RunningStep(msgspec.Struct, frozen=True, array_like=True):
    """An attempt an agent runs now, as its listing shows it (array-like: the queries build it as a JSON array)."""

    run_id: str
    step: str
    attempt: int


class AgentRow(msgspec.Struct, frozen=True):
    """An agent, and the attempts it runs now (by lease id), as a listing reads them."""

    agent: AgentRecord
    running: list[RunningStep]


class WebhookRecord(msgspec.Struct, frozen=True):
    """A team's webhook: where task events of the kinds it names are POSTed, signed with its secret."""

    id: str
    team: str
    display_name: str
    url: str
    secret: str  # whsec_<base64 of the key's bytes>; a rotation replaces it at once
    events: str  # space-separated event types (task.completed task.failed)
    status: Literal["active", "disabled"]
    created: float
    updated: float
    last_delivered: float | None = None


class DeliveryRecord(msgspec.Struct, frozen=True):
    """One event for one webhook, sent on every attempt under its id (the `webhook-id` header). A team
    webhook's body is fixed when made (the run change's transaction); a flow-API run's (`url` set,
    `webhook` '') is the run document, rendered at each attempt."""

    id: str
    webhook: str  # a team webhook's id; '' for a flow-API run's delivery
    event: str  # task.completed | task.failed | run.completed | run.error | run.stopped
    task: str  # the run's id
    body: bytes  # empty for a run's delivery
    status: Literal["pending", "delivered", "failed"]
    tries: int  # attempts since it was made or re-sent: the retry schedule's position
    attempts: int  # attempts ever
    due: float | None  # when a pending one is sent next
    created: float
    updated: float
    url: str | None = None  # a flow-API run's Webhook; None: the team webhook's URL


class DeliveryAttempt(msgspec.Struct, frozen=True):
    delivery: str
    n: int  # from 1 per delivery
    at: float
    status_code: int | None  # none: no answer (refused, timed out, unreachable, refused by the address rules)
    latency: float  # seconds
    error: str


class Queries(Protocol):
    # the engine's own state
    async def mark_clean_stop(self, engine: str) -> None: ...

    async def take_clean_stop(self, engine: str) -> bool:
        """Whether `engine` (one of the engines on this database, by its node id) stopped cleanly last
        time; its next start has to ask anew. Each engine has its own mark: on a shared database one
        engine's clean stop says nothing of another's crash."""
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
        team: str | None,
        status: str | None,
        flow: str | None,
        limit: int,
        *,
        before: str | None = None,
        after: str | None = None,
        offset: int = 0,
    ) -> list[Run]:
        """A team's runs ('' for those of no team; None: every team's), newest first (by ID);
        `before`: only those whose ID sorts before it (a page after another, at the cost of the
        first); `after`: only those whose ID sorts after it; `offset` skips rows one by one."""
        ...

    async def count_runs(self, team: str | None, status: str | None, flow: str | None) -> int:
        """How many runs match (team None: of every team), from counters: the cost does not grow with the runs."""
        ...

    async def count_by_status(self) -> dict[str, int]: ...

    async def last_run_id(self) -> str | None: ...

    async def runs_with_status(self, status: str, after: str, until: str, limit: int) -> list[RunRow]:
        """Up to `limit` runs with that status and an ID in (after, until], in ID order: one batch of a scan."""
        ...

    async def due_runs(self, now: float, limit: int = 500) -> list[str]:
        """Runs whose next timer (TTL, retry) is due by `now`."""
        ...

    async def claim_run(self, run_id: str, due: float | None = None) -> RunRow | None:
        """Inside a transaction: the run, locked as `load_run` locks it, unless another transaction
        holds it (`SKIP LOCKED`: another engine is applying an event to it); with `due`, only if its
        timer is due by then. None: leave it, another engine has it (or had it, and it is no longer due)."""
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

    async def claim_expiries(self, now: float, lease: float, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` expiries due by `now`, oldest first, each put off until `now + lease`: the
        claimer drops each once its object is deleted, and one it could not delete comes due again
        after the lease (as do those of an engine that died meanwhile). Rows another transaction is
        claiming are skipped (`SKIP LOCKED`), so two engines never claim one."""
        ...

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

    async def count_credentials(self, team: str | None, kind: str | None) -> int: ...

    async def revoke_credentials(self, ids: list[str], at: float) -> None: ...

    async def touch_credential(self, id: str, at: float) -> None: ...

    # devices waiting to be paired (identity/pairing.py decides; this stores)
    async def insert_pairing(self, pairing: Pairing) -> None:
        """A conflict error when its user code is taken."""
        ...

    async def pairing(self, *, device_hash: str | None = None, user_code: str | None = None) -> Pairing | None: ...

    async def confirm_pairing(self, user_code: str, team: str, user: str, device_name: str, at: float) -> None: ...

    async def polled_pairing(self, device_hash: str, at: float, interval: int) -> None: ...

    async def take_pairing(self, device_hash: str) -> bool:
        """Delete it; whether this call did (of two at once, one does)."""
        ...

    async def count_pairings(self, now: float) -> int:
        """Those not yet expired."""
        ...

    async def drop_pairings(self, expired_before: float) -> None: ...

    # files presigned for the workflow/task API
    async def insert_file(self, file: FileRecord) -> None: ...

    async def file(self, store: str, key: str) -> FileRecord | None: ...

    async def claim_files(self, now: float, lease: float, limit: int) -> list[FileRecord]:
        """Files past their retention by `now`, claimed as `claim_expiries` claims expiries (their
        `expires` put off until `now + lease`; they come as they were before the claim)."""
        ...

    async def drop_file(self, store: str, key: str) -> None: ...

    async def keep_file(self, store: str, key: str, expires: float) -> None:
        """Keep a file until `expires` (a multipart upload completed: its retention counts from then)."""
        ...

    # multipart uploads under way
    async def insert_upload(self, upload: UploadRecord) -> None:
        """A conflict if the key has an upload under way already."""
        ...

    async def upload(self, id: str) -> UploadRecord | None: ...

    async def claim_uploads(self, now: float, lease: float, limit: int) -> list[UploadRecord]:
        """Uploads left incomplete past their time by `now`, claimed as `claim_files` claims files."""
        ...

    async def drop_upload(self, id: str) -> bool:
        """Whether it was there: of two callers dropping one upload, one is told it did."""
        ...

    # model files
    async def put_model(self, model: ModelRecord) -> ModelRecord:
        """The model, or the one already registered at its storage key with this one's metadata (its
        ID and creation kept): what is stored now."""
        ...

    async def model(self, id: str) -> ModelRecord | None: ...

    async def model_at(self, store: str, storage_key: str) -> ModelRecord | None: ...

    async def models(self, team: str, status: str | None, limit: int, offset: int) -> list[ModelRecord]:
        """A team's models, oldest first."""
        ...

    async def count_models(self, team: str, status: str | None) -> int: ...

    async def set_model_status(self, id: str, status: str, at: float) -> None: ...

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

    async def workflows(self, team: str | None, limit: int, offset: int) -> list[WorkflowRecord]:
        """The workflows a team sees: its own and the operator's, by slug (None: every team's)."""
        ...

    async def count_workflows(self, team: str | None) -> int: ...

    # tasks: runs started through the workflow/task API, their events, and idempotency keys
    async def insert_tasks(self, tasks: list[tuple[TaskRecord, list[TaskEventRow]]]) -> None:
        """New tasks (each with its first events, numbered 1 to `events`), counted by status in the
        same transaction. Their runs are inserted in the same transaction, before them."""
        ...

    async def save_task(self, task: str, change: TaskChange) -> None:
        """A change of the task's run: its status (the counters follow), its new events (numbered
        after its last), when it first ran and when it ended (kept once set)."""
        ...

    async def task(self, task: str) -> TaskRecord | None: ...

    async def task_row(self, task: str) -> TaskRow | None:
        """The task with its run and its agent, as `list_tasks` reads each."""
        ...

    async def list_tasks(self, team: str | None, status: str | None, limit: int, offset: int,
                         workflow: str | None = None) -> list[TaskRow]:  # fmt: skip
        """A team's tasks (None: every team's; with a status and of a workflow, if given), newest first
        (by ID), each with its run and its agent: one query a page."""
        ...

    async def count_tasks(self, team: str | None, status: str | None) -> int:
        """How many tasks match, from counters: the cost does not grow with the tasks."""
        ...

    async def task_events(self, task: str, after: int) -> list[TaskEventRow]:
        """The task's events with a seq above `after`, in order."""
        ...

    async def task_state_seq(self, task: str) -> int:
        """The seq of the task's last event that says its status (any but `progress`); 0: none."""
        ...

    async def idempotency_key(self, team: str, key: str, since: float) -> IdempotencyKey | None:
        """The team's key, if it was made at `since` or later (an older one counts as gone)."""
        ...

    async def claim_idempotency_key(self, claim: IdempotencyKey, since: float) -> bool:
        """Store the key, in place of one made before `since`; False if the team has it already
        (made at `since` or later), and nothing is stored."""
        ...

    async def drop_idempotency_keys(self, before: float, limit: int) -> int:
        """Drop up to `limit` keys made before `before`, oldest first; returns how many."""
        ...

    # the step queue: attempts (core/queue.py decides every change; this stores)
    async def insert_attempts(self, attempts: list[Attempt]) -> None: ...

    async def save_attempt(self, attempt: Attempt) -> None:
        """Write every field of an attempt that exists."""
        ...

    async def attempt(self, id: str) -> Attempt | None: ...

    async def attempt_of(self, run_id: str, step: str, attempt: int) -> Attempt | None:
        """The queue's row for that attempt of that step of that run (the latest, if there are several)."""
        ...

    async def run_attempts(self, run_id: str) -> list[Attempt]:
        """Every attempt of the run's steps, by step and attempt number (its timeline)."""
        ...

    async def open_attempts(self, run_id: str, step: str) -> list[Attempt]:
        """The step's attempts not done yet."""
        ...

    async def offered_steps(self, run_id: str) -> list[str]:
        """The run's steps whose attempt is offered to a worker that has not acknowledged it yet."""
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

    async def agent_rows(self, team: str | None, limit: int | None = None, offset: int = 0) -> list[AgentRow]:
        """A page of a team's agents (None: every team's; no limit: all of them from `offset`), by name, each
        with the attempts it runs now: one query."""
        ...

    async def count_agents(self, team: str) -> int: ...

    async def touch_agent(self, id: str, at: float, completed: int = 0) -> None:
        """A heartbeat at `at`; `completed` more tasks done."""
        ...

    async def set_agent_tools(self, id: str, session: str, tools: list[str]) -> None:
        """The tools the agent offers now, if `session` is still its current one (a fenced session's
        heartbeat changes nothing)."""
        ...

    # webhooks
    async def insert_webhook(self, webhook: WebhookRecord) -> None: ...

    async def webhook(self, id: str) -> WebhookRecord | None: ...

    async def webhooks(self, team: str | None) -> list[WebhookRecord]:
        """The team's webhooks (None: every team's), oldest first."""
        ...

    async def update_webhook(self, webhook: WebhookRecord) -> None:
        """Replace the webhook's name, URL, secret, events and status (its id's row)."""
        ...

    async def delete_webhook(self, id: str) -> None:
        """The webhook, its deliveries and their attempts."""
        ...

    async def insert_deliveries(self, deliveries: list[DeliveryRecord]) -> None: ...

    async def claim_deliveries(self, now: float, lease_until: float, limit: int) -> list[DeliveryRecord]:
        """Pending deliveries due by `now`, each moved to `lease_until` in the same statement, so no other
        sender (another loop, another engine) takes one before its lease ends. Oldest due first."""
        ...

    async def record_delivery_attempt(self, attempt: DeliveryAttempt, status: str, due: float | None) -> None:
        """An attempt's outcome: the delivery's new status and when it is due again (None: not); a
        delivered one stamps its webhook's last_delivered."""
        ...

    async def delivery(self, id: str) -> DeliveryRecord | None: ...

    async def deliveries(self, webhook: str, limit: int, offset: int) -> list[DeliveryRecord]:
        """The webhook's deliveries, newest first."""
        ...

    async def count_deliveries(self, webhook: str) -> int: ...

    async def delivery_attempts(self, deliveries: list[str]) -> list[DeliveryAttempt]:
        """Every attempt at these deliveries, in order."""
        ...

    async def resend_delivery(self, id: str, now: float) -> None:
        """Make the delivery pending again, due now, at the start of its retry schedule."""
        ...


class Database(Queries, Protocol):
    shared: bool  # several engines may use this database at once (PostgreSQL), not only this one (SQLite)

    def transaction(self) -> AbstractAsyncContextManager[Queries]:
        """All or nothing: commits when the block ends, rolls back if it raises. No I/O other than
        the database's inside it: it holds locks (and, on SQLite, the one connection)."""
        ...

    async def housekeeping(self) -> None:
        """What the database needs now and then (SQLite: copy the WAL into the file; PostgreSQL: fold
        the counter rows of ended connections); the engine calls it every second."""
        ...

    # between the engines on one database (on SQLite, one engine: it leads everything, nobody listens)
    async def lead(self, name: str) -> bool:
        """Whether this engine leads the loop `name` (the reconciler): it takes the lead if nobody has
        it, and keeps it until it dies (its connection ends, and the database frees its lock). Asks
        the database each time: a lost connection loses the lead, perhaps to another engine."""
        ...

    async def publish(self, messages: list[str]) -> None:
        """Send each message (at most 7,900 bytes) to every engine listening on this database: a hint,
        never inside a transaction, lost by those not listening at the time."""
        ...

    async def listen(self, heard: Callable[[str], None], listening: Callable[[], None]) -> None:
        """Call `heard` with each message published from now on, `listening` once messages are heard
        (after a reconnection too: what was published meanwhile is lost); returns or raises only
        when the connection it listens on ends."""
        ...

    async def close(self) -> None: ...
