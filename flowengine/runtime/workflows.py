"""Workflows as the engine keeps them: the operator's, declared in flow files, and the teams' own.

Every change is a new immutable version; a task records the version it ran. The operator's
workflows follow their flow files: a changed file makes a new version, a file that no longer
declares its workflow (or is gone) disables it. They belong to no team ('') and every team sees them,
read-only. A team creates and updates its own through the API; their flows follow the rules of inline
flows (the operator's tasks and stores by name, steps on agents, no commands of their own).
The status (active or disabled) is the workflow's, not a version's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from flowengine.core.lru import LRU
from flowengine.core.workflows import WorkflowIn, WorkflowStatus, check, from_flow_file, prepare
from flowengine.errors import Error, Problem, bad_request, not_found
from flowengine.persistence.base import Queries, WorkflowRecord

if TYPE_CHECKING:
    from flowengine.runtime.engine import Engine

log = logging.getLogger("flowengine.workflows")
SYNC_INTERVAL = 2.0  # seconds between looks at the flow files for changed Workflow sections
FILE_SOURCE = "file:"
API_SOURCE = "api"
BODY_CACHE = 1024  # decoded versions kept in memory: versions never change, so any copy is current
MAX_VERSION = 2**31 - 1
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(WorkflowIn).decode


class Stored(msgspec.Struct, frozen=True):
    """A workflow at one version: its record and its prepared body."""

    record: WorkflowRecord
    version: int
    workflow: WorkflowIn


class Workflows:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.problems: dict[str, Problem] = {}  # flow file -> why its workflow could not be stored
        self._bodies: LRU[tuple[str, int], WorkflowIn] = LRU(BODY_CACHE)

    # reading

    async def get(self, team: str | None, *, id: str | None = None, slug: str | None = None) -> Stored:
        """A workflow the team sees (its own, or the operator's; None: any), at a version: `slug@version`
        pins one, else the current. Another team's is not found, as if it did not exist."""
        pinned = None
        if slug is not None and "@" in slug:
            slug, _, pinned = slug.rpartition("@")
            if not (pinned.isascii() and pinned.isdigit()):
                message = f"version {pinned!r} is not a whole number"
                raise Error("bad_request", "invalid_version", message, "path.workflowSlug")
        what = id if id is not None else slug
        record = await self.engine.db.workflow(id=id, slug=slug)
        if record is None or not _sees(team, record):
            raise not_found("workflow", str(what), "path.workflowId" if id is not None else "path.workflowSlug")
        version = record.version if pinned is None else _version(pinned)
        body = await self._body(record.id, version) if version else None
        if body is None:
            raise not_found("workflow version", f"{record.slug}@{pinned}", "path.workflowSlug")
        return Stored(record, version, body)

    async def page(self, team: str | None, limit: int, offset: int) -> tuple[list[Stored], int]:
        """A page of the workflows the team sees (its own and the operator's, by slug; None: every
        team's), each at its current version, and how many there are."""
        db = self.engine.db
        found = []
        for record in await db.workflows(team, limit, offset):
            body = await self._body(record.id, record.version)
            if body is not None:  # a version written after its row was read (another engine's): the next page has it
                found.append(Stored(record, record.version, body))
        return found, await db.count_workflows(team)

    async def _body(self, workflow: str, version: int, db: Queries | None = None) -> WorkflowIn | None:
        body = self._bodies.get((workflow, version))
        if body is None:
            raw = await (db or self.engine.db).workflow_version(workflow, version)
            if raw is None:
                return None
            body = _decode(raw)
            self._bodies.put((workflow, version), body)
        return body

    # a team's own

    async def create(self, team: str, workflow: WorkflowIn, status: WorkflowStatus | None = None) -> Stored:
        """A new workflow of the team, at version 1 (active unless `status` says otherwise). Its slug
        must be free: another team's or the operator's is a conflict."""
        prepared = await self._checked(workflow)
        now = self.engine.clock()
        record = WorkflowRecord(self.engine.new_id(), team, prepared.workflow_slug, 1, status or "active", now, now,
                                API_SOURCE)  # fmt: skip
        try:
            async with self.engine.db.transaction() as tx:
                taken = await tx.workflow(slug=record.slug)
                if taken is not None:
                    raise _slug_taken(record.slug, taken, team, "workflow_slug")
                await tx.insert_workflow(record, _encode(prepared))
        except Error as exc:
            if exc.code != "conflict":  # the database's unique slug: another engine's create won the race
                raise
            raise Error("conflict", "slug_taken", f"slug {record.slug!r} was taken meanwhile", "workflow_slug") from exc
        return Stored(record, 1, prepared)

    async def update(self, team: str, id: str, workflow: WorkflowIn, status: WorkflowStatus | None = None) -> Stored:
        """The team's workflow with `workflow` as a new version (none when it is the current one again),
        and `status` if given. The slug stays the workflow's (an empty one in `workflow` means it)."""
        record = await self._own(team, id)
        if workflow.workflow_slug and workflow.workflow_slug != record.slug:
            raise bad_request("slug_immutable", f"the workflow's slug is {record.slug!r} and cannot change (tasks and "
                                                "clients name it): create a new workflow for a new slug",
                              "workflow_slug")  # fmt: skip
        prepared = await self._checked(msgspec.structs.replace(workflow, workflow_slug=record.slug))
        try:
            async with self.engine.db.transaction() as tx:
                record = await self._own(team, id, tx)
                record = await _save(tx, record, _encode(prepared), status, self.engine.clock())
        except Error as exc:
            if exc.code != "conflict":  # the database's unique (workflow, version): another update won the race
                raise
            message = f"workflow {id!r} changed meanwhile (another update made its next version): read it, try again"
            raise Error("conflict", "workflow_changed", message, "path.workflowId") from exc
        return Stored(record, record.version, prepared)

    async def set_status(self, team: str | None, id: str, status: WorkflowStatus) -> Stored:
        """Enable or disable the team's workflow (its versions stay: tasks name them)."""
        async with self.engine.db.transaction() as tx:
            record = await self._own(team, id, tx)
            if record.status != status:
                now = self.engine.clock()
                await tx.set_workflow_status(record.id, status, now)
                record = msgspec.structs.replace(record, status=status, updated=now)
        return await self._at_current(record)

    async def _at_current(self, record: WorkflowRecord) -> Stored:
        body = await self._body(record.id, record.version)
        assert body is not None, "a workflow's current version is stored with it"
        return Stored(record, record.version, body)

    async def _own(self, team: str | None, id: str, db: Queries | None = None) -> WorkflowRecord:
        """The team's own workflow (None: any team's): another team's is not found; the operator's is
        read-only here."""
        record = await (db or self.engine.db).workflow(id=id)
        if record is None or not _sees(team, record):
            raise not_found("workflow", id, "path.workflowId")
        if not record.team:
            source = record.source.removeprefix(FILE_SOURCE)
            raise Error("forbidden", "read_only", f"workflow {record.slug!r} is the operator's (flow file {source}): "
                                                  "it changes with that file only", "path.workflowId")  # fmt: skip
        return record

    async def _checked(self, workflow: WorkflowIn) -> WorkflowIn:
        """A team's workflow, ready to store: its flow follows the rules of inline flows (the engine's),
        then every problem of it is listed at once (`core.workflows.check`)."""
        engine = self.engine
        if workflow.flow is not None:
            engine.check_inline(workflow.flow, "flow")
        library = (await engine.catalog.library()).tasks
        return check(workflow, library, engine.stores.configured.keys())

    # the operator's, from the flow files

    async def sync(self) -> None:
        """Bring the operator's workflows in line with the flow files' Workflow sections."""
        engine = self.engine
        declared: dict[str, WorkflowIn] = {}
        library = (await engine.catalog.library()).tasks
        for entry in await engine.catalog.entries():
            if entry.flow is None or entry.flow.workflow is None or entry.problems:
                continue
            declared[entry.path.name] = prepare(from_flow_file(entry.flow), library)
        problems = {}
        for file, workflow in declared.items():
            try:
                await self._store_declared(file, workflow)
            except Error as exc:
                if exc.kind != "conflict":
                    raise  # the database's trouble: the loop logs it and tries again
                problems[file] = Problem(exc.location, exc.message)
        for file, problem in problems.items():
            if self.problems.get(file) != problem:
                log.warning("workflow of flow file %s not stored: %s", file, problem.message)
        self.problems = problems
        await self._disable_undeclared(set(declared))

    async def _store_declared(self, file: str, workflow: WorkflowIn) -> None:
        engine, now = self.engine, self.engine.clock()
        body = _encode(workflow)
        async with engine.db.transaction() as tx:
            record = await tx.workflow(slug=workflow.workflow_slug)
            if record is None:
                new = WorkflowRecord(engine.new_id(), "", workflow.workflow_slug, 1, "active", now, now,
                                     FILE_SOURCE + file)  # fmt: skip
                await tx.insert_workflow(new, body)
                return
            if record.source != FILE_SOURCE + file:
                raise _slug_taken(workflow.workflow_slug, record, "", "Workflow.Slug")
            await _save(tx, record, body, "active", now)

    async def _disable_undeclared(self, files: set[str]) -> None:
        """The operator's workflows whose flow file no longer declares them are disabled (their versions
        stay: tasks name them)."""
        engine, offset = self.engine, 0
        while page := await engine.db.workflows("", 500, offset):
            for record in page:
                gone = record.source.startswith(FILE_SOURCE) and record.source[len(FILE_SOURCE) :] not in files
                if gone and record.status == "active":
                    await engine.db.set_workflow_status(record.id, "disabled", engine.clock())
            offset += len(page)


async def _save(tx: Queries, record: WorkflowRecord, body: bytes, status: WorkflowStatus | None,
                now: float) -> WorkflowRecord:  # fmt: skip
    """A workflow with `body` as its current version (a new version unless the current one has that body)
    and `status` (None: as it is); the record as it is now."""
    if await tx.workflow_version(record.id, record.version) != body:
        record = msgspec.structs.replace(record, version=record.version + 1, updated=now)
        await tx.add_workflow_version(record.id, record.version, body, now)
    if status is not None and record.status != status:
        record = msgspec.structs.replace(record, status=status, updated=now)
        await tx.set_workflow_status(record.id, status, now)
    return record


def _sees(team: str | None, record: WorkflowRecord) -> bool:
    """Whether a team (None: the dashboard's operator, every team's) sees a workflow."""
    return team is None or record.team in ("", team)


def _version(digits: str) -> int:
    """A pinned version's number; 0 (no version) past the most a workflow can have."""
    return int(digits) if len(digits) <= len(str(MAX_VERSION)) and int(digits) <= MAX_VERSION else 0


def _slug_taken(slug: str, holder: WorkflowRecord, team: str, location: str) -> Error:
    """`team` asked for a slug `holder` has ('': the operator, for a flow file)."""
    if holder.team and holder.team == team:
        owner = f"this team's workflow {holder.id} (PUT /api/v1/workflows/{holder.id} makes a new version of it)"
    elif holder.team:
        owner = "another team" if team else "a team"
    else:
        owner = f"the operator's flow file {holder.source.removeprefix(FILE_SOURCE)}"
    return Error("conflict", "slug_taken", f"slug {slug!r} is taken by {owner}", location)
