"""Run one attempt of one step: materialize its inputs, run it, store its outputs.

The answer is an event for the state machine (StepSucceeded or StepFailed); nothing here
changes a run. A step sees only local files in a scratch dir of its own, outside the data dir:
copies of its inputs (never the stored objects), an explicit environment (never the engine's),
and no store credentials. What it writes is taken only as regular files inside that dir.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mimetypes
import os
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import anyio
import msgspec

from flowengine.core.keys import VAR
from flowengine.core.machine import EdgeState, ObjectMeta, StepFailed, StepSucceeded
from flowengine.core.queue import output_key
from flowengine.core.spec import Scalar, Step, Task
from flowengine.runtime.executors import pyrun
from flowengine.runtime.executors.process import run_process
from flowengine.runtime.executors.pyrun import Call, Request
from flowengine.runtime.executors.reaper import Reaper
from flowengine.runtime.executors.sandbox import Sandbox, StepUser
from flowengine.runtime.executors.warm import Worker, WorkerKey, Workers
from flowengine.stores.base import Store, StoreUnavailable

# Where a step finds programs: this Python's own bin dir first, then the usual system ones.
STEP_PATH = os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin",
                             "/usr/bin", "/sbin", "/bin"])  # fmt: skip
MAX_ANSWER = 1 << 20  # bytes: a Python task's answer names its output files, nothing more
log = logging.getLogger("flowengine")


class StepJob(msgspec.Struct, kw_only=True):
    run_id: str
    step: Step
    task: Task
    attempt: int
    edges: dict[str, EdgeState]
    store_of: Callable[[EdgeState], Store]
    work_root: Path  # scratch dirs go right beneath: work_root/run.step.attempt
    log_path: Path
    log_tail: int
    python_path: str  # where a Python task's module is found: the flows directory
    sandbox: Sandbox
    reaper: Reaper
    workers: Workers  # warm Python workers, when enabled
    sweeper: Sweeper  # removes the scratch dir once the step has ended
    flags: dict[str, Scalar] = {}  # the run's values for the step's flags (a task's parameters), over the step's


class Refused(Exception):
    """What the step left cannot be taken as its output (the message says why)."""


def flag_values(step: Step, task: Task, run_flags: dict[str, Scalar] | None = None) -> dict[str, Scalar]:
    """The task's defaults, under the step's Flags, under the run's own values (a task's parameters)."""
    values = {f.name: f.default for f in task.flags if f.default is not None}
    values.update(step.flags)
    values.update(run_flags or {})
    return values


def output_type(task: Task, slot: str, edge: EdgeState) -> str:
    declared = next((s.content_type for s in task.outputs if s.name == slot), None)
    guessed = mimetypes.guess_type(edge.key)[0]
    return declared or edge.content_type or guessed or "application/octet-stream"


def expand_arg(arg: str, values: dict[str, str]) -> str:
    return VAR.sub(lambda m: values.get(m.group(1), m.group(0)), arg)


def task_env(task: Task, python_path: str, home: Path) -> dict[str, str]:
    """A task's environment, `home` its HOME and TMPDIR: nothing of the engine's (its secrets live there).
    A step's home is its scratch dir, the one place it may write: dirs of their own for HOME and TMPDIR
    would be two more inodes made and removed per step, which on some filesystems costs more than
    the rest of its scratch dir (README, "How steps run")."""
    env = {"PATH": STEP_PATH, "LANG": "C.UTF-8", "HOME": str(home), "TMPDIR": str(home)}
    env.update(task.env)
    if task.python is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (python_path, task.env.get("PYTHONPATH")) if p)
    return env


def step_env(job: StepJob, scratch: Path) -> dict[str, str]:
    """The step's whole environment: its task's, and which attempt of which step it is."""
    env = task_env(job.task, job.python_path, scratch)
    env.update(FLOWENGINE_RUN_ID=job.run_id, FLOWENGINE_STEP_ID=job.step.id, FLOWENGINE_ATTEMPT=str(job.attempt))
    return env


async def run_step(job: StepJob) -> StepSucceeded | StepFailed:
    if job.task.python is not None and job.workers.enabled:
        # A warm worker imported the module (or will, at its first call); the scratch dir goes
        # beneath its own directory, the only part of the work dir it can reach.
        key = WorkerKey(job.task.python.partition(":")[0], tuple(sorted(job.task.env.items())))
        async with job.workers.lease(key, lambda home: task_env(job.task, job.python_path, home)) as worker:
            return await _in_scratch(job, worker.area / scratch_name(job), worker)
    return await _in_scratch(job, job.work_root / scratch_name(job), None)


def scratch_name(job: StepJob) -> str:
    """One flat directory per attempt, no run's dir above it: fewer inodes made and removed per step."""
    return f"{job.run_id}.{job.step.id}.{job.attempt}"


# Making and removing directories and files takes milliseconds each on some filesystems (ext4 on a
# busy virtual disk): all of it is done in worker threads, never on the event loop.


async def _in_scratch(job: StepJob, scratch: Path, worker: Worker | None) -> StepSucceeded | StepFailed:
    try:
        return await _attempt(job, scratch, worker)
    except (StoreUnavailable, OSError) as exc:
        return StepFailed(job.step.id, job.attempt, f"{type(exc).__name__}: {exc}")
    finally:
        job.sweeper.remove(scratch)


class Sweeper:
    """Removes scratch dirs in the background, after their steps' ends: the step's result (its
    outputs are stored by then) is recorded and its slot freed without waiting. Removing a directory
    frees its block, and where the filesystem discards freed blocks at once (ext4 mounted with
    `discard`) each `rmdir` takes milliseconds. One thread at a time removes what has ended
    meanwhile, oldest first."""

    def __init__(self) -> None:
        self._due: list[Path] = []
        self._sweeping: asyncio.Task | None = None

    def remove(self, scratch: Path) -> None:
        self._due.append(scratch)
        if self._sweeping is None or self._sweeping.done():
            self._sweeping = asyncio.get_running_loop().create_task(self._sweep())

    async def drain(self) -> None:
        """Until every scratch dir handed over is gone (the engine stops)."""
        while self._sweeping is not None and not self._sweeping.done():
            await asyncio.shield(self._sweeping)

    async def _sweep(self) -> None:
        while self._due:
            batch, self._due = self._due, []
            try:
                await anyio.to_thread.run_sync(_remove_scratches, batch)
            except Exception:  # logged; the next steps' dirs are swept all the same
                log.exception("removing %d scratch dir(s) failed", len(batch))


def _remove_scratches(batch: list[Path]) -> None:
    for scratch in batch:
        shutil.rmtree(scratch, True)


def _make_scratch(scratch: Path) -> None:
    """The attempt's dir, new and empty (its parent, the work root, is passable but not listable:
    other steps' dirs stay unknown)."""
    try:
        scratch.mkdir(mode=0o700)
    except FileExistsError:  # a dispatch again of an attempt that never ran
        shutil.rmtree(scratch)
        scratch.mkdir(mode=0o700)


def _lay_out(scratch: Path, dirs: list[Path], files: dict[Path, bytes], user: StepUser | None, log: Path) -> None:
    """The scratch dir and what the step finds in it (but its inputs), given to its user; its log file, empty."""
    _make_scratch(scratch)
    for path in dirs:
        path.mkdir(parents=True)
    for path, content in files.items():
        path.write_bytes(content)
    if user is not None:
        _give(scratch, user.uid, user.gid)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")


async def _attempt(job: StepJob, scratch: Path, worker: Worker | None) -> StepSucceeded | StepFailed:
    step, task = job.step, job.task
    inputs = {b.slot: str(scratch / "in" / b.slot / PurePosixPath(job.edges[b.edge].key).name) for b in step.inputs}
    outputs = {b.slot: scratch / "out" / b.slot / PurePosixPath(job.edges[b.edge].key).name for b in step.outputs}
    flags = flag_values(step, task, job.flags)
    files: dict[Path, bytes] = {}
    argv: list[str] = []
    if task.exec is not None:
        values = {**inputs, **{s: str(p) for s, p in outputs.items()}, **{k: str(v) for k, v in flags.items()}}
        argv = [expand_arg(a, values) for a in task.exec]
        answer = None
    else:
        answer = scratch / "answer.json"
        request = Request(task.python or "", inputs, flags, str(scratch), str(answer))
        if worker is not None:  # the call's child sets its own environment from the file, once confined
            files[scratch / "call.json"] = msgspec.json.encode(Call(request, step_env(job, scratch)))
        else:
            files[scratch / "request.json"] = msgspec.json.encode(request)
            # The shim by its path, not as a module: it imports nothing of flowengine, which the step's
            # Python may not find where the engine's did. -B: importing the task's module leaves no
            # __pycache__ in the flows directory; -P: the shim's own directory is not a place to import from.
            argv = [sys.executable, "-B", "-P", pyrun.__file__, str(scratch / "request.json")]
    dirs = [p.parent for p in outputs.values()]
    # One thread hop for the whole layout: on a busy machine each hop waits for a turn on a core.
    await anyio.to_thread.run_sync(_lay_out, scratch, dirs, files, job.sandbox.user, job.log_path)
    for b in step.inputs:
        edge = job.edges[b.edge]
        # A copy: the stored object is out of the step's reach.
        await job.store_of(edge).download(edge.key, Path(inputs[b.slot]))
    if step.inputs and job.sandbox.user is not None:
        await anyio.to_thread.run_sync(_give, scratch / "in", job.sandbox.user.uid, job.sandbox.user.gid)
    if worker is not None:
        result = await worker.run(scratch, job.log_path, task.timeout_seconds, job.log_tail)
    else:
        result = await run_process(argv, scratch, step_env(job, scratch), job.log_path, task.timeout_seconds,
                                   job.log_tail, job.sandbox, job.reaper)  # fmt: skip

    def failed(error: str) -> StepFailed:
        return StepFailed(step.id, job.attempt, error, result.logs)

    if result.returncode is None:
        return failed(f"timed out after {task.timeout_seconds:g}s")
    if result.returncode != 0:
        return failed(f"exited with status {result.returncode}")
    try:
        written = await _store_outputs(job, scratch, _output_paths(scratch, outputs, answer))
    except Refused as exc:
        return failed(str(exc))
    return StepSucceeded(step.id, job.attempt, written, result.logs)


def _give(scratch: Path, uid: int, gid: int) -> None:
    """Hand the scratch dir and all in it (the engine made it all; the step has not run yet) to the step's user."""
    os.chown(scratch, uid, gid)
    for parent, dirs, files in os.walk(scratch):
        for name in [*dirs, *files]:
            os.chown(os.path.join(parent, name), uid, gid, follow_symlinks=False)


def _output_paths(scratch: Path, outputs: dict[str, Path], answer: Path | None) -> dict[str, PurePosixPath]:
    """Each output slot's file, relative to the scratch dir. A Python task names its own."""
    chosen = {slot: PurePosixPath(path.relative_to(scratch)) for slot, path in outputs.items()}
    if answer is None:
        return chosen
    fd = _open_inside(scratch, PurePosixPath(answer.name), "the Python task's answer")
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_ANSWER + 1)
    try:
        if len(raw) > MAX_ANSWER:
            raise msgspec.DecodeError(f"over {MAX_ANSWER} bytes")
        returned = msgspec.json.decode(raw, type=dict[str, str])
    except msgspec.MsgspecError as exc:
        raise Refused(f"the Python task's answer is not a JSON object of output paths: {exc}") from None
    for slot, path in returned.items():
        if slot in chosen:
            chosen[slot] = _relative(scratch, slot, PurePosixPath(path))
    return chosen


def _relative(scratch: Path, slot: str, path: PurePosixPath) -> PurePosixPath:
    """A returned output path, relative to the scratch dir; refused if it leads out of it."""
    if path.is_absolute():
        if not path.is_relative_to(scratch):
            raise Refused(f"output {slot!r} is {str(path)!r}, outside the step's scratch dir")
        path = path.relative_to(scratch)
    if ".." in path.parts or not path.parts:
        raise Refused(f"output {slot!r} is {str(path)!r}, outside the step's scratch dir")
    return path


def _open_inside(scratch: Path, path: PurePosixPath, what: str) -> int:
    """Open a file the step wrote, for reading: a regular file, reached from the scratch dir
    through directories only. A symlink anywhere on the way is refused, never followed (it
    could point at anything the engine can read), and so is a FIFO or device (it could block or
    never end)."""
    fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for part in path.parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = inner
        leaf = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    except FileNotFoundError:
        raise Refused(f"{what} was not written") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Refused(f"{what} ({path}) is a symbolic link or lies beyond one: only regular files count") from None
        raise
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(leaf).st_mode):
        os.close(leaf)
        raise Refused(f"{what} ({path}) is not a regular file")
    return leaf


async def _store_outputs(job: StepJob, scratch: Path, paths: dict[str, PurePosixPath]) -> dict[str, ObjectMeta]:
    written: dict[str, ObjectMeta] = {}
    for b in job.step.outputs:
        edge = job.edges[b.edge]
        fd = _open_inside(scratch, paths[b.slot], f"output {b.slot!r}")
        key = output_key(edge.key, job.attempt)  # a later attempt's own key: a late one cannot overwrite it
        try:
            # The store reads the file this descriptor holds: whatever happens to the path meanwhile.
            info = await job.store_of(edge).upload(key, Path(f"/proc/self/fd/{fd}"),
                                                   output_type(job.task, b.slot, edge))  # fmt: skip
        finally:
            os.close(fd)
        written[b.edge] = ObjectMeta(info.size, info.content_type, info.etag, "" if key == edge.key else key)
    return written
