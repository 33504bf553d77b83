"""Persistence: one interface (base.py), two databases (sqlite.py, the embedded default, and
postgres.py, for several engines on one database), versioned schemas (migrations/).

The `database` setting chooses: `sqlite:///PATH` or `postgresql://...` (config.database_url).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from flowengine.config import SQLITE, Config
from flowengine.persistence.base import Database
from flowengine.persistence.migrations import Migration, latest


def open_database(config: Config) -> Database:
    """The database the configuration names, its schema checked (SQLite: upgraded in place)."""
    url = config.database_url
    if url.startswith(SQLITE):
        from flowengine.persistence.sqlite import SqliteDatabase

        return SqliteDatabase(url.removeprefix(SQLITE))
    from flowengine.persistence.postgres import PostgresDatabase  # psycopg is imported where it is used

    return PostgresDatabase(url, pool_size=config.database_pool_size)


def check_database(config: Config) -> None:
    """Raise, before an engine starts, the error opening its database would: it cannot be reached,
    or its schema is newer than this engine's (on PostgreSQL, older too: see `migrate`). SQLite
    upgrades an older schema here, as it would when the engine opens it."""
    url = config.database_url
    if url.startswith(SQLITE):
        from flowengine.persistence import sqlite

        sqlite.migrate(url.removeprefix(SQLITE))
    else:
        from flowengine.persistence import postgres

        postgres.check_schema(url)


def migrate(config: Config) -> tuple[list[Migration], int]:
    """Apply the migrations the configured database lacks; returns them (none: it was up to date)
    and the schema version it is at now."""
    url = config.database_url
    if url.startswith(SQLITE):
        from flowengine.persistence import sqlite

        return sqlite.migrate(url.removeprefix(SQLITE)), latest("sqlite")
    from flowengine.persistence import postgres

    return postgres.migrate(url), latest("postgres")


def redacted(url: str) -> str:
    """A database URL without its password, fit for a log line or a message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
