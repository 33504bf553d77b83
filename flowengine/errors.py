"""Domain errors: what went wrong, in the engine's words. They carry a kind, never an HTTP status;
`api/errors.py` is the one place a kind becomes a status and a body."""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import msgspec

Kind = Literal[
    "bad_request",  # the request is malformed (syntax, encoding, a query value)
    "unauthorized",  # no credential, or one that is not valid
    "forbidden",  # a valid credential that may not do this
    "not_found",
    "request_timeout",  # the client did not send its request in time
    "conflict",  # the state of things does not allow it now
    "precondition_failed",
    "too_large",
    "unsupported_media_type",
    "invalid",  # well-formed, but its meaning is wrong (a definition's problems)
    "too_many_requests",
    "unavailable",  # a dependency (a store, the database) does not answer
    "insufficient_storage",  # a disk is full
    "internal",
]


class Problem(msgspec.Struct, rename="pascal", frozen=True):
    """One thing wrong with a definition or a request, and where: `Steps[2].Inputs[0].Edge`."""

    path: str
    message: str

    def line(self, where: str = "") -> str:
        """`where: path: message` (a file, a setting...), leaving out what is empty: one line for a terminal."""
        return ": ".join(part for part in (where, self.path, self.message) if part)


class Error(Exception):
    def __init__(
        self,
        kind: Kind,
        code: str,
        message: str,
        location: str = "",
        problems: list[Problem] | None = None,
        *,
        retry_after: int | None = None,  # seconds after which the same request may succeed (a rate limit)
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message
        self.location = location
        self.problems = problems or []
        self.retry_after = retry_after

    @classmethod
    def from_msgspec(cls, exc: msgspec.ValidationError, what: str) -> Error:
        """msgspec says "Expected `int`, got `str` - at `$.Flow.Steps[0].ID`": keep the path as a location."""
        text = str(exc)
        match = re.search(r" - at `\$(.*)`$", text)
        path = match.group(1).lstrip(".") if match else ""
        message = text[: match.start()] if match else text
        named = re.fullmatch(r"Object (?:missing required|contains unknown) field `(.+)`", message)
        if named:  # the field is what is wrong, not the object holding it
            path = f"{path}.{named.group(1)}".lstrip(".")
        location = f"{what}.{path}" if path else what
        return cls("invalid", "invalid_field", f"{location}: {message}", location, [Problem(location, message)])


def not_found(what: str, ident: str, location: str) -> Error:
    return Error("not_found", "not_found", f"{what} {ident!r} not found", location)


def conflict(message: str, location: str = "") -> Error:
    return Error("conflict", "conflict", message, location)


def bad_request(code: str, message: str, location: str) -> Error:
    return Error("bad_request", code, message, location)


def already_exists(key: str) -> Error:
    """A PUT whose URL signed `If-None-Match: *` found the object there."""
    return Error("precondition_failed", "precondition_failed", f"object {key!r} already exists", "header.If-None-Match")


@contextmanager
def disk_full_is_insufficient_storage(what: str, location: str = "") -> Iterator[None]:
    """Inside, an OSError saying the disk (or a quota) is full becomes the domain error."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise insufficient_storage(what, location) from exc
        raise


def insufficient_storage(what: str, location: str = "") -> Error:
    return Error("insufficient_storage", "insufficient_storage",
                 f"the engine's disk is full: {what} was not stored; retry once space is freed",
                 location)  # fmt: skip
