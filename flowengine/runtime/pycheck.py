"""Whether each Python task's "module:function" can be called: asked of a child process.

Operator code is imported only in the child (`executors/pyrun.py --check`), never in the engine or
the CLI, with the flow file's directory first on the path, as when its steps run. The answer keeps
the modification times of the files it depends on, so it is asked again only when one changes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec

from flowengine.core.spec import Task
from flowengine.core.validate import PYTHON_TARGET
from flowengine.errors import Problem
from flowengine.runtime.executors.pyrun import CheckAnswer

CHECK_TIMEOUT = 60.0  # seconds: importing a heavy library (a deep-learning one) can take a while
_PASSED_ON = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR")  # never the engine's secrets


class ImportCheck(msgspec.Struct, frozen=True):
    problems: dict[str, str]  # target -> why it cannot be called
    files: tuple[tuple[str, int], ...] = ()  # (path, mtime_ns) of what the answer depends on

    def fresh(self) -> bool:
        return all(mtime(path) == when for path, when in self.files)


def targets(tasks: list[Task]) -> list[str]:
    """The tasks' well-formed Python targets (a malformed one is `validate`'s to report)."""
    return list(dict.fromkeys(t.python for t in tasks if t.python and PYTHON_TARGET.fullmatch(t.python)))


def import_problems(tasks: list[Task], check: ImportCheck) -> list[Problem]:
    return [
        Problem(f"Tasks[{i}].Python", f"cannot call {task.python!r}: {check.problems[task.python]}")
        for i, task in enumerate(tasks)
        if task.python in check.problems
    ]


def check_imports(directory: Path, wanted: list[str]) -> ImportCheck:
    """Import every target in one child process (blocking: call it from a worker thread)."""
    if not wanted:
        return ImportCheck({})
    directory = directory.resolve()  # the child runs elsewhere
    with tempfile.TemporaryDirectory(prefix="flowengine-check-") as scratch:
        answer = Path(scratch) / "answer.json"
        argv = [sys.executable, "-B", "-m", "flowengine.runtime.executors.pyrun", "--check", str(directory),
                str(answer), *wanted]  # fmt: skip
        try:
            done = subprocess.run(argv, cwd=scratch, env=_environment(directory), stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=CHECK_TIMEOUT)  # fmt: skip
        except subprocess.TimeoutExpired:
            why = f"importing it took longer than {CHECK_TIMEOUT:g}s"
            return ImportCheck(dict.fromkeys(wanted, why), ((str(directory), mtime(str(directory))),))
        if done.returncode != 0 or not answer.is_file():  # the module ended the child (os._exit, a crash)
            last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            why = f"the import check exited with status {done.returncode}: {last}"
            return ImportCheck(dict.fromkeys(wanted, why), ((str(directory), mtime(str(directory))),))
        found = msgspec.json.decode(answer.read_bytes(), type=CheckAnswer)
    return ImportCheck(found.problems, tuple((path, mtime(path)) for path in found.files))


def _environment(directory: Path) -> dict[str, str]:
    env = {name: os.environ[name] for name in _PASSED_ON if name in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH")) if p)
    return env


def mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1
