"""Names and keys: what a name may be, expanding `${VAR}` templates, keeping every key inside its store."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

TEMPLATE_VARS = frozenset({"RUN_ID", "FLOW_NAME", "EDGE", "UUID", "DATE", "TIMESTAMP"})
# Inputs and outputs under their own prefixes, so an S3 lifecycle rule can expire each on its schedule.
DEFAULT_INPUT_KEY = "inputs/${FLOW_NAME}/${RUN_ID}/${EDGE}"
DEFAULT_OUTPUT_KEY = "outputs/${FLOW_NAME}/${RUN_ID}/${EDGE}"
VAR = re.compile(r"\$\{([^}]*)\}")  # `${NAME}` in key templates and Exec arguments
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_KEY_BYTES = 1024  # S3's limit on a key
MAX_NAME = 128  # a name is part of file names (a step's log is `{step}.{attempt}.log`): well under 255 bytes
NAME_RULE = f"may only use letters, digits, '.', '_' and '-' (not '.' or '..'), at most {MAX_NAME} characters"


def is_name(value: str) -> bool:
    """Flow, store and step names and edges: they appear in URLs, keys and directory names."""
    return len(value) <= MAX_NAME and bool(_NAME.fullmatch(value)) and value not in (".", "..")


def template_vars(template: str) -> list[str]:
    return VAR.findall(template)


def bind(template: str, *, flow_name: str, edge: str) -> str:
    """Expand the variables that are the same for every run of a definition; keep the per-run ones."""
    fixed = {"FLOW_NAME": flow_name, "EDGE": edge}  # names: no `$`, so nothing here is read as a variable again
    return VAR.sub(lambda m: fixed.get(m.group(1), m.group(0)), template)


def expand(template: str, *, run_id: str, now: float, new_uuid: Callable[[], str] = lambda: str(uuid.uuid4())) -> str:
    """Expand the per-run variables of a `bind`-ed template; `validate.py` has already refused unknown ones."""
    key = template.replace("${RUN_ID}", run_id)  # the usual case, without a regex
    if "${" not in key:
        return key
    values: dict[str, Callable[[], str]] = {
        "UUID": new_uuid,
        "DATE": lambda: time.strftime("%Y-%m-%d", time.gmtime(now)),
        "TIMESTAMP": lambda: time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)),
    }
    return VAR.sub(lambda m: values[m.group(1)](), key)


def key_problem(key: str) -> str | None:
    """Why `key` could escape its store or break a filesystem, or None when it is safe."""
    if not key:
        return "is empty"
    if len(key.encode()) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes"
    if key.startswith("/"):
        return "is an absolute path"
    if "\\" in key:
        return "contains a backslash"
    if _CONTROL.search(key):
        return "contains a control character"
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in ("", ".", ".."):
        return "has an empty, '.' or '..' path segment"
    return None
