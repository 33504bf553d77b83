"""No step process outlives its engine, even one killed with `kill -9`.

The engine starts one reaper process and holds the write end of a pipe to it: `+PID` when a step
starts (the step leads a process group of that number, and when the engine is root, a PID
namespace), `-PID` once it is gone. When the pipe closes, however the engine ended, the reaper
kills every process group still listed, and exits. PR_SET_PDEATHSIG would reach a step's first
process only, not what it started; the reaper's kill reaches the whole group (and, as root, the
whole namespace).

Run as `python -m flowengine.runtime.executors.reaper`, the pipe on its standard input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys

log = logging.getLogger("flowengine")


def main() -> int:
    # A Ctrl-C or SIGTERM meant for the engine: the reaper's work starts when the engine is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    live: set[int] = set()
    pending = b""
    while chunk := os.read(0, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            (live.add if line[:1] == b"+" else live.discard)(int(line[1:]))
    for pid in live:
        kill_group(pid)
    return 0


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class Reaper:
    """The engine's side: start the reaper, tell it about steps, restart it if it dies."""

    def __init__(self) -> None:
        self.live: set[int] = set()
        self._proc: subprocess.Popen | None = None
        self._pipe = -1
        self._watch = -1

    def start(self) -> None:
        read, self._pipe = os.pipe2(os.O_CLOEXEC)
        try:
            # Not the engine's environment: it holds the engine's secrets, and a process's is readable in /proc.
            env = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "PYTHONHOME")}
            self._proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=read, env=env,
                                          start_new_session=True)  # fmt: skip
        finally:
            os.close(read)
        for pid in self.live:
            self._send(b"+%d\n" % pid)
        self._watch = os.pidfd_open(self._proc.pid)
        asyncio.get_running_loop().add_reader(self._watch, self._died)

    def _died(self) -> None:
        code = self._proc.wait() if self._proc else None
        log.error("the step reaper exited (status %s); starting another", code)
        self._close()
        self.start()

    def add(self, pid: int) -> None:
        self.live.add(pid)
        self._send(b"+%d\n" % pid)

    def remove(self, pid: int) -> None:
        self.live.discard(pid)
        self._send(b"-%d\n" % pid)

    def _send(self, line: bytes) -> None:
        with contextlib.suppress(BrokenPipeError):  # it died: _died starts another, told of every live step
            os.write(self._pipe, line)

    def _close(self) -> None:
        if self._watch >= 0:
            asyncio.get_running_loop().remove_reader(self._watch)
            os.close(self._watch)
            self._watch = -1
        if self._pipe >= 0:
            os.close(self._pipe)
            self._pipe = -1

    def stop(self) -> None:
        """Close the pipe: the reaper kills whatever is still listed, and exits."""
        self._close()
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)


if __name__ == "__main__":
    sys.exit(main())
