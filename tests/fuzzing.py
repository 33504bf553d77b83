"""What the schemathesis tests share."""

from __future__ import annotations

import re

import schemathesis


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$")


def shadowed(case: schemathesis.Case) -> bool:
    """Whether the case's concrete path is also another operation's templated one (`/models/presign`
    is `/models/{id}` too), so its `Allow` lists that one's methods as well: an OpenAPI document,
    where a concrete path hides a templated one, cannot say so."""
    path, paths = case.operation.path, case.operation.schema.raw_schema["paths"]
    return any(other != path and "{" in other and _pattern(other).match(path) for other in paths)
