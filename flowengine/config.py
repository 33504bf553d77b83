"""Settings: defaults here, then `config.yaml`, then `FLOWENGINE_*` environment variables, then flags.

Every setting is documented with its default in the repository's `config.yaml`. Paths are made
absolute once, here: a relative path in a config file is relative to that file's directory, any
other (a default, an environment variable, a flag) to the directory the engine was started in.
Durations take seconds or a string like "15m" (see `core/durations.py`).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from flowengine.core import shape
from flowengine.core.durations import parse_duration
from flowengine.core.spec import Store, parse_yaml
from flowengine.errors import Error, Problem
from flowengine.logs import LogFormat

PATH_SETTINGS = ("data_dir", "flows_dir", "work_dir")  # "" (work_dir's default) stays ""
LIST_SETTINGS = (
    "step_read_paths",
    "local_labels",
    "webhook_retry_delays",
)  # from the environment: items separated by ":"
DURATION_SETTINGS = ("session_ttl", "upload_ttl", "download_ttl", "input_retention", "output_retention",
                     "sweep_interval", "reconcile_interval", "reconcile_max_interval",
                     "python_worker_idle", "multipart_ttl",
                     "pair_code_ttl", "lease", "heartbeat_interval", "offer_timeout", "agent_poll",
                     "region_wait", "schedule_to_start")  # fmt: skip
SQLITE = "sqlite:///"
POSTGRES = ("postgresql://", "postgres://")
CLIENT_VARIABLES = ("FLOWENGINE_URL", "FLOWENGINE_KEY")  # read by the examples and clients, not by the engine
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
NoneOrMore = Annotated[int, msgspec.Meta(ge=0)]

Positive = Annotated[float, msgspec.Meta(gt=0)]
WEBHOOK_KEY = r"^(whsec_[A-Za-z0-9+/]{32,}={0,2})?$"


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Port = 1234
    data_dir: str = "./data"
    # sqlite:///PATH (a relative PATH: like data_dir's) or postgresql://USER@HOST:PORT/DB (several
    # engines on one database); empty: sqlite:///{data_dir}/flowengine.db
    database: str = ""
    database_pool_size: AtLeastOne = 10  # PostgreSQL: connections each engine opens at most
    # PostgreSQL, where several engines share the work, refuses embedded (local) stores unless this says
    # that every engine sees the same data_dir/objects and data_dir/meta (a shared mount), or only one runs
    local_store_shared: bool = False
    flows_dir: str = "./flows"
    public_url: str = ""  # base of every URL the engine hands out; empty: the request's own base URL
    secret: str = ""  # HMAC key for embedded-store URLs; empty: generated once, kept in data_dir/secret
    upload_ttl: float = 3600.0  # seconds a presigned upload URL lives (a well's TTL overrides it)
    download_ttl: float = 3600.0  # seconds a presigned download URL lives
    max_upload_size: AtLeastOne = 500_000_000  # bytes, for any single object arriving on a well
    max_body_size: AtLeastOne = 1_048_576  # bytes, for JSON request bodies
    auth: Literal["open", "keys"] = "open"  # keys: every API call needs a credential (teams' keys, session tokens)
    allow_open: bool = False  # serve with auth: open on an address other than loopback (anyone could use it)
    jwt_secret: str = ""  # HMAC key of user session tokens; empty: generated once, kept in data_dir/jwt_secret
    session_ttl: Positive = 43_200.0  # seconds a session token (`flowengine token`) and a dashboard sign-in live (12 h)
    operator_team: str = ""  # a team's name: its keys and members are the dashboard's operators (see every team)
    # Pairing a device (/api/v1/desktop/pair/*): how long a code waits to be confirmed, how often a device
    # may poll, the page users enter codes on ("": {public_url}/desktop/pair), and the limits that keep
    # the anonymous endpoints from being flooded (0: no limit).
    pair_code_ttl: Positive = 300.0  # seconds
    pair_interval: AtLeastOne = 2  # seconds between polls; polling sooner answers slow_down (and adds 5 s)
    pair_verification_url: str = ""
    pair_start_limit: NoneOrMore = 10  # pairings started per minute per client address
    pair_confirm_limit: NoneOrMore = 10  # confirmations tried per minute per user
    pair_max_pending: NoneOrMore = 10_000  # pairings waiting at once, across all clients
    files_store: str = "default"  # where files presigned for the workflow/task API go: default or an operator store
    multipart_part_size: Annotated[int, msgspec.Meta(ge=5 * 1024 * 1024)] = 104_857_600  # bytes a part (100 MiB)
    max_multipart_size: AtLeastOne = 5 * 1024**4  # bytes, for a file sent in parts (5 TiB, S3's largest object)
    multipart_ttl: Positive = 86_400.0  # seconds a multipart upload may stay incomplete; then it is aborted
    inline_flows: bool = True  # accept {"Flow": {...}} bodies and teams' workflows with a flow (task library by name)
    inline_commands: bool = False  # let inline flows define Exec / Python tasks of their own (run on this host)
    inline_stores: bool = False  # let inline flows define stores of their own (the engine connects where they say)
    concurrency: AtLeastOne = 4  # steps the local executor runs at once
    local_labels: list[str] = []  # labels of the local executor: it takes exec and python steps needing no others
    lease: Positive = 30.0  # seconds a worker's lease lasts without a heartbeat; then the attempt fails, retryable
    heartbeat_interval: Positive = 10.0  # seconds between an agent's heartbeats (told at registration)
    offer_timeout: Positive = 10.0  # seconds an offer waits for its acknowledgement; then it goes back to the queue
    agent_poll: Positive = 25.0  # seconds an agent's lease call waits for work by default (it may ask up to 60)
    region_wait: Positive = 5.0  # seconds a step waits for an agent of its submitter_region; then any may take it
    schedule_to_start: Positive = 600.0  # seconds a step no worker can take waits for one; then it fails, saying why
    header_timeout: Positive = 10.0  # seconds for a request's headers to arrive whole; then 408 and closed
    body_timeout: Positive = 30.0  # seconds a request's body may stop arriving; then 408 and closed
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 4096  # open at once (idle ones too); then 503
    work_dir: str = ""  # steps' scratch dirs; empty: flowengine-<uid>-<hash of data_dir> in the system's temp dir
    step_user: str = "nobody"  # when the engine runs as root, steps run as this user (a name or a uid)
    step_read_paths: list[str] = []  # more directories steps may read (with Landlock), besides SYSTEM_READ
    log_tail: int = 20  # lines of a step's output kept in the run document
    python_workers: Annotated[int, msgspec.Meta(ge=0)] = 4  # warm Python workers kept idle at most; 0: none
    python_worker_calls: AtLeastOne = 100  # calls a warm Python worker serves before it is retired
    python_worker_idle: Positive = 300.0  # seconds a warm Python worker may stay idle before it is retired
    input_retention: float = 86_400.0  # seconds uploaded inputs are kept
    output_retention: float = 604_800.0  # seconds step outputs are kept
    sweep_interval: float = 600.0  # seconds between retention sweeps
    events_token: str = ""  # bearer token for POST /api/v1/events/*; empty: the endpoints are off
    reconcile_interval: float = 1.0  # seconds between reconciler ticks
    reconcile_max_interval: float = 60.0  # seconds: a key asked about alone is asked at least this often
    reconcile_concurrency: AtLeastOne = 16  # HEADs in flight per reconciler tick
    reconcile_batch: AtLeastOne = 200  # store requests (listings and HEADs) per tick at most
    s3_access_key: str = ""  # credentials for s3 stores declared in flow files
    s3_secret_key: str = ""
    webhook_allow_private: bool = False  # let webhooks use http:// and private or loopback addresses (tests, LANs)
    webhook_timeout: Positive = 10.0  # seconds a webhook receiver has to answer an attempt; then it counts as failed
    # seconds before each retry of a failed webhook delivery (non-2xx, timeout); after the last, it is failed
    webhook_retry_delays: list[Annotated[float, msgspec.Meta(ge=0)]] = msgspec.field(
        default_factory=lambda: [0.0, 5.0, 30.0, 120.0]
    )
    # signs flow-API runs' webhook deliveries (whsec_<base64 of 24 bytes or more>, as Standard Webhooks
    # keys are); empty: generated once, kept in data_dir/webhook_signing_key (`flowengine webhook-key` prints it)
    webhook_signing_key: Annotated[str, msgspec.Meta(pattern=WEBHOOK_KEY)] = ""
    log_format: LogFormat = "text"  # text | logfmt | json: every log line, run and step transitions included
    stores: list[Store] = []  # operator-defined stores; these may carry credentials in Params

    def __post_init__(self) -> None:
        # Steps, stores and the API never see a relative path: they run in other directories.
        for name in PATH_SETTINGS:
            setattr(self, name, _absolute(getattr(self, name), Path.cwd()))
        self.database = database_url(self.database, Path.cwd())

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def database_url(self) -> str:
        """The database the engine uses: `database`, or SQLite in the data dir."""
        return self.database or f"{SQLITE}{self.data_path / 'flowengine.db'}"

    @property
    def flows_path(self) -> Path:
        return Path(self.flows_dir)

    @property
    def work_path(self) -> Path:
        """Where steps' scratch dirs go: outside the data dir, and one place per data dir."""
        if self.work_dir:
            return Path(self.work_dir)
        digest = hashlib.sha256(str(self.data_path.resolve()).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"flowengine-{os.geteuid()}-{digest}"


def load_config(path: Path | None = None, environ: dict[str, str] | None = None, **overrides: Any) -> Config:
    """Defaults < YAML file < environment (FLOWENGINE_PORT=8080) < explicit overrides (CLI flags).

    A setting that cannot be read raises an Error (kind "invalid") naming the file, variable or flag."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        data.update(_read_file(path))
    # Stores carry structure: config file only.
    variables = {f.name: environ.get(_variable(f.name)) for f in msgspec.structs.fields(Config) if f.name != "stores"}
    data.update(_read_values(variables, _variable))
    data.update(_read_values(overrides, lambda name: "--" + name.replace("_", "-")))
    return msgspec.convert(data, Config)


def _read_file(path: Path) -> dict[str, Any]:
    where = str(path)
    try:
        loaded = parse_yaml(path.read_bytes())
    except FileNotFoundError:
        raise _invalid(where, "no such file") from None
    except OSError as exc:
        raise _invalid(where, f"cannot read it: {exc.strerror}") from None
    except Error as exc:
        raise _invalid(where, exc.message) from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise _invalid(where, f"expected a mapping of settings (name: value), got {shape.describe(loaded)}")
    problems = []
    for name in DURATION_SETTINGS:
        if name in loaded:
            try:
                loaded[name] = _seconds(loaded[name])
            except ValueError as exc:
                problems.append(Problem(name, str(exc)))
                del loaded[name]
    problems += shape.shape_problems(loaded, Config)
    if isinstance(loaded.get("database"), str):
        try:
            loaded["database"] = database_url(loaded["database"], path.resolve().parent)
        except ValueError as exc:
            problems.append(Problem("database", str(exc)))
    if problems:
        raise Error("invalid", "invalid_config", problems[0].line(where), where, problems)
    for name in PATH_SETTINGS:
        if name in loaded:
            loaded[name] = _absolute(loaded[name], path.resolve().parent)
    return loaded


def _variable(name: str) -> str:
    return f"FLOWENGINE_{name.upper()}"


def _read_values(values: dict[str, Any], where: Callable[[str], str]) -> dict[str, Any]:
    """Settings given as strings (environment) or typed values (flags), each checked on its own so
    an error names where it came from; None: not given."""
    types = {field.name: field.type for field in msgspec.structs.fields(Config)}
    read: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if name in DURATION_SETTINGS:
            read[name] = _duration(value, where(name))
            continue
        if name == "database":
            try:
                read[name] = database_url(value, Path.cwd())
            except ValueError as exc:
                raise _invalid(where(name), str(exc)) from None
            continue
        if name in LIST_SETTINGS and isinstance(value, str):
            value = value.split(os.pathsep)  # FLOWENGINE_STEP_READ_PATHS=/opt/a:/opt/b, like PATH
        try:
            read[name] = msgspec.convert(value, types[name], strict=False)  # "8080" -> 8080, "false" -> False
        except msgspec.ValidationError:
            raise _invalid(where(name), f"{value!r} is not {shape.expected(types[name])}") from None
    return read


def unknown_variables(environ: dict[str, str]) -> list[str]:
    """A warning for each FLOWENGINE_* variable that is no setting (a typo is otherwise silent)."""
    known = [_variable(field.name) for field in msgspec.structs.fields(Config) if field.name != "stores"]
    warnings = []
    for variable in sorted(environ):
        if variable == _variable("stores"):
            warnings.append(f"{variable} is ignored: stores are defined in the config file")
        elif variable.startswith("FLOWENGINE_") and variable not in known and variable not in CLIENT_VARIABLES:
            meant = difflib.get_close_matches(variable, known, 1, 0.8)
            hint = f"; did you mean {meant[0]}?" if meant else ""
            warnings.append(f"{variable} is not a setting and is ignored{hint}")
    return warnings


def _duration(value: Any, where: str) -> float:
    try:
        return _seconds(value)
    except ValueError as exc:
        raise _invalid(where, str(exc)) from None


def _seconds(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be more than 0 seconds")
    return seconds


def _absolute(value: Any, base: Path) -> Any:
    """A path setting made absolute against `base` ("~" is the user's home); other values are left
    for the type check to report."""
    if not isinstance(value, str) or not value:
        return value
    return str((base / Path(value).expanduser()).resolve())


def database_url(value: str, base: Path) -> str:
    """A `database` setting checked, with a relative SQLite path made absolute against `base`:
    sqlite:///db.sqlite is relative, sqlite:////var/lib/flowengine.db absolute (as SQLAlchemy reads
    them). The message of a bad one names its scheme only: a URL may hold a password."""
    if not value or value.startswith(POSTGRES):
        return value
    if value.startswith(SQLITE):
        path = value.removeprefix(SQLITE)
        if not path:
            raise ValueError("sqlite:/// needs a path: sqlite:///flowengine.db, sqlite:////var/lib/flowengine.db")
        return SQLITE + _absolute(path, base)
    if value.startswith("sqlite:"):
        raise ValueError("a SQLite database is sqlite:///PATH (relative) or sqlite:////PATH (absolute)")
    scheme = f" {value.partition(':')[0]!r}" if "://" in value else ""
    raise ValueError(f"unknown kind of database{scheme}: expected sqlite:///PATH or postgresql://USER@HOST/DATABASE")


def _invalid(where: str, message: str) -> Error:
    return Error("invalid", "invalid_config", f"{where}: {message}", where, [Problem("", message)])


def ensure_secret(
    config: Config,
    name: Literal["secret", "jwt_secret", "webhook_signing_key"] = "secret",
    new: Callable[[], str] = lambda: secrets.token_hex(32),
) -> bytes:
    """A signing key: the setting `name`, or one `new` made once and kept in the data dir as a file of
    that name (0600), so every start (and the CLI) signs with the same one."""
    value = getattr(config, name)
    if value:
        return value.encode()
    path = config.data_path / name
    if not path.exists():
        config.data_path.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # two processes at once: the first one's stays
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(new())
    return path.read_text().strip().encode()
