"""Every structural problem of a document at once: unknown keys, wrong types, missing keys.

msgspec stops at the first problem it meets. When it refuses a document, `shape_problems` walks
the same plain data (what YAML or JSON decoded to) against the target type's msgspec description
and lists every problem, each with a path in the style `validate.py` uses (`Steps[0].Inputs[1]`),
and suggests the key that was meant for a misspelt one.
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Iterator
from functools import cache
from typing import Any

import msgspec
from msgspec import inspect as mi

from flowengine.errors import Error, Problem

_SCALARS: dict[type, tuple[type, ...]] = {
    mi.StrType: (str,),
    mi.IntType: (int,),
    mi.FloatType: (int, float),
    mi.BoolType: (bool,),
    mi.NoneType: (type(None),),
}
_NAMES = {mi.StrType: "a string", mi.IntType: "an integer", mi.FloatType: "a number", mi.BoolType: "true or false",
          mi.NoneType: "null", mi.ListType: "a list", mi.DictType: "a mapping", mi.StructType: "a mapping"}  # fmt: skip


def shape_problems(data: Any, type_: Any) -> list[Problem]:
    """What keeps `data` from converting to `type_` (a msgspec Struct, or a type msgspec knows)."""
    return list(_check(data, _info(type_), ""))


@cache
def _info(type_: Any) -> mi.Type:
    return mi.type_info(type_)


def unknown_key(key: str, known: list[str]) -> str:
    """The message for a key that is not one of `known`, naming the closest if one is close."""
    folded = {_fold(name): name for name in known}
    meant = folded.get(_fold(key)) or next(iter(difflib.get_close_matches(key, known, 1, 0.6)), None)
    if meant:
        return f"unknown key {key!r}, did you mean {meant!r}?"
    return f"unknown key {key!r} (known keys: {', '.join(known)})"


def _fold(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def _join(path: str, key: str) -> str:
    if not path or not key:
        return path or key
    return f"{path}{key}" if key.startswith("[") else f"{path}.{key}"


def _check(data: Any, t: mi.Type, path: str) -> Iterator[Problem]:
    if isinstance(t, mi.StructType):
        yield from _check_struct(data, t, path)
    elif isinstance(t, mi.ListType):
        if not isinstance(data, list):
            yield Problem(path, f"expected a list, got {describe(data)}")
            return
        for i, item in enumerate(data):
            yield from _check(item, t.item_type, f"{path}[{i}]")
    elif isinstance(t, mi.DictType):
        if not isinstance(data, dict):
            yield Problem(path, f"expected a mapping, got {describe(data)}")
            return
        for key, value in data.items():
            if not isinstance(key, str):
                yield Problem(path, f"key {key!r} is not a string (quote it)")
                continue
            yield from _check(value, t.value_type, _join(path, key))
    elif isinstance(t, mi.UnionType):
        yield from _check_union(data, t, path)
    elif (type(t) in _SCALARS or isinstance(t, mi.LiteralType)) and not _fits_scalar(data, t):
        yield Problem(path, f"expected {_expected(t)}, got {describe(data)}")
    # Any other type: msgspec.convert has the last word (see `spec.py`).


def _check_struct(data: Any, t: mi.StructType, path: str) -> Iterator[Problem]:
    if not isinstance(data, dict):
        yield Problem(path, f"expected a mapping, got {describe(data)}")
        return
    fields = {field.encode_name: field for field in t.fields}
    for key, value in data.items():
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            yield Problem(path, unknown_key(str(key), list(fields)))
        else:
            yield from _check(value, field.type, _join(path, key))
    for name, field in fields.items():
        if field.required and name not in data:
            yield Problem(path, f"missing key {name!r}")


def _check_union(data: Any, t: mi.UnionType, path: str) -> Iterator[Problem]:
    """A value fits a union if it fits one member; a mapping or list is checked against its member."""
    for member in t.types:
        if (type(member) in _SCALARS or isinstance(member, mi.LiteralType)) and _fits_scalar(data, member):
            return
        if isinstance(data, dict) and isinstance(member, mi.StructType | mi.DictType):
            yield from _check(data, member, path)
            return
        if isinstance(data, list) and isinstance(member, mi.ListType):
            yield from _check(data, member, path)
            return
    yield Problem(path, f"expected {_expected(t)}, got {describe(data)}")


def expected(type_: Any) -> str:
    """What a value of `type_` is, in words: "an integer from 0 to 65535", "a number or a string"."""
    return _expected(_info(type_))


def _expected(t: mi.Type) -> str:
    if isinstance(t, mi.UnionType):
        return " or ".join(dict.fromkeys(_expected(member) for member in t.types))
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(repr(value) for value in t.values)
    name = _NAMES.get(type(t), "another type")
    ge, gt, le, lt = (getattr(t, bound, None) for bound in _BOUNDS)
    if ge is not None and le is not None:
        return f"{name} from {ge} to {le}"
    limits = [f"{words} {value}" for words, value in zip(_BOUNDS.values(), (ge, gt, le, lt), strict=True)
              if value is not None]  # fmt: skip
    return f"{name} ({', '.join(limits)})" if limits else name


_BOUNDS = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}
_HOLDS = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


def _fits_scalar(data: Any, t: mi.Type) -> bool:
    if isinstance(t, mi.LiteralType):  # by type too: `1 == True` in Python
        return any(type(data) is type(value) and data == value for value in t.values)
    # bool is an int in Python, but `true` is not a number in YAML or JSON.
    if not isinstance(data, _SCALARS[type(t)]) or (isinstance(data, bool) and not isinstance(t, mi.BoolType)):
        return False
    return all(getattr(t, bound, None) is None or holds(data, getattr(t, bound)) for bound, holds in _HOLDS.items())


def describe(data: Any) -> str:
    """A value in words, for "expected X, got Y"."""
    if isinstance(data, dict):
        return "a mapping"
    if isinstance(data, list):
        return "a list"
    if data is None:
        return "nothing (null)"
    if isinstance(data, bool):
        return str(data).lower()
    if isinstance(data, str):
        return f"the string {_clip(data)!r}"
    if isinstance(data, int | float):
        return f"the number {data!r}"
    return f"{type(data).__name__} {_clip(str(data))!r}"  # e.g. a date YAML read from 2024-01-01


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def convert(data: Any, type_: Any, where: str = "") -> Any:
    """`msgspec.convert(data, type_)`, or an `Error` listing every structural problem of `data`.

    The problems' paths are relative to `data`; `where` says where `data` is (`body.Flow`) in the
    error's location."""
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        problems = shape_problems(data, type_)
        if not problems:  # something the walk does not model: msgspec's own words
            raise Error.from_msgspec(exc, where) from None
    first = problems[0]
    location = _join(where, first.path)
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    message = f"{location}: {first.message}{more}" if location else f"{first.message}{more}"
    raise Error("invalid", "invalid_field", message, location, problems)
