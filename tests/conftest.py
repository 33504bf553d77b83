import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pgserver
import pytest
import s3server
from live import Server
from uploading import Stored, start_on
from webhook_receiver import Receiver

from flowengine.stores.s3 import S3Store


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, Any]]:
    """One throwaway SeaweedFS for the whole session: endpoint, access_key, secret_key, bucket."""
    with s3server.serve(bucket="flows", access_key="testkey", secret_key="testsecret123") as info:
        yield info


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback (webhook_receiver.py), closed after the test."""
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def s3_store(s3: dict[str, Any]) -> S3Store:
    """An S3Store on the session server, under a prefix of its own so tests cannot see each other."""
    return S3Store(
        "s3",
        s3["endpoint"],
        s3["bucket"],
        prefix=f"t-{uuid.uuid4().hex[:12]}",
        secure=False,
        access_key=s3["access_key"],
        secret_key=s3["secret_key"],
        clock=time.time,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends(*names): run each test that starts an engine once per database named (sqlite, postgres)"
    )
    config.addinivalue_line(
        "markers", "slow: minutes on a busy machine (files of several GiB); in the suite, `-m 'not slow'` leaves it out"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module marked `backends("sqlite", "postgres")` runs its engine tests on each: the modules
    whose behaviour goes through the database. The others run on SQLite (the `backend` fixture)."""
    marker = metafunc.definition.get_closest_marker("backends")
    if marker and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", marker.args)


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[pgserver.Cluster]:
    """One throwaway PostgreSQL server for the whole session, started when a test first needs it."""
    with pgserver.serve() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: pgserver.Cluster) -> Iterator[str]:
    """A database of the test's own, its schema migrated, dropped after it."""
    url = postgres_cluster.create()
    yield url
    postgres_cluster.drop(url)


@pytest.fixture
def database_of(backend: str, request: pytest.FixtureRequest) -> Iterator[Callable[[Path], str]]:
    """The `database` setting for an engine on a data dir: "" (SQLite in the data dir) or, on the
    postgres backend, a database of its own per data dir (so that a restart finds its runs again,
    and two engines of one test share nothing, as on SQLite)."""
    made: dict[Path, str] = {}
    if backend == "sqlite":
        yield lambda data_dir: ""
        return
    cluster: pgserver.Cluster = request.getfixturevalue("postgres_cluster")

    def database(data_dir: Path) -> str:
        if data_dir not in made:
            made[data_dir] = cluster.create()
        return made[data_dir]

    yield database
    for url in made.values():
        cluster.drop(url)


@pytest.fixture
def flows_dir(tmp_path: Path) -> Path:
    path = tmp_path / "flows"
    path.mkdir()
    return path


@pytest.fixture
def start_server(
    tmp_path: Path, flows_dir: Path, database_of: Callable[[Path], str]
) -> Iterator[Callable[..., Server]]:
    """Start a real server (stopped at the end of the test): start_server(**FLOWENGINE_settings).
    Its database is the backend's (see database_of) unless `database` is given."""
    started: list[Server] = []

    def start(
        data_dir: Path | None = None,
        port: int | None = None,
        config: str | None = None,
        log_level: str = "warning",
        **settings: Any,
    ) -> Server:
        data = data_dir or tmp_path / f"data{len(started)}"
        if "database" not in settings and (url := database_of(data)):
            settings["database"] = url
            settings.setdefault("local_store_shared", True)  # one engine on the database, the embedded store in use
        server = Server(data, flows_dir, port, config, log_level, **settings).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    return start_server()


@pytest.fixture
def shipped(start_server: Callable[..., Server], flows_dir: Path) -> Server:
    """A server running the repository's flows (flows/*.yaml and their task library)."""
    repo_flows = Path(__file__).resolve().parent.parent / "flows"
    shutil.copytree(repo_flows, flows_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    return start_server()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(params=["local", "s3"])
def files_store_kind(request: pytest.FixtureRequest) -> str:
    """Where the files store is: the embedded store, or S3 (SeaweedFS)."""
    return request.param


@pytest.fixture
def serve_files(
    files_store_kind: str, start_server, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[..., tuple[Server, Stored]]:
    """Start a server whose files store is each kind in turn: serve_files(**settings) -> (server, stored)."""

    def start(**settings: Any) -> tuple[Server, Stored]:
        s3 = request.getfixturevalue("s3") if files_store_kind == "s3" else None
        server = start_on(files_store_kind, start_server, tmp_path, s3, **settings)
        return server, Stored(server, s3)

    return start
