"""Structural problems of flow documents: every one at once, one path style, the key that was meant."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from flowengine.core.shape import expected, shape_problems, unknown_key
from flowengine.core.spec import Flow, Task, decode_flow_body, load_flow_file
from flowengine.core.validate import validate
from flowengine.core.workflows import RunRequest, WorkflowIn
from flowengine.errors import Error, Problem

BROKEN = {
    "Name": "broken",
    "Descripton": "a typo",
    "DataWells": [{"Source": "upload"}, {"Edge": "b", "Size": "big", "Accept": "text/*"}],
    "Tasks": [{"Name": "t", "timeout": 60, "Exec": "ls", "MaxAttempts": True, "Flags": [{"Name": 5}]}],
    "Steps": {"ID": "s"},
}


def test_every_structural_problem_is_listed_with_its_path() -> None:
    assert shape_problems(BROKEN, Flow) == [
        Problem("", "unknown key 'Descripton', did you mean 'Description'?"),
        Problem("DataWells[0]", "missing key 'Edge'"),
        Problem("DataWells[1].Size", "expected an integer or null, got the string 'big'"),
        Problem("DataWells[1].Accept", "expected a list, got the string 'text/*'"),
        Problem("Tasks[0]", "unknown key 'timeout', did you mean 'Timeout'?"),
        Problem("Tasks[0].Exec", "expected a list or null, got the string 'ls'"),
        Problem("Tasks[0].MaxAttempts", "expected an integer, got true"),
        Problem("Tasks[0].Flags[0].Name", "expected a string, got the number 5"),
        Problem("Steps", "expected a list, got a mapping"),
    ]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("timeout", "unknown key 'timeout', did you mean 'Timeout'?"),
        ("max_attempts", "unknown key 'max_attempts', did you mean 'MaxAttempts'?"),
        ("Timout", "unknown key 'Timout', did you mean 'Timeout'?"),
        ("Colour", "unknown key 'Colour' (known keys: Name, Inputs, Outputs, Flags, Exec, Python, Tool, Labels, Env, "
                   "MaxAttempts, Timeout, Backoff)"),
    ],
)  # fmt: skip
def test_a_misspelt_key_gets_the_key_that_was_meant(key: str, message: str) -> None:
    known = [field.encode_name for field in msgspec.inspect.type_info(Task).fields]
    assert unknown_key(key, known) == message


def test_types_are_named_in_words() -> None:
    from typing import Annotated

    assert expected(Annotated[int, msgspec.Meta(ge=0, le=65535)]) == "an integer from 0 to 65535"
    assert expected(Annotated[int, msgspec.Meta(ge=1)]) == "an integer (at least 1)"
    assert expected(int | float | str) == "an integer or a number or a string"


def test_an_api_body_gets_every_problem_at_once() -> None:
    with pytest.raises(Error) as caught:
        decode_flow_body(msgspec.json.encode({"Flow": BROKEN}))
    error = caught.value
    assert error.kind == "invalid" and error.code == "invalid_field"
    assert error.location == "body.Flow"  # the first problem's place in the request
    assert error.problems == shape_problems(BROKEN, Flow)  # paths relative to the flow, as validate's
    assert "(and 8 more)" in error.message


def test_a_misspelt_wrapper_key_is_named_too() -> None:
    with pytest.raises(Error) as caught:
        decode_flow_body(b'{"flow": {}}')
    assert caught.value.location == "body"
    assert caught.value.problems == [Problem("", "unknown key 'flow', did you mean 'Flow'?")]


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("Name: bad\nSteps:\n  - ID: a\n   Uses: b\n")
    with pytest.raises(Error) as caught:
        load_flow_file(path)
    [problem] = caught.value.problems
    assert problem.path == "" and problem.message.startswith("not valid YAML: line 4, column 4: ")
    assert "\n" not in problem.message


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_flow_file_gets_every_problem_at_once(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(msgspec.json.encode(BROKEN))  # JSON is YAML too
    with pytest.raises(Error) as caught:
        load_flow_file(path)
    assert caught.value.problems == shape_problems(BROKEN, Flow)


def test_durations_are_taken_as_strings_everywhere() -> None:
    flow = msgspec.convert(
        {
            "Name": "d",
            "DataWells": [{"Edge": "in", "Source": "upload", "TTL": "15m"}, {"Edge": "out"}],
            "Tasks": [{"Name": "t", "Exec": ["true"], "Timeout": "1m", "Backoff": "1.5s", "Outputs": [{"Name": "o"}]}],
            "Steps": [{"ID": "s", "Uses": "t", "Outputs": [{"Slot": "o", "Edge": "out"}]}],
        },
        Flow,
    )
    assert validate(flow) == []
    assert (flow.tasks[0].timeout_seconds, flow.tasks[0].backoff_seconds) == (60.0, 1.5)


def test_a_literal_is_one_of_its_values() -> None:
    assert shape_problems({"dispatch_target": "cloud", "target_pool": True}, RunRequest) == [
        Problem("dispatch_target", "expected one of 'agent', 'comfy_cloud' or null, got the string 'cloud'"),
        Problem("target_pool", "expected one of 'community', 'team', got true"),
    ]
    assert shape_problems({"dispatch_target": None, "target_pool": "team"}, RunRequest) == []
    assert shape_problems({"default_dispatch_target": "agent"}, WorkflowIn) == []
