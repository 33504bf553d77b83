"""Flow definitions on the client's side: read from a local YAML or JSON file, inputs found, flags set."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowengine.client.errors import InputError
from flowengine.core.spec import FLOW_SUFFIXES, parse_json, parse_yaml
from flowengine.errors import Error

WAITING_SOURCES = ("upload", "webhook")  # the wells a client fills: a run waits for them
Definition = Mapping[str, Any] | str | os.PathLike[str]  # a flow (bare or as {"Flow": ...}), or a file holding one


def load_definition(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The flow a local file defines (JSON for .json, YAML otherwise), unwrapped from `{"Flow": ...}`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    try:
        data = parse_json(raw) if path.suffix == ".json" else parse_yaml(raw)
    except Error as exc:
        raise InputError(f"{path}: {exc.message}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a flow: a flow is a mapping (Name, DataWells, Steps, ...)")
    return unwrap(data)


def unwrap(definition: Mapping[str, Any]) -> dict[str, Any]:
    """`{"Flow": {...}}` (as posted) or the flow itself (as in a flow file): the flow."""
    inner = definition.get("Flow")
    return dict(inner) if len(definition) == 1 and isinstance(inner, Mapping) else dict(definition)


def resolve(definition: Definition) -> tuple[dict[str, Any], str]:
    """The flow and the name it runs under when none is given: its Name, else its file's name, else "inline"."""
    if isinstance(definition, Mapping):
        flow, fallback = unwrap(definition), "inline"
    else:
        flow, fallback = load_definition(definition), Path(definition).stem
    name = flow.get("Name")
    return flow, name if isinstance(name, str) and name else fallback


def is_flow_file(name: str) -> bool:
    """Whether a FLOW argument names a local file (it has a path separator or a flow file's suffix)
    rather than a flow on the engine (a plain name, like `checksum-report`)."""
    return os.sep in name or "/" in name or Path(name).suffix in FLOW_SUFFIXES


def input_edges(flow: Mapping[str, Any]) -> list[str]:
    """The edges a run of this flow waits for a client to fill."""
    wells = flow.get("DataWells") or []
    return [w["Edge"] for w in wells if isinstance(w, Mapping) and w.get("Source") in WAITING_SOURCES and "Edge" in w]


def with_flags(flow: Mapping[str, Any], flags: list[tuple[str, str, Any]]) -> dict[str, Any]:
    """A copy of the flow with each (step, flag, value) set in that step's Flags."""
    flow = copy.deepcopy(dict(flow))
    steps = {s.get("ID"): s for s in flow.get("Steps") or [] if isinstance(s, dict)}
    for step, flag, value in flags:
        if step not in steps:
            known = ", ".join(str(s) for s in steps) or "none"
            raise InputError(f"{step}.{flag}: the flow has no step {step!r} (its steps: {known})")
        if not isinstance(steps[step].get("Flags") or {}, dict):
            raise InputError(f"{step}.{flag}: the step's Flags are not a mapping")
        steps[step]["Flags"] = {**(steps[step].get("Flags") or {}), flag: value}
    return flow
