import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import s3server

from flowengine.stores.s3 import S3Store


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, Any]]:
    """One throwaway SeaweedFS for the whole session: endpoint, access_key, secret_key, bucket."""
    with s3server.serve(bucket="flows", access_key="testkey", secret_key="testsecret123") as info:
        yield info


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
