"""A throwaway PostgreSQL server on a free loopback port, for the tests (Debian's `postgresql` package).

initdb refuses to run as root: as root, the server runs as the package's `postgres` user, in a
folder of its own under the system's temp dir. Trust authentication on loopback only, no fsync:
test data. Each test gets a database of its own, copied from a migrated template (`create`).
Databases collate by a language (ICU's en-US) unless told otherwise: a query that forgets that keys
compare byte by byte shows up in the tests.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from flowengine.persistence import postgres

TEMPLATE = "flowengine_template"


def binaries() -> Path:
    """The newest installed PostgreSQL's bin folder."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql")
    return found[-1].parent


class Cluster:
    def __init__(self, port: int) -> None:
        self.port = port
        self._names = itertools.count()

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.url("postgres"), autocommit=True)

    def create(self, template: str = TEMPLATE) -> str:
        """A new database, a copy of `template` (the migrated schema); returns its URL."""
        name = f"t_{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def drop(self, url: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')


@contextmanager
def serve() -> Iterator[Cluster]:
    """Start a server (retrying on a port taken meanwhile), with the template migrated; stop it after."""
    bin_dir = binaries()
    folder = Path(tempfile.mkdtemp(prefix="flowengine-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        _open_to_postgres(folder)
    data = folder / "data"
    try:
        subprocess.run([*as_postgres, bin_dir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync",
                        "-E", "UTF8", "--locale", "C.UTF-8", "--locale-provider", "icu", "--icu-locale", "en-US"],
                       check=True, capture_output=True)  # fmt: skip
        for attempt in range(5):
            port = _free_port()
            options = (f"-k {folder} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
                       " -c full_page_writes=off -c max_connections=300")  # fmt: skip
            started = subprocess.run([*as_postgres, bin_dir / "pg_ctl", "-D", data, "-l", folder / "log", "-w",
                                      "-o", options, "start"], capture_output=True)  # fmt: skip
            if started.returncode == 0:
                break
            if attempt == 4:
                raise RuntimeError(f"PostgreSQL did not start:\n{(folder / 'log').read_text()}")
        cluster = Cluster(port)
        try:
            with cluster.admin() as conn:
                conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
            postgres.migrate(cluster.url(TEMPLATE))
            yield cluster
        finally:
            subprocess.run([*as_postgres, bin_dir / "pg_ctl", "-D", data, "-w", "-m", "immediate", "stop"],
                           capture_output=True)  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _open_to_postgres(folder: Path) -> None:
    """Give the folder to `postgres`, and let it through the folders above (a TMPDIR may be private)."""
    shutil.chown(folder, "postgres")
    for above in folder.parents:
        mode = above.stat().st_mode
        if not mode & 0o001:
            above.chmod(mode | 0o001)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
