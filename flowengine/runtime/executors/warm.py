"""Warm Python workers: a task's module imported once, many calls served from it.

A worker is a fork server (`pyrun.py --serve`): one process per (module, task environment),
started the way a step's process is started (`Sandbox.start`: Landlock, and as root the step user
and mount and PID namespaces of its own), in a directory of its own, `work_dir/workers/<n>`, the
only part of the work dir it can see or write. It imports the module, then waits. Each call is a
child it forks, which confines itself further before any operator code runs (see pyrun.py): so a
call pays for a fork instead of an interpreter and the import, and still starts from the state
right after the import, whatever earlier calls changed, with nothing of theirs in reach. The
engine makes the call's scratch dir beneath the worker's directory and hands the child its log.

A worker serves one call at a time. It is retired (killed with everything it started, its
directory removed) after `python_worker_calls` calls, after any call that fails, times out, is
cancelled or leaves a process behind, when it has been idle `python_worker_idle` seconds, and
when more than `python_workers` are idle. The reaper knows every worker (and, without PID
namespaces, every call), so none outlives the engine.

Warm workers need Landlock: a call's confinement to its own scratch dir is a Landlock layer the
child adds without privileges. Without it, Python steps start an interpreter each, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, NamedTuple

import anyio
import msgspec

from flowengine.runtime.executors import pyrun
from flowengine.runtime.executors.process import ProcessResult, end_process, last_lines
from flowengine.runtime.executors.pyrun import Reply, ServeConfig
from flowengine.runtime.executors.reaper import Reaper, kill_group
from flowengine.runtime.executors.sandbox import DEVICES, SYSTEM_READ, Sandbox
from flowengine.runtime.pycheck import mtime

log = logging.getLogger("flowengine")

IMPORT_OUTPUT = 65536  # bytes of what the import printed, at most, copied into the first call's log


class WorkerKey(NamedTuple):
    module: str
    env: tuple[tuple[str, str], ...]  # the task's Env: the import may read it


class WorkerEnded(Exception):
    """The worker's process ended (or closed its channel) during a call."""


class Worker:
    def __init__(self, workers: Workers, key: WorkerKey, area: Path, env: dict[str, str]) -> None:
        self.workers = workers
        self.key = key
        self.area = area  # its own directory: its calls' scratch dirs go beneath
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.channel: socket.socket | None = None
        self.calls = 0
        self.broken = False  # retire it when its call is over
        self.idle_since = 0.0
        self.sources: tuple[tuple[str, int], ...] = ()  # (path, mtime_ns) of the files its import read
        self._call_pid = 0  # without PID namespaces: the running call, for the reaper

    async def run(self, scratch: Path, log_path: Path, timeout: float, tail: int) -> ProcessResult:
        """One call: `scratch` (beneath `area`) holds its `call.json`. Starts the worker first if needed;
        the import counts against the call's timeout, as it would in a process of its own."""
        self.calls += 1
        code: int | None = 1
        try:
            # Made, with its dir, with the scratch dir; the call writes to it too.
            with open(log_path, "wb", buffering=0) as out:
                try:
                    async with asyncio.timeout(timeout):
                        code = await self._call(scratch, out)
                except TimeoutError:
                    code = None
        finally:
            if code != 0:  # failed, timed out, cancelled: the worker may be in any state now
                await self.retire()
        return ProcessResult(code, last_lines(log_path, tail))

    async def _call(self, scratch: Path, out: IO[bytes]) -> int:
        fresh, started = self.proc is None, None
        try:
            if fresh and not await self._start(out):
                return 1  # the import failed; the log has its traceback
            assert self.channel is not None
            socket.send_fds(self.channel, [bytes(scratch)], [out.fileno()])
            started = await self._receive()
            if not self.workers.sandbox.namespaces:  # else the worker's PID namespace holds the call
                self._call_pid = started.pid
                self.workers.reaper.add(started.pid)
            ended = await self._receive()
        except (WorkerEnded, ConnectionError):  # ended during the call, or while it was idle
            status = await self._end()
            if started is None and not fresh:
                # It ended while idle (killed, out of memory) and was leased before its end showed (its
                # sandbox's init outlives it a moment): the call never began, so a new worker runs it.
                self._restart()
                return await self._call(scratch, out)
            out.write(f"flowengine: the Python worker ended during the call (status {status})\n".encode())
            return status or 1
        self._forget_call()
        self.broken = ended.leftover
        return ended.code

    async def _start(self, out: IO[bytes]) -> bool:
        """Start the worker and wait for its import; what the import printed goes to `out`."""
        sandbox, reaper = self.workers.sandbox, self.workers.reaper
        config = ServeConfig(self.key.module, self.workers.directory, [*SYSTEM_READ, *map(str, sandbox.reveal)],
                             DEVICES, sandbox.rules.abi if sandbox.rules else 0)  # fmt: skip
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.channel = ours
        output = self.area / "import.log"  # the engine's: the worker holds it open, its calls cannot reach it
        try:
            with open(output, "w+b") as imports:
                argv = [sys.executable, "-B", "-P", pyrun.__file__, "--serve", str(theirs.fileno()),
                        msgspec.json.encode(config).decode()]  # fmt: skip
                starting = asyncio.wrap_future(sandbox.start(argv, self.env, self.area, imports.fileno(),
                                                             (theirs.fileno(),)))  # fmt: skip
                try:
                    self.proc = await asyncio.shield(starting)
                except asyncio.CancelledError:
                    self.proc = await starting  # cancelled while it started: retire() ends it
                    raise
        finally:
            theirs.close()
        reaper.add(self.proc.pid)
        ours.setblocking(False)
        try:
            ready = await self._receive()
        finally:
            out.write(_tail(output, IMPORT_OUTPUT))
        self.sources = tuple((path, mtime(path)) for path in ready.files)
        return ready.kind == "ready"

    def stale(self) -> bool:
        """Whether a file its import read (or the flows directory) changed since: a new import is due."""
        return any(mtime(path) != when for path, when in self.sources)

    async def _receive(self) -> Reply:
        assert self.channel is not None
        message = await asyncio.get_running_loop().sock_recv(self.channel, 4096)
        if not message:
            raise WorkerEnded
        return msgspec.json.decode(message, type=Reply)

    async def _end(self) -> int:
        """Kill the worker and all it started (a call's process group too); its exit status."""
        if self._call_pid:
            kill_group(self._call_pid)
            self._forget_call()
        if self.proc is None:
            return 0
        if self.proc.returncode is None:
            await end_process(self.proc)
        if self.proc.pid in self.workers.reaper.live:  # once: the number may be another step's later
            self.workers.reaper.remove(self.proc.pid)
        return self.proc.returncode

    def _restart(self) -> None:
        """Forget the ended process, so that the next call starts a new one in the same directory."""
        if self.channel is not None:
            self.channel.close()
        self.proc, self.channel, self.sources = None, None, ()

    def _forget_call(self) -> None:
        if self._call_pid:
            self.workers.reaper.remove(self._call_pid)
            self._call_pid = 0

    async def retire(self) -> None:
        """Kill it, if it still runs, and remove its directory."""
        self.broken = True
        await self._end()
        if self.channel is not None:
            self.channel.close()
        await anyio.to_thread.run_sync(shutil.rmtree, self.area, True)


class Workers:
    """The warm workers of one engine, idle ones by key, the least recently used retired first."""

    def __init__(
        self,
        sandbox: Sandbox,
        reaper: Reaper,
        root: Path,
        directory: str,
        *,
        size: int,
        max_calls: int,
        idle_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sandbox = sandbox
        self.reaper = reaper
        self.root = root  # work_dir/workers
        self.directory = directory  # where tasks' modules are imported from: the flows directory
        self.size = size
        self.max_calls = max_calls
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._idle: list[Worker] = []  # the least recently used first
        self._numbers = itertools.count(1)

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.sandbox.rules is not None

    @contextlib.asynccontextmanager
    async def lease(self, key: WorkerKey, env_of: Callable[[Path], dict[str, str]]) -> AsyncIterator[Worker]:
        """A worker for `key` for one call: an idle one, or a new one (started at its first call)
        whose environment is `env_of(its directory)`."""
        worker = next((w for w in reversed(self._idle) if w.key == key), None)
        if worker is not None:
            self._idle.remove(worker)
            # Ended while idle (killed, out of memory), or the operator changed the module: calls
            # run the code as it is now.
            if worker.proc.poll() is not None or worker.stale():
                await worker.retire()
                worker = None
        worker = worker or self._new(key, env_of)
        try:
            yield worker
        finally:
            await self._give_back(worker)

    def _new(self, key: WorkerKey, env_of: Callable[[Path], dict[str, str]]) -> Worker:
        self.root.mkdir(mode=0o711, exist_ok=True)
        area = self.root / str(next(self._numbers))
        area.mkdir(mode=0o711)  # passable, not listable, and the worker may not write in it: the engine's
        home = area / "home"  # the worker's HOME and TMPDIR (its calls have their scratch dirs instead)
        home.mkdir(mode=0o700)
        if self.sandbox.user is not None:
            os.chown(home, self.sandbox.user.uid, self.sandbox.user.gid)
        return Worker(self, key, area, env_of(home))

    async def _give_back(self, worker: Worker) -> None:
        if worker.broken or worker.proc is None or worker.calls >= self.max_calls:
            await worker.retire()
            return
        worker.idle_since = self._clock()
        self._idle.append(worker)
        while len(self._idle) > self.size:
            await self._idle.pop(0).retire()

    async def sweep(self) -> None:
        """Retire the workers idle for `idle_timeout` or longer."""
        now = self._clock()
        stale = [w for w in self._idle if now - w.idle_since >= self.idle_timeout]
        self._idle = [w for w in self._idle if w not in stale]
        for worker in stale:
            await worker.retire()

    async def close(self) -> None:
        """Retire every idle worker (busy ones go with their calls, cancelled by the engine's stop)."""
        idle, self._idle = self._idle, []
        for worker in idle:
            await worker.retire()
        await anyio.to_thread.run_sync(shutil.rmtree, self.root, True)


def _tail(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - size))
        return f.read()
