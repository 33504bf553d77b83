"""Errors are values: a status, a code, a message and a location. `api/app.py` turns them into HTTP."""

from __future__ import annotations

import re

import msgspec


class Problem(msgspec.Struct, rename="pascal", frozen=True):
    """One thing wrong with a definition or a request, and where: `Steps[2].Inputs[0].Edge`."""

    path: str
    message: str


class ErrorBody(msgspec.Struct, rename="pascal", omit_defaults=True):
    code: str
    message: str
    location: str = ""
    problems: list[Problem] = []


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, location: str = "", problems: list[Problem] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.location = location
        self.problems = problems or []

    def body(self) -> ErrorBody:
        return ErrorBody(self.code, self.message, self.location, self.problems)

    @classmethod
    def from_msgspec(cls, exc: msgspec.ValidationError, what: str) -> ApiError:
        """msgspec says "Expected `int`, got `str` - at `$.Flow.Steps[0].ID`": keep the path as a location."""
        text = str(exc)
        match = re.search(r" - at `\$(.*)`$", text)
        path = match.group(1).lstrip(".") if match else ""
        message = text[: match.start()] if match else text
        location = f"{what}.{path}" if path else what
        return cls(422, "invalid_field", f"{location}: {message}", location, [Problem(location, message)])


def not_found(what: str, ident: str, location: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} {ident!r} not found", location)


def conflict(message: str, location: str = "") -> ApiError:
    return ApiError(409, "conflict", message, location)
