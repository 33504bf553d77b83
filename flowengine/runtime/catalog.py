"""What an operator wrote in `flows/`: flow files, and the task library in `flows/tasks/`, each
loaded and validated once per change on disk.

The library's tasks can be used by name from any flow, inline flows included: that is how an
operator offers commands to API clients without letting them define their own (`inline_commands`).
A flow gets copies of the library tasks it uses, so its runs never depend on later edits.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path

import msgspec

from flowengine.core.keys import is_name
from flowengine.core.spec import FLOW_SUFFIXES, Flow, Task, flow_files, load_flow_file, load_library_file, with_tasks
from flowengine.core.validate import validate, validate_tasks
from flowengine.errors import Error, Problem

LIBRARY_DIR = "tasks"
LIBRARY_RECHECK = 1.0  # seconds: the library directory is looked at no more often than this


class Entry(msgspec.Struct, frozen=True):
    name: str
    path: Path
    mtime_ns: int
    library: tuple  # the library's stamp when this entry was made
    flow: Flow | None  # with the library tasks it uses copied in
    problems: list[Problem]


class LibraryFile(msgspec.Struct, frozen=True):
    path: Path
    description: str
    tasks: list[Task]
    problems: list[Problem]


class Library(msgspec.Struct, frozen=True):
    stamp: tuple  # (file name, mtime) of every file: any change makes a new library
    files: list[LibraryFile]
    tasks: dict[str, Task]  # the valid ones, by name


class Catalog:
    def __init__(self, directory: Path, known_stores: Collection[str] = ()) -> None:
        self.directory = directory
        self.known_stores = known_stores
        self._entries: dict[str, Entry] = {}
        self._library = Library((), [], {})
        self._library_checked = -float("inf")

    # the task library

    def library(self) -> Library:
        if time.monotonic() - self._library_checked >= LIBRARY_RECHECK:
            self._library_checked = time.monotonic()
            paths = flow_files(self.directory / LIBRARY_DIR)
            stamp = tuple((p.name, p.stat().st_mtime_ns) for p in paths.values())
            if stamp != self._library.stamp:
                self._library = _load_library(stamp, list(paths.values()))
        return self._library

    # flow files

    def _load(self, name: str, path: Path) -> Entry:
        mtime = path.stat().st_mtime_ns
        library = self.library()
        cached = self._entries.get(name)
        if cached and cached.path == path and cached.mtime_ns == mtime and cached.library == library.stamp:
            return cached
        try:
            flow = with_tasks(load_flow_file(path), library.tasks)
            problems = validate(flow, self.known_stores)
        except Error as exc:
            flow, problems = None, exc.problems or [Problem(path.name, exc.message)]
        entry = Entry(name, path, mtime, library.stamp, flow, problems)
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


def _load_library(stamp: tuple, paths: list[Path]) -> Library:
    files, tasks = [], {}
    where: dict[str, str] = {}
    for path in paths:
        try:
            loaded = load_library_file(path)
        except Error as exc:
            files.append(LibraryFile(path, "", [], exc.problems or [Problem(path.name, exc.message)]))
            continue
        problems = validate_tasks(loaded.tasks)
        broken = {p.path.split(".")[0] for p in problems}  # "Tasks[2]"
        for i, task in enumerate(loaded.tasks):
            if task.name in where:
                problems.append(
                    Problem(f"Tasks[{i}].Name", f"task {task.name!r} is already defined in {where[task.name]}")
                )
            elif f"Tasks[{i}]" not in broken:
                where[task.name] = path.name
                tasks[task.name] = task
        files.append(LibraryFile(path, loaded.description, loaded.tasks, problems))
    return Library(stamp, files, tasks)
