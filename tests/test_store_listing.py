"""list_keys, the one listing request of the store interface: the embedded store lists directory by
directory, as SeaweedFS does, page for page. (One difference is left alone: given a `start_after`
that is a directory's own name, SeaweedFS skips that directory's keys; the reconciler never asks so.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

from flowengine.stores.local import LocalStore
from flowengine.stores.s3 import S3Store
from flowengine.stores.signing import Signer

KEYS = ["a/b", "a-b", "a/c/d", "a/c-d", "a.b/x", "ab", "b", "flow/1/in", "flow-2/1/in", "flow/2/in", "z/y/x/w"]
QUERIES = [
    ("", "", 1000), ("", "", 3), ("", "a/c/d", 4), ("a", "", 1000), ("a/", "a/b", 1000), ("flow", "flow/1/in", 2),
    ("flow", "flow/2/in", 1000), ("flow/", "", 1), ("q", "", 1000), ("", "a-b", 1000), ("z/y", "", 1000),
    ("", "flow/1/i", 1000), ("", "a/c-", 1000), ("", "a/", 3), ("flow", "flow-", 1000),
]  # fmt: skip


def test_the_embedded_store_lists_in_the_same_order_and_pages_as_seaweedfs(s3_store: S3Store, tmp_path: Path) -> None:
    local = LocalStore("default", tmp_path, Signer(b"unused"))
    src = tmp_path / "src"
    src.write_bytes(b"x")

    async def scenario() -> None:
        for key in KEYS:
            await s3_store.upload(key, src, "text/plain")
            await local.upload(key, src, "text/plain")
        for prefix, after, limit in QUERIES:
            expected = await s3_store.list_keys(prefix, after, limit)
            assert await local.list_keys(prefix, after, limit) == expected, (prefix, after, limit)
        everything = await local.list_keys("")
        assert everything.keys[:4] == ["a/b", "a/c/d", "a/c-d", "a-b"] and not everything.truncated

    asyncio.run(scenario())
