"""One engine per data dir, and a scratch root for its steps outside it.

`hold` takes an exclusive lock (flock) on `data_dir/lock` before anything in the data dir is
read, written or deleted; the lock lasts as long as the process holds it (the kernel drops it
when the process ends, `kill -9` included). A second engine on the same data dir is refused, and
told the pid of the one holding it. In one process the lock is shared: the CLI takes it before
anything else, and the engine it then starts takes the same one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
from pathlib import Path

LOCK_FILE = "lock"


class DataDirBusy(Exception):
    def __init__(self, data_dir: Path, pid: str) -> None:
        holder = f"pid {pid}" if pid else "a process that is starting"
        super().__init__(f"data dir {data_dir} is in use by another engine ({holder}); stop it or use another")


class DataDirLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.holders = 1

    def release(self) -> None:
        self.holders -= 1
        if self.holders == 0:
            del _held[self.path]
            os.close(self.fd)


_held: dict[Path, DataDirLock] = {}


def hold(data_dir: Path) -> DataDirLock:
    """Lock `data_dir` (created, mode 0700, if missing) for this process; DataDirBusy if another has it."""
    path = data_dir.resolve()
    if path in _held:
        _held[path].holders += 1
        return _held[path]
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise DataDirBusy(path, pid) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    # The secret, the database and every stored object live here: no one else may even list it.
    if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
        path.chmod(0o700)
    _held[path] = DataDirLock(path, fd)
    return _held[path]


def prepare_work_root(work_root: Path, data_dir: Path) -> None:
    """Make (or check) the directory for steps' scratch dirs, and empty it: what a previous process
    left there belongs to no running step. It must be this user's own, writable by no one else
    (in a shared temp dir, someone else could have made it first), and apart from the data dir."""
    data = data_dir.resolve()
    if work_root.is_relative_to(data) or data.is_relative_to(work_root):
        raise ValueError(f"work_dir {work_root} and data_dir {data} must not lie inside one another")
    work_root.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        work_root.mkdir(mode=0o711)
    st = os.lstat(work_root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ValueError(f"work_dir {work_root} must be a directory of uid {os.geteuid()} that no one else may write "
                         f"to; remove it or choose another work_dir")  # fmt: skip
    work_root.chmod(0o711)  # steps pass through to their own dir; no one lists the others
    for entry in os.scandir(work_root):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.unlink(entry.path)
