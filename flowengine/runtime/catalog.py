"""The flow files an operator wrote in `flows/`, loaded and validated once per change on disk."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import msgspec

from flowengine.core.keys import is_name
from flowengine.core.spec import FLOW_SUFFIXES, Flow, flow_files, load_flow_file
from flowengine.core.validate import validate
from flowengine.errors import Error, Problem


class Entry(msgspec.Struct, frozen=True):
    name: str
    path: Path
    mtime_ns: int
    flow: Flow | None
    problems: list[Problem]


class Catalog:
    def __init__(self, directory: Path, known_stores: Collection[str] = ()) -> None:
        self.directory = directory
        self.known_stores = known_stores
        self._entries: dict[str, Entry] = {}

    def _load(self, name: str, path: Path) -> Entry:
        mtime = path.stat().st_mtime_ns
        cached = self._entries.get(name)
        if cached and cached.path == path and cached.mtime_ns == mtime:
            return cached
        try:
            flow = load_flow_file(path)
            problems = validate(flow, self.known_stores)
        except Error as exc:
            flow, problems = None, exc.problems or [Problem(path.name, exc.message)]
        entry = Entry(name, path, mtime, flow, problems)
        self._entries[name] = entry
        return entry

    def entries(self) -> list[Entry]:
        return [self._load(name, path) for name, path in flow_files(self.directory).items()]

    def get(self, name: str) -> Flow:
        """The valid flow defined by `flows/{name}.yaml|yml|json`, or a 404 / 422."""
        candidates = [self.directory / f"{name}{suffix}" for suffix in FLOW_SUFFIXES]
        path = next((p for p in candidates if p.is_file()), None) if is_name(name) else None
        if path is None:
            raise Error("not_found", "not_found", f"no flow file named {name!r} in {self.directory}", "path.name")
        entry = self._load(name, path)
        if entry.flow is None or entry.problems:
            raise Error("invalid", "invalid_flow", f"flow file {path.name} has {len(entry.problems)} problem(s)",
                "path.name", entry.problems,
            )  # fmt: skip
        return entry.flow
