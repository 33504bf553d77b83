"""What a step's process can reach, and as whom it runs.

`Sandbox.prepare` works out once, at start, what the kernel and the engine's user allow; `start`
then starts each step from a fresh thread that confines itself first and ends right after.
Linux keeps credentials, the mount namespace and the Landlock domain per thread, and a process
inherits them from the thread that started it, so subprocess can start the step with vfork and
exec (no Python runs in the child, nothing of the engine's memory is copied) while the engine's
own threads stay as they were.

- Every step: where the kernel has Landlock, the step may read and execute only the system
  directories (`SYSTEM_READ`), the Python installation, the flows directory and `step_read_paths`;
  use the devices in /dev; and write only beneath its own scratch dir. It cannot signal processes
  outside itself. Set-user-ID programs do not raise its privileges (no_new_privs).
- When the engine runs as root: the step runs as `step_user`, in a mount namespace of its own
  where the data dir and the scratch root are covered by empty tmpfs mounts, with only its own
  scratch dir bound back in. A closed directory on the way to something the step must read
  (/root, for a Python under /root/.pyenv) is covered the same way, with only that path bound
  back. And in a PID namespace of its own: when its main process ends, all it started ends too.
"""

from __future__ import annotations

import _thread
import ctypes
import logging
import os
import platform
import pwd
import stat
import subprocess
import sys
import threading
from collections.abc import Collection, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import NamedTuple

import flowengine
from flowengine.runtime.executors import landlock

log = logging.getLogger("flowengine")

# Read (and execute) for every step: programs, libraries, configuration, /proc and /sys, and where
# /etc/resolv.conf often points.
SYSTEM_READ = ("/bin", "/sbin", "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/sys",
               "/run/systemd/resolve")  # fmt: skip
DEVICES = "/dev"

_CLONE_NEWNS, _CLONE_NEWPID = 0x00020000, 0x20000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
_COVER_OPTIONS = b"mode=0755,size=64k"
_PR_SET_DUMPABLE = 4
# setgroups, setresgid, setresuid: made as system calls, not through libc, whose wrappers apply them
# to every thread of the process (POSIX); these must change the calling thread only.
_ID_CALLS = {"x86_64": (116, 119, 117), "aarch64": (159, 149, 147), "riscv64": (159, 149, 147)}.get(platform.machine())

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.syscall.restype = ctypes.c_long


class StepUser(NamedTuple):
    name: str
    uid: int
    gid: int


class Cover(NamedTuple):
    path: Path  # an empty tmpfs goes over this directory


class Reveal(NamedTuple):
    path: Path  # the real directory is bound back at its own path, inside the cover above it


def mount_plan(hide: Iterable[Path], reveal: Iterable[Path], closed: Collection[Path]) -> list[Cover | Reveal]:
    """The mounts, in order, that hide `hide` and make each of `reveal` reachable.

    `closed` holds directories the step's user may not pass through: each one on the way to a
    revealed path is covered too, and the path bound back inside (its parents inside the cover
    are plain tmpfs directories). A cover inside another cover is needed only where a reveal in
    between brought the real contents back; a reveal only where a cover is the nearest mark above.
    """
    covers = set(hide) | {parent for path in reveal for parent in path.parents if parent in closed}
    # A path both to reveal and to cover stays covered: hidden, or closed to the step's user anyway
    # (deeper reveals are bound into its cover).
    marks = sorted([*map(Cover, covers), *(Reveal(p) for p in reveal if p not in covers)],
                   key=lambda m: (len(m.path.parts), m.path))  # fmt: skip
    plan: list[Cover | Reveal] = []
    for mark in marks:
        above = max((m for m in plan if mark.path.is_relative_to(m.path) and mark.path != m.path),
                    key=lambda m: len(m.path.parts), default=None)  # fmt: skip
        if isinstance(above, Cover) if isinstance(mark, Reveal) else not isinstance(above, Cover):
            plan.append(mark)
    return plan


class Sandbox:
    def __init__(
        self,
        *,
        data_dir: Path,
        work_root: Path,
        reveal: list[Path],
        user: StepUser | None,
        namespaces: bool,
        rules: landlock.Rules | None,
    ) -> None:
        self.data_dir = data_dir
        self.work_root = work_root
        self.reveal = reveal  # what steps must read: Python, the flows dir, step_read_paths
        self.user = user
        self.namespaces = namespaces
        self.rules = rules
        self._closed = {p for p in _dirs_on_the_way([*reveal, work_root]) if user and not _passable(p, user)}
        # The mounts are the same for every step but its scratch dir, revealed last: it lies beneath
        # the covered work root (or a cover above that), and nothing in the plan lies beneath it.
        # The work root among the reveals only has the closed dirs on the way to it covered.
        self._plan = mount_plan([data_dir, work_root], [*reveal, work_root], self._closed)

    @classmethod
    def prepare(
        cls, data_dir: Path, work_root: Path, flows_dir: Path, step_user: str, read_paths: Iterable[str]
    ) -> Sandbox:
        """Find out what confinement this kernel and this user allow; log what is missing."""
        if sys.platform != "linux":
            raise RuntimeError("flowengine runs steps on Linux only (pidfd, Landlock, namespaces)")
        # The engine's memory and environment (its secrets) out of reach of its own user's processes
        # (a step, when the engine is not root) even without Landlock, which also keeps them out.
        _check(_libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0))
        reveal = _unnested([*python_dirs(), Path(flowengine.__file__).parent.resolve(), flows_dir.resolve(),
                            *(Path(p).resolve() for p in read_paths)])  # fmt: skip
        root = os.geteuid() == 0
        user = step_user_ids(step_user) if root else None
        abi = landlock.abi_version()
        rules = None
        if abi:
            rules = landlock.Rules(abi)
            for path in [*map(Path, SYSTEM_READ), *reveal]:
                rules.allow(path, landlock.READ)
            rules.allow(Path(DEVICES), landlock.DEVICES)
        sandbox = cls(data_dir=data_dir, work_root=work_root, reveal=reveal, user=user,
                      namespaces=root and _namespaces_available(), rules=rules)  # fmt: skip
        for problem in sandbox.problems():
            log.warning("%s", problem)
        return sandbox

    def problems(self) -> list[str]:
        """What this sandbox cannot keep steps from, in words for the start-up log."""
        problems = []
        if self.rules is None and not self.namespaces:
            problems.append(f"steps are not isolated: this kernel has no Landlock and the engine is not root, "
                            f"so steps can read all its user can, the data dir {self.data_dir} included")  # fmt: skip
        elif not self.namespaces:
            readable = [str(p) for p in [*map(Path, SYSTEM_READ), *self.reveal]
                        if self.data_dir.is_relative_to(p) or self.work_root.is_relative_to(p)]  # fmt: skip
            if readable:
                problems.append(f"steps may read {', '.join(readable)}, which holds the data dir or the work dir")
        if self.user and not self.namespaces and self._closed:
            problems.append(f"steps run as {self.user.name!r}, who cannot pass through "
                            f"{', '.join(map(str, sorted(self._closed)))}: what lies beneath (Python?) "
                            f"is out of their reach")  # fmt: skip
        return problems

    def start(
        self, argv: list[str], env: dict[str, str], scratch: Path, log_fd: int, pass_fds: tuple[int, ...] = ()
    ) -> Future[subprocess.Popen]:
        """Start a step's process in `scratch`, its output and errors going to `log_fd`; it inherits
        `pass_fds` besides."""
        done: Future[subprocess.Popen] = Future()
        # no handshake: done says it all
        _thread.start_new_thread(self._start, (done, argv, env, scratch, log_fd, pass_fds))
        return done

    def _start(self, done: Future, *args: object) -> None:
        """In a thread of its own, thrown away after: confine it, then start the step from it."""
        try:
            done.set_result(self._confined_popen(*args))
        except BaseException as exc:
            done.set_exception(exc)

    def _confined_popen(
        self, argv: list[str], env: dict[str, str], scratch: Path, log_fd: int, pass_fds: tuple[int, ...]
    ) -> subprocess.Popen:
        if self.namespaces:
            _check(_libc.unshare(_CLONE_NEWNS | _CLONE_NEWPID))
            os.umask(0o022)  # this thread's own now (unshare gave it its own fs attributes): covers' dirs are 0755
            _check(_libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None))  # nothing leaks back to the host
            _apply([*self._plan, Reveal(scratch)])
        if self.rules is not None:
            fd = os.open(scratch, os.O_PATH | os.O_CLOEXEC)
            try:
                self.rules.restrict_thread([(fd, landlock.ALL)])
            finally:
                os.close(fd)
        ids = _drop_thread_to(self.user) if self.user is not None else {}
        return subprocess.Popen(argv, cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                start_new_session=True, umask=0o077, pass_fds=pass_fds, **ids)  # fmt: skip

    def close(self) -> None:
        if self.rules is not None:
            self.rules.close()


def step_user_ids(name: str) -> StepUser:
    """The user steps run as when the engine is root: never root itself."""
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, ValueError):
        raise ValueError(f"step_user {name!r} is not a user on this machine") from None
    if entry.pw_uid == 0:
        raise ValueError(f"step_user {name!r} is root: steps must run as an unprivileged user")
    return StepUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def python_dirs() -> list[Path]:
    """Where this Python and its packages live: a step running a Python task needs them."""
    return [Path(p).resolve() for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}]


def _unnested(paths: list[Path]) -> list[Path]:
    """The paths without those inside another one of them."""
    unique = set(paths)
    return sorted(p for p in unique if not any(p != q and p.is_relative_to(q) for q in unique))


def _dirs_on_the_way(paths: Iterable[Path]) -> set[Path]:
    return {parent for path in paths for parent in path.parents}


def _passable(directory: Path, user: StepUser) -> bool:
    """Whether `user` may pass through `directory` (search permission), as the kernel would decide."""
    try:
        st = os.stat(directory)
    except OSError:
        return True  # nothing there to cover
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    return bool(st.st_mode & (stat.S_IXGRP if st.st_gid == user.gid else stat.S_IXOTH))


def _apply(plan: list[Cover | Reveal]) -> None:
    # Bind sources are opened first, while nothing covers them yet.
    sources = {m.path: os.open(m.path, os.O_PATH | os.O_CLOEXEC) for m in plan if isinstance(m, Reveal)}
    try:
        for mark in plan:
            target = bytes(mark.path)
            if isinstance(mark, Cover):
                flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
                _check(_libc.mount(b"tmpfs", target, b"tmpfs", flags, _COVER_OPTIONS))
            else:
                os.makedirs(mark.path, exist_ok=True)  # inside the cover's tmpfs
                source = f"/proc/self/fd/{sources[mark.path]}".encode()
                _check(_libc.mount(source, target, None, _MS_BIND | _MS_REC, None))
    finally:
        for fd in sources.values():
            os.close(fd)


def _drop_thread_to(user: StepUser) -> dict:
    """Make the calling thread `user`; {} when done, else the arguments for subprocess to do it in the child."""
    if _ID_CALLS is None:  # an architecture whose numbers we do not know: subprocess forks instead of vforking
        return {"user": user.uid, "group": user.gid, "extra_groups": []}
    setgroups, setresgid, setresuid = _ID_CALLS
    _check(_libc.syscall(setgroups, 0, None))
    _check(_libc.syscall(setresgid, user.gid, user.gid, user.gid))
    _check(_libc.syscall(setresuid, user.uid, user.uid, user.uid))
    return {}


def _namespaces_available() -> bool:
    """Whether this process may make mount and PID namespaces (root, and not denied by a container)."""

    def probe(result: list[bool]) -> None:
        result.append(_libc.unshare(_CLONE_NEWNS | _CLONE_NEWPID) == 0)

    result: list[bool] = []
    thread = threading.Thread(target=probe, args=(result,), name="namespace-probe")  # thrown away with its namespace
    thread.start()
    thread.join()
    return result[0]


def _check(result: int) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result
