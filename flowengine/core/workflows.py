"""Workflows: a flow plus its public description in the workflow/task API, and the inputs of a run of one.

- Types. The API's wire types, snake_case as the reference names them (`cyberun-api.md` §4, §5.1):
  `ParameterDef`, `WorkflowIn` (a workflow, as a version stores it), `WorkflowWrite` (the body of
  `POST /workflows` and `PUT /workflows/{id}`: a WorkflowIn and a status), `WorkflowDetail`,
  `RunRequest`, `TaskSubmitted`. A flow file declares a workflow in a `Workflow:` section: the same
  fields, PascalCase (`workflow_fields.py`).
- Conversions: `from_flow_file` and `to_flow_file`, field by field without listing the fields.
- Checks, every problem at once with its path: `validate_flow` (a flow file: `Workflow.Parameters[2].Flag`)
  and `check` (an API body: `parameters[2].flag`). One set of rules serves both: each rule names the
  field it is about, and a `_Form` spells the path the way the document does.
- `synthesise`: the flow of a ComfyUI workflow that comes without one.
- Runs: `resolve_run` turns a run's parameters into `RunInputs` (flag overrides per step, the wells
  that file parameters fill, the patched graph); `check_file` checks an uploaded object a file
  parameter names.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

import msgspec

from flowengine.core import keys, shape
from flowengine.core.durations import parse_duration
from flowengine.core.spec import Binding, DataWell, FlagDef, Flow, Slot, Step, Task, decode_json, with_tasks
from flowengine.core.validate import (
    MAX_ATTEMPTS,
    MAX_TIMEOUT,
    _check_accept,
    _check_duration,
    _check_identifier,
    _duplicates,
    _first_wells,
    _quoted,
    _tasks_by_name,
    check_labels,
    mime_matches,
    validate,
)
from flowengine.core.workflow_fields import (
    DispatchTarget,
    Parameter,
    ParameterDef,
    Value,
    Workflow,
    WorkflowFields,
)
from flowengine.errors import Error, Problem, bad_request

WorkflowStatus = Literal["active", "disabled"]
TargetPool = Literal["team", "community"]

COMFYUI = "comfyui"
OUTPUTS = "outputs"  # a synthesised flow's output edge when no node of its graph is known to save images
# ComfyUI's own nodes that save images to its output folder (listed under `images` in a prompt's history),
# and the type of what they save
IMAGE_SAVERS = {"SaveImage": "image/png", "SaveAnimatedPNG": "image/png", "SaveAnimatedWEBP": "image/webp"}
FILLED_BY_FILES = ("upload", "webhook")  # the sources of wells a file parameter fills when a task is created
MAX_PARAMETERS = 100  # in a workflow, and in a run's `parameters`
MAX_RETRIES = MAX_ATTEMPTS - 1  # a step tries once, then retries
MAX_DISPLAY_NAME = 255
MAX_LABEL = 255
MAX_DESCRIPTION = 10_000
MAX_REGION = 64


# --- wire types --------------------------------------------------------------------------------


class WorkflowIn(WorkflowFields, kw_only=True):
    """A workflow, with a `flow` (a flow definition, PascalCase inside) or, for `tool_type: comfyui`,
    without one (`synthesise`): what `POST /workflows` and `PUT /workflows/{id}` take (`WorkflowWrite`
    adds the status). `check` makes one ready to store (`prepare`); a version stores that."""

    flow: Flow | None = None


class WorkflowWrite(WorkflowIn, kw_only=True):
    """The body of `POST /workflows` and `PUT /workflows/{id}`: a workflow, and the status to give it,
    which no version holds (`disabled` refuses new tasks whichever version they name)."""

    workflow_status: WorkflowStatus | None = None  # None: active for a new workflow, unchanged by an update

    def split(self) -> tuple[WorkflowIn, WorkflowStatus | None]:
        return _recast(self, WorkflowIn), self.workflow_status


class WorkflowDetail(WorkflowFields, kw_only=True, omit_defaults=False, forbid_unknown_fields=False):
    """The reference's workflow object (`GET /r/workflows/{id}`); made by `detail`."""

    id: str
    version: int
    workflow_status: WorkflowStatus
    created_at: datetime
    updated_at: datetime
    tool_type: str
    task_timeout: int | float  # seconds
    workflow_json: dict[str, Any] | msgspec.UnsetType | None = msgspec.UNSET  # UNSET: left out (sk- callers)


class RunRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /r/workflows/{id}/run`; `resolve_run` checks it against the workflow."""

    parameters: dict[str, Any] = {}
    dispatch_target: DispatchTarget | None = None  # None: the workflow's default_dispatch_target
    target_pool: TargetPool = "team"
    submitter_region: str = ""  # trimmed and lower-cased, at most 64 characters
    tool_type: str | None = None  # must be the workflow's


class TaskSubmitted(msgspec.Struct):
    task_id: str


class NodeInput(msgspec.Struct, frozen=True):
    """An input of a node of a ComfyUI graph."""

    node_id: str
    field: str


class FileInput(msgspec.Struct, frozen=True, kw_only=True):
    """A file parameter's value: the uploaded object `file_key` fills the well `edge`. `node`: the graph
    input its ComfyUI step names the file in (the agent sets it once it has uploaded the file to ComfyUI)."""

    key: str
    edge: str
    file_key: str
    node: NodeInput | None = None


class RunInputs(msgspec.Struct, kw_only=True):
    """What a run of a workflow takes, every value checked (`resolve_run`)."""

    parameters: dict[str, Value]  # every value the run uses, defaults included: recorded on the task
    flags: dict[str, dict[str, Value]]  # step -> flag -> value, over the step's own Flags
    files: list[FileInput]  # the wells filled when the task is created, once `check_file` passed each
    graph: dict[str, Any] | None  # workflow_json with the node parameters patched in
    dispatch_target: DispatchTarget
    target_pool: TargetPool
    submitter_region: str
    tool_type: str


class StoredFile(msgspec.Struct, frozen=True):
    """What the engine recorded of an uploaded file (`POST /r/files/presign`), for `check_file`."""

    team_id: str | None
    size: int
    content_type: str  # the stored object's own type


W = TypeVar("W", bound=WorkflowIn)


def decode_workflow(body: bytes, type_: type[W] = WorkflowIn) -> W:  # type: ignore[assignment]
    """The body of `POST /workflows` or `PUT /workflows/{id}` (a `WorkflowIn`, or `type_`), or an Error
    listing every structural problem, with paths like validation's (`parameters[2].type`, `flow.Steps[0].ID`)."""
    try:
        return decode_json(body, type_)
    except Error as exc:
        if exc.code != "invalid_field":
            raise
    return shape.convert(decode_json(body, Any), type_)  # msgspec stopped at the first problem


# --- conversions -------------------------------------------------------------------------------


def from_flow_file(flow: Flow) -> WorkflowIn:
    """The workflow a flow file's `Workflow:` section declares, with the flow (without its section) and
    the section's defaults: the slug is the flow's Name, the display name the slug, the description the
    flow's."""
    section = flow.workflow
    assert section is not None, "a flow file without a Workflow section declares no workflow"
    slug = section.workflow_slug or flow.name
    return _recast(
        section, WorkflowIn,
        workflow_slug=slug,
        display_name=section.display_name or slug,
        description=section.description or flow.description,
        flow=msgspec.structs.replace(flow, workflow=None),
    )  # fmt: skip


def to_flow_file(workflow: WorkflowIn) -> Flow:
    """The flow file of a workflow: its flow (synthesised if it has none) with the `Workflow:` section."""
    flow = workflow.flow or synthesise(workflow)
    return msgspec.structs.replace(flow, workflow=_recast(workflow, Workflow))


def detail(
    workflow: WorkflowIn,
    *,
    id: str,
    version: int,
    status: WorkflowStatus,
    created_at: datetime,
    updated_at: datetime,
    with_json: bool = True,
) -> WorkflowDetail:
    """The reference's workflow object for a stored workflow (one `check` or `prepare` returned).
    `with_json=False` leaves workflow_json out, as for `sk-` callers."""
    return _recast(
        workflow, WorkflowDetail,
        id=id, version=version, workflow_status=status, created_at=created_at, updated_at=updated_at,
        workflow_json=workflow.workflow_json if with_json else msgspec.UNSET,
    )  # fmt: skip


def _recast(value: msgspec.Struct, cls: Any, **given: Any) -> Any:
    """A `cls` with the fields of `value` it has (lists copied, a list of parameters recast to `cls`'s
    parameter type), and `given`."""
    have = {f.name for f in msgspec.structs.fields(value)}
    fields = {}
    for f in msgspec.structs.fields(cls):
        if f.name in given or f.name not in have:
            continue
        item = getattr(value, f.name)
        if typing.get_origin(f.type) is list:
            (kind,) = typing.get_args(f.type)
            item = [_recast(x, kind) for x in item] if kind in (Parameter, ParameterDef) else list(item)
        fields[f.name] = item
    return cls(**fields, **given)


# --- checks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Form:
    """How a document spells the paths of a workflow's fields: a flow file's `Workflow:` section
    (`Workflow.Parameters[2].Flag`, its flow at the top) or an API body (`parameters[2].flag`, `flow.Steps[0]`)."""

    root: str  # before a field
    fields: Mapping[str, str]  # a WorkflowFields field -> its key here
    params: Mapping[str, str]  # a ParameterDef field -> its key here
    flow: str  # before a path inside the flow

    def at(self, name: str) -> str:
        return self.root + self.fields[name]

    def param(self, i: int, name: str = "") -> str:
        where = f"{self.at('parameters')}[{i}]"
        return f"{where}.{self.params[name]}" if name else where

    def in_flow(self, path: str) -> str:
        return self.flow + path if path else self.flow.rstrip(".")

    def key(self, name: str) -> str:
        """A field's key here, for a message: `node_id`, `NodeId`."""
        return self.params.get(name) or self.fields[name]

    def keys(self, *names: str) -> str:
        return " and ".join(self.key(name) for name in names)

    def bindings(self, p: ParameterDef) -> str:
        """What a parameter of `p`'s type can be bound to, for a message."""
        to_node = f"{self.keys('node_id', 'field')} (an input of the ComfyUI graph)"
        if p.type == "file":
            return f"{self.key('edge')} (an upload well), or {to_node}"
        return f"{self.keys('step', 'flag')} (a step's flag), or {to_node}"


def _keys(cls: Any) -> dict[str, str]:
    return {f.name: f.encode_name for f in msgspec.structs.fields(cls)}


FILE = _Form("Workflow.", _keys(Workflow), _keys(Parameter), "")
API = _Form("", _keys(WorkflowFields), _keys(ParameterDef), "flow.")

Problems = Iterator[Problem]


def validate_flow(flow: Flow, known_stores: Collection[str] = (), private_webhooks: bool = False) -> list[Problem]:
    """Everything wrong with a flow file: its flow (`validate`) and its `Workflow:` section, if any.
    `flow` has the library tasks it uses copied in (`with_tasks`)."""
    problems = validate(flow, known_stores, private_webhooks=private_webhooks)
    if flow.workflow is not None:
        workflow = from_flow_file(flow)
        problems += _problems(workflow, workflow.flow, FILE)
    return problems


def check(
    workflow: WorkflowIn, library: Mapping[str, Task] | None = None, known_stores: Collection[str] = ()
) -> WorkflowIn:
    """A team's workflow, ready to store (`prepare`), or an Error listing every problem, with paths like
    `parameters[2].flag` and `flow.Steps[0].Uses`. `library`: the operator's tasks, which the flow may use.
    What an inline flow may not define (commands, stores) is the engine's to refuse."""
    library = library or {}
    flow = _flow_of(workflow, library)
    problems = []
    if workflow.flow is not None:
        assert flow is not None
        problems += [Problem(API.in_flow(p.path), p.message) for p in validate(flow, known_stores)]
        if workflow.flow.workflow is not None:
            problems.append(Problem(API.in_flow("Workflow"), "the workflow is the body's own fields: "
                                                             "the flow has no Workflow section here"))  # fmt: skip
    problems += _problems(workflow, flow, API)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        first = problems[0]
        raise Error("invalid", "invalid_workflow", f"{first.path}: {first.message}{more}", first.path, problems)
    return prepare(workflow, library)


def prepare(workflow: WorkflowIn, library: Mapping[str, Task] | None = None) -> WorkflowIn:
    """A valid workflow as it is stored and run: `flow` the flow its tasks run (its own with the library
    tasks it uses, or synthesised), its `tool_type` said, `task_timeout` in seconds.
    The workflow's task_timeout, max_retries and required_labels become every agent step's (every Tool
    task's) Timeout, MaxAttempts and Labels: the workflow's values win over the task's."""
    flow = _flow_of(workflow, library or {})
    assert flow is not None, "a workflow without a flow is a comfyui one: check() refuses any other"
    seconds = parse_duration(workflow.task_timeout)
    return msgspec.structs.replace(
        workflow,
        tool_type=workflow.tool_type or _inferred_tool(flow),
        task_timeout=_number(seconds),
        flow=_on_agents(flow, seconds, workflow.max_retries, workflow.required_labels),
    )


def _flow_of(workflow: WorkflowIn, library: Mapping[str, Task]) -> Flow | None:
    """The flow a workflow runs, before `prepare`: its own (named after the slug if it has no Name, with
    the library tasks it uses), synthesised for a comfyui one without, else None."""
    if workflow.flow is not None:
        named = msgspec.structs.replace(workflow.flow, name=workflow.flow.name or workflow.workflow_slug)
        return with_tasks(named, library)
    return synthesise(workflow) if workflow.tool_type in (None, COMFYUI) else None


def _on_agents(flow: Flow, seconds: float, retries: int, labels: list[str]) -> Flow:
    def tuned(task: Task) -> Task:
        if task.tool is None:
            return task
        return msgspec.structs.replace(
            task, timeout=_number(seconds or MAX_TIMEOUT), max_attempts=retries + 1,
            labels=list(dict.fromkeys([*task.labels, *labels])),
        )  # fmt: skip

    return msgspec.structs.replace(flow, tasks=[tuned(task) for task in flow.tasks], workflow=None)


def _number(seconds: float) -> int | float:
    return int(seconds) if seconds.is_integer() else seconds


def synthesise(workflow: WorkflowIn) -> Flow:
    """The flow of a ComfyUI workflow that comes without one: one step, run by an agent with ComfyUI
    (`Tool: comfyui`), that takes each file parameter bound to a node input through an upload well of its
    own (named by its `edge`, by default its `key`) and writes the edges `graph_outputs` names."""
    files: dict[str, list[str]] = {}  # edge -> accept; a repeated edge is `check`'s to report
    for p in workflow.parameters:
        if p.type == "file" and p.node_id is not None:
            files.setdefault(_file_edge(p) or p.key, p.accept)
    outputs = graph_outputs(workflow.workflow_json)
    task = Task(name=COMFYUI, tool=COMFYUI, inputs=[Slot(name=edge, accept=accept) for edge, accept in files.items()],
                outputs=[Slot(name=edge, content_type=saved) for edge, saved in outputs.items()])  # fmt: skip
    step = Step(id=COMFYUI, uses=COMFYUI, inputs=[Binding(slot=edge, edge=edge) for edge in files],
                outputs=[Binding(slot=edge, edge=edge) for edge in outputs])  # fmt: skip
    wells = [DataWell(edge=edge, source="upload", accept=accept) for edge, accept in files.items()]
    wells += [DataWell(edge=edge) for edge in outputs]
    return Flow(name=workflow.workflow_slug, description=workflow.description, data_wells=wells, steps=[step],
                tasks=[task])  # fmt: skip


def graph_outputs(graph: dict[str, Any] | None) -> dict[str, str | None]:
    """The output edges of a synthesised flow and their types, named as the reference's `download_urls` keys:
    `<node>.images.0`, the first image of each node that saves images, in the graph's order (its further
    images, known only once the graph ran, become `<node>.images.1`, ...: machine.more_output); else
    `outputs` (the first file the graph gives, of a type not known before). The agent fills a slot named
    like a file of the prompt's history with that file (README, "ComfyUI steps")."""
    saved = {
        f"{node}.images.0": IMAGE_SAVERS[kind]
        for node, spec in (graph or {}).items()
        if isinstance(spec, dict) and isinstance(kind := spec.get("class_type"), str) and kind in IMAGE_SAVERS
    }
    return saved or {OUTPUTS: None}


def _problems(workflow: WorkflowIn, flow: Flow | None, form: _Form) -> list[Problem]:
    """Everything wrong with a workflow's own fields and with it against its flow (None: it has none
    and cannot have one made)."""
    found = [*_check_fields(workflow, form), *_check_graph(workflow.workflow_json, form)]
    for i, p in enumerate(workflow.parameters):
        found += _check_definition(i, p, form)
    found += _duplicates((p.key for p in workflow.parameters), lambda i: form.param(i, "key"), "parameter key")
    if flow is None:
        tool = workflow.tool_type
        message = f"a workflow without a flow runs a ComfyUI graph (tool_type 'comfyui'): give a flow to run {tool!r}"
        found.append(Problem(form.at("tool_type"), message))
        return found
    return [*found, *_check_tool(workflow, flow, form), *_check_bindings(workflow, flow, form),
            *_check_inputs_bound(workflow, flow, form)]  # fmt: skip


def _check_fields(workflow: WorkflowIn, form: _Form) -> Problems:
    slug = workflow.workflow_slug
    if not slug:
        yield Problem(form.at("workflow_slug"), "the workflow slug is empty")
    elif not keys.is_name(slug) or slug != slug.lower():
        yield Problem(form.at("workflow_slug"), f"workflow slug {slug!r} may only use lower-case letters, digits, "
                                                f"'.', '_' and '-' (not '.' or '..'), at most {keys.MAX_NAME} "
                                                "characters")  # fmt: skip
    if not workflow.display_name.strip():
        yield Problem(form.at("display_name"), "the display name is empty")
    yield from _check_length(form.at("display_name"), "display name", workflow.display_name, MAX_DISPLAY_NAME)
    yield from _check_length(form.at("description"), "description", workflow.description, MAX_DESCRIPTION)
    yield from check_labels(form.at("required_labels"), workflow.required_labels)
    yield from _check_duration(form.at("task_timeout"), workflow.task_timeout, MAX_TIMEOUT, "7 days", zero=True)
    if not 0 <= workflow.max_retries <= MAX_RETRIES:
        yield Problem(
            form.at("max_retries"), f"max retries must be from 0 to {MAX_RETRIES}, got {workflow.max_retries}"
        )
    if len(workflow.parameters) > MAX_PARAMETERS:
        count = len(workflow.parameters)
        yield Problem(form.at("parameters"), f"{count} parameters is over the limit of {MAX_PARAMETERS}")


def _check_length(path: str, what: str, text: str, most: int) -> Problems:
    if len(text) > most:
        yield Problem(path, f"the {what} is {len(text)} characters long, over the limit of {most}")


def _check_graph(graph: dict[str, Any] | None, form: _Form) -> Problems:
    """The shape of a ComfyUI API-format graph: node id -> {class_type, inputs}."""
    if graph is None:
        return
    path = form.at("workflow_json")
    if isinstance(graph.get("nodes"), list):
        yield Problem(path, "this is ComfyUI's UI format (nodes and links): export the graph in API format "
                            "(Workflow > Export (API))")  # fmt: skip
        return
    if not graph:
        yield Problem(path, "the graph has no nodes")
    for node_id, node in graph.items():
        if (
            not isinstance(node, dict)
            or not isinstance(node.get("class_type"), str)
            or not isinstance(node.get("inputs"), dict)
        ):
            yield Problem(f"{path}.{node_id}", "a node of ComfyUI's API format is a mapping with class_type "
                                               "(a string) and inputs (a mapping)")  # fmt: skip


def _check_definition(i: int, p: ParameterDef, form: _Form) -> Problems:
    """What a parameter's own fields say, whatever the flow."""
    yield from _check_identifier(form.param(i, "key"), "parameter key", p.key)
    yield from _check_length(form.param(i, "label"), "label", p.label, MAX_LABEL)
    yield from _check_length(form.param(i, "description"), "description", p.description, MAX_DESCRIPTION)
    yield from _check_binding_shape(i, p, form)
    yield from _check_misplaced(i, p, form)
    if p.type == "file":
        if not p.required:
            yield Problem(form.param(i, "required"), "a file parameter is required: nothing else fills its well")
        if p.default is not None:
            yield Problem(form.param(i, "default"), "a file parameter has no default: its value is a file the "
                                                    "caller uploads")  # fmt: skip
        yield from _check_accept(form.param(i, "accept"), p.accept)
        return
    if p.required and p.default is not None:
        yield Problem(form.param(i, "default"), "a required parameter takes no default: make it optional, or "
                                                "leave the default out")  # fmt: skip
    if p.type == "number":
        yield from _check_bounds(i, p, form)
    if p.type == "select":
        yield from _check_options(i, p, form)
    if p.default is not None and (p.type != "select" or p.options) and (bad := _value_problem(p, p.default)):
        yield Problem(form.param(i, "default"), f"the default {bad[1]}")


def _check_binding_shape(i: int, p: ParameterDef, form: _Form) -> Problems:
    """Exactly one binding, of a kind the parameter's type can have."""
    for first, second in (("step", "flag"), ("node_id", "field")):
        if (getattr(p, first) is None) != (getattr(p, second) is None):
            missing = first if getattr(p, first) is None else second
            yield Problem(form.param(i, missing), f"{form.keys(first, second)} go together: give "
                                                  f"{form.key(missing)} too")  # fmt: skip
    to_flag = p.step is not None or p.flag is not None
    to_node = p.node_id is not None or p.field is not None
    if p.type == "file":
        if to_flag:
            yield Problem(form.param(i, "step"), f"a file parameter fills {form.bindings(p)}, not a flag")
        elif not to_node and p.edge is None:
            yield Problem(form.param(i), f"the parameter sets nothing: bind it to {form.bindings(p)}")
        if p.edge is not None:
            yield from _check_identifier(form.param(i, "edge"), "edge name", p.edge)
        return
    if p.edge is not None:
        yield Problem(
            form.param(i, "edge"), f"only a file parameter fills an edge; bind a {p.type} to {form.bindings(p)}"
        )
    if to_flag and to_node:
        yield Problem(form.param(i), f"the parameter is bound twice: choose {form.bindings(p)}")
    elif not to_flag and not to_node and p.edge is None:
        yield Problem(form.param(i), f"the parameter sets nothing: bind it to {form.bindings(p)}")


_ONLY_FOR = {"min": "number", "max": "number", "options": "select", "accept": "file"}


def _check_misplaced(i: int, p: ParameterDef, form: _Form) -> Problems:
    for name, kind in _ONLY_FOR.items():
        if p.type != kind and getattr(p, name) not in (None, []):
            yield Problem(form.param(i, name), f"{form.key(name)} is for a {kind} parameter; this one is a {p.type}")


def _check_bounds(i: int, p: ParameterDef, form: _Form) -> Problems:
    for name in ("min", "max"):
        bound = getattr(p, name)
        if bound is not None and not math.isfinite(bound):
            yield Problem(form.param(i, name), f"{name} must be a finite number, got {shape.describe(bound)}")
    if p.min is not None and p.max is not None and p.min > p.max:
        yield Problem(form.param(i, "min"), f"min {p.min} is more than max {p.max}")


def _check_options(i: int, p: ParameterDef, form: _Form) -> Problems:
    if not p.options:
        yield Problem(form.param(i, "options"), "a select parameter needs options to choose from")
    for k, option in enumerate(p.options):
        if not option:
            yield Problem(f"{form.param(i, 'options')}[{k}]", "an option is empty")
    yield from _duplicates(p.options, lambda k: f"{form.param(i, 'options')}[{k}]", "option")


def _value_problem(p: ParameterDef, value: Any, integer: bool = False) -> tuple[str, str] | None:
    """Why `value` cannot be `p`'s, as (an error code, the end of a sentence), or None. `integer`: the
    parameter sets a flag of type integer."""
    if p.type == "boolean" and not isinstance(value, bool):
        return "type_mismatch", f"must be true or false, got {shape.describe(value)}"
    if p.type in ("string", "select", "file"):
        if not isinstance(value, str):
            return "type_mismatch", f"must be a string, got {shape.describe(value)}"
        if p.type == "select" and value not in p.options:
            return "invalid_option", f"must be one of {_quoted(p.options)}, got {value!r}"
        if p.type == "file" and not value:
            return "type_mismatch", "must be a file_key (POST /r/files/presign), got an empty string"
    if p.type != "number":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "type_mismatch", f"must be a number, got {shape.describe(value)}"
    if integer and not isinstance(value, int):
        return "type_mismatch", f"must be an integer (it sets a flag of type integer), got {shape.describe(value)}"
    if (p.min is not None and value < p.min) or (p.max is not None and value > p.max):
        bounds = " and ".join(f"{words} {b}" for words, b in (("at least", p.min), ("at most", p.max)) if b is not None)
        return "out_of_range", f"must be {bounds}, got {value}"
    return None


# Against the flow.


def _runner(task: Task) -> str:
    """What runs a task: `exec`, `python`, or the tool of the agents that run it."""
    return task.tool or ("exec" if task.exec is not None else "python")


def _step_tasks(flow: Flow) -> Iterator[tuple[int, Step, Task]]:
    """The steps whose task the flow has (one it lacks is `validate`'s to report), with it."""
    tasks = _tasks_by_name(flow.tasks)
    for i, step in enumerate(flow.steps):
        if step.uses in tasks:
            yield i, step, tasks[step.uses]


def _runners(flow: Flow) -> list[str]:
    return list(dict.fromkeys(_runner(task) for _, _, task in _step_tasks(flow)))


def _inferred_tool(flow: Flow) -> str | None:
    """What a workflow runs when it does not say: the one agent tool its steps use, else the one
    runner of its steps; None when that is not one thing."""
    runners = _runners(flow)
    choices = [r for r in runners if r not in ("exec", "python")] or runners
    return choices[0] if len(choices) == 1 else None


def _comfy_steps(flow: Flow) -> list[tuple[int, Step]]:
    return [(i, step) for i, step, task in _step_tasks(flow) if task.tool == COMFYUI]


def _check_tool(workflow: WorkflowIn, flow: Flow, form: _Form) -> Problems:
    """tool_type is what the flow's steps run; a comfyui workflow has a graph and one step to run it."""
    runners = _runners(flow)
    tool = workflow.tool_type or _inferred_tool(flow)
    path = form.at("tool_type")
    if tool is None:
        if runners:
            yield Problem(path, f"the flow's steps run {_quoted(runners)}: say which one the workflow is")
        else:
            yield Problem(path, "the flow has no steps to run")
        return
    if tool not in runners:
        yield Problem(path, f"tool type {tool!r} is not what the flow's steps run ({_quoted(runners)})")
    comfy = _comfy_steps(flow)
    if comfy and tool != COMFYUI:
        yield Problem(path, f"step {comfy[0][1].id!r} runs a ComfyUI graph: the workflow's tool type is 'comfyui'")
    for i, step in comfy[1:]:
        yield Problem(form.in_flow(f"Steps[{i}]"), f"the graph goes to one step, but {comfy[0][1].id!r} and "
                                                   f"{step.id!r} both run comfyui")  # fmt: skip
    if tool == COMFYUI and workflow.workflow_json is None:
        yield Problem(form.at("workflow_json"), "a comfyui workflow needs its graph, in ComfyUI's API format")
    elif tool in ("exec", "python") and workflow.workflow_json is not None:
        yield Problem(
            form.at("workflow_json"), f"an {tool} workflow runs no graph: leave {form.key('workflow_json')} out"
        )
    if workflow.default_dispatch_target == "comfy_cloud" and tool != COMFYUI:
        yield Problem(form.at("default_dispatch_target"), "comfy_cloud runs ComfyUI graphs: this workflow "
                                                          "runs on agents")  # fmt: skip


def _check_bindings(workflow: WorkflowIn, flow: Flow, form: _Form) -> Problems:
    """Each binding names what exists, fits it, and is the only one to set it."""
    steps = {step.id: (step, task) for _, step, task in reversed(list(_step_tasks(flow)))}
    first: dict[tuple[str, ...], int] = {}  # what a parameter sets -> the first parameter setting it
    for i, p in enumerate(workflow.parameters):
        targets: list[tuple[str, tuple[str, ...]]] = []  # (field named in a problem, what it sets)
        if p.type != "file" and p.step is not None and p.flag is not None:
            yield from _check_flag_binding(i, p, steps, form)
            targets.append(("flag", ("flag", p.step, p.flag)))
        if p.node_id is not None and p.field is not None:
            yield from _check_node_binding(i, p, workflow, flow, form)
            targets.append(("field", ("node", p.node_id, p.field)))
        edge = _file_edge(p)
        if edge is not None:
            yield from _check_edge_binding(i, p, edge, workflow, flow, form)
            targets.append(("edge", ("edge", edge)))
        for name, target in targets:
            if target in first:
                yield Problem(form.param(i, name), f"{form.param(first[target])} already sets {_target(target)}")
            else:
                first[target] = i


def _target(target: tuple[str, ...]) -> str:
    kind, *names = target
    if kind == "flag":
        return f"flag {names[1]!r} of step {names[0]!r}"
    if kind == "node":
        return f"input {names[1]!r} of node {names[0]!r}"
    return f"edge {names[0]!r}"


_FLAG_TYPES_OF = {
    "string": ("string",),
    "select": ("string",),
    "number": ("number", "integer"),
    "boolean": ("boolean",),
}


def _check_flag_binding(i: int, p: ParameterDef, steps: Mapping[str, tuple[Step, Task]], form: _Form) -> Problems:
    assert p.step is not None and p.flag is not None
    if p.step not in steps:
        yield Problem(form.param(i, "step"), f"the flow has no step {p.step!r} (its steps: {_quoted(steps)})")
        return
    _, task = steps[p.step]
    flag = _flag_def(task, p.flag)
    if flag is None:
        flags = [f.name for f in task.flags]
        yield Problem(form.param(i, "flag"), f"task {task.name!r} of step {p.step!r} has no flag {p.flag!r} "
                                             f"(its flags: {_quoted(flags)})")  # fmt: skip
        return
    if flag.type is not None and flag.type not in _FLAG_TYPES_OF[p.type]:
        yield Problem(form.param(i, "type"), f"a {p.type} parameter cannot set flag {p.flag!r} of type {flag.type}")
    elif flag.type == "integer" and p.default is not None and (bad := _value_problem(p, p.default, integer=True)):
        yield Problem(form.param(i, "default"), f"the default {bad[1]}")


def _flag_def(task: Task, name: str) -> FlagDef | None:
    return next((flag for flag in task.flags if flag.name == name), None)


def _check_node_binding(i: int, p: ParameterDef, workflow: WorkflowIn, flow: Flow, form: _Form) -> Problems:
    assert p.node_id is not None and p.field is not None
    tool = workflow.tool_type or _inferred_tool(flow)
    graph = workflow.workflow_json
    if tool != COMFYUI:
        yield Problem(form.param(i, "node_id"), f"{form.keys('node_id', 'field')} set an input of a ComfyUI graph; "
                                                f"this workflow runs {tool or 'no one tool'}")  # fmt: skip
        return
    if graph is None or isinstance(graph.get("nodes"), list):
        return  # no graph, or not in API format: `_check_tool` and `_check_graph` say so
    node = graph.get(p.node_id)
    if node is None:
        yield Problem(form.param(i, "node_id"), f"the graph has no node {p.node_id!r} (its nodes: {_quoted(graph)})")
        return
    inputs = node.get("inputs") if isinstance(node, dict) else None
    if not isinstance(inputs, dict):
        return  # `_check_graph` says so
    where = f"node {p.node_id!r} ({node.get('class_type')})"
    if p.field not in inputs:
        yield Problem(form.param(i, "field"), f"{where} has no input {p.field!r} (its inputs: {_quoted(inputs)})")
    elif _is_link(inputs[p.field]):
        yield Problem(form.param(i, "field"), f"input {p.field!r} of {where} is wired to node "
                                              f"{inputs[p.field][0]!r}: a parameter sets an input that holds a "
                                              "value")  # fmt: skip


def _is_link(value: Any) -> bool:
    """An input wired to another node's output: `["4", 0]` in ComfyUI's API format."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _file_edge(p: ParameterDef) -> str | None:
    """The well a file parameter fills: its `edge`, else (bound to a node input) the one named like its key."""
    if p.type != "file":
        return None
    return p.edge or (p.key if p.node_id is not None else None)


def _check_edge_binding(i: int, p: ParameterDef, edge: str, workflow: WorkflowIn, flow: Flow, form: _Form) -> Problems:
    path = form.param(i, "edge")
    wells = _first_wells(flow.data_wells)
    if edge not in wells or flow.data_wells[wells[edge]].source not in FILLED_BY_FILES:
        if workflow.flow is None:
            yield Problem(path, "a workflow without a flow takes its files into the graph: give node_id and field")
        else:
            named = "" if p.edge else f" (by its {form.key('key')}; give {form.key('edge')} to name another)"
            yield Problem(path, f"the file fills edge {edge!r}{named}, which is not an upload or webhook well of "
                                "the flow")  # fmt: skip
        return
    if workflow.flow is None and edge in graph_outputs(workflow.workflow_json):
        yield Problem(path, f"{edge!r} is an edge of the graph's outputs: give the file's edge another name")
    comfy = _comfy_steps(flow)
    if p.node_id is not None and comfy and edge not in {b.edge for b in comfy[0][1].inputs}:
        yield Problem(path, f"edge {edge!r} is not an input of step {comfy[0][1].id!r}, which runs the graph")


def _check_inputs_bound(workflow: WorkflowIn, flow: Flow, form: _Form) -> Problems:
    """Every well a client would upload to is filled by a file parameter (a task cannot upload later), and
    every input of the ComfyUI step reaches a node of its graph."""
    edges = {edge for p in workflow.parameters if (edge := _file_edge(p)) is not None}
    for edge, i in _first_wells(flow.data_wells).items():
        well = flow.data_wells[i]
        if well.source in FILLED_BY_FILES and edge not in edges:
            yield Problem(form.at("parameters"), f"the flow's {well.source} well {edge!r} (DataWells[{i}]) is filled "
                                                 "by no file parameter, and a task cannot upload later: add a required "
                                                 f"file parameter with {form.key('edge')} {edge!r}")  # fmt: skip
    to_nodes = {_file_edge(p) for p in workflow.parameters if p.node_id is not None}
    for i, step in _comfy_steps(flow)[:1]:
        for j, binding in enumerate(step.inputs):
            if binding.edge not in to_nodes:
                yield Problem(form.in_flow(f"Steps[{i}].Inputs[{j}].Edge"),
                              f"input edge {binding.edge!r} of step {step.id!r} reaches no node of its graph: fill it "
                              f"with a file parameter that has {form.keys('node_id', 'field')}")  # fmt: skip


# --- runs --------------------------------------------------------------------------------------


def resolve_run(workflow: WorkflowIn, request: RunRequest, *, cloud: bool = False) -> RunInputs:
    """The inputs of a run of `workflow` (one `check` or `prepare` returned), or a `bad_request` Error
    listing every problem, each at `parameters.<key>` (or the request's field): unknown key, missing
    required, type mismatch, out of range, invalid select value, more than 100 keys. An omitted optional
    parameter takes its default; one without a default leaves what it binds as the flow or graph has
    it. `cloud`: whether ComfyUI Cloud is configured (`dispatch_target: comfy_cloud`).
    The objects file parameters name are the caller's to look up and `check_file`."""
    given = request.parameters
    if len(given) > MAX_PARAMETERS:
        raise bad_request("too_many_parameters", f"{len(given)} parameters is over the limit of {MAX_PARAMETERS} "
                                                 "keys per run", "parameters")  # fmt: skip
    problems: list[tuple[str, Problem]] = []  # (code, problem)
    defs = {p.key: p for p in workflow.parameters}
    for key in given:
        if key not in defs:
            known = f"its parameters: {_quoted(defs)}" if defs else "it takes none"
            problems.append(("unknown_parameter", Problem(f"parameters.{key}", f"the workflow has no parameter "
                                                                               f"{key!r} ({known})")))  # fmt: skip
    values: dict[str, Value] = {}
    integers = _integer_parameters(workflow)
    for key, p in defs.items():
        value = given.get(key)
        if value is None:  # left out, or null
            if p.required:
                problems.append(("missing_parameter", Problem(f"parameters.{key}", f"parameter {key!r} is required")))
            elif p.default is not None:
                values[key] = p.default
        elif bad := _value_problem(p, value, key in integers):
            problems.append((bad[0], Problem(f"parameters.{key}", f"parameter {key!r} {bad[1]}")))
        else:
            values[key] = value
    dispatch_target = request.dispatch_target or workflow.default_dispatch_target
    problems += _check_dispatch(workflow, request, dispatch_target, cloud)
    if problems:
        code, first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise Error("bad_request", code, f"{first.message}{more}", first.path, [p for _, p in problems])
    assert workflow.tool_type is not None, "a prepared workflow has its tool type"
    return RunInputs(
        parameters=values,
        flags=_flags(workflow.parameters, values),
        files=[_file_input(defs[key], value) for key, value in values.items() if defs[key].type == "file"],
        graph=_patched(workflow.workflow_json, workflow.parameters, values),
        dispatch_target=dispatch_target,
        target_pool=request.target_pool,
        submitter_region=request.submitter_region.strip().lower(),
        tool_type=workflow.tool_type,
    )


def _check_dispatch(
    workflow: WorkflowIn, request: RunRequest, dispatch_target: DispatchTarget, cloud: bool
) -> Iterable[tuple[str, Problem]]:
    if dispatch_target == "comfy_cloud" and workflow.tool_type != COMFYUI:
        yield "bad_dispatch_target", Problem("dispatch_target", f"comfy_cloud runs ComfyUI graphs; this workflow "
                                                                f"runs {workflow.tool_type}")  # fmt: skip
    elif dispatch_target == "comfy_cloud" and not cloud:
        yield "cloud_unavailable", Problem("dispatch_target", "no ComfyUI Cloud is configured on this engine: "
                                                              "dispatch to an agent")  # fmt: skip
    region = request.submitter_region.strip()
    if len(region) > MAX_REGION:
        yield "bad_region", Problem("submitter_region", f"submitter_region is {len(region)} characters long, over "
                                                        f"the limit of {MAX_REGION}")  # fmt: skip
    if request.tool_type is not None and request.tool_type != workflow.tool_type:
        yield "tool_type_mismatch", Problem("tool_type", f"tool_type {request.tool_type!r} is not the workflow's "
                                                         f"({workflow.tool_type!r})")  # fmt: skip


def _integer_parameters(workflow: WorkflowIn) -> set[str]:
    """The keys of number parameters that set a flag of type integer."""
    if workflow.flow is None:
        return set()
    steps = {step.id: task for _, step, task in _step_tasks(workflow.flow)}
    return {
        p.key for p in workflow.parameters
        if p.step in steps and p.flag is not None and (flag := _flag_def(steps[p.step], p.flag)) is not None
        and flag.type == "integer"
    }  # fmt: skip


def _flags(params: list[ParameterDef], values: Mapping[str, Value]) -> dict[str, dict[str, Value]]:
    flags: dict[str, dict[str, Value]] = {}
    for p in params:
        if p.step is not None and p.flag is not None and p.key in values:
            flags.setdefault(p.step, {})[p.flag] = values[p.key]
    return flags


def _file_input(p: ParameterDef, file_key: Value) -> FileInput:
    edge = _file_edge(p)
    assert edge is not None and isinstance(file_key, str), "a checked file parameter fills an edge with a file_key"
    node = NodeInput(p.node_id, p.field) if p.node_id is not None and p.field is not None else None
    return FileInput(key=p.key, edge=edge, file_key=file_key, node=node)


def _patched(graph: dict[str, Any] | None, params: list[ParameterDef], values: Mapping[str, Value]) -> dict | None:
    """The graph with each node parameter's value in its input; nodes no parameter sets are shared, not copied."""
    if graph is None:
        return None
    patched = dict(graph)
    for p in params:
        if p.node_id is not None and p.field is not None and p.type != "file" and p.key in values:
            node = patched[p.node_id]
            patched[p.node_id] = {**node, "inputs": {**node["inputs"], p.field: values[p.key]}}
    return patched


def check_file(workflow: WorkflowIn, file: FileInput, stored: StoredFile | None, team_id: str | None) -> None:
    """Whether the object a file parameter names may fill its well: `stored` is what the engine recorded of
    `file.file_key` (None: nothing), `team_id` the caller's team. Raises a `bad_request` Error at
    `parameters.<key>`: not uploaded, another team's (told apart from nothing, never), a type its
    parameter or its well does not accept, a size its well does not take."""
    path = f"parameters.{file.key}"
    if stored is None or stored.team_id != team_id:
        raise bad_request("file_not_found", f"parameter {file.key!r}: no uploaded file {file.file_key!r} (upload it "
                                            "first: POST /r/files/presign)", path)  # fmt: skip
    assert workflow.flow is not None, "a prepared workflow has its flow"
    param = next(p for p in workflow.parameters if p.key == file.key)
    well = workflow.flow.well(file.edge)
    accepted = (
        ("parameter", param.accept),
        ("well", well.accept),
        ("well", [well.content_type] if well.content_type else []),
    )
    for what, patterns in accepted:
        if patterns and not any(mime_matches(stored.content_type, pattern) for pattern in patterns):
            raise bad_request("file_type_rejected", f"parameter {file.key!r}: file {file.file_key!r} is "
                                                    f"{stored.content_type}, which its {what} does not accept "
                                                    f"(accepts: {', '.join(patterns)})", path)  # fmt: skip
    if well.size is not None and stored.size != well.size:
        raise bad_request("file_size_rejected", f"parameter {file.key!r}: file {file.file_key!r} is {stored.size} "
                                                f"bytes; its well takes exactly {well.size}", path)  # fmt: skip
    if well.max_size is not None and stored.size > well.max_size:
        raise bad_request("file_too_large", f"parameter {file.key!r}: file {file.file_key!r} is {stored.size} bytes, "
                                            f"over its well's MaxSize of {well.max_size}", path)  # fmt: skip
