"""`python pyrun.py REQUEST.json`: call a task's `module:function` in a step's process.

The function is called as `function(inputs={slot: path}, flags={...}, workdir=path)` and returns
`{output slot: path}`; the answer is written to the file named in the request.

`python pyrun.py --serve FD CONFIG.json`: a warm worker (`warm.py` starts it, already confined as
a step is, in a directory of its own). It imports the module named in the config once, then for each
call the engine sends on the socket FD forks a child that confines itself to that call (below) and
calls the function as above; the worker itself never runs a call.

`python -m flowengine.runtime.executors.pyrun --check DIR ANSWER.json TARGET...` only imports each
target, with DIR first on the path, and writes a `CheckAnswer`: what failed, and the files the answer
depends on (so a caller knows when to ask again). Operator code is never imported by the engine.
"""

from __future__ import annotations

import contextlib
import ctypes
import difflib
import importlib
import importlib.util
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import msgspec


class Request(msgspec.Struct):
    target: str
    inputs: dict[str, str]
    flags: dict[str, str | int | float | bool]
    workdir: str
    answer: str


class Call(msgspec.Struct):
    """What a warm worker's call reads from `call.json` in its scratch dir: the request and its environment."""

    request: Request
    env: dict[str, str]


class ServeConfig(msgspec.Struct):
    module: str  # imported once, before the first call
    directory: str  # the flows directory: the files the import read there are watched
    read: list[str]  # what a call may read and execute (as a step's Landlock rules say)
    devices: str
    abi: int  # Landlock's


class Reply(msgspec.Struct, omit_defaults=True):
    kind: str  # ready | failed (the import) | started (pid) | ended (code, leftover)
    pid: int = 0
    code: int = 0
    leftover: bool = False  # a process the call started outlived it: the worker retires
    files: list[str] = []  # ready: the files under the flows directory the import read


class CheckAnswer(msgspec.Struct):
    problems: dict[str, str]  # target -> why it cannot be called
    files: list[str]  # the modules' files under DIR (and DIR): the answer holds while none changes


def resolve(target: str) -> Callable[..., Any]:
    """The callable a "module:function" (or "package.module:Class.method") names."""
    module_name, _, qualname = target.partition(":")
    return _attribute(importlib.import_module(module_name), module_name, qualname)


def _attribute(module: Any, module_name: str, qualname: str) -> Callable[..., Any]:
    found = module
    for part in qualname.split("."):
        if not hasattr(found, part):
            meant = difflib.get_close_matches(part, [name for name in dir(found) if not name.startswith("_")], 1)
            hint = f", did you mean {meant[0]!r}?" if meant else ""
            raise AttributeError(f"module {module_name!r} has no {qualname!r}{hint}")
        found = getattr(found, part)
    if not callable(found):
        kind = type(found).__name__
        raise TypeError(f"{qualname!r} in module {module_name!r} is not callable (it is of type {kind})")
    return found


def check(directory: str, targets: list[str]) -> CheckAnswer:
    problems: dict[str, str] = {}
    touched: set[str] = set()
    for target in targets:
        module_name, _, qualname = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except BaseException as exc:  # an operator's module may raise anything, even SystemExit
            problems[target] = _import_failure(module_name, exc)
            touched.update(_origins(module_name, exc))
            continue
        try:
            _attribute(module, module_name, qualname)
        except Exception as exc:
            problems[target] = str(exc)
    return CheckAnswer(problems, sources(directory, touched))


def sources(directory: str, also: set[str] = frozenset()) -> list[str]:
    """The files under `directory` that the modules imported came from, `also`, and `directory`
    itself (a module added there could change what an import finds): an import holds while none changes."""
    root = str(Path(directory).resolve())
    files = {getattr(module, "__file__", None) for module in list(sys.modules.values())} | also
    return sorted({root, *(f for f in files if f and f.startswith(root + os.sep))})


def _import_failure(module_name: str, exc: BaseException) -> str:
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if missing and (module_name == missing or module_name.startswith(missing + ".")):
        return f"no module named {missing!r} in the flows directory (or installed)"
    return f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"


def _origins(module_name: str, exc: BaseException) -> list[str]:
    """Files a failed import read, so fixing one of them makes the answer stale."""
    files = [exc.filename] if isinstance(exc, SyntaxError) and exc.filename else []
    try:
        spec = importlib.util.find_spec(module_name)
    except BaseException:  # a parent package that fails to import
        return files
    return [*files, *([spec.origin] if spec and spec.origin else [])]


def call(request: Request) -> None:
    function = resolve(request.target)
    outputs = function(inputs=request.inputs, flags=request.flags, workdir=request.workdir) or {}
    answer = {str(slot): str(path) for slot, path in dict(outputs).items()}
    Path(request.answer).write_bytes(msgspec.json.encode(answer))


# ---------------------------------------------------------------------------------------------
# A warm worker: a fork server. The worker imports the module once, confined as a step is, with
# write access beneath its own directory only (where the engine makes its calls' scratch dirs).
# Each call is a child forked from it, so what a call changes (module globals, the environment,
# the working directory, sys.path, open files) is the child's copy and ends with it: the next
# call starts again from the worker's state right after the import. Before the operator's
# function runs, the child confines itself to its call: a session of its own (the engine and the
# worker kill its process group at the end), killed if the worker dies, a Landlock layer of its
# own that lets it write its own scratch dir only (layers only ever narrow: the worker's is
# wider), the scratch dir as its working directory, every inherited descriptor but 0-2 closed,
# its own environment. The worker itself runs no call and keeps no call's data.

_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36
STRAY_GRACE = 0.5  # seconds for the processes a call's end killed to be reaped before they count as strays


def serve(fd: int, config: ServeConfig) -> int:
    channel = socket.socket(fileno=fd)
    libc = ctypes.CDLL(None, use_errno=True)
    if os.getpid() != 1:  # no PID namespace of its own (the engine is not root): strays come back here
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        importlib.import_module(config.module)
    except BaseException:  # an operator's module may raise anything, even SystemExit
        traceback.print_exc()
        channel.send(msgspec.json.encode(Reply("failed")))
        return 1
    landlock = _sibling("landlock")
    rules = landlock.Rules(config.abi)
    for path in config.read:
        rules.allow(Path(path), landlock.READ)
    rules.allow(Path(config.devices), landlock.DEVICES)
    channel.send(msgspec.json.encode(Reply("ready", files=sources(config.directory))))
    worker = os.getpid()
    while True:
        message, fds, _, _ = socket.recv_fds(channel, 4096, 1)
        if not message or len(fds) != 1:
            return 0  # the engine closed the channel: retired
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_call(message.decode(), fds[0], worker, libc, rules, landlock.ALL)
        os.close(fds[0])
        channel.send(msgspec.json.encode(Reply("started", pid=pid)))
        code = _end_call(pid)
        leftover = _strays_left()
        if leftover:  # before answering: the engine retires a worker that had strays, and were it to
            _kill_strays()  # end first, its strays would go to init and live on
        channel.send(msgspec.json.encode(Reply("ended", code=code, leftover=leftover)))
        if leftover:
            return 0


def _run_call(scratch: str, log_fd: int, worker: int, libc: Any, rules: Any, everything: int) -> NoReturn:
    """In the forked child: confine it to its call, then call the function. Never returns."""
    code = 1
    try:
        os.setsid()
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != worker:  # the worker died before the line above: nothing will end this call
            os._exit(1)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        fd = os.open(scratch, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        rules.restrict_thread([(fd, everything)])
        os.chdir(fd)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the channel, the rules, what the import left open
        os.umask(0o077)
        request = msgspec.json.decode(Path("call.json").read_bytes(), type=Call)
        os.environ.clear()
        os.environ.update(request.env)
        if "tempfile" in sys.modules:
            sys.modules["tempfile"].tempdir = None  # cached by an import; it follows this call's TMPDIR now
        call(request.request)
        code = 0
    except SystemExit as exc:
        code = _exit_status(exc)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):  # a call may have closed or replaced them
                stream.flush()
        os._exit(code)


def _exit_status(exc: SystemExit) -> int:
    """What the interpreter would exit with for this SystemExit."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def _end_call(pid: int) -> int:
    """Wait for the call's child to end; kill what is left of its process group before reaping it
    (afterwards the group's number could be a new, unrelated group's). Its exit code."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _strays_left() -> bool:
    """Reap what the call's end killed; whether a process it started is alive still (it left the
    call's process group, and came back to this worker as its subreaper or its PID namespace's init)."""
    deadline = time.monotonic() + STRAY_GRACE
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            if time.monotonic() > deadline:
                return True
            time.sleep(0.005)


def _kill_strays() -> None:
    """Before the worker retires. In a PID namespace of its own (as root), its exit kills them all;
    otherwise they are its children, found in /proc."""
    if os.getpid() == 1:
        return
    for _ in range(100):  # a stray may be starting others meanwhile
        strays = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and _parent_of(e.name) == os.getpid()]
        if not strays:
            return
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _strays_left()


def _parent_of(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _sibling(name: str) -> Any:
    """A module of this directory, by its path: this script imports nothing of flowengine by name."""
    spec = importlib.util.spec_from_file_location(f"_flowengine_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--check"]:
        directory, answer_path, targets = argv[2], argv[3], argv[4:]
        sys.path.insert(0, directory)
        Path(answer_path).write_bytes(msgspec.json.encode(check(directory, targets)))
        return 0
    if argv[1:2] == ["--serve"]:
        return serve(int(argv[2]), msgspec.json.decode(argv[3], type=ServeConfig))
    call(msgspec.json.decode(Path(argv[1]).read_bytes(), type=Request))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
