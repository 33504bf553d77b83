"""Flow definition types (the wire shape operators write) and loading them from YAML or JSON.

Keys are PascalCase, as in the flow upload API reference. Structural problems (wrong types,
unknown or missing keys) are caught here, all of them at once (`shape.py`); semantic ones (unknown
edges, cycles, ...) by `validate.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

from flowengine.core import shape
from flowengine.core.durations import Duration, parse_duration
from flowengine.core.workflow_fields import Workflow
from flowengine.errors import Error, Problem, bad_request

Scalar = str | int | float | bool
T = TypeVar("T")


class _Spec(msgspec.Struct, rename="pascal", forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    pass


class Store(_Spec):
    name: str
    type: str = "local"  # local | s3
    params: dict[str, Scalar] = {}


class DataWell(_Spec):
    edge: str
    store: str = "default"
    source: str | None = None  # upload | webhook | static | None (a step's output lands here)
    key: str | None = None  # template: ${RUN_ID}, ${FLOW_NAME}, ${EDGE}, ${UUID}, ${DATE}, ${TIMESTAMP}
    ttl: Duration | None = msgspec.field(default=None, name="TTL")  # seconds, or "90s", "15m", "1h", "2d"
    content_type: str | None = None  # declared: signed into the PUT URL, the object must carry it
    accept: list[str] = []  # MIME patterns an arriving object may have; empty: any
    size: int | None = None  # declared exact size: signed as Content-Length
    max_size: int | None = None
    overwrite: bool = True  # False signs If-None-Match: * into the PUT URL


class Binding(_Spec):
    slot: str
    edge: str


class Step(_Spec):
    id: str = msgspec.field(name="ID")
    uses: str
    inputs: list[Binding] = []
    outputs: list[Binding] = []
    flags: dict[str, Scalar] = {}


class Slot(_Spec):
    name: str
    accept: list[str] = []  # input slots: MIME patterns the task reads; empty: any
    content_type: str | None = None  # output slots: the MIME type the task writes
    optional: bool = False


class FlagDef(_Spec):
    name: str
    type: str | None = None  # string | number | integer | boolean: values must fit; none: any scalar
    required: bool = False
    default: Scalar | None = None


class Task(_Spec):
    name: str
    inputs: list[Slot] = []
    outputs: list[Slot] = []
    flags: list[FlagDef] = []
    exec: list[str] | None = None  # argv; ${Slot} and ${Flag} expand to paths and values
    python: str | None = None  # "module:function"
    tool: str | None = None  # or run by an agent with this tool (`comfyui`), never on the engine's host
    labels: list[str] = []  # labels the worker that runs it must have, every one (the local executor: local_labels)
    env: dict[str, str] = {}  # environment variables the step gets, beside PATH, LANG, HOME, TMPDIR and its ids
    max_attempts: int = 1
    timeout: Duration = 600.0  # the step is killed past it: seconds, or "10m"
    backoff: Duration = 1.0  # before the first retry, doubled for each next one: seconds, or "30s"

    # Seconds, for a task `validate` passed (its durations parse).

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout)

    @property
    def backoff_seconds(self) -> float:
        return parse_duration(self.backoff)


class Flow(_Spec, dict=True):  # dict: room for the cached lookups below
    name: str = ""  # an inline flow without one takes the name in its URL; a flow file, its file name
    description: str = ""
    stores: list[Store] = []
    data_wells: list[DataWell] = []
    steps: list[Step] = []
    tasks: list[Task] = []
    workflow: Workflow | None = None  # the flow's public description in the workflow/task API (workflows.py)
    webhook: str = ""  # a URL notified when a flow-API run of it ends (its runs' default: a POST body may name another)

    # Lookups for a valid flow (validate.py has made IDs, names and edges unique), by dictionary:
    # every event on a run looks its step up, and a flow may have a thousand.

    def step(self, step_id: str) -> Step:
        return self._steps[step_id]

    def task_of(self, step: Step) -> Task:
        return self._tasks[step.uses]

    def well(self, edge: str) -> DataWell:
        return self._wells[edge]

    @functools.cached_property
    def _steps(self) -> dict[str, Step]:
        return {s.id: s for s in self.steps}

    @functools.cached_property
    def _tasks(self) -> dict[str, Task]:
        return {t.name: t for t in reversed(self.tasks)}  # the first of a name wins, as in validation

    @functools.cached_property
    def _wells(self) -> dict[str, DataWell]:
        return {w.edge: w for w in reversed(self.data_wells)}


class TaskLibrary(_Spec):
    """One file of the operator's task library (`flows/tasks/*.yaml`): tasks any flow may use by
    name, inline flows included, without defining them."""

    description: str = ""
    tasks: list[Task] = []


def with_tasks(flow: Flow, library: Mapping[str, Task]) -> Flow:
    """The flow with the library tasks its steps use and it does not define itself, copied in: a
    run's stored definition is then whole, whatever later happens to the library."""
    own = {t.name for t in flow.tasks}
    used = {s.uses: library[s.uses] for s in flow.steps if s.uses not in own and s.uses in library}
    return msgspec.structs.replace(flow, tasks=[*flow.tasks, *used.values()]) if used else flow


class FlowBody(msgspec.Struct, rename="pascal", forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """The body of POST /api/v1/flow/{name}: an inline flow, or nothing to run the named file; either
    way, a `Webhook` for this run, over the flow's own."""

    flow: Flow | None = None
    webhook: str | None = None


def decode_json(data: bytes, type_: Any, what: str = "body") -> Any:
    """Decode JSON into `type_`, turning msgspec's message into a 4xx naming the field."""
    decoder = _DECODERS.get(type_) or _DECODERS.setdefault(type_, msgspec.json.Decoder(type_))
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise Error.from_msgspec(exc, what) from None
    except msgspec.DecodeError as exc:
        raise bad_request("malformed_json", f"{what} is not valid JSON: {exc}", what) from None
    except UnicodeDecodeError:  # msgspec checks UTF-8 only when it decodes a string
        raise bad_request("malformed_json", f"{what} is not valid JSON: a string is not valid UTF-8", what) from None
    except RecursionError:  # msgspec's own depth guard, also for values it skips (unknown fields)
        raise bad_request("malformed_json", f"{what} is nested too deeply to decode", what) from None


_DECODERS: dict[Any, msgspec.json.Decoder] = {}


def decode_flow_body(body: bytes) -> FlowBody:
    """An API body `{"Flow": {...}, "Webhook": "..."}` (both optional), or an Error listing every problem."""
    try:
        return decode_json(body, FlowBody)
    except Error as exc:
        if exc.code != "invalid_field":
            raise
    # Rare: msgspec stops at the first problem; decoded again as plain data, every one is found (a
    # syntax error after the first problem surfaces only now).
    plain = decode_json(body, Any)
    if isinstance(plain, dict) and "Flow" in plain and set(plain) <= {"Flow", "Webhook"}:
        flow = shape.convert(plain["Flow"], Flow, "body.Flow")  # paths relative to the flow, as validate's
        return FlowBody(flow=flow, webhook=shape.convert(plain.get("Webhook"), str | None, "body.Webhook"))
    return shape.convert(plain, FlowBody, "body")


def load_flow_file(path: Path) -> Flow:
    """Read one flow file (.yaml, .yml or .json); a flow without a Name takes the file's.

    Raises OSError if the file cannot be read, or an Error with every problem of its structure."""
    flow = _read(path, Flow)
    return flow if flow.name else msgspec.structs.replace(flow, name=path.stem)


def load_library_file(path: Path) -> TaskLibrary:
    """Read one file of the task library, like a flow file."""
    return _read(path, TaskLibrary)


def _read(path: Path, type_: type[T]) -> T:
    raw = path.read_bytes()
    return shape.convert(parse_json(raw) if path.suffix == ".json" else parse_yaml(raw), type_)


def parse_yaml(raw: bytes | str) -> Any:
    """Plain data from YAML, or an Error whose one line says where the syntax broke."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
        context = getattr(exc, "context", None)
        message = f"not valid YAML: {where}{problem}" + (f" ({context})" if context else "")
        raise Error("invalid", "malformed_yaml", message, "", [Problem("", message)]) from None


def parse_json(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        message = f"not valid JSON: {exc}"
        raise Error("invalid", "malformed_json", message, "", [Problem("", message)]) from None


FLOW_SUFFIXES = (".yaml", ".yml", ".json")


def flow_files(directory: Path) -> dict[str, Path]:
    """Flow files in `directory` by flow name (the file's stem)."""
    if not directory.is_dir():
        return {}
    return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix in FLOW_SUFFIXES and p.is_file()}
