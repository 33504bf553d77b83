"""Which Store object a name means: the flow's own stores, the operator's, or the embedded default."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

from flowengine.config import POSTGRES, Config
from flowengine.core.spec import Flow
from flowengine.core.spec import Store as StoreSpec
from flowengine.errors import Error
from flowengine.stores.base import Store, StoreUnavailable
from flowengine.stores.local import LocalStore
from flowengine.stores.s3 import S3Store
from flowengine.stores.signing import Signer

DEFAULT = "default"
PREPARE_RETRY = 30.0  # seconds before preparing a store that was down is tried again
log = logging.getLogger("flowengine.stores")


def refuse_unshared_local(config: Config) -> None:
    """Engines on one PostgreSQL database share the work: an upload that lands through one, a step
    that runs on another. An embedded store's objects are in one engine's data dir, out of the
    others' reach, so such a configuration is refused unless `local_store_shared` says otherwise."""
    if not config.database_url.startswith(POSTGRES) or config.local_store_shared:
        return
    operators = {s.name: s for s in config.stores}
    local = [DEFAULT] if DEFAULT not in operators else []
    local += [s.name for s in config.stores if s.type == "local"]
    if local:
        raise Error(
            "invalid", "local_store_not_shared",
            f"store {local[0]!r} is the embedded local store, which other engines on the PostgreSQL database "
            "cannot reach: define it (and 'default') as an s3 store, or set local_store_shared: true if every "
            "engine shares data_dir/objects and data_dir/meta, or only one engine uses the database",
            "local_store_shared",
        )  # fmt: skip


class Stores:
    def __init__(self, config: Config, secret: bytes, clock: Callable[[], float]) -> None:
        self.config = config
        self.signer = Signer(secret)
        self.clock = clock
        self.configured = {s.name: s for s in config.stores}
        self._built: dict[tuple, Store] = {}
        self._shared: dict[str, Store] = {}  # by name, for flows that define no stores of their own
        self._prepared: set[int] = set()
        self._prepare_after: dict[int, float] = {}  # store -> when to try preparing it again
        self.local(DEFAULT)

    def spec(self, flow: Flow | None, name: str) -> StoreSpec:
        own = next((s for s in flow.stores if s.name == name), None) if flow else None
        spec = own or self.configured.get(name)
        if spec is None and name == DEFAULT:
            spec = StoreSpec(name=DEFAULT)
        if spec is None:
            raise Error("invalid", "unknown_store", f"store {name!r} is not defined", "Store")
        return spec

    def resolve(self, flow: Flow | None, name: str) -> Store:
        if flow is None or not flow.stores:  # an operator store or the embedded default: the same for every flow
            shared = self._shared.get(name)
            if shared is None:
                shared = self._shared[name] = self._resolve(None, name)
            return shared
        return self._resolve(flow, name)

    def _resolve(self, flow: Flow | None, name: str) -> Store:
        spec = self.spec(flow, name)
        if spec.type == "local":
            return self.local(spec.name)
        return self._s3(spec, from_config=spec is self.configured.get(spec.name))

    def local(self, name: str) -> LocalStore:
        ident = ("local", name)
        if ident not in self._built:
            self._built[ident] = LocalStore(name, Path(self.config.data_dir), self.signer)
        return self._built[ident]  # type: ignore[return-value]

    def all(self) -> list[Store]:
        return list(self._built.values())

    async def prepare(self, store: Store) -> None:
        """First use of an S3 store: create its bucket if asked to, and install retention rules.
        A store that is down now is prepared on a later run; runs on it wait meanwhile."""
        if id(store) in self._prepared or not isinstance(store, S3Store):
            return
        if self.clock() < self._prepare_after.get(id(store), 0.0):
            return  # it was down a moment ago: do not make every new run wait for it again
        keep = [("inputs/", self.config.input_retention), ("outputs/", self.config.output_retention)]
        try:
            if store.create_bucket:
                await store.ensure_bucket()
            await store.set_lifecycle([(prefix, max(1, math.ceil(seconds / 86400))) for prefix, seconds in keep])
            self._prepared.add(id(store))
        except StoreUnavailable as exc:
            self._prepare_after[id(store)] = self.clock() + PREPARE_RETRY
            log.warning("store %r is unavailable, runs on it will wait: %s", store.name, exc)

    async def prepare_configured(self) -> None:
        """Operator stores get their bucket and lifecycle rules at start, without holding start up."""
        for name in self.configured:
            await self.prepare(self.resolve(None, name))

    def _s3(self, spec: StoreSpec, from_config: bool) -> Store:
        p = {k.lower(): v for k, v in spec.params.items()}
        access = str(p.get("access_key", "")) if from_config else ""
        secret = str(p.get("secret_key", "")) if from_config else ""
        # Everything that makes the store what it is, and where its credentials come from.
        ident = ("s3", spec.name, tuple(sorted((k, str(v)) for k, v in p.items())), from_config)
        if ident not in self._built:
            self._built[ident] = S3Store(
                name=spec.name,
                endpoint=str(p["endpoint"]),
                bucket=str(p["bucket"]),
                region=str(p.get("region", "us-east-1")),
                prefix=str(p.get("prefix", "")),
                secure=_truthy(p.get("secure", True)),  # https unless the operator says otherwise
                access_key=access or self.config.s3_access_key or os.environ.get("AWS_ACCESS_KEY_ID", ""),
                secret_key=secret or self.config.s3_secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                clock=self.clock,
                create_bucket=_truthy(p.get("create_bucket", False)),
            )
        return self._built[ident]


def _truthy(value: object) -> bool:
    return value is True or str(value).lower() in ("1", "true", "yes", "on")
