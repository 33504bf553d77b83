"""What the client raises. Every exception is a `ClientError`; an answer of the engine's that
says no is an `ApiError` (a subclass per status) carrying the engine's Code, Message, Location
and Problems."""

from __future__ import annotations

from flowengine.client.documents import Problem, RunDoc


class ClientError(Exception):
    """Anything the client could not do."""


class InputError(ClientError, ValueError):
    """What the caller handed over cannot be used: a missing file, an edge the run does not wait for."""


class ConnectionFailed(ClientError):
    """The engine (or the store behind a presigned URL) could not be reached, or the connection broke."""


class TransferError(ClientError):
    """An upload or download did not move the bytes it should have (a size that does not match)."""


class WaitTimeout(ClientError, TimeoutError):
    """The run did not end in time; `run` is the last document seen."""

    def __init__(self, message: str, run: RunDoc) -> None:
        super().__init__(message)
        self.run = run


class ApiError(ClientError):
    """The engine (or a store) answered with an error status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        location: str = "",
        problems: list[Problem] | None = None,
        *,
        method: str = "",
        url: str = "",
    ) -> None:
        super().__init__(f"{status} {code}: {message}" if code else f"{status}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.location = location
        self.problems = problems or []
        self.method = method
        self.url = url  # without its query: a presigned URL's signature stays out of messages and logs


class BadRequest(ApiError):  # 400: malformed (a field, a header, a query value)
    pass


class Unauthorized(ApiError):  # 401: no credential, or one that is not valid
    pass


class Forbidden(ApiError):  # 403: not allowed (also: an upload URL expired or its signed headers not sent)
    pass


class NotFound(ApiError):  # 404: no such run, flow or step
    pass


class Conflict(ApiError):  # 409: not in this state (a well already filled, a run that waits for nothing)
    pass


class PreconditionFailed(ApiError):  # 412: the object exists and the URL said not to overwrite it
    pass


class TooLarge(ApiError):  # 413
    pass


class UnsupportedMediaType(ApiError):  # 415: a Content-Type the well or the API does not take
    pass


class Invalid(ApiError):  # 422: a definition with problems (every one in `problems`)
    pass


class TooManyRequests(ApiError):  # 429
    pass


class ServerError(ApiError):  # 5xx
    pass


BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    413: TooLarge,
    415: UnsupportedMediaType,
    422: Invalid,
    429: TooManyRequests,
}


def error_class(status: int) -> type[ApiError]:
    return BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
