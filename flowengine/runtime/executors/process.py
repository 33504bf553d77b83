"""Run one step's process with a timeout, confined by the sandbox, its output going to a log file."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections import deque
from pathlib import Path

import msgspec

from flowengine.runtime.executors.reaper import Reaper, kill_group
from flowengine.runtime.executors.sandbox import Sandbox


class ProcessResult(msgspec.Struct, frozen=True):
    returncode: int | None  # None: killed at the timeout
    logs: list[str]  # the last lines of output


async def run_process(
    argv: list[str],
    scratch: Path,
    env: dict[str, str],
    log_path: Path,
    timeout: float,
    tail: int,
    sandbox: Sandbox,
    reaper: Reaper,
) -> ProcessResult:
    with open(log_path, "wb") as log:  # made, with its dir, with the scratch dir
        starting = asyncio.wrap_future(sandbox.start(argv, env, scratch, log.fileno()))
        try:
            proc = await asyncio.shield(starting)
        except asyncio.CancelledError:
            await end_process(await starting)  # cancelled while it started: it must not run on unwatched
            raise
    reaper.add(proc.pid)
    timed_out = False
    try:
        await asyncio.wait_for(_exit_of(proc.pid), timeout)
    except TimeoutError:
        timed_out = True
    finally:
        # What the step leaves behind (its process group; as root, its PID namespace) ends with it,
        # and at a timeout or a cancel, all of it.
        await end_process(proc)
        reaper.remove(proc.pid)
    return ProcessResult(None if timed_out else proc.returncode, last_lines(log_path, tail))


async def _exit_of(pid: int) -> None:
    """Wait until process `pid` has ended, without reaping it."""
    fd = os.pidfd_open(pid)
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    loop.add_reader(fd, lambda: ended.done() or ended.set_result(None))
    try:
        await ended
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def end_process(proc: subprocess.Popen) -> None:
    """Kill what is left of a step, then reap its first process. Killed before the reaping, while the
    process group's number is still taken: afterwards it could be a new, unrelated group's."""
    kill_group(proc.pid)
    if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:  # not ended yet
        await _exit_of(proc.pid)
    proc.wait()


def last_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines of a log, reading at most its final 64 KiB."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))
        text = f.read().decode(errors="replace")
    return list(deque(text.splitlines(), maxlen=count))
