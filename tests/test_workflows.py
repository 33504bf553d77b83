"""Workflows (core/workflows.py): two valid workflows, then one broken variant per rule, each checked
in both forms (an API body, `parameters[2].flag`; a flow file, `Workflow.Parameters[2].Flag`); the
conversions between the forms; the flow of a ComfyUI workflow without one; the inputs of a run."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from flowengine.core import shape
from flowengine.core import workflows as wf
from flowengine.core.spec import Flow, Task, load_flow_file, with_tasks
from flowengine.core.validate import MAX_TIMEOUT, validate
from flowengine.core.workflow_fields import Workflow
from flowengine.errors import Error, Problem
from flowengine.runtime.catalog import check_files

# A ComfyUI graph in API format (node id -> class_type, inputs; ["4", 0] wires an input to node 4's output 0).
GRAPH: dict[str, Any] = {
    "3": {"class_type": "KSampler",
          "inputs": {"seed": 5, "steps": 20, "sampler_name": "euler", "model": ["4", 0], "positive": ["6", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "out"}},
    "10": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
}  # fmt: skip

# A ComfyUI workflow without a flow, with the reference's example parameters.
COMFY: dict[str, Any] = {
    "workflow_slug": "sd-portrait",
    "display_name": "SD 1.5 Portrait Generator",
    "description": "A portrait from a prompt and a photo.",
    "tool_type": "comfyui",
    "required_labels": ["gpu", "sd15"],
    "task_timeout": 300,
    "max_retries": 2,
    "workflow_json": GRAPH,
    "parameters": [
        {"key": "prompt", "node_id": "6", "field": "text", "type": "string", "label": "Positive Prompt",
         "required": True},
        {"key": "width", "node_id": "5", "field": "width", "type": "number", "label": "Width", "min": 64,
         "max": 2048, "default": 512},
        {"key": "sampler", "node_id": "3", "field": "sampler_name", "type": "select", "label": "Sampler",
         "options": ["euler", "euler_ancestral", "dpmpp_2m"], "default": "euler"},
        {"key": "input_image", "node_id": "10", "field": "image", "type": "file", "label": "Input Image",
         "required": True, "accept": ["image/*"]},
    ],
}  # fmt: skip
PROMPT, WIDTH, SAMPLER, IMAGE = range(4)

# The flow `synthesise` makes of COMFY, as a flow file would say it.
COMFY_FLOW: dict[str, Any] = {
    "Name": "sd-portrait",
    "Description": "A portrait from a prompt and a photo.",
    "DataWells": [{"Edge": "input_image", "Source": "upload", "Accept": ["image/*"]}, {"Edge": "9.images.0"}],
    "Steps": [{"ID": "comfyui", "Uses": "comfyui", "Inputs": [{"Slot": "input_image", "Edge": "input_image"}],
               "Outputs": [{"Slot": "9.images.0", "Edge": "9.images.0"}]}],
    "Tasks": [{"Name": "comfyui", "Tool": "comfyui", "Inputs": [{"Name": "input_image", "Accept": ["image/*"]}],
               "Outputs": [{"Name": "9.images.0", "ContentType": "image/png"}]}],
}  # fmt: skip

# The operator's task library: `stamp` is used by RESIZE's flow without being defined in it.
LIBRARY = {
    "stamp": msgspec.convert(
        {"Name": "stamp", "Exec": ["stamp", "${image}", "${text}", "${out}"], "Inputs": [{"Name": "image"}],
         "Outputs": [{"Name": "out"}], "Flags": [{"Name": "text", "Type": "string", "Default": ""}]},
        Task,
    )
}  # fmt: skip

# A workflow with a flow of its own: a file parameter fills an upload well, the others set step flags.
RESIZE: dict[str, Any] = {
    "workflow_slug": "resize",
    "display_name": "Resize and stamp",
    "parameters": [
        {"key": "photo", "type": "file", "required": True, "edge": "photo", "accept": ["image/*"]},
        {"key": "width", "type": "number", "step": "resize", "flag": "width", "min": 16, "max": 4096, "default": 256},
        {"key": "quality", "type": "number", "step": "resize", "flag": "quality", "min": 0, "max": 1},
        {"key": "sharpen", "type": "boolean", "step": "resize", "flag": "sharpen", "default": False},
        {"key": "mode", "type": "select", "options": ["fit", "fill"], "default": "fit", "step": "resize",
         "flag": "mode"},
        {"key": "caption", "type": "string", "step": "stamp", "flag": "text"},
    ],
    "flow": {
        "Name": "resize",
        "DataWells": [{"Edge": "photo", "Source": "upload", "Accept": ["image/*"]}, {"Edge": "small"},
                      {"Edge": "stamped"}],
        "Steps": [
            {"ID": "resize", "Uses": "resize", "Inputs": [{"Slot": "image", "Edge": "photo"}],
             "Outputs": [{"Slot": "out", "Edge": "small"}], "Flags": {"width": 128}},
            {"ID": "stamp", "Uses": "stamp", "Inputs": [{"Slot": "image", "Edge": "small"}],
             "Outputs": [{"Slot": "out", "Edge": "stamped"}]},
        ],
        "Tasks": [
            {"Name": "resize", "Exec": ["convert", "${image}", "-resize", "${width}", "${out}"],
             "Inputs": [{"Name": "image"}], "Outputs": [{"Name": "out"}],
             "Flags": [{"Name": "width", "Type": "integer", "Default": 256}, {"Name": "quality", "Type": "number"},
                       {"Name": "sharpen", "Type": "boolean"}, {"Name": "mode", "Type": "string"},
                       {"Name": "strip", "Type": "boolean"}, {"Name": "depth", "Type": "integer"},
                       {"Name": "ratio", "Type": "number"}]},
        ],
    },
}  # fmt: skip
PHOTO, RWIDTH, QUALITY, SHARPEN, MODE, CAPTION = range(6)

DOCS = {"comfy": COMFY, "resize": RESIZE}


def doc(name: str) -> dict[str, Any]:
    return copy.deepcopy(DOCS[name])


def workflow_in(body: dict[str, Any]) -> wf.WorkflowIn:
    return msgspec.convert(body, wf.WorkflowIn)


def api_problems(body: dict[str, Any]) -> list[Problem]:
    """The problems `check` finds in an API body (none when it passes)."""
    try:
        wf.check(workflow_in(body), LIBRARY)
    except Error as exc:
        assert exc.kind == "invalid" and exc.code == "invalid_workflow"
        assert exc.location == exc.problems[0].path
        return exc.problems
    return []


def flow_file_text(body: dict[str, Any]) -> str:
    """The flow file an operator would write for the same workflow, as YAML."""
    return yaml.safe_dump(msgspec.to_builtins(wf.to_flow_file(workflow_in(body))), sort_keys=False)


def file_problems(body: dict[str, Any]) -> list[Problem]:
    """The problems `validate_flow` finds in the same workflow written as a flow file."""
    flow = shape.convert(yaml.safe_load(flow_file_text(body)), Flow)
    return wf.validate_flow(with_tasks(flow, LIBRARY))


class _Snake(dict):
    def __missing__(self, key: str) -> str:
        return key


class _Pascal(dict):
    def __missing__(self, key: str) -> str:
        return "".join(part.title() for part in key.split("_"))


def in_file(fragment: str) -> str:
    """A message fragment naming fields `{like_this}`, as a flow file says it (`LikeThis`)."""
    return fragment.format_map(_Pascal())


def in_api(fragment: str) -> str:
    return fragment.format_map(_Snake())


def only(problems: list[Problem], path: str, fragment: str) -> None:
    assert [p.path for p in problems] == [path], problems
    assert fragment in problems[0].message, problems[0].message


def among(problems: list[Problem], path: str, fragment: str) -> None:
    assert any(p.path == path and fragment in p.message for p in problems), problems


# --- the valid workflows -------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCS)
def test_the_valid_workflows_have_no_problems_in_either_form(name: str) -> None:
    assert api_problems(doc(name)) == []
    assert file_problems(doc(name)) == []


def test_a_flow_file_spells_the_section_in_pascal_case() -> None:
    text = flow_file_text(COMFY)
    section = yaml.safe_load(text)["Workflow"]
    assert list(section) == ["Slug", "DisplayName", "Description", "ToolType", "RequiredLabels", "TaskTimeout",
                             "MaxRetries", "Parameters", "WorkflowJson"]  # fmt: skip
    assert section["Parameters"][PROMPT] == {"Key": "prompt", "Type": "string", "Label": "Positive Prompt",
                                             "Required": True, "NodeId": "6", "Field": "text"}  # fmt: skip


def test_a_flow_file_with_a_workflow_section_loads_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "resize.yaml"
    path.write_text(flow_file_text(RESIZE))
    flow = load_flow_file(path)
    assert flow.workflow is not None and flow.workflow.parameters[RWIDTH].flag == "width"
    assert wf.validate_flow(with_tasks(flow, LIBRARY)) == []


def test_a_snake_case_key_in_a_flow_file_is_refused_with_the_key_meant(tmp_path: Path) -> None:
    section = {"Slug": "x", "Parameters": [{"Key": "a", "Type": "string", "node_id": "6", "Field": "text"}]}
    with pytest.raises(Error) as caught:
        shape.convert({"Name": "x", "Workflow": section}, Flow)
    assert caught.value.problems == [Problem("Workflow.Parameters[0]", "unknown key 'node_id', did you mean 'NodeId'?")]


def test_the_readmes_workflow_section_is_valid() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("**Workflows.**", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    flow = msgspec.convert(RESIZE["flow"], Flow)
    flow = msgspec.structs.replace(flow, workflow=shape.convert(yaml.safe_load(example)["Workflow"], Workflow))
    assert wf.validate_flow(with_tasks(flow, LIBRARY)) == []
    assert wf.from_flow_file(flow).task_timeout == "10m"


def test_the_engine_checks_the_workflow_section_of_its_flow_files(tmp_path: Path) -> None:
    body = doc("comfy")
    body["parameters"][WIDTH]["node_id"] = "99"
    path = tmp_path / "sd-portrait.yaml"
    path.write_text(flow_file_text(body))
    (entry,) = check_files([path])
    assert [(p.path, p.message) for p in entry.problems] == [
        ("Workflow.Parameters[1].NodeId", "the graph has no node '99' (its nodes: '3', '4', '5', '6', '9', '10')")
    ]


# --- fields of the workflow, both forms ----------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def set_field(name: str, value: Any) -> Mutation:
    return lambda body: body.__setitem__(name, value)


def set_param(i: int, **changes: Any) -> Mutation:
    """Change parameter `i`'s fields; a value of None removes the field."""

    def mutate(body: dict[str, Any]) -> None:
        param = body["parameters"][i]
        for name, value in changes.items():
            if value is None:
                param.pop(name, None)
            else:
                param[name] = value

    return mutate


def P(i: int, field: str = "") -> tuple[str, str]:
    """A parameter's path in both forms: `parameters[2].node_id`, `Workflow.Parameters[2].NodeId`."""
    file_field = "".join(part.title() for part in field.split("_"))
    return (f"parameters[{i}].{field}", f"Workflow.Parameters[{i}].{file_field}") if field else (
        f"parameters[{i}]", f"Workflow.Parameters[{i}]")  # fmt: skip


def F(field: str, file_field: str) -> tuple[str, str]:
    return field, f"Workflow.{file_field}"


LONG = "x" * 256

# (the workflow, the change, the problem's path in both forms, a fragment of its message)
CASES = [
    # fields
    ("resize", set_field("workflow_slug", "Resize"), F("workflow_slug", "Slug"), "lower-case"),
    ("resize", set_field("workflow_slug", "re/size"), F("workflow_slug", "Slug"), "lower-case letters"),
    ("resize", set_field("workflow_slug", "s" * 129), F("workflow_slug", "Slug"), "at most 128"),
    ("comfy", set_field("display_name", "   "), F("display_name", "DisplayName"), "the display name is empty"),
    ("comfy", set_field("display_name", LONG), F("display_name", "DisplayName"), "256 characters long"),
    ("comfy", set_field("description", "d" * 10_001), F("description", "Description"), "over the limit of 10000"),
    ("comfy", set_field("required_labels", ["gpu", "gpu"]), F("required_labels[1]", "RequiredLabels[1]"),
     "label 'gpu' is used twice"),
    ("comfy", set_field("required_labels", ["big gpu"]), F("required_labels[0]", "RequiredLabels[0]"),
     "'big gpu' may only use"),
    ("comfy", set_field("task_timeout", -1), F("task_timeout", "TaskTimeout"), "from 0 to 604800"),
    ("comfy", set_field("task_timeout", "8d"), F("task_timeout", "TaskTimeout"), "from 0 to 604800"),
    ("comfy", set_field("task_timeout", "soon"), F("task_timeout", "TaskTimeout"), "is not a number with a unit"),
    ("comfy", set_field("max_retries", -1), F("max_retries", "MaxRetries"), "from 0 to 99"),
    ("comfy", set_field("max_retries", 100), F("max_retries", "MaxRetries"), "from 0 to 99"),
    # a parameter's own fields
    ("comfy", set_param(PROMPT, key="the prompt"), P(PROMPT, "key"), "parameter key 'the prompt' may only use"),
    ("comfy", set_param(PROMPT, key=""), P(PROMPT, "key"), "parameter key is empty"),
    ("comfy", set_param(WIDTH, key="prompt"), P(WIDTH, "key"), "'prompt' is used twice (first at "),
    ("comfy", set_param(PROMPT, label=LONG), P(PROMPT, "label"), "the label is 256 characters long"),
    ("comfy", set_param(PROMPT, description="d" * 10_001), P(PROMPT, "description"), "over the limit"),
    ("resize", set_param(RWIDTH, flag=None), P(RWIDTH, "flag"), "{step} and {flag} go together: give {flag} too"),
    ("resize", set_param(RWIDTH, step=None), P(RWIDTH, "step"), "{step} and {flag} go together: give {step} too"),
    ("comfy", set_param(PROMPT, field=None), P(PROMPT, "field"), "{node_id} and {field} go together: give {field}"),
    ("comfy", set_param(PROMPT, node_id=None), P(PROMPT, "node_id"), "give {node_id} too"),
    ("comfy", set_param(PROMPT, node_id=None, field=None), P(PROMPT), "the parameter sets nothing"),
    ("resize", set_param(PHOTO, edge="photo", step="resize", flag="mode"), P(PHOTO, "step"), "not a flag"),
    ("resize", set_param(RWIDTH, edge="photo"), P(RWIDTH, "edge"), "only a file parameter fills an edge"),
    ("resize", set_param(PHOTO, required=False), P(PHOTO, "required"), "a file parameter is required"),
    ("resize", set_param(PHOTO, default="inputs/x"), P(PHOTO, "default"), "a file parameter has no default"),
    ("resize", set_param(PHOTO, accept=["image"]), P(PHOTO, "accept[0]"), "'image' is not a MIME pattern"),
    ("comfy", set_param(PROMPT, default="a cat"), P(PROMPT, "default"), "a required parameter takes no default"),
    ("comfy", set_param(PROMPT, min=1), P(PROMPT, "min"), "{min} is for a number parameter; this one is a string"),
    ("comfy", set_param(SAMPLER, max=1), P(SAMPLER, "max"), "{max} is for a number parameter"),
    ("comfy", set_param(WIDTH, options=["a"]), P(WIDTH, "options"), "{options} is for a select parameter"),
    ("comfy", set_param(PROMPT, accept=["text/*"]), P(PROMPT, "accept"), "{accept} is for a file parameter"),
    ("comfy", set_param(WIDTH, min=100, max=50, default=None), P(WIDTH, "min"), "min 100 is more than max 50"),
    ("comfy", set_param(WIDTH, max=float("inf")), P(WIDTH, "max"), "max must be a finite number"),
    ("comfy", set_param(SAMPLER, options=[], default=None), P(SAMPLER, "options"), "needs options to choose from"),
    ("comfy", set_param(SAMPLER, options=["euler", ""]), P(SAMPLER, "options[1]"), "an option is empty"),
    ("comfy", set_param(SAMPLER, options=["euler", "euler"]), P(SAMPLER, "options[1]"), "'euler' is used twice"),
    ("comfy", set_param(SAMPLER, default="ddim"), P(SAMPLER, "default"), "must be one of 'euler',"),
    ("comfy", set_param(WIDTH, default="wide"), P(WIDTH, "default"), "must be a number, got the string 'wide'"),
    ("comfy", set_param(WIDTH, default=True), P(WIDTH, "default"), "must be a number, got true"),
    ("comfy", set_param(WIDTH, default=32), P(WIDTH, "default"), "must be at least 64 and at most 2048, got 32"),
    ("resize", set_param(CAPTION, default=7), P(CAPTION, "default"), "must be a string, got the number 7"),
    ("resize", set_param(SHARPEN, default="yes"), P(SHARPEN, "default"), "must be true or false"),
    # bindings to step flags
    ("resize", set_param(RWIDTH, step="crop"), P(RWIDTH, "step"), "the flow has no step 'crop' (its steps: "),
    ("resize", set_param(RWIDTH, flag="height"), P(RWIDTH, "flag"), "task 'resize' of step 'resize' has no flag"),
    ("resize", set_param(CAPTION, flag="font"), P(CAPTION, "flag"), "task 'stamp' of step 'stamp' has no flag"),
    ("resize", set_param(QUALITY, flag="strip"), P(QUALITY, "type"), "a number parameter cannot set flag 'strip' "
                                                                     "of type boolean"),
    ("resize", set_param(CAPTION, flag="text", step="resize"), P(CAPTION, "flag"), "has no flag 'text'"),
    ("resize", set_param(SHARPEN, flag="depth"), P(SHARPEN, "type"), "a boolean parameter cannot set flag 'depth'"),
    ("resize", set_param(MODE, flag="ratio"), P(MODE, "type"), "a select parameter cannot set flag 'ratio'"),
    ("resize", set_param(CAPTION, flag="depth", step="resize"), P(CAPTION, "type"), "a string parameter cannot set"),
    ("resize", set_param(RWIDTH, default=300.5), P(RWIDTH, "default"), "must be an integer (it sets a flag of type "
                                                                        "integer), got the number 300.5"),
    ("resize", set_param(QUALITY, flag="width"), P(QUALITY, "flag"), "[1] already sets flag 'width' of step 'resize'"),
    # bindings to the graph's node inputs
    ("resize", set_param(CAPTION, step=None, flag=None, node_id="6", field="text"), P(CAPTION, "node_id"),
     "{node_id} and {field} set an input of a ComfyUI graph; this workflow runs exec"),
    ("comfy", set_param(WIDTH, node_id="99"), P(WIDTH, "node_id"), "the graph has no node '99'"),
    ("comfy", set_param(WIDTH, field="depth"), P(WIDTH, "field"), "node '5' (EmptyLatentImage) has no input 'depth' "
                                                                  "(its inputs: 'width', 'height', 'batch_size')"),
    ("comfy", set_param(PROMPT, field="clip"), P(PROMPT, "field"), "input 'clip' of node '6' (CLIPTextEncode) is "
                                                                   "wired to node '4'"),
    ("comfy", set_param(SAMPLER, node_id="6", field="text"), P(SAMPLER, "field"), "[0] already sets input 'text' "
                                                                                  "of node '6'"),
    # bindings to wells
]  # fmt: skip


# Rules whose breaking breaks another: the problem is among those listed.
WITH_OTHERS = [
    ("resize", set_param(PHOTO, edge=None), P(PHOTO), "the parameter sets nothing: bind it to {edge}"),
    ("resize", set_param(PHOTO, edge="small"), P(PHOTO, "edge"), "edge 'small', which is not an upload or webhook"),
    ("resize", set_param(PHOTO, edge="nowhere"), P(PHOTO, "edge"), "edge 'nowhere', which is not an upload"),
    ("resize", set_param(PHOTO, edge="a photo"), P(PHOTO, "edge"), "edge name 'a photo' may only use"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "mutate", "paths", "fragment"), WITH_OTHERS, ids=[f"{c[2][0]}:{c[3]}" for c in WITH_OTHERS]
)
def test_each_rule_that_breaks_another_in_both_forms(
    name: str, mutate: Mutation, paths: tuple[str, str], fragment: str
) -> None:
    body = doc(name)
    mutate(body)
    among(api_problems(body), paths[0], in_api(fragment))
    among(file_problems(body), paths[1], in_file(fragment))


@pytest.mark.parametrize(("name", "mutate", "paths", "fragment"), CASES, ids=[f"{c[2][0]}:{c[3]}" for c in CASES])
def test_each_rule_in_both_forms(name: str, mutate: Mutation, paths: tuple[str, str], fragment: str) -> None:
    body = doc(name)
    mutate(body)
    api_path, file_path = paths
    only(api_problems(body), api_path, in_api(fragment))
    only(file_problems(body), file_path, in_file(fragment))


def test_two_parameters_filling_one_well() -> None:
    body = doc("resize")
    body["parameters"].append({"key": "again", "type": "file", "required": True, "edge": "photo"})
    only(api_problems(body), "parameters[6].edge", "parameters[0] already sets edge 'photo'")
    only(file_problems(body), "Workflow.Parameters[6].Edge", "Workflow.Parameters[0] already sets edge 'photo'")


def test_a_parameter_bound_twice() -> None:
    body = doc("comfy")
    body["parameters"][WIDTH] |= {"step": "comfyui", "flag": "width"}
    problems = api_problems(body)
    among(problems, "parameters[1]", "the parameter is bound twice: choose step and flag")


def test_a_webhook_well_is_filled_by_a_file_parameter_too() -> None:
    body = doc("resize")
    body["flow"]["DataWells"][0]["Source"] = "webhook"
    assert api_problems(body) == []
    body["flow"]["DataWells"][0]["Source"] = "static"
    body["flow"]["DataWells"][0]["Key"] = "assets/photo.png"
    only(api_problems(body), "parameters[0].edge", "is not an upload or webhook well")


def test_every_upload_well_is_filled_by_a_file_parameter() -> None:
    body = doc("resize")
    del body["parameters"][PHOTO]
    message = "the flow's upload well 'photo' (DataWells[0]) is filled by no file parameter"
    only(api_problems(body), "parameters", message)
    only(file_problems(body), "Workflow.Parameters", message)


def test_at_most_100_parameters() -> None:
    body = doc("comfy")
    body["workflow_json"] = {"1": {"class_type": "Many", "inputs": {f"in{i}": 0 for i in range(101)}}}
    body["parameters"] = [{"key": f"p{i}", "type": "number", "node_id": "1", "field": f"in{i}"} for i in range(101)]
    only(api_problems(body), "parameters", "101 parameters is over the limit of 100")
    only(file_problems(body), "Workflow.Parameters", "101 parameters is over the limit of 100")
    body["parameters"].pop()
    assert api_problems(body) == []


def test_a_number_parameter_may_set_an_integer_flag_with_an_integer_default() -> None:
    body = doc("resize")
    body["parameters"][RWIDTH]["default"] = 300
    assert api_problems(body) == []


# --- the tool type and the graph -------------------------------------------------------------------


def two_step_flow(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """RESIZE with its two tasks replaced: `first` runs step resize, `second` step stamp."""
    body = doc("resize")
    body["parameters"] = body["parameters"][:1]
    del body["flow"]["Steps"][0]["Flags"]
    body["flow"]["Tasks"] = [
        {"Name": "resize", "Inputs": [{"Name": "image"}], "Outputs": [{"Name": "out"}], **first},
        {"Name": "stamp", "Inputs": [{"Name": "image"}], "Outputs": [{"Name": "out"}], **second},
    ]
    return body


def prepared_tool(body: dict[str, Any]) -> str | None:
    return wf.check(workflow_in(body), LIBRARY).tool_type


def test_the_tool_type_is_what_the_steps_run_when_the_workflow_does_not_say() -> None:
    assert prepared_tool(doc("resize")) == "exec"
    assert prepared_tool(two_step_flow({"Python": "m:f"}, {"Python": "m:g"})) == "python"
    comfy_last = two_step_flow({"Python": "m:f"}, {"Tool": "blender"})  # an agent tool wins over the engine's
    assert prepared_tool(comfy_last) == "blender"
    body = doc("comfy")
    del body["tool_type"]
    assert prepared_tool(body) == "comfyui"


def test_a_tool_type_the_steps_do_not_run() -> None:
    body = doc("resize")
    body["tool_type"] = "python"
    only(api_problems(body), "tool_type", "tool type 'python' is not what the flow's steps run ('exec')")
    only(file_problems(body), "Workflow.ToolType", "is not what the flow's steps run")


def test_steps_that_run_several_things_need_the_tool_type_said() -> None:
    body = two_step_flow({"Python": "m:f"}, {"Exec": ["true"]})
    only(api_problems(body), "tool_type", "the flow's steps run 'python', 'exec': say which one the workflow is")
    body["tool_type"] = "exec"
    assert api_problems(body) == []


def test_a_flow_without_steps_has_no_tool() -> None:
    body = doc("resize")
    body["parameters"] = []
    body["flow"] = {"Name": "empty"}
    only(api_problems(body), "tool_type", "the flow has no steps to run")


def test_a_comfyui_step_makes_a_comfyui_workflow() -> None:
    body = two_step_flow({"Exec": ["true"]}, {"Tool": "comfyui"})
    body["tool_type"] = "exec"
    among(api_problems(body), "tool_type", "step 'stamp' runs a ComfyUI graph: the workflow's tool type is 'comfyui'")


def test_one_step_runs_the_graph() -> None:
    body = doc("comfy")
    body["flow"] = copy.deepcopy(COMFY_FLOW)
    second = {"ID": "again", "Uses": "comfyui", "Inputs": [{"Slot": "input_image", "Edge": "input_image"}],
              "Outputs": [{"Slot": "outputs", "Edge": "more"}]}  # fmt: skip
    body["flow"]["Steps"].append(second)
    body["flow"]["DataWells"].append({"Edge": "more"})
    among(api_problems(body), "flow.Steps[1]", "the graph goes to one step, but 'comfyui' and 'again' both run")


def test_a_comfyui_workflow_needs_its_graph() -> None:
    body = doc("comfy")
    del body["workflow_json"]
    only(api_problems(body), "workflow_json", "a comfyui workflow needs its graph")
    only(file_problems(body), "Workflow.WorkflowJson", "a comfyui workflow needs its graph")


def test_an_exec_workflow_has_no_graph() -> None:
    body = doc("resize")
    body["workflow_json"] = GRAPH
    only(api_problems(body), "workflow_json", "an exec workflow runs no graph: leave workflow_json out")


def test_comfy_cloud_runs_only_comfyui_workflows() -> None:
    body = doc("resize")
    body["default_dispatch_target"] = "comfy_cloud"
    only(api_problems(body), "default_dispatch_target", "comfy_cloud runs ComfyUI graphs")
    body = doc("comfy")
    body["default_dispatch_target"] = "comfy_cloud"
    assert api_problems(body) == []


@pytest.mark.parametrize(
    ("graph", "path", "fragment"),
    [
        ({"nodes": [], "links": []}, "workflow_json", "this is ComfyUI's UI format"),
        ({}, "workflow_json", "the graph has no nodes"),
        ({**GRAPH, "11": ["not", "a node"]}, "workflow_json.11", "a node of ComfyUI's API format is a mapping"),
        ({**GRAPH, "11": {"inputs": {}}}, "workflow_json.11", "with class_type (a string)"),
        ({**GRAPH, "11": {"class_type": "X", "inputs": []}}, "workflow_json.11", "and inputs (a mapping)"),
    ],
)
def test_the_graph_is_in_comfyuis_api_format(graph: dict[str, Any], path: str, fragment: str) -> None:
    body = doc("comfy")
    body["workflow_json"] = graph
    among(api_problems(body), path, fragment)
    among(file_problems(body), path.replace("workflow_json", "Workflow.WorkflowJson"), fragment)


def test_every_input_of_the_comfyui_step_reaches_a_node() -> None:
    body = doc("comfy")
    body["flow"] = copy.deepcopy(COMFY_FLOW)
    body["parameters"][IMAGE] = {"key": "input_image", "type": "file", "required": True, "edge": "input_image"}
    only(api_problems(body), "flow.Steps[0].Inputs[0].Edge", "input edge 'input_image' of step 'comfyui' reaches no "
                                                             "node of its graph")  # fmt: skip
    only(file_problems(body), "Steps[0].Inputs[0].Edge", "reaches no node of its graph")


def test_a_file_for_a_node_travels_on_an_input_of_the_comfyui_step() -> None:
    body = doc("comfy")
    body["flow"] = copy.deepcopy(COMFY_FLOW)
    body["flow"]["DataWells"].append({"Edge": "other", "Source": "upload"})
    body["parameters"].append({"key": "other", "type": "file", "required": True, "node_id": "10", "field": "image"})
    problems = api_problems(body)
    among(problems, "parameters[4].edge", "edge 'other' is not an input of step 'comfyui', which runs the graph")


def test_a_file_for_a_node_travels_on_the_well_named_by_its_key_or_its_edge() -> None:
    body = doc("comfy")
    body["flow"] = copy.deepcopy(COMFY_FLOW)
    body["parameters"][IMAGE]["key"] = "photo"
    among(api_problems(body), "parameters[3].edge", "fills edge 'photo' (by its key; give edge to name another)")
    body["parameters"][IMAGE]["edge"] = "input_image"
    assert api_problems(body) == []


# --- the API form only -------------------------------------------------------------------------------


def test_a_workflow_without_a_slug_or_display_name() -> None:
    body = doc("comfy")
    body["workflow_slug"] = body["display_name"] = ""
    problems = api_problems(body)
    assert [p.path for p in problems] == ["workflow_slug", "display_name"]
    assert [p.message for p in problems] == ["the workflow slug is empty", "the display name is empty"]


def test_a_workflow_without_a_flow_is_a_comfyui_one() -> None:
    body = doc("comfy")
    body["tool_type"] = "nerfstudio"
    only(api_problems(body), "tool_type", "a workflow without a flow runs a ComfyUI graph (tool_type 'comfyui'): "
                                          "give a flow to run 'nerfstudio'")  # fmt: skip


def test_a_workflow_without_a_flow_takes_files_into_nodes() -> None:
    body = doc("comfy")
    body["parameters"][IMAGE] = {"key": "input_image", "type": "file", "required": True, "edge": "input_image"}
    only(api_problems(body), "parameters[3].edge", "a workflow without a flow takes its files into the graph")


def test_a_file_cannot_fill_an_edge_of_a_synthesised_flows_outputs() -> None:
    body = doc("comfy")
    body["parameters"][IMAGE]["edge"] = "9.images.0"
    among(api_problems(body), "parameters[3].edge", "'9.images.0' is an edge of the graph's outputs")
    body = doc("comfy")
    body["workflow_json"]["9"]["class_type"] = "PreviewImage"  # no node saves: one edge, `outputs`
    body["parameters"][IMAGE]["key"] = "outputs"
    among(api_problems(body), "parameters[3].edge", "'outputs' is an edge of the graph's outputs")


def test_the_flow_inside_an_api_body_is_validated_with_its_paths() -> None:
    body = doc("resize")
    body["flow"]["Steps"][0]["Uses"] = "shrink"
    among(api_problems(body), "flow.Steps[0].Uses", "unknown task 'shrink'")
    body = doc("resize")
    body["flow"]["Workflow"] = {"Slug": "inner"}
    only(api_problems(body), "flow.Workflow", "the flow has no Workflow section here")


def test_a_flow_without_a_name_takes_the_slug() -> None:
    body = doc("resize")
    del body["flow"]["Name"]
    prepared = wf.check(workflow_in(body), LIBRARY)
    assert prepared.flow is not None and prepared.flow.name == "resize"


def test_decode_lists_every_structural_problem_with_validations_paths() -> None:
    body = b'{"workflow_slug": 3, "parameters": [{"key": "a", "type": "text"}], "flow": {"Steps": 1}, "max_retry": 1}'
    with pytest.raises(Error) as caught:
        wf.decode_workflow(body)
    assert caught.value.kind == "invalid" and caught.value.location == "workflow_slug"
    assert caught.value.problems == [
        Problem("workflow_slug", "expected a string, got the number 3"),
        Problem("parameters[0].type", "expected one of 'boolean', 'file', 'number', 'select', 'string', "
                                      "got the string 'text'"),
        Problem("flow.Steps", "expected a list, got the number 1"),
        Problem("", "unknown key 'max_retry', did you mean 'max_retries'?"),
    ]  # fmt: skip
    assert wf.decode_workflow(msgspec.json.encode(COMFY)) == workflow_in(COMFY)
    with pytest.raises(Error) as caught:
        wf.decode_workflow(b"{")
    assert caught.value.kind == "bad_request" and caught.value.code == "malformed_json"


# --- conversions and the stored form ---------------------------------------------------------------


@pytest.mark.parametrize("name", DOCS)
def test_wire_to_flow_file_and_back_is_the_same_workflow(name: str) -> None:
    prepared = wf.check(workflow_in(doc(name)), LIBRARY)
    flow = shape.convert(yaml.safe_load(yaml.safe_dump(msgspec.to_builtins(wf.to_flow_file(prepared)))), Flow)
    assert wf.from_flow_file(flow) == prepared
    assert wf.prepare(prepared, LIBRARY) == prepared  # preparing is done once and for all


def test_flow_file_to_wire_and_back_is_the_same_flow_file() -> None:
    flow = wf.to_flow_file(wf.check(workflow_in(doc("resize")), LIBRARY))
    assert wf.to_flow_file(wf.from_flow_file(flow)) == flow


def test_a_flow_files_section_takes_its_defaults_from_the_flow() -> None:
    section = msgspec.convert({"Parameters": [{"Key": "photo", "Type": "file", "Required": True, "Edge": "in"}]},
                              Workflow)  # fmt: skip
    flow = Flow(name="shrink", description="Makes images small.", workflow=section)
    workflow = wf.from_flow_file(flow)
    assert (workflow.workflow_slug, workflow.display_name, workflow.description) == (
        "shrink", "shrink", "Makes images small.")  # fmt: skip
    assert workflow.flow == Flow(name="shrink", description="Makes images small.")  # the section is not in it
    assert workflow.parameters == [wf.ParameterDef(key="photo", type="file", required=True, edge="in")]


def test_an_uppercase_flow_name_is_no_slug() -> None:
    body = doc("resize")
    body["workflow_slug"] = ""
    body["flow"]["Name"] = "Resize"
    only(file_problems(body), "Workflow.Slug", "workflow slug 'Resize' may only use lower-case letters")


def test_prepare_fills_what_the_workflow_left_out() -> None:
    body = doc("resize")
    body["task_timeout"] = "1m30s"
    prepared = wf.check(workflow_in(body), LIBRARY)
    assert (prepared.tool_type, prepared.task_timeout) == ("exec", 90)
    assert prepared.flow is not None
    assert [t.name for t in prepared.flow.tasks] == ["resize", "stamp"]  # the library task it uses, copied in
    assert prepared.flow.tasks[0].timeout == 600.0  # an exec task keeps its own limits


def test_the_workflows_limits_are_its_agent_steps() -> None:
    body = doc("comfy")
    body["flow"] = copy.deepcopy(COMFY_FLOW)
    body["flow"]["Tasks"][0] |= {"Labels": ["linux", "gpu"], "Timeout": 60, "MaxAttempts": 9}
    prepared = wf.check(workflow_in(body))
    assert prepared.flow is not None
    (task,) = prepared.flow.tasks
    assert (task.timeout, task.max_attempts, task.labels) == (300, 3, ["linux", "gpu", "sd15"])
    body["task_timeout"] = 0  # no limit of its own: the longest a step may take
    prepared = wf.check(workflow_in(body))
    assert prepared.flow is not None and prepared.flow.tasks[0].timeout == MAX_TIMEOUT


def test_detail_is_the_references_workflow_object() -> None:
    prepared = wf.check(workflow_in(doc("comfy")))
    at = datetime(2025, 2, 15, 14, 30, tzinfo=UTC)
    detail = wf.detail(prepared, id="019abc12-8901-7890-abcd-ef1234567895", version=3, status="active",
                       created_at=at, updated_at=at)  # fmt: skip
    shown = msgspec.json.decode(msgspec.json.encode(detail))
    assert shown == {
        "id": "019abc12-8901-7890-abcd-ef1234567895", "workflow_slug": "sd-portrait",
        "display_name": "SD 1.5 Portrait Generator", "version": 3, "workflow_status": "active",
        "created_at": "2025-02-15T14:30:00Z", "updated_at": "2025-02-15T14:30:00Z",
        "description": "A portrait from a prompt and a photo.", "workflow_json": GRAPH,
        "parameters": COMFY["parameters"],
        "required_labels": ["gpu", "sd15"], "task_timeout": 300, "max_retries": 2, "default_dispatch_target": "agent",
        "tool_type": "comfyui",
    }  # fmt: skip
    hidden = wf.detail(prepared, id="x", version=3, status="disabled", created_at=at, updated_at=at, with_json=False)
    assert "workflow_json" not in msgspec.json.decode(msgspec.json.encode(hidden))


# --- the flow of a ComfyUI workflow without one ------------------------------------------------------


def test_synthesise_makes_one_comfyui_step_with_a_well_per_file() -> None:
    flow = wf.synthesise(workflow_in(COMFY))
    assert flow == msgspec.convert(COMFY_FLOW, Flow)
    assert validate(flow) == []


def test_the_synthesised_flow_is_what_a_comfyui_workflow_runs() -> None:
    prepared = wf.check(workflow_in(COMFY))
    expected = copy.deepcopy(COMFY_FLOW)
    expected["Tasks"][0] |= {"Labels": ["gpu", "sd15"], "Timeout": 300, "MaxAttempts": 3}
    assert prepared.flow == msgspec.convert(expected, Flow)
    assert validate(prepared.flow) == []


def test_a_synthesised_flow_has_a_well_per_file_named_by_its_edge() -> None:
    body = doc("comfy")
    body["parameters"][IMAGE]["edge"] = "photo"
    body["parameters"].append({"key": "mask", "type": "file", "required": True, "node_id": "11", "field": "image"})
    body["workflow_json"] = {**GRAPH, "11": {"class_type": "LoadImage", "inputs": {"image": "mask.png"}}}
    flow = wf.check(workflow_in(body)).flow
    assert flow is not None and validate(flow) == []
    assert [(w.edge, w.source, w.accept) for w in flow.data_wells] == [
        ("photo", "upload", ["image/*"]), ("mask", "upload", []), ("9.images.0", None, [])]  # fmt: skip
    assert [(b.slot, b.edge) for b in flow.steps[0].inputs] == [("photo", "photo"), ("mask", "mask")]


def test_a_comfyui_workflow_without_files_has_a_flow_with_only_its_output() -> None:
    body = doc("comfy")
    del body["parameters"][IMAGE]
    flow = wf.check(workflow_in(body)).flow
    assert flow is not None and validate(flow) == []
    assert [w.edge for w in flow.data_wells] == ["9.images.0"] and flow.steps[0].inputs == []


def test_a_synthesised_flow_has_an_output_edge_per_node_that_saves_images() -> None:
    body = doc("comfy")
    body["workflow_json"] = {**GRAPH, "12": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["3", 0]}},
                             "13": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}  # fmt: skip
    flow = wf.check(workflow_in(body)).flow
    assert flow is not None and validate(flow) == []
    assert [b.edge for b in flow.steps[0].outputs] == ["9.images.0", "12.images.0"]
    assert [(s.name, s.content_type) for s in flow.tasks[0].outputs] == [
        ("9.images.0", "image/png"), ("12.images.0", "image/webp")]  # fmt: skip
    body["workflow_json"] = {**GRAPH, "9": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
    flow = wf.check(workflow_in(body)).flow
    assert flow is not None and [b.edge for b in flow.steps[0].outputs] == ["outputs"]


# --- the inputs of a run -------------------------------------------------------------------------------

COMFY_READY = wf.check(workflow_in(COMFY))
RESIZE_READY = wf.check(workflow_in(RESIZE), LIBRARY)
FILE_KEY = "inputs/019abc12-3456/550e8400-e29b/photo.png"


def run(workflow: wf.WorkflowIn, cloud: bool = False, **request: Any) -> wf.RunInputs:
    return wf.resolve_run(workflow, msgspec.convert(request, wf.RunRequest), cloud=cloud)


def refused(workflow: wf.WorkflowIn, cloud: bool = False, **request: Any) -> Error:
    with pytest.raises(Error) as caught:
        run(workflow, cloud, **request)
    assert caught.value.kind == "bad_request"
    return caught.value


def test_a_run_takes_its_values_and_the_defaults_of_what_it_leaves_out() -> None:
    inputs = run(COMFY_READY, parameters={"prompt": "sunset over ocean", "width": 1024, "input_image": FILE_KEY})
    assert inputs.parameters == {"prompt": "sunset over ocean", "width": 1024, "sampler": "euler",
                                 "input_image": FILE_KEY}  # fmt: skip
    assert inputs.graph is not None
    assert inputs.graph["6"]["inputs"] == {"text": "sunset over ocean", "clip": ["4", 1]}
    assert inputs.graph["5"]["inputs"]["width"] == 1024
    assert inputs.graph["3"]["inputs"]["sampler_name"] == "euler"
    assert inputs.graph["10"] == GRAPH["10"]  # a file is named in its node by the agent, once it has uploaded it
    assert GRAPH["6"]["inputs"]["text"] == "" and GRAPH["5"]["inputs"]["width"] == 512  # the workflow's own is intact
    assert inputs.files == [wf.FileInput(key="input_image", edge="input_image", file_key=FILE_KEY,
                                         node=wf.NodeInput("10", "image"))]  # fmt: skip
    assert inputs.flags == {}
    assert (inputs.dispatch_target, inputs.target_pool, inputs.submitter_region, inputs.tool_type) == (
        "agent", "team", "", "comfyui")  # fmt: skip


def test_a_run_sets_the_flags_of_the_steps() -> None:
    inputs = run(RESIZE_READY, parameters={"photo": FILE_KEY, "quality": 0.5, "sharpen": True, "caption": "hi"})
    assert inputs.flags == {"resize": {"width": 256, "quality": 0.5, "sharpen": True, "mode": "fit"},
                            "stamp": {"text": "hi"}}  # fmt: skip
    assert inputs.files == [wf.FileInput(key="photo", edge="photo", file_key=FILE_KEY)]
    assert inputs.graph is None and inputs.tool_type == "exec"


def test_an_optional_parameter_without_a_default_leaves_its_flag_alone() -> None:
    inputs = run(RESIZE_READY, parameters={"photo": FILE_KEY})
    assert "quality" not in inputs.flags["resize"] and "stamp" not in inputs.flags
    assert "quality" not in inputs.parameters


def test_an_empty_run_is_valid_when_nothing_is_required() -> None:
    body = doc("comfy")
    body["parameters"] = body["parameters"][WIDTH:IMAGE]
    inputs = run(wf.check(workflow_in(body)))
    assert inputs.parameters == {"width": 512, "sampler": "euler"} and inputs.files == []
    error = refused(COMFY_READY)
    assert [p.path for p in error.problems] == ["parameters.prompt", "parameters.input_image"]


def test_null_is_a_value_left_out() -> None:
    inputs = run(COMFY_READY, parameters={"prompt": "x", "input_image": FILE_KEY, "width": None})
    assert inputs.parameters["width"] == 512
    error = refused(COMFY_READY, parameters={"prompt": None, "input_image": FILE_KEY})
    assert (error.code, error.location) == ("missing_parameter", "parameters.prompt")


GOOD = {"prompt": "x", "input_image": FILE_KEY}


@pytest.mark.parametrize(
    ("changes", "code", "key", "fragment"),
    [
        ({"seed": 1}, "unknown_parameter", "seed", "the workflow has no parameter 'seed' (its parameters: 'prompt',"),
        ({"prompt": None}, "missing_parameter", "prompt", "parameter 'prompt' is required"),
        ({"prompt": 3}, "type_mismatch", "prompt", "parameter 'prompt' must be a string, got the number 3"),
        ({"prompt": ["x"]}, "type_mismatch", "prompt", "must be a string, got a list"),
        ({"width": "1024"}, "type_mismatch", "width", "must be a number, got the string '1024'"),
        ({"width": True}, "type_mismatch", "width", "must be a number, got true"),
        ({"width": 63}, "out_of_range", "width", "must be at least 64 and at most 2048, got 63"),
        ({"width": 2048.5}, "out_of_range", "width", "got 2048.5"),
        ({"sampler": "ddim"}, "invalid_option", "sampler", "must be one of 'euler', 'euler_ancestral', 'dpmpp_2m'"),
        ({"sampler": 1}, "type_mismatch", "sampler", "must be a string"),
        ({"input_image": 7}, "type_mismatch", "input_image", "must be a string"),
        ({"input_image": ""}, "type_mismatch", "input_image", "must be a file_key"),
    ],
)
def test_each_rule_of_a_runs_parameters(changes: dict[str, Any], code: str, key: str, fragment: str) -> None:
    error = refused(COMFY_READY, parameters={**GOOD, **changes})
    assert (error.code, error.location) == (code, f"parameters.{key}")
    assert fragment in error.message and len(error.problems) == 1


def test_numbers_may_be_integers_or_not() -> None:
    assert run(COMFY_READY, parameters={**GOOD, "width": 640.5}).parameters["width"] == 640.5
    assert run(RESIZE_READY, parameters={"photo": FILE_KEY, "quality": 1}).flags["resize"]["quality"] == 1


def test_a_number_that_sets_an_integer_flag_is_an_integer() -> None:
    error = refused(RESIZE_READY, parameters={"photo": FILE_KEY, "width": 300.5})
    assert (error.code, error.location) == ("type_mismatch", "parameters.width")
    assert "must be an integer (it sets a flag of type integer)" in error.message
    assert run(RESIZE_READY, parameters={"photo": FILE_KEY, "width": 300}).flags["resize"]["width"] == 300


def test_a_boolean_is_true_or_false() -> None:
    error = refused(RESIZE_READY, parameters={"photo": FILE_KEY, "sharpen": 1})
    assert (error.code, error.location) == ("type_mismatch", "parameters.sharpen")


def test_every_problem_of_a_run_is_listed() -> None:
    error = refused(COMFY_READY, parameters={"seed": 1, "width": 5000, "sampler": "x"}, submitter_region="r" * 65)
    assert [p.path for p in error.problems] == [
        "parameters.seed",
        "parameters.prompt",
        "parameters.width",
        "parameters.sampler",
        "parameters.input_image",
        "submitter_region",
    ]
    assert error.code == "unknown_parameter" and error.location == "parameters.seed"
    assert error.message.endswith("(and 5 more)")


def test_at_most_100_keys_in_a_run() -> None:
    error = refused(COMFY_READY, parameters={**GOOD, **{f"k{i}": 1 for i in range(99)}})
    assert (error.code, error.location) == ("too_many_parameters", "parameters")
    assert refused(COMFY_READY, parameters={**GOOD, **{f"k{i}": 1 for i in range(98)}}).code == "unknown_parameter"


def test_the_dispatch_target_defaults_to_the_workflows() -> None:
    assert run(COMFY_READY, parameters=GOOD).dispatch_target == "agent"
    cloudy = msgspec.structs.replace(COMFY_READY, default_dispatch_target="comfy_cloud")
    assert run(cloudy, cloud=True, parameters=GOOD).dispatch_target == "comfy_cloud"
    assert run(cloudy, parameters=GOOD, dispatch_target="agent").dispatch_target == "agent"
    error = refused(cloudy, parameters=GOOD)
    assert (error.code, error.location) == ("cloud_unavailable", "dispatch_target")


def test_comfy_cloud_runs_no_exec_workflow() -> None:
    error = refused(RESIZE_READY, cloud=True, parameters={"photo": FILE_KEY}, dispatch_target="comfy_cloud")
    assert (error.code, error.location) == ("bad_dispatch_target", "dispatch_target")


def test_the_submitter_region_is_trimmed_and_lower_cased() -> None:
    assert run(COMFY_READY, parameters=GOOD, submitter_region="  US-East \n").submitter_region == "us-east"
    assert run(COMFY_READY, parameters=GOOD, submitter_region=f" {'R' * 64} ").submitter_region == "r" * 64
    error = refused(COMFY_READY, parameters=GOOD, submitter_region="r" * 65)
    assert (error.code, error.location) == ("bad_region", "submitter_region")


def test_the_target_pool_is_kept() -> None:
    assert run(COMFY_READY, parameters=GOOD, target_pool="community").target_pool == "community"


def test_the_tool_type_of_a_run_is_the_workflows() -> None:
    assert run(COMFY_READY, parameters=GOOD, tool_type="comfyui").tool_type == "comfyui"
    error = refused(COMFY_READY, parameters=GOOD, tool_type="nerfstudio")
    assert (error.code, error.location) == ("tool_type_mismatch", "tool_type")


def test_a_workflow_without_parameters_runs_with_none() -> None:
    body = doc("comfy")
    body["parameters"] = []
    inputs = run(wf.check(workflow_in(body)))
    assert inputs.parameters == {} and inputs.graph == GRAPH
    error = refused(wf.check(workflow_in(body)), parameters={"prompt": "x"})
    assert "it takes none" in error.message


# --- the file a file parameter names -------------------------------------------------------------------

TEAM = "019abc12-4567-7890-abcd-ef1234567891"
PNG = wf.StoredFile(team_id=TEAM, size=1_048_576, content_type="image/png")


def file_of(workflow: wf.WorkflowIn, **parameters: Any) -> wf.FileInput:
    (file,) = run(workflow, parameters=parameters).files
    return file


def check_file(workflow: wf.WorkflowIn, file: wf.FileInput, stored: wf.StoredFile | None) -> Error | None:
    try:
        wf.check_file(workflow, file, stored, TEAM)
    except Error as exc:
        assert exc.kind == "bad_request" and exc.location == f"parameters.{file.key}"
        return exc
    return None


def test_an_uploaded_file_of_the_callers_team_and_an_accepted_type_passes() -> None:
    assert check_file(COMFY_READY, file_of(COMFY_READY, **GOOD), PNG) is None
    charset = msgspec.structs.replace(PNG, content_type="IMAGE/PNG; foo=bar")
    assert check_file(COMFY_READY, file_of(COMFY_READY, **GOOD), charset) is None


def test_a_file_not_uploaded_and_another_teams_are_told_the_same() -> None:
    file = file_of(COMFY_READY, **GOOD)
    missing = check_file(COMFY_READY, file, None)
    theirs = check_file(COMFY_READY, file, msgspec.structs.replace(PNG, team_id="another-team"))
    assert missing is not None and theirs is not None
    assert (missing.code, missing.message) == (theirs.code, theirs.message)
    assert missing.code == "file_not_found" and FILE_KEY in missing.message
    open_mode = msgspec.structs.replace(PNG, team_id=None)  # a file uploaded without a team is not the team's
    assert check_file(COMFY_READY, file, open_mode) is not None


def test_a_file_of_a_type_the_parameter_does_not_accept() -> None:
    error = check_file(COMFY_READY, file_of(COMFY_READY, **GOOD), msgspec.structs.replace(PNG, content_type="text/csv"))
    assert error is not None and error.code == "file_type_rejected"
    assert "is text/csv, which its parameter does not accept (accepts: image/*)" in error.message


def test_a_file_must_fit_its_wells_rules_too() -> None:
    body = doc("resize")
    body["parameters"][PHOTO]["accept"] = []
    body["flow"]["DataWells"][0] |= {"Accept": ["image/png"], "MaxSize": 1000}
    workflow = wf.check(workflow_in(body), LIBRARY)
    file = file_of(workflow, photo=FILE_KEY)
    jpeg = check_file(workflow, file, wf.StoredFile(team_id=TEAM, size=10, content_type="image/jpeg"))
    assert jpeg is not None and jpeg.code == "file_type_rejected" and "its well does not accept" in jpeg.message
    big = check_file(workflow, file, wf.StoredFile(team_id=TEAM, size=1001, content_type="image/png"))
    assert big is not None and big.code == "file_too_large" and "over its well's MaxSize of 1000" in big.message
    assert check_file(workflow, file, wf.StoredFile(team_id=TEAM, size=1000, content_type="image/png")) is None
    body["flow"]["DataWells"][0] = {"Edge": "photo", "Source": "upload", "ContentType": "image/png", "Size": 10}
    workflow = wf.check(workflow_in(body), LIBRARY)
    sized = check_file(workflow, file, wf.StoredFile(team_id=TEAM, size=11, content_type="image/png"))
    assert sized is not None and sized.code == "file_size_rejected"
    typed = check_file(workflow, file, wf.StoredFile(team_id=TEAM, size=10, content_type="image/gif"))
    assert typed is not None and typed.code == "file_type_rejected"
    assert check_file(workflow, file, wf.StoredFile(team_id=TEAM, size=10, content_type="image/png")) is None
