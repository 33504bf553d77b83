"""Workflows as the engine keeps them: the operator's, declared in flow files, and the teams' own.

Every change is a new immutable version; a task records the version it ran. The operator's
workflows follow their flow files: a changed file makes a new version, a file that no longer
declares its workflow (or is gone) disables it. They belong to no team ('') and every team sees them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from flowengine.core.workflows import WorkflowIn, from_flow_file, prepare
from flowengine.errors import Error, not_found
from flowengine.persistence.base import WorkflowRecord

if TYPE_CHECKING:
    from flowengine.runtime.engine import Engine

log = logging.getLogger("flowengine.workflows")
SYNC_INTERVAL = 2.0  # seconds between looks at the flow files for changed Workflow sections
FILE_SOURCE = "file:"
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
        self.problems: dict[str, str] = {}  # flow file -> why its workflow could not be stored

    async def get(self, team: str, *, id: str | None = None, slug: str | None = None) -> Stored:
        """A workflow the team sees (its own, or the operator's), at a version: `slug@version` pins
        one, else the current. Another team's is not found, as if it did not exist."""
        version = None
        if slug is not None and "@" in slug:
            slug, _, pinned = slug.rpartition("@")
            if not pinned.isdigit():
                message = f"version {pinned!r} is not a number"
                raise Error("bad_request", "invalid_version", message, "path.workflowSlug")
            version = int(pinned)
        what = id if id is not None else slug
        record = await self.engine.db.workflow(id=id, slug=slug)
        if record is None or record.team not in ("", team):
            raise not_found("workflow", str(what), "path.workflowId" if id is not None else "path.workflowSlug")
        version = version or record.version
        body = await self.engine.db.workflow_version(record.id, version)
        if body is None:
            raise not_found("workflow version", f"{record.slug}@{version}", "path.workflowSlug")
        return Stored(record, version, _decode(body))

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
                problems[file] = exc.message
        for file, why in problems.items():
            if self.problems.get(file) != why:
                log.warning("workflow of flow file %s not stored: %s", file, why)
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
                owner = "a team" if record.team else f"flow file {record.source.removeprefix(FILE_SOURCE)}"
                raise Error("conflict", "slug_taken", f"slug {workflow.workflow_slug!r} is taken by {owner}")
            if await tx.workflow_version(record.id, record.version) != body:
                await tx.add_workflow_version(record.id, record.version + 1, body, now)
            if record.status != "active":
                await tx.set_workflow_status(record.id, "active", now)

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
