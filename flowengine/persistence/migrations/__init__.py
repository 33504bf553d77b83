"""Versioned schemas: numbered migrations, one folder per backend (`sqlite/`, `postgres/`).

A database's schema version is the number of the last migration applied to it. Each backend
applies the ones it lacks in order, each in a transaction of its own with its row in the
`schema_migrations` table (version, name, when): one that fails leaves the database at the version
before it. A database whose version is newer than the migrations this engine ships is refused.
SQLite applies them when it opens the file; PostgreSQL, shared by several engines, only through
`flowengine migrate` (see postgres.migrate).

A change of schema is one new file in each folder, with the same number and name:
`0002_teams.sql`. Migrations never change once released: a fix is a new migration.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Literal, NamedTuple

from flowengine.errors import Error

Backend = Literal["sqlite", "postgres"]
_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


class Migration(NamedTuple):
    version: int
    name: str  # its file's name without .sql: "0001_runs_waits_counts"
    sql: str


@functools.cache
def migrations(backend: Backend) -> tuple[Migration, ...]:
    """The backend's migrations, in order; numbered 1, 2, 3... without a gap."""
    found = []
    for file in (resources.files(__package__) / backend).iterdir():
        match = _NAME.fullmatch(file.name)
        if match:
            found.append(Migration(int(match[1]), file.name.removesuffix(".sql"), file.read_text("utf-8")))
    found.sort()
    numbers = [m.version for m in found]
    if numbers != list(range(1, len(found) + 1)):
        raise RuntimeError(f"the {backend} migrations are not numbered 1 to {len(found)}: {numbers}")
    return tuple(found)


def latest(backend: Backend) -> int:
    return len(migrations(backend))


def pending(backend: Backend, version: int, where: str) -> tuple[Migration, ...]:
    """What a database at `version` lacks; a database newer than this engine is refused."""
    known = migrations(backend)
    if version > len(known):
        raise Error(
            "unavailable", "schema_too_new",
            f"the database {where} has schema version {version}, newer than this flowengine knows "
            f"({len(known)}): run the flowengine version that migrated it, or a newer one",
        )  # fmt: skip
    return known[version:]


def failed(migration: Migration, where: str, exc: Exception | str) -> Error:
    return Error(
        "unavailable", "migration_failed",
        f"migration {migration.name} failed on the database {where}, which stays at version "
        f"{migration.version - 1}: {exc}",
    )  # fmt: skip
