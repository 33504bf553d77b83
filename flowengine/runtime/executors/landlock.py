"""Linux Landlock (kernel 5.13 and later): confine a thread, and every process it starts, to a set of paths.

Landlock is checked on top of file permissions and even for root, so it protects the data dir
when the engine runs as an ordinary user (the usual deployment), where steps share its uid.
A ruleset lists what is allowed beneath each path; everything else of the kinds it handles is
refused. `restrict_thread` applies one to the calling thread only (the Linux credential model is
per thread); a process that thread then starts inherits it and can never shed it.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

# System call numbers: the same on every architecture (they were added after the tables were unified).
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
READ = EXECUTE | READ_FILE | READ_DIR
DEVICES = READ_FILE | WRITE_FILE | IOCTL_DEV  # /dev/null, /dev/urandom, a tty: use them, create nothing
ALL = (1 << 16) - 1  # everything up to ABI 5; masked down to what the kernel knows
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # the rights a rule on a file may carry
# Handled rights by ABI version: 1 knows 13 rights, 2 adds REFER, 3 TRUNCATE, 5 IOCTL_DEV.
_FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
# ABI 6: a confined process may not signal, nor connect to the abstract unix sockets of, processes outside.
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]  # fmt: skip


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    version = _libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(int(version), 0)


def _check(result: int) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


class Rules:
    """Paths and what a confined process may do beneath each, opened once (O_PATH) and kept.

    A path that does not exist is left out: there is nothing there to allow.
    """

    def __init__(self, abi: int) -> None:
        self.abi = abi
        self.handled = _FS_RIGHTS.get(abi, ALL)
        self.scoped = _SCOPE_SIGNAL | _SCOPE_ABSTRACT_UNIX_SOCKET if abi >= 6 else 0
        self._rules: list[tuple[int, int]] = []  # (fd, allowed)

    def allow(self, path: Path, access: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        self._rules.append((fd, self._fit(fd, access)))

    def _fit(self, fd: int, access: int) -> int:
        access &= self.handled
        return access if os.path.isdir(f"/proc/self/fd/{fd}") else access & FILE_RIGHTS

    def restrict_thread(self, extra: list[tuple[int, int]] = ()) -> None:
        """Confine the calling thread to these rules plus `extra` ((O_PATH fd, access) pairs)."""
        attr = _RulesetAttr(self.handled, 0, self.scoped)
        ruleset = _check(_libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0))
        try:
            for fd, access in [*self._rules, *((fd, self._fit(fd, a)) for fd, a in extra)]:
                rule = _PathBeneath(access, fd)
                _check(_libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0))
            # Required to confine without CAP_SYS_ADMIN; it also keeps set-user-ID programs from raising privileges.
            _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
            _check(_libc.syscall(_RESTRICT_SELF, ruleset, 0))
        finally:
            os.close(ruleset)

    def close(self) -> None:
        for fd, _ in self._rules:
            os.close(fd)
        self._rules = []
