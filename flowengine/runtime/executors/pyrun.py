"""`python pyrun.py REQUEST.json`: call a task's `module:function` in a step's process.

The function is called as `function(inputs={slot: path}, flags={...}, workdir=path)` and returns
`{output slot: path}`; the answer is written to the file named in the request.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import msgspec


class Request(msgspec.Struct):
    target: str
    inputs: dict[str, str]
    flags: dict[str, str | int | float | bool]
    workdir: str
    answer: str


def main(argv: list[str]) -> int:
    request = msgspec.json.decode(Path(argv[1]).read_bytes(), type=Request)
    module_name, _, func_name = request.target.partition(":")
    function = getattr(importlib.import_module(module_name), func_name)
    outputs = function(inputs=request.inputs, flags=request.flags, workdir=request.workdir) or {}
    answer = {str(slot): str(path) for slot, path in dict(outputs).items()}
    Path(request.answer).write_bytes(msgspec.json.encode(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
