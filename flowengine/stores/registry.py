"""Which Store object a name means: the flow's own stores, the operator's, or the embedded default."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from flowengine.config import Config
from flowengine.errors import ApiError
from flowengine.signing import Signer
from flowengine.spec import Flow
from flowengine.spec import Store as StoreSpec
from flowengine.stores.base import Store
from flowengine.stores.local import LocalStore

DEFAULT = "default"


class Stores:
    def __init__(self, config: Config, secret: bytes, clock: Callable[[], float]) -> None:
        self.config = config
        self.signer = Signer(secret)
        self.clock = clock
        self.configured = {s.name: s for s in config.stores}
        self._built: dict[tuple, Store] = {}
        self.local(DEFAULT)

    def spec(self, flow: Flow | None, name: str) -> StoreSpec:
        own = next((s for s in flow.stores if s.name == name), None) if flow else None
        spec = own or self.configured.get(name)
        if spec is None and name == DEFAULT:
            spec = StoreSpec(name=DEFAULT)
        if spec is None:
            raise ApiError(422, "unknown_store", f"store {name!r} is not defined", "Store")
        return spec

    def resolve(self, flow: Flow | None, name: str) -> Store:
        spec = self.spec(flow, name)
        if spec.type == "local":
            return self.local(spec.name)
        return self._s3(spec, from_config=spec.name in self.configured and spec is self.configured[spec.name])

    def local(self, name: str) -> LocalStore:
        ident = ("local", name)
        if ident not in self._built:
            self._built[ident] = LocalStore(name, Path(self.config.data_dir), self.signer)
        return self._built[ident]  # type: ignore[return-value]

    def local_by_name(self, name: str) -> LocalStore | None:
        store = self._built.get(("local", name))
        return store if isinstance(store, LocalStore) else None

    def all(self) -> list[Store]:
        return list(self._built.values())

    def _s3(self, spec: StoreSpec, from_config: bool) -> Store:
        from flowengine.stores.s3 import S3Store

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
