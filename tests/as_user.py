"""`python tests/as_user.py USER -- COMMAND...`: run COMMAND as USER, started by root, as an engine
that is not root would run: the way the common deployment runs it.

This machine's Python lives under /root (mode 0700), out of an ordinary user's reach: like a step
of a root engine, COMMAND runs in a mount namespace of its own where /root is covered, with only
this Python's directories bound back in (the sandbox's own mount plan, applied once).
"""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

import flowengine
from flowengine.runtime.executors.sandbox import (
    _CLONE_NEWNS,
    _MS_PRIVATE,
    _MS_REC,
    StepUser,
    _apply,
    _check,
    _dirs_on_the_way,
    _libc,
    _passable,
    mount_plan,
    python_dirs,
)


def main(argv: list[str]) -> None:
    entry = pwd.getpwnam(argv[1])
    user = StepUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    command = argv[argv.index("--") + 1 :]
    needed = [*python_dirs(), Path(flowengine.__file__).parent.resolve()]
    closed = {p for p in _dirs_on_the_way(needed) if not _passable(p, user)}
    _check(_libc.unshare(_CLONE_NEWNS))
    _check(_libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None))
    os.umask(0o022)
    _apply(mount_plan([], needed, closed))
    os.umask(0o077)
    os.setgroups([])
    os.setgid(user.gid)
    os.setuid(user.uid)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
