"""What describes a workflow, declared once and spelt two ways.

The workflow/task API's wire types are snake_case, as the reference names them (`ParameterDef`,
`WorkflowFields`); a flow file's `Workflow:` section is PascalCase like the rest of the file
(`Workflow`, `Parameter`). The PascalCase types are made from the snake_case ones (`_pascal_twin`),
so the two forms cannot drift apart, and `workflows.py` converts between them field by field
without listing the fields again.

This module imports nothing of `spec.py`: `spec.Flow` has a `Workflow` section, and the API's
`WorkflowIn` (in `workflows.py`) holds a `Flow`.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import msgspec

from flowengine.core.durations import Duration

ParamType = Literal["string", "number", "boolean", "select", "file"]
DispatchTarget = Literal["agent", "comfy_cloud"]
Value = str | int | float | bool  # a parameter's value (a file's is its file_key)


class ParameterDef(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One input a caller may give a run, and what it sets: exactly one binding, `step` + `flag` (that
    step's flag), `node_id` + `field` (that input of the ComfyUI graph, `workflow_json`) or `edge` (a
    `file` parameter fills that upload well with the uploaded object). A `file` parameter bound to a
    node input travels to the ComfyUI step on the well `edge` names, by default the one named like
    its `key`."""

    key: str
    type: ParamType
    label: str = ""
    description: str = ""
    required: bool = False
    default: Value | None = None  # used when the run leaves the key out (optional parameters only)
    min: int | float | None = None  # number
    max: int | float | None = None  # number
    options: list[str] = []  # select
    accept: list[str] = []  # file: MIME patterns, `image/*`
    node_id: str | None = None
    field: str | None = None
    step: str | None = None
    flag: str | None = None
    edge: str | None = None


class WorkflowFields(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A workflow's public description, as its author gives it (the engine adds id, version, status
    and times). Empty or None values are filled where a default exists: see `workflows.prepare`."""

    workflow_slug: str = ""  # a flow file's section: the flow's Name
    display_name: str = ""  # a flow file's section: the slug
    description: str = ""  # a flow file's section: the flow's Description
    tool_type: str | None = None  # None: what the flow's steps run (`comfyui` for a workflow without a flow)
    required_labels: list[str] = []  # an agent must have every one to run the workflow's agent steps
    task_timeout: Duration = 0  # seconds an agent step may run (or "10m"); 0: no limit but the engine's
    max_retries: int = 0  # retries of a failed agent step
    default_dispatch_target: DispatchTarget = "agent"
    parameters: list[ParameterDef] = []
    workflow_json: dict[str, Any] | None = None  # the ComfyUI API-format graph


_FILE_NAMES = {"workflow_slug": "Slug"}  # the rest: PascalCase of the snake_case name


def _pascal(name: str) -> str:
    return _FILE_NAMES.get(name) or "".join(part.title() for part in name.split("_"))


def _pascal_twin(name: str, cls: type[msgspec.Struct], twins: dict[Any, Any]) -> Any:
    """A Struct with `cls`'s fields and defaults under PascalCase keys, as flow files spell them;
    a field that holds a list of a type in `twins` holds a list of its twin."""

    def twin_type(tp: Any) -> Any:
        if typing.get_origin(tp) is list and typing.get_args(tp)[0] in twins:
            return list[twins[typing.get_args(tp)[0]]]  # type: ignore[misc]
        return tp

    fields = [
        (f.name, twin_type(f.type), msgspec.field(default=f.default, default_factory=f.default_factory))
        if f.default is not msgspec.NODEFAULT or f.default_factory is not msgspec.NODEFAULT
        else (f.name, twin_type(f.type))
        for f in msgspec.structs.fields(cls)
    ]
    return msgspec.defstruct(name, fields, module=__name__, rename=_pascal, kw_only=True, omit_defaults=True,
                             forbid_unknown_fields=True)  # fmt: skip


Parameter = _pascal_twin("Parameter", ParameterDef, {})
"""A flow file's `Workflow.Parameters[i]`: ParameterDef's fields, PascalCase (`Key`, `NodeId`, `Flag`)."""
Workflow = _pascal_twin("Workflow", WorkflowFields, {ParameterDef: Parameter})
"""A flow file's `Workflow:` section: WorkflowFields, PascalCase (`Slug`, `DisplayName`, `TaskTimeout`)."""
