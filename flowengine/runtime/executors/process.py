"""Run one subprocess with a timeout, its stdout and stderr going to a log file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from pathlib import Path

import msgspec


class ProcessResult(msgspec.Struct, frozen=True):
    returncode: int | None  # None: killed at the timeout
    logs: list[str]  # the last lines of output


async def run_process(
    argv: list[str], cwd: Path, env: dict[str, str], log_path: Path, timeout: float, tail: int
) -> ProcessResult:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,  # its own process group: a kill reaches its children too
        )  # fmt: skip
        try:
            returncode: int | None = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            returncode = None
        except asyncio.CancelledError:
            _kill_group(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                await asyncio.shield(proc.wait())
            raise
    return ProcessResult(returncode, last_lines(log_path, tail))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def last_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines of a log, reading at most its final 64 KiB."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))
        text = f.read().decode(errors="replace")
    return list(deque(text.splitlines(), maxlen=count))
