"""Settings: defaults here, then `config.yaml`, then `FLOWENGINE_*` environment variables.

Every setting is documented with its default in the repository's `config.yaml`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import msgspec
import yaml

from flowengine.core.spec import Store


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 1234
    data_dir: str = "./data"
    flows_dir: str = "./flows"
    public_url: str = ""  # base of every URL the engine hands out; empty: the request's own base URL
    secret: str = ""  # HMAC key for embedded-store URLs; empty: generated once, kept in data_dir/secret
    upload_ttl: float = 3600.0  # seconds a presigned upload URL lives (a well's TTL overrides it)
    download_ttl: float = 3600.0  # seconds a presigned download URL lives
    max_upload_size: int = 500_000_000  # bytes, for any single object arriving on a well
    max_body_size: int = 1_048_576  # bytes, for JSON request bodies
    inline_flows: bool = True  # accept {"Flow": {...}} bodies; their Exec tasks run on this host
    concurrency: int = 4  # steps running at once
    log_tail: int = 20  # lines of a step's output kept in the run document
    input_retention: float = 86_400.0  # seconds uploaded inputs are kept
    output_retention: float = 604_800.0  # seconds step outputs are kept
    sweep_interval: float = 600.0  # seconds between retention sweeps
    events_token: str = ""  # bearer token for POST /api/v1/events/*; empty: the endpoints are off
    reconcile_interval: float = 1.0  # seconds between reconciler ticks
    reconcile_max_interval: float = 60.0  # seconds: a key asked about alone is asked at least this often
    reconcile_concurrency: int = 16  # HEADs in flight per reconciler tick
    reconcile_batch: int = 200  # store requests (listings and HEADs) per tick at most
    s3_access_key: str = ""  # credentials for s3 stores declared in flow files
    s3_secret_key: str = ""
    stores: list[Store] = []  # operator-defined stores; these may carry credentials in Params

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def load_config(path: Path | None = None, environ: dict[str, str] | None = None, **overrides) -> Config:
    """Defaults < YAML file < environment (FLOWENGINE_PORT=8080) < explicit overrides (CLI flags)."""
    environ = os.environ if environ is None else environ
    data: dict = {}
    if path is not None:
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        data.update(loaded)
    for field in msgspec.structs.fields(Config):
        value = environ.get(f"FLOWENGINE_{field.name.upper()}")
        if value is not None and field.name != "stores":
            data[field.name] = value
    data.update({k: v for k, v in overrides.items() if v is not None})
    # strict=False: environment values are strings ("8080" -> 8080).
    return msgspec.convert(data, Config, strict=False)


def ensure_secret(config: Config) -> bytes:
    """The HMAC key: from config, or generated once and kept in the data dir (0600)."""
    if config.secret:
        return config.secret.encode()
    path = config.data_path / "secret"
    if not path.exists():
        config.data_path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
