"""`python pyrun.py REQUEST.json`: call a task's `module:function` in a step's process.

The function is called as `function(inputs={slot: path}, flags={...}, workdir=path)` and returns
`{output slot: path}`; the answer is written to the file named in the request.

`python -m flowengine.runtime.executors.pyrun --check DIR ANSWER.json TARGET...` only imports each
target, with DIR first on the path, and writes a `CheckAnswer`: what failed, and the files the answer
depends on (so a caller knows when to ask again). Operator code is never imported by the engine.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec


class Request(msgspec.Struct):
    target: str
    inputs: dict[str, str]
    flags: dict[str, str | int | float | bool]
    workdir: str
    answer: str


class CheckAnswer(msgspec.Struct):
    problems: dict[str, str]  # target -> why it cannot be called
    files: list[str]  # the modules' files under DIR (and DIR): the answer holds while none changes


def resolve(target: str) -> Callable[..., Any]:
    """The callable a "module:function" (or "package.module:Class.method") names."""
    module_name, _, qualname = target.partition(":")
    return _attribute(importlib.import_module(module_name), module_name, qualname)


def _attribute(module: Any, module_name: str, qualname: str) -> Callable[..., Any]:
    found = module
    for part in qualname.split("."):
        if not hasattr(found, part):
            meant = difflib.get_close_matches(part, [name for name in dir(found) if not name.startswith("_")], 1)
            hint = f", did you mean {meant[0]!r}?" if meant else ""
            raise AttributeError(f"module {module_name!r} has no {qualname!r}{hint}")
        found = getattr(found, part)
    if not callable(found):
        kind = type(found).__name__
        raise TypeError(f"{qualname!r} in module {module_name!r} is not callable (it is of type {kind})")
    return found


def check(directory: str, targets: list[str]) -> CheckAnswer:
    problems: dict[str, str] = {}
    touched: set[str] = set()
    for target in targets:
        module_name, _, qualname = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except BaseException as exc:  # an operator's module may raise anything, even SystemExit
            problems[target] = _import_failure(module_name, exc)
            touched.update(_origins(module_name, exc))
            continue
        try:
            _attribute(module, module_name, qualname)
        except Exception as exc:
            problems[target] = str(exc)
    root = str(Path(directory).resolve())
    files = {getattr(module, "__file__", None) for module in list(sys.modules.values())} | touched
    return CheckAnswer(problems, sorted({root, *(f for f in files if f and f.startswith(root + os.sep))}))


def _import_failure(module_name: str, exc: BaseException) -> str:
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if missing and (module_name == missing or module_name.startswith(missing + ".")):
        return f"no module named {missing!r} in the flows directory (or installed)"
    return f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"


def _origins(module_name: str, exc: BaseException) -> list[str]:
    """Files a failed import read, so fixing one of them makes the answer stale."""
    files = [exc.filename] if isinstance(exc, SyntaxError) and exc.filename else []
    try:
        spec = importlib.util.find_spec(module_name)
    except BaseException:  # a parent package that fails to import
        return files
    return [*files, *([spec.origin] if spec and spec.origin else [])]


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--check"]:
        directory, answer_path, targets = argv[2], argv[3], argv[4:]
        sys.path.insert(0, directory)
        Path(answer_path).write_bytes(msgspec.json.encode(check(directory, targets)))
        return 0
    request = msgspec.json.decode(Path(argv[1]).read_bytes(), type=Request)
    function = resolve(request.target)
    outputs = function(inputs=request.inputs, flags=request.flags, workdir=request.workdir) or {}
    answer = {str(slot): str(path) for slot, path in dict(outputs).items()}
    Path(request.answer).write_bytes(msgspec.json.encode(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
