"""Persistence: `base.Database` is the interface; `open_database` picks the implementation."""

from __future__ import annotations

from flowengine.config import Config
from flowengine.persistence.base import Database
from flowengine.persistence.sqlite import SqliteDatabase


def open_database(config: Config) -> Database:
    return SqliteDatabase(config.data_path / "flowengine.db")
