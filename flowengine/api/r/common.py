"""What every route of the workflow/task API shares: bodies, pages, the caller's base URL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from flowengine.api.http import base_url, engine_of, json_response, query_int, read_json
from flowengine.api.openapi import Param, in_query
from flowengine.core.spec import decode_json
from flowengine.errors import Error, bad_request

T = TypeVar("T")
R = TypeVar("R")
I = TypeVar("I")  # noqa: E741
MAX_PER_PAGE = 100


class PageMeta(msgspec.Struct):
    current_page: int
    per_page: int
    total_count: int


class Page(msgspec.Struct, frozen=True):
    """Which page a list call asks for: `current_page` (from 1) of `per_page` (1-100, default 20)."""

    current_page: int
    per_page: int

    @property
    def offset(self) -> int:
        return (self.current_page - 1) * self.per_page

    def meta(self, total: int) -> PageMeta:
        return PageMeta(self.current_page, self.per_page, total)


def page_params(items: str = "items") -> tuple[Param, Param]:
    """The two query parameters of every list call, for its OpenAPI operation."""
    return (
        in_query("current_page", Annotated[int, msgspec.Meta(ge=1)], "which page, from 1 (default 1)"),
        in_query(
            "per_page", Annotated[int, msgspec.Meta(ge=1, le=MAX_PER_PAGE)], f"{items} a page, 1 to 100 (default 20)"
        ),
    )


PAGE_PARAMS = page_params()


def page_of(request: Request) -> Page:
    return Page(query_int(request, "current_page", 1, 1, 10**9), query_int(request, "per_page", 20, 1, MAX_PER_PAGE))


async def page_answer(
    request: Request,
    query: Callable[[int, int], Awaitable[tuple[Sequence[R], int]]],
    item: Callable[[R], I],
    envelope: Callable[[list[I], PageMeta], Any],
) -> Response:
    """A list call's answer: the page the query string asks for (a 400 naming `current_page` or `per_page`
    when out of range), `query(limit, offset)`'s rows and total, each row as `item`, in the API's
    `envelope` (its list field, named after the resource, then `page_meta`)."""
    page = page_of(request)
    found, total = await query(page.per_page, page.offset)
    return json_response(envelope([item(row) for row in found], page.meta(total)))


def query_choice(request: Request, name: str, choices: Sequence[str]) -> str | None:
    """A query filter that takes one of `choices`, or None when left out."""
    value = request.query_params.get(name)
    if value is not None and value not in choices:
        raise bad_request("invalid_query", f"{name} must be one of {', '.join(choices)}", f"query.{name}")
    return value


async def body_of(request: Request, type_: type[T]) -> T:
    """The JSON body as `type_`. A field of the wrong type or a missing one is a 400 naming it, as
    the reference has it (the flow API says 422)."""
    raw = await read_json(request.scope, request.receive, engine_of(request).config.max_body_size)
    try:
        return decode_json(raw or b"{}", type_, "body")
    except Error as exc:
        if exc.kind != "invalid":
            raise
        field = exc.location.removeprefix("body").lstrip(".") or "body"
        raise bad_request(exc.code, exc.message.replace(exc.location, field, 1), field) from None


def public_base(request: Request) -> str:
    """The base of URLs handed out: `public_url`, else the address the request came to."""
    return (engine_of(request).config.public_url or base_url(request.scope)).rstrip("/")


def unset_to_none(value: Any) -> Any:
    return None if value is msgspec.UNSET else value
