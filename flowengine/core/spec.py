"""Flow definition types (the wire shape operators write) and loading them from YAML or JSON.

Keys are PascalCase, as in the flow upload API reference. Structural problems (wrong types,
unknown fields) are caught here by msgspec; semantic ones (unknown edges, cycles, ...) by
`validate.py`, which reports all of them at once.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import yaml

from flowengine.errors import Error, bad_request

Scalar = str | int | float | bool


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
    ttl: int | str | None = msgspec.field(default=None, name="TTL")  # seconds, or "90s", "15m", "1h", "2d"
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
    max_attempts: int = 1
    timeout: float = 600.0  # seconds; the step is killed past it
    backoff: float = 1.0  # seconds before the first retry, doubled for each next one


class Flow(_Spec):
    name: str = ""  # an inline flow without one takes the name in its URL; a flow file, its file name
    description: str = ""
    stores: list[Store] = []
    data_wells: list[DataWell] = []
    steps: list[Step] = []
    tasks: list[Task] = []

    # Lookups for a valid flow (validate.py has made IDs, names and edges unique).

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def task_of(self, step: Step) -> Task:
        return next(t for t in self.tasks if t.name == step.uses)

    def well(self, edge: str) -> DataWell:
        return next(w for w in self.data_wells if w.edge == edge)


class FlowBody(msgspec.Struct, rename="pascal", forbid_unknown_fields=True, kw_only=True):
    """The body of POST /api/v1/flow/{name}: an inline flow, or nothing to run the named file."""

    flow: Flow | None = None


def decode_json(data: bytes, type_: type, what: str = "body"):
    """Decode JSON into `type_`, turning msgspec's message into a 4xx naming the field."""
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise Error.from_msgspec(exc, what) from None
    except msgspec.DecodeError as exc:
        raise bad_request("malformed_json", f"{what} is not valid JSON: {exc}", what) from None
    except UnicodeDecodeError:  # msgspec checks UTF-8 only when it decodes a string
        raise bad_request("malformed_json", f"{what} is not valid JSON: a string is not valid UTF-8", what) from None
    except RecursionError:  # msgspec's own depth guard, also for values it skips (unknown fields)
        raise bad_request("malformed_json", f"{what} is nested too deeply to decode", what) from None


def load_flow_file(path: Path) -> Flow:
    """Read one flow file (.yaml, .yml or .json); a flow without a Name takes the file's."""
    flow = _read_flow(path)
    return flow if flow.name else msgspec.structs.replace(flow, name=path.stem)


def _read_flow(path: Path) -> Flow:
    raw = path.read_bytes()
    if path.suffix == ".json":
        return decode_json(raw, Flow, path.name)
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise Error("invalid", "malformed_yaml", f"{path.name} is not valid YAML: {exc}", path.name) from None
    try:
        return msgspec.convert(data, Flow)
    except msgspec.ValidationError as exc:
        raise Error.from_msgspec(exc, path.name) from None


FLOW_SUFFIXES = (".yaml", ".yml", ".json")


def flow_files(directory: Path) -> dict[str, Path]:
    """Flow files in `directory` by flow name (the file's stem)."""
    if not directory.is_dir():
        return {}
    return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix in FLOW_SUFFIXES and p.is_file()}
