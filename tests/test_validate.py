"""Flow validation: one valid flow, then one broken variant of it per rule."""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import Any

import msgspec
import pytest

from flowengine.core.durations import parse_duration
from flowengine.core.spec import Flow
from flowengine.core.validate import MAX_PROBLEMS, MAX_STEPS, mime_matches, validate
from flowengine.errors import Problem

# Written as a flow file would be. Steps are listed out of order on purpose: `stamp` reads
# what `resize` writes.
VALID: dict[str, Any] = {
    "Name": "thumbnails",
    "Stores": [
        {
            "Name": "minio",
            "Type": "s3",
            "Params": {"bucket": "flows", "endpoint": "http://127.0.0.1:9000", "region": "us-east-1"},
        },
    ],
    "DataWells": [
        {
            "Edge": "photo",
            "Source": "upload",
            "Store": "minio",
            "Key": "uploads/${RUN_ID}/${UUID}.jpg",
            "Accept": ["image/jpeg", "image/png"],
            "TTL": "15m",
            "MaxSize": 10_000_000,
        },
        {"Edge": "watermark", "Source": "static", "Key": "assets/watermark.png", "ContentType": "image/png"},
        {
            "Edge": "thumb",
            "Store": "minio",
            "Key": "${FLOW_NAME}/${DATE}/${RUN_ID}.png",
            "ContentType": "image/png",
            "TTL": 3600,
        },
    ],
    "Steps": [
        {
            "ID": "stamp",
            "Uses": "stamp",
            "Inputs": [{"Slot": "image", "Edge": "small"}, {"Slot": "mark", "Edge": "watermark"}],
            "Outputs": [{"Slot": "out", "Edge": "thumb"}],
        },
        {
            "ID": "resize",
            "Uses": "resize",
            "Inputs": [{"Slot": "image", "Edge": "photo"}],
            "Outputs": [{"Slot": "out", "Edge": "small"}],
            "Flags": {"width": 256},
        },
    ],
    "Tasks": [
        {
            "Name": "stamp",
            "Inputs": [
                {"Name": "image", "Accept": ["image/png"]},
                {"Name": "mark"},
                {"Name": "font", "Optional": True},
            ],
            "Outputs": [{"Name": "out", "ContentType": "image/png"}],
            "Flags": [{"Name": "opacity", "Default": 0.5}],
            "Python": "flowtasks.images:stamp",
        },
        {
            "Name": "resize",
            "Inputs": [{"Name": "image", "Accept": ["image/*"]}],
            "Outputs": [{"Name": "out", "ContentType": "image/png"}],
            "Flags": [{"Name": "width", "Required": True}],
            "Exec": ["convert", "${image}", "-resize", "${width}", "${out}"],
            "MaxAttempts": 3,
            "Timeout": 60,
            "Backoff": 2,
        },
    ],
}

# Indexes into VALID, named so the tests below say what they change.
PHOTO, WATERMARK, THUMB = 0, 1, 2  # DataWells
STAMP, RESIZE = 0, 1  # Steps and Tasks


def valid() -> dict[str, Any]:
    return copy.deepcopy(VALID)


def check(doc: dict[str, Any], known_stores: Collection[str] = ()) -> list[Problem]:
    return validate(msgspec.convert(doc, Flow), known_stores)


def assert_only(doc: dict[str, Any], path: str, fragment: str) -> None:
    """`doc` has exactly one problem, at `path`, whose message contains `fragment`."""
    problems = check(doc)
    assert [p.path for p in problems] == [path], problems
    assert fragment in problems[0].message, problems[0].message


def pass_task(name: str = "pass") -> dict[str, Any]:
    return {
        "Name": name,
        "Inputs": [{"Name": "in"}],
        "Outputs": [{"Name": "out"}],
        "Exec": ["cp", "${in}", "${out}"],
    }


def pass_step(step_id: str, source: str, target: str) -> dict[str, Any]:
    return {
        "ID": step_id,
        "Uses": "pass",
        "Inputs": [{"Slot": "in", "Edge": source}],
        "Outputs": [{"Slot": "out", "Edge": target}],
    }


# --- the valid flow and the exported helpers ---------------------------------------------------


def test_valid_flow_has_no_problems() -> None:
    assert check(VALID) == []


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0), (2.5, 2.5), (0, 0.0), ("90", 90.0), ("0.5", 0.5), ("90s", 90.0), ("15m", 900.0), ("1h", 3600.0),
        ("2d", 172800.0), ("1.5h", 5400.0), ("1h30m", 5400.0), ("500ms", 0.5), (" 2M ", 120.0),
    ],
)  # fmt: skip
def test_parse_duration(value: int | str, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["15 minutes", "h", "", "1w", "-5", "5mm", "1h 30m", True, None, [], float("nan")])
def test_parse_duration_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("mime", "pattern", "matches"),
    [
        ("image/png", "image/png", True),
        ("image/png", "image/*", True),
        ("image/png", "*/*", True),
        ("Image/PNG; charset=binary", "image/png", True),
        ("text/csv;charset=utf-8", "TEXT/*", True),
        ("text/csv", "image/*", False),
        ("image/png", "image/jpeg", False),
        ("image/*", "image/png", False),
    ],
)
def test_mime_matches(mime: str, pattern: str, matches: bool) -> None:
    assert mime_matches(mime, pattern) is matches


# --- name and stores ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fragment"), [("", "empty"), ("my flow", "'my flow'"), ("a/b", "'a/b'")])
def test_flow_name(name: str, fragment: str) -> None:
    doc = valid()
    doc["Name"] = name
    assert_only(doc, "Name", fragment)


def test_store_names_are_unique() -> None:
    doc = valid()
    doc["Stores"].append({"Name": "minio", "Type": "local"})
    assert_only(doc, "Stores[1].Name", "store name 'minio' is used twice")


def test_store_type() -> None:
    doc = valid()
    doc["Stores"][0]["Type"] = "ftp"
    assert_only(doc, "Stores[0].Type", "unknown store type 'ftp'")


@pytest.mark.parametrize("missing", ["bucket", "endpoint"])
def test_s3_store_needs_bucket_and_endpoint(missing: str) -> None:
    doc = valid()
    del doc["Stores"][0]["Params"][missing]
    assert_only(doc, "Stores[0].Params", f"an s3 store needs Params '{missing}'")


@pytest.mark.parametrize("param", ["access_key", "SECRET_KEY", "SecretAccessKey", "password", "token", "secret"])
def test_store_params_carry_no_secrets(param: str) -> None:
    doc = valid()
    doc["Stores"][0]["Params"][param] = "hunter2"
    assert_only(doc, f"Stores[0].Params.{param}", "credentials come from the environment or config")


def test_well_store_must_be_known() -> None:
    doc = valid()
    doc["DataWells"][WATERMARK]["Store"] = "archive"
    assert_only(doc, f"DataWells[{WATERMARK}].Store", "unknown store 'archive'")


def test_operator_stores_and_default_are_known() -> None:
    doc = valid()
    doc["DataWells"][WATERMARK]["Store"] = "archive"
    doc["DataWells"][PHOTO]["Store"] = "default"
    assert check(doc, known_stores={"archive"}) == []


# --- tasks -------------------------------------------------------------------------------------


def test_task_names_are_unique() -> None:
    doc = valid()
    doc["Tasks"].append(pass_task("stamp"))
    assert_only(doc, "Tasks[2].Name", "task name 'stamp' is used twice")


def test_task_needs_exec_or_python() -> None:
    doc = valid()
    del doc["Tasks"][STAMP]["Python"]
    assert_only(doc, f"Tasks[{STAMP}]", "needs Exec")


def test_task_has_not_both_exec_and_python() -> None:
    doc = valid()
    doc["Tasks"][STAMP]["Exec"] = ["stamp"]
    assert_only(doc, f"Tasks[{STAMP}]", "both Exec and Python")


def agent_task(**fields: Any) -> dict[str, Any]:
    """STAMP's task run by an agent with ComfyUI instead of by the engine."""
    doc = valid()
    del doc["Tasks"][STAMP]["Python"]
    doc["Tasks"][STAMP] |= {"Tool": "comfyui", "Labels": ["gpu", "sd15"], **fields}
    return doc


def test_a_task_may_run_on_an_agent_with_a_tool() -> None:
    assert check(agent_task()) == []


@pytest.mark.parametrize(
    ("runners", "fragment"),
    [
        ({"Exec": ["stamp"]}, "task 'stamp' sets both Exec and Tool; choose one"),
        ({"Python": "m:f"}, "task 'stamp' sets both Python and Tool; choose one"),
        ({"Exec": ["stamp"], "Python": "m:f"}, "task 'stamp' sets Exec, Python and Tool; choose one"),
    ],
)
def test_a_task_has_one_runner(runners: dict[str, Any], fragment: str) -> None:
    assert_only(agent_task(**runners), f"Tasks[{STAMP}]", fragment)


def test_a_task_without_a_runner_is_told_of_tools_too() -> None:
    doc = valid()
    del doc["Tasks"][STAMP]["Python"]
    assert_only(doc, f"Tasks[{STAMP}]", "needs Exec (an argv list), Python ('module:function') or Tool")


@pytest.mark.parametrize(
    ("fields", "path", "fragment"),
    [
        ({"Tool": "comfy ui"}, "Tool", "tool 'comfy ui' may only use letters"),
        ({"Tool": ""}, "Tool", "tool is empty"),
        ({"Env": {"A": "b"}}, "Env", "an agent runs a Tool task"),
        ({"Labels": ["gpu", "gpu"]}, "Labels[1]", "label 'gpu' is used twice"),
        ({"Labels": ["big gpu"]}, "Labels[0]", "label 'big gpu' may only use"),
    ],
)
def test_agent_task_rules(fields: dict[str, Any], path: str, fragment: str) -> None:
    assert_only(agent_task(**fields), f"Tasks[{STAMP}].{path}", fragment)


def test_any_task_may_ask_for_labels_its_worker_must_have() -> None:
    doc = valid()
    doc["Tasks"][STAMP]["Labels"] = ["gpu"]  # an Exec task: an agent (or a local executor with local_labels) runs it
    assert check(doc) == []
    doc["Tasks"][STAMP]["Labels"] = ["big gpu"]
    assert_only(doc, f"Tasks[{STAMP}].Labels[0]", "label 'big gpu' may only use")


def test_exec_is_a_non_empty_argv() -> None:
    doc = valid()
    doc["Tasks"][RESIZE]["Exec"] = []
    assert_only(doc, f"Tasks[{RESIZE}].Exec", "non-empty argv")


@pytest.mark.parametrize("target", ["flowtasks.images", "stamp()", "flowtasks/images:stamp", ":stamp"])
def test_python_is_module_colon_function(target: str) -> None:
    doc = valid()
    doc["Tasks"][STAMP]["Python"] = target
    assert_only(doc, f"Tasks[{STAMP}].Python", "'module:function'")


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("MaxAttempts", 0, "from 1 to 100"),
        ("MaxAttempts", 101, "from 1 to 100"),
        ("Timeout", 0, "more than 0"),
        ("Timeout", 1e308, "at most 604800 seconds"),
        ("Backoff", -1, "from 0 to 86400 seconds"),
        ("Backoff", 86401, "from 0 to 86400 seconds"),
        ("Timeout", "8d", "at most 604800 seconds"),
        ("Timeout", "soon", "duration 'soon' is not a number with a unit"),
        ("Backoff", "2d", "from 0 to 86400 seconds"),
    ],
)
def test_task_limits(field: str, value: int | str, fragment: str) -> None:
    doc = valid()
    doc["Tasks"][RESIZE][field] = value
    assert_only(doc, f"Tasks[{RESIZE}].{field}", fragment)


@pytest.mark.parametrize(
    ("field", "entry", "path", "fragment"),
    [
        ("Inputs", {"Name": "mark", "Optional": True}, "Inputs[3].Name", "input slot 'mark' is used twice"),
        ("Outputs", {"Name": "out"}, "Outputs[1].Name", "output slot 'out' is used twice"),
        ("Flags", {"Name": "opacity"}, "Flags[1].Name", "flag 'opacity' is used twice"),
    ],
)
def test_task_slot_and_flag_names_are_unique(field: str, entry: dict[str, Any], path: str, fragment: str) -> None:
    doc = valid()
    doc["Tasks"][STAMP][field].append(entry)
    assert_only(doc, f"Tasks[{STAMP}].{path}", fragment)


def test_slot_and_flag_names_do_not_collide() -> None:
    doc = valid()
    doc["Tasks"][STAMP]["Flags"].append({"Name": "mark"})
    assert_only(doc, f"Tasks[{STAMP}].Flags[1].Name", "flag 'mark' has the name of a slot")


def test_exec_variables_are_slots_or_flags() -> None:
    doc = valid()
    doc["Tasks"][RESIZE]["Exec"][3] = "${width}x${height}"
    assert_only(doc, f"Tasks[{RESIZE}].Exec[3]", "unknown variable ${height}")


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("1ST", "x", "may not start with a digit"),
        ("MY-VAR", "x", "may only use letters, digits and '_'"),
        ("", "x", "may only use letters"),
        ("FLOWENGINE_RUN_ID", "x", "are set by the engine"),
        ("FLOWENGINE_TOKEN", "x", "are set by the engine"),
        ("OK", "a\0b", "NUL"),
    ],
)
def test_task_env_names_and_values(name: str, value: str, fragment: str) -> None:
    doc = valid()
    doc["Tasks"][STAMP]["Env"] = {"GOOD_NAME": "kept", name: value}
    assert_only(doc, f"Tasks[{STAMP}].Env.{name}", fragment)


def test_task_env_values_are_strings() -> None:
    doc = valid()
    doc["Tasks"][STAMP]["Env"] = {"WIDTH": 256}
    with pytest.raises(msgspec.ValidationError, match=r"Expected `str`, got `int` - at `\$.Tasks\[0\].Env"):
        msgspec.convert(doc, Flow)


# --- steps -------------------------------------------------------------------------------------


def test_step_ids_are_unique() -> None:
    doc = valid()
    doc["Steps"][RESIZE]["ID"] = "stamp"
    assert_only(doc, f"Steps[{RESIZE}].ID", "step ID 'stamp' is used twice")


@pytest.mark.parametrize(("step_id", "fragment"), [("", "empty"), ("re size", "'re size'")])
def test_step_id_is_a_name(step_id: str, fragment: str) -> None:
    doc = valid()
    doc["Steps"][STAMP]["ID"] = step_id
    assert_only(doc, f"Steps[{STAMP}].ID", fragment)


def test_step_uses_a_known_task() -> None:
    doc = valid()
    doc["Steps"][RESIZE]["Uses"] = "shrink"
    assert_only(doc, f"Steps[{RESIZE}].Uses", "unknown task 'shrink'")


def test_step_binds_only_slots_of_its_task() -> None:
    doc = valid()
    doc["Steps"][STAMP]["Inputs"].append({"Slot": "logo", "Edge": "watermark"})
    assert_only(doc, f"Steps[{STAMP}].Inputs[2].Slot", "task 'stamp' has no input slot 'logo'")


def test_step_binds_every_required_input() -> None:
    doc = valid()
    del doc["Steps"][STAMP]["Inputs"][1]  # mark; font stays unbound too, but it is optional
    assert_only(doc, f"Steps[{STAMP}].Inputs", "input slot 'mark' of task 'stamp' is not bound")


def test_step_binds_every_output() -> None:
    doc = valid()
    doc["Tasks"][STAMP]["Outputs"].append({"Name": "log"})
    assert_only(doc, f"Steps[{STAMP}].Outputs", "output slot 'log' of task 'stamp' is not bound")


def test_step_binds_a_slot_once() -> None:
    doc = valid()
    doc["Steps"][STAMP]["Inputs"].append({"Slot": "image", "Edge": "photo"})
    assert_only(doc, f"Steps[{STAMP}].Inputs[2].Slot", "input slot 'image' is bound twice")


def test_step_flags_are_defined_by_its_task() -> None:
    doc = valid()
    doc["Steps"][RESIZE]["Flags"]["height"] = 100
    assert_only(doc, f"Steps[{RESIZE}].Flags.height", "task 'resize' has no flag 'height'")


def test_required_flag_must_be_given() -> None:
    doc = valid()
    del doc["Steps"][RESIZE]["Flags"]
    assert_only(doc, f"Steps[{RESIZE}].Flags", "required flag 'width' of task 'resize' is not set")


def test_required_flag_with_a_default_may_be_left_out() -> None:
    doc = valid()
    del doc["Steps"][RESIZE]["Flags"]
    doc["Tasks"][RESIZE]["Flags"][0]["Default"] = 128
    assert check(doc) == []


# --- edges -------------------------------------------------------------------------------------


def test_edge_filled_by_two_step_outputs() -> None:
    doc = valid()
    doc["Tasks"].append(pass_task())
    doc["Steps"].append(pass_step("copy", "photo", "small"))
    assert_only(doc, "Steps[2].Outputs[0].Edge", "edge 'small' is filled twice: already by step 'resize'")


def test_edge_filled_by_a_sourced_well_and_a_step_output() -> None:
    doc = valid()
    doc["DataWells"].append({"Edge": "small", "Source": "upload", "Accept": ["image/png"]})
    assert_only(doc, f"Steps[{RESIZE}].Outputs[0].Edge", "edge 'small' is filled twice: already by DataWells[3]")


def test_two_wells_on_one_edge() -> None:
    doc = valid()
    doc["DataWells"].append({"Edge": "photo", "Source": "webhook"})
    assert_only(doc, "DataWells[3].Edge", "edge 'photo' already has a DataWell (DataWells[0])")


def test_well_without_source_must_be_written_by_a_step() -> None:
    doc = valid()
    doc["DataWells"].append({"Edge": "report", "Key": "reports/${RUN_ID}.csv"})
    assert_only(doc, "DataWells[3].Edge", "edge 'report' is never filled")


def test_consumed_edge_needs_a_producer() -> None:
    doc = valid()
    doc["Steps"][STAMP]["Inputs"][1]["Edge"] = "logo"
    assert_only(doc, f"Steps[{STAMP}].Inputs[1].Edge", "edge 'logo' has no producer")


def test_sourced_edge_nobody_reads_is_collected() -> None:
    doc = valid()
    doc["DataWells"].append({"Edge": "notes", "Source": "upload", "Key": "notes/${RUN_ID}.txt"})
    assert check(doc) == []


@pytest.mark.parametrize("edge", ["small photo", "a/b", "..", ""])
def test_edge_names_are_safe_in_keys_and_urls(edge: str) -> None:
    doc = valid()
    doc["DataWells"][WATERMARK]["Edge"] = edge
    doc["Steps"][STAMP]["Inputs"][1]["Edge"] = edge
    problems = check(doc)
    assert [p.path for p in problems] == [f"DataWells[{WATERMARK}].Edge", f"Steps[{STAMP}].Inputs[1].Edge"]
    assert all("edge name" in p.message for p in problems)


# --- cycles ------------------------------------------------------------------------------------


def test_cycle_is_one_problem_at_its_first_step() -> None:
    doc = {
        "Name": "loop",
        "DataWells": [{"Edge": "in", "Source": "upload"}],
        "Tasks": [pass_task()],
        "Steps": [
            pass_step("start", "in", "a"),
            pass_step("c", "z", "x"),
            pass_step("a", "x", "y"),
            pass_step("b", "y", "z"),
        ],
    }
    assert_only(doc, "Steps[1]", "'c' -> 'a' -> 'b' -> 'c'")


def test_step_reading_its_own_output_is_a_cycle() -> None:
    doc = {"Name": "self", "Tasks": [pass_task()], "Steps": [pass_step("again", "x", "x")]}
    assert_only(doc, "Steps[0]", "'again' -> 'again'")


def test_every_cycle_is_found_once_even_a_long_one() -> None:
    ring = [pass_step(f"r{i}", f"e{i}", f"e{(i + 1) % MAX_STEPS}") for i in range(MAX_STEPS - 2)]
    ring[-1]["Outputs"][0]["Edge"] = "e0"
    doc = {
        "Name": "rings",
        "Tasks": [pass_task()],
        "Steps": [*ring, pass_step("p", "q", "p2"), pass_step("q", "p2", "q")],
    }
    problems = check(doc)
    assert [p.path for p in problems] == ["Steps[0]", f"Steps[{MAX_STEPS - 2}]"], problems
    assert "'r0' -> 'r1' -> " in problems[0].message and "'p' -> 'q' -> 'p'" in problems[1].message


# --- limits ------------------------------------------------------------------------------------


def test_a_flow_over_the_size_limits_is_refused_before_anything_else() -> None:
    doc = {
        "Name": "huge",
        "Tasks": [pass_task()],
        "Steps": [pass_step(f"s{i}", f"e{i}", f"e{i + 1}") for i in range(MAX_STEPS + 1)],
    }
    assert_only(doc, "Steps", f"{MAX_STEPS + 1} Steps is over the limit of {MAX_STEPS}")


def test_problems_are_capped_with_a_note_of_the_rest() -> None:
    doc = {
        "Name": "many",
        "Tasks": [pass_task()],
        "Steps": [pass_step(f"s{i}", "nowhere", f"o{i}") for i in range(300)],
    }
    problems = check(doc)
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1] == Problem("", f"more problems not shown: the first {MAX_PROBLEMS} are listed")


def test_unknown_task_message_lists_a_few_tasks_not_all() -> None:
    doc = valid()
    doc["Tasks"] += [pass_task(f"t{i}") for i in range(100)]
    doc["Steps"][RESIZE]["Uses"] = "nope"
    problems = check(doc)
    assert problems[0].path == f"Steps[{RESIZE}].Uses" and problems[0].message.endswith(", ...)")


# --- data wells --------------------------------------------------------------------------------


def test_well_source() -> None:
    doc = valid()
    doc["DataWells"][PHOTO]["Source"] = "ftp"
    assert_only(doc, f"DataWells[{PHOTO}].Source", "unknown Source 'ftp'")


def test_static_well_needs_a_key() -> None:
    doc = valid()
    del doc["DataWells"][WATERMARK]["Key"]
    assert_only(doc, f"DataWells[{WATERMARK}].Key", "a static well needs a Key")


@pytest.mark.parametrize("var", ["RUN_ID", "UUID", "TIMESTAMP", "DATE"])
def test_static_key_names_an_existing_object(var: str) -> None:
    doc = valid()
    doc["DataWells"][WATERMARK]["Key"] = f"assets/${{{var}}}.png"
    assert_only(doc, f"DataWells[{WATERMARK}].Key", f"${{{var}}} changes every run")


def test_static_key_may_use_the_flow_name() -> None:
    doc = valid()
    doc["DataWells"][WATERMARK]["Key"] = "assets/${FLOW_NAME}/watermark.png"
    assert check(doc) == []


def test_key_variables_are_known() -> None:
    doc = valid()
    doc["DataWells"][THUMB]["Key"] = "${FLOW_NAME}/${RUNID}.png"
    assert_only(doc, f"DataWells[{THUMB}].Key", "unknown variable ${RUNID}")


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("../${RUN_ID}.png", "'..' path segment"),
        ("${FLOW_NAME}//${RUN_ID}", "'..' path segment"),
        ("/srv/${RUN_ID}.png", "absolute path"),
        ("out\\${RUN_ID}.png", "backslash"),
        ("", "is empty"),
    ],
)
def test_key_literal_parts_are_safe(key: str, fragment: str) -> None:
    doc = valid()
    doc["DataWells"][THUMB]["Key"] = key
    assert_only(doc, f"DataWells[{THUMB}].Key", fragment)


@pytest.mark.parametrize("ttl", [0, -60, "15 minutes", "0s", "1w"])
def test_well_ttl(ttl: int | str) -> None:
    doc = valid()
    doc["DataWells"][PHOTO]["TTL"] = ttl
    assert_only(doc, f"DataWells[{PHOTO}].TTL", f"duration {ttl!r}")


@pytest.mark.parametrize(
    ("sizes", "path", "fragment"),
    [
        ({"Size": -1}, "Size", "from 0 bytes to 5 TiB"),
        ({"Size": 10**30, "MaxSize": None}, "Size", "from 0 bytes to 5 TiB"),
        ({"MaxSize": 0}, "MaxSize", "more than 0 bytes"),
        ({"Size": 2048, "MaxSize": 1024}, "Size", "Size 2048 is larger than MaxSize 1024"),
    ],
)
def test_well_sizes(sizes: dict[str, int | None], path: str, fragment: str) -> None:
    doc = valid()
    doc["DataWells"][PHOTO].update(sizes)
    assert_only(doc, f"DataWells[{PHOTO}].{path}", fragment)


@pytest.mark.parametrize("content_type", ["png", "image/", "image/*", "image png"])
def test_well_content_type_is_a_mime_type(content_type: str) -> None:
    doc = valid()
    doc["DataWells"][WATERMARK]["ContentType"] = content_type
    assert_only(doc, f"DataWells[{WATERMARK}].ContentType", f"{content_type!r} is not a MIME type")


def test_well_content_type_may_carry_parameters() -> None:
    doc = valid()
    doc["DataWells"].append({"Edge": "notes", "Source": "upload", "ContentType": "text/plain; charset=utf-8"})
    assert check(doc) == []


@pytest.mark.parametrize("pattern", ["image", "*/png", "*", "image/png/x"])
def test_well_accept_entries_are_mime_patterns(pattern: str) -> None:
    doc = valid()
    doc["DataWells"][PHOTO]["Accept"] = ["image/png", pattern]
    assert_only(doc, f"DataWells[{PHOTO}].Accept[1]", f"{pattern!r} is not a MIME pattern")


# --- MIME types along edges --------------------------------------------------------------------


def test_upload_type_must_suit_the_reading_slot() -> None:
    doc = valid()
    doc["DataWells"][PHOTO]["Accept"] = ["text/csv"]
    assert_only(
        doc,
        f"Steps[{RESIZE}].Inputs[0].Edge",
        "edge 'photo' carries text/csv but slot 'image' of task 'resize' accepts image/*",
    )


def test_step_output_type_must_suit_the_reading_slot() -> None:
    doc = valid()
    doc["Tasks"][RESIZE]["Outputs"][0]["ContentType"] = "image/jpeg"
    assert_only(
        doc,
        f"Steps[{STAMP}].Inputs[0].Edge",
        "edge 'small' carries image/jpeg but slot 'image' of task 'stamp' accepts image/png",
    )


@pytest.mark.parametrize("accept", [["*/*"], ["image/*"], ["text/csv", "IMAGE/PNG"]])
def test_overlapping_patterns_are_accepted(accept: list[str]) -> None:
    doc = valid()
    doc["DataWells"][PHOTO]["Accept"] = accept
    doc["Tasks"][STAMP]["Inputs"][0]["Accept"] = ["image/png"]
    assert check(doc) == []


def test_step_output_type_must_suit_the_well_it_lands_in() -> None:
    doc = valid()
    doc["Tasks"][STAMP]["Outputs"][0]["ContentType"] = "image/webp"
    assert_only(doc, f"Steps[{STAMP}].Outputs[0].Edge", "writes image/webp but DataWells[2] on edge 'thumb'")


# --- all at once -------------------------------------------------------------------------------


def test_every_problem_comes_back_at_once() -> None:
    doc = valid()
    doc["Name"] = ""
    doc["Stores"][0]["Params"]["secret_key"] = "hunter2"
    doc["DataWells"][PHOTO]["TTL"] = "soon"
    doc["Steps"][RESIZE]["Uses"] = "shrink"
    doc["Tasks"][STAMP]["MaxAttempts"] = 0
    doc["Steps"][STAMP]["Inputs"][1]["Edge"] = "logo"
    paths = [p.path for p in check(doc)]
    assert paths == [
        "Name",
        "Stores[0].Params.secret_key",
        f"Tasks[{STAMP}].MaxAttempts",
        f"Steps[{RESIZE}].Uses",
        f"DataWells[{PHOTO}].TTL",
        f"Steps[{STAMP}].Inputs[1].Edge",
    ]


def test_flag_types_are_checked_for_defaults_and_step_values():
    flow = msgspec.convert(
        {
            "Name": "typed",
            "Tasks": [
                {
                    "Name": "t",
                    "Exec": ["true"],
                    "Flags": [
                        {"Name": "level", "Type": "integer", "Default": 6},
                        {"Name": "ratio", "Type": "number", "Default": "high"},
                        {"Name": "fast", "Type": "boolean"},
                        {"Name": "mode", "Type": "enum"},
                        {"Name": "anything"},
                    ],
                }
            ],
            "Steps": [{"ID": "s", "Uses": "t", "Flags": {"level": 9.5, "fast": "yes", "anything": 3}}],
        },
        Flow,
    )
    problems = {p.path: p.message for p in validate(flow)}
    assert problems == {
        "Tasks[0].Flags[1].Default": "default 'high' is not a number",
        "Tasks[0].Flags[3].Type": "unknown flag type 'enum' (one of 'string', 'number', 'integer', 'boolean')",
        "Steps[0].Flags.level": "9.5 is not an integer (flag 'level')",
        "Steps[0].Flags.fast": "'yes' is not a boolean (flag 'fast')",
    }


def test_ttl_bucket_names_and_unclosed_variables():
    flow = msgspec.convert(
        {
            "Name": "limits",
            "Stores": [{"Name": "s", "Type": "s3", "Params": {"endpoint": "127.0.0.1:9", "bucket": "B_x"}}],
            "DataWells": [
                {"Edge": "a", "Source": "upload", "TTL": "8d"},
                {"Edge": "b", "Source": "upload", "Key": "${RUN_ID}/${NOPE", "Store": "s"},
            ],
        },
        Flow,
    )
    problems = {p.path: p.message for p in validate(flow)}
    assert "at most 604800 seconds" in problems["DataWells[0].TTL"]
    assert "no closing" in problems["DataWells[1].Key"]
    assert "not an S3 bucket name" in problems["Stores[0].Params.bucket"]


@pytest.mark.parametrize("name", ["../evil", "..", "a/b", ""])
def test_store_names_cannot_escape_the_data_dir(name: str) -> None:
    flow = msgspec.convert(
        {"Name": "x", "Stores": [{"Name": name}], "DataWells": [{"Edge": "a", "Store": name, "Source": "upload"}]},
        Flow,
    )
    assert "Stores[0].Name" in {p.path for p in validate(flow)}
