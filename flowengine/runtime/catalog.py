"""The flow files an operator wrote in `flows/`, loaded and checked once per change on disk.

A file is checked as `flowengine validate` checks it (`check_files`): its structure, its meaning,
and that its Python tasks import. It is checked again when it changes, or when a module its tasks
import does. Checking runs in a worker thread: the import check starts a child process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable
from itertools import groupby
from pathlib import Path

import anyio
import msgspec

from flowengine.core.keys import is_name
from flowengine.core.spec import FLOW_SUFFIXES, Flow, flow_files, load_flow_file
from flowengine.core.validate import validate
from flowengine.errors import Error, Problem
from flowengine.runtime import pycheck


class Entry(msgspec.Struct, frozen=True):
    name: str
    path: Path
    mtime_ns: int
    flow: Flow | None
    problems: list[Problem]
    imports: pycheck.ImportCheck = pycheck.ImportCheck({})

    def fresh(self, path: Path) -> bool:
        return self.path == path and self.mtime_ns == _mtime(path) and self.imports.fresh()


def check_files(paths: Iterable[Path], known_stores: Collection[str] = ()) -> list[Entry]:
    """Every problem of each flow file; the Python tasks of all files in one directory are
    import-checked by one child process. Blocking."""
    entries = [_read(path, known_stores) for path in paths]
    checked: list[Entry] = []
    for directory, group in groupby(sorted(entries, key=lambda e: e.path.parent), key=lambda e: e.path.parent):
        same_dir = list(group)
        wanted = [target for e in same_dir if e.flow for target in pycheck.targets(e.flow)]
        imports = pycheck.check_imports(directory, list(dict.fromkeys(wanted)))
        for entry in same_dir:
            if entry.flow is None or not pycheck.targets(entry.flow):
                checked.append(entry)  # nothing to import: its answer depends on no module
                continue
            found = pycheck.import_problems(entry.flow, imports)
            checked.append(msgspec.structs.replace(entry, problems=[*entry.problems, *found], imports=imports))
    order = {entry.path: i for i, entry in enumerate(entries)}
    return sorted(checked, key=lambda entry: order[entry.path])


def _read(path: Path, known_stores: Collection[str]) -> Entry:
    mtime = _mtime(path)  # before reading: a change while we read makes the entry stale at once
    try:
        flow = load_flow_file(path)
    except OSError as exc:
        return Entry(path.stem, path, mtime, None, [Problem("", f"cannot read it: {exc.strerror or exc}")])
    except Error as exc:
        return Entry(path.stem, path, mtime, None, exc.problems or [Problem("", exc.message)])
    return Entry(path.stem, path, mtime, flow, validate(flow, known_stores))


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


class Catalog:
    def __init__(self, directory: Path, known_stores: Collection[str] = ()) -> None:
        self.directory = directory
        self.known_stores = known_stores
        self._entries: dict[Path, Entry] = {}
        self._checking = asyncio.Lock()  # one check at a time: two requests for a changed file share it

    async def _current(self, paths: list[Path]) -> list[Entry]:
        if any(not self._fresh(path) for path in paths):
            async with self._checking:
                stale = [path for path in paths if not self._fresh(path)]
                if stale:
                    entries = await anyio.to_thread.run_sync(check_files, stale, self.known_stores)
                    self._entries.update((entry.path, entry) for entry in entries)
        return [self._entries[path] for path in paths]

    def _fresh(self, path: Path) -> bool:
        entry = self._entries.get(path)
        return entry is not None and entry.fresh(path)

    async def entries(self) -> list[Entry]:
        paths = list(flow_files(self.directory).values())
        for gone in self._entries.keys() - set(paths):
            del self._entries[gone]
        return await self._current(paths)

    async def get(self, name: str) -> Flow:
        """The valid flow defined by `flows/{name}.yaml|yml|json`, or a 404 / 422."""
        candidates = [self.directory / f"{name}{suffix}" for suffix in FLOW_SUFFIXES]
        path = next((p for p in candidates if p.is_file()), None) if is_name(name) else None
        if path is None:
            raise Error("not_found", "not_found", f"no flow file named {name!r} in the flows dir", "path.name")
        [entry] = await self._current([path])
        if entry.flow is None or entry.problems:
            raise Error("invalid", "invalid_flow", f"flow file {path.name} has {len(entry.problems)} problem(s)",
                "path.name", entry.problems,
            )  # fmt: skip
        return entry.flow
