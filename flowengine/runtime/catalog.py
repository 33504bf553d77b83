"""What an operator wrote in `flows/`: flow files, and the task library in `flows/tasks/`, each
loaded and checked once per change on disk.

A file is checked as `flowengine validate` checks it (`check_files`, `load_library`): its
structure, its meaning, and that its Python tasks import. It is checked again when it changes,
when a module its tasks import does, or (for a flow) when the library does. Checking runs in a
worker thread: the import check starts a child process.

The library's tasks can be used by name from any flow, inline flows included: that is how an
operator offers commands to API clients without letting them define their own (`inline_commands`).
A flow gets copies of the library tasks it uses, so its runs never depend on later edits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterable, Mapping
from itertools import groupby
from pathlib import Path

import anyio
import msgspec

from flowengine.core.keys import is_name
from flowengine.core.spec import FLOW_SUFFIXES, Flow, Task, flow_files, load_flow_file, load_library_file, with_tasks
from flowengine.core.validate import validate_tasks
from flowengine.core.workflows import validate_flow
from flowengine.errors import Error, Problem
from flowengine.runtime import pycheck

LIBRARY_DIR = "tasks"
LIBRARY_RECHECK = 1.0  # seconds: the library directory is looked at no more often than this


class Entry(msgspec.Struct, frozen=True):
    name: str
    path: Path
    mtime_ns: int
    flow: Flow | None  # with the library tasks it uses copied in
    problems: list[Problem]
    imports: pycheck.ImportCheck = pycheck.ImportCheck({})
    library: tuple = ()  # the stamp of the library it was checked with

    def fresh(self, path: Path, library: tuple) -> bool:
        return self.path == path and self.mtime_ns == _mtime(path) and self.library == library and self.imports.fresh()


class LibraryFile(msgspec.Struct, frozen=True):
    path: Path
    description: str
    tasks: list[Task]
    problems: list[Problem]


class Library(msgspec.Struct, frozen=True):
    stamp: tuple  # (file name, mtime) of every file: any change makes a new library
    files: list[LibraryFile]
    tasks: dict[str, Task]  # the valid ones, by name
    imports: pycheck.ImportCheck = pycheck.ImportCheck({})

    def fresh(self, stamp: tuple) -> bool:
        return self.stamp == stamp and self.imports.fresh()


def check_files(
    paths: Iterable[Path],
    known_stores: Collection[str] = (),
    library: Library | None = None,
    private_webhooks: bool = False,
) -> list[Entry]:
    """Every problem of each flow file, with the library tasks it uses; the Python tasks of all
    files in one directory are import-checked by one child process. Blocking. `private_webhooks`:
    the operator's webhook_allow_private, which a flow's Webhook is checked against."""
    library = library or Library((), [], {})
    entries = [_read(path, known_stores, library.tasks, private_webhooks) for path in paths]
    checked: list[Entry] = []
    for directory, group in groupby(sorted(entries, key=lambda e: e.path.parent), key=lambda e: e.path.parent):
        same_dir = list(group)
        wanted = [target for e in same_dir if e.flow for target in pycheck.targets(e.flow.tasks)]
        imports = pycheck.check_imports(directory, list(dict.fromkeys(wanted)))
        for entry in same_dir:
            entry = msgspec.structs.replace(entry, library=library.stamp)
            if entry.flow is None or not pycheck.targets(entry.flow.tasks):
                checked.append(entry)  # nothing to import: its answer depends on no module
                continue
            found = pycheck.import_problems(entry.flow.tasks, imports)
            checked.append(msgspec.structs.replace(entry, problems=[*entry.problems, *found], imports=imports))
    order = {entry.path: i for i, entry in enumerate(entries)}
    return sorted(checked, key=lambda entry: order[entry.path])


def _read(path: Path, known_stores: Collection[str], library: Mapping[str, Task], private_webhooks: bool) -> Entry:
    mtime = _mtime(path)  # before reading: a change while we read makes the entry stale at once
    try:
        flow = with_tasks(load_flow_file(path), library)
    except OSError as exc:
        return Entry(path.stem, path, mtime, None, [Problem("", f"cannot read it: {exc.strerror or exc}")])
    except Error as exc:
        return Entry(path.stem, path, mtime, None, exc.problems or [Problem("", exc.message)])
    return Entry(path.stem, path, mtime, flow, validate_flow(flow, known_stores, private_webhooks))


def library_stamp(flows_dir: Path) -> tuple:
    return tuple((p.name, _mtime(p)) for p in flow_files(flows_dir / LIBRARY_DIR).values())


def load_library(flows_dir: Path) -> Library:
    """The task library in `flows_dir/tasks/`, every file checked; Python tasks import-checked with
    the flows dir on the path, as when they run. Blocking."""
    stamp = library_stamp(flows_dir)
    files, tasks, where = [], {}, {}
    for path in flow_files(flows_dir / LIBRARY_DIR).values():
        try:
            loaded = load_library_file(path)
        except (OSError, Error) as exc:
            message = exc.message if isinstance(exc, Error) else f"cannot read it: {exc.strerror or exc}"
            files.append(LibraryFile(path, "", [], getattr(exc, "problems", None) or [Problem("", message)]))
            continue
        files.append(LibraryFile(path, loaded.description, loaded.tasks, validate_tasks(loaded.tasks)))
    imports = pycheck.check_imports(flows_dir, list(dict.fromkeys(t for f in files for t in pycheck.targets(f.tasks))))
    for i, file in enumerate(files):
        problems = [*file.problems, *pycheck.import_problems(file.tasks, imports)]
        broken = {p.path.split(".")[0] for p in problems}  # "Tasks[2]"
        for j, task in enumerate(file.tasks):
            if task.name in where:
                again = f"task {task.name!r} is already defined in {where[task.name]}"
                problems.append(Problem(f"Tasks[{j}].Name", again))
            elif f"Tasks[{j}]" not in broken:
                where[task.name] = file.path.name
                tasks[task.name] = task
        files[i] = msgspec.structs.replace(file, problems=problems)
    return Library(stamp, files, tasks, imports)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


class Catalog:
    def __init__(self, directory: Path, known_stores: Collection[str] = (), private_webhooks: bool = False) -> None:
        self.directory = directory
        self.known_stores = known_stores
        self.private_webhooks = private_webhooks
        self._entries: dict[Path, Entry] = {}
        self._checking = asyncio.Lock()  # one check at a time: two requests for a changed file share it
        self.installed = Library((), [], {})  # the library as last loaded (see library())
        self._library_checked = -float("inf")

    async def library(self) -> Library:
        """The task library, looked at again when a second has passed since the last look."""
        if time.monotonic() - self._library_checked >= LIBRARY_RECHECK:
            async with self._checking:  # whoever comes while it loads waits for it, not for an old one
                if time.monotonic() - self._library_checked >= LIBRARY_RECHECK:
                    if not self.installed.fresh(library_stamp(self.directory)):
                        self.installed = await anyio.to_thread.run_sync(load_library, self.directory)
                    self._library_checked = time.monotonic()
        return self.installed

    async def _current(self, paths: list[Path]) -> list[Entry]:
        library = await self.library()
        if any(not self._fresh(path, library) for path in paths):
            async with self._checking:
                stale = [path for path in paths if not self._fresh(path, library)]
                if stale:
                    entries = await anyio.to_thread.run_sync(
                        check_files, stale, self.known_stores, library, self.private_webhooks
                    )
                    self._entries.update((entry.path, entry) for entry in entries)
        return [self._entries[path] for path in paths]

    def _fresh(self, path: Path, library: Library) -> bool:
        entry = self._entries.get(path)
        return entry is not None and entry.fresh(path, library.stamp)

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
