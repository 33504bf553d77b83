"""The pure state machine, tested with plain values: no I/O, no clock, no database.

Flows are built as a flow file would be written (PascalCase) and converted with msgspec; edge
states are built by hand, as the shell would resolve them. Time is a number passed in.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from msgspec import structs

from flowengine.core.machine import (
    COMPLETE,
    ERROR,
    FROM_STEP,
    IDLE,
    MAX_INTERRUPTIONS,
    READY,
    RETRYING,
    RUNNING,
    STOPPED,
    TERMINAL,
    WAITING,
    Abort,
    Cancel,
    Dispatch,
    EdgeState,
    Event,
    Landed,
    ObjectMeta,
    Progress,
    Refresh,
    Run,
    StepFailed,
    StepInterrupted,
    StepProgressed,
    StepReleased,
    StepStarted,
    StepSucceeded,
    Tick,
    Transition,
    advance,
    landing_problem,
    next_wake,
    start,
    transitions,
    waiting_edges,
)
from flowengine.core.spec import Flow

T0 = 1_000.0
TTL = 60.0
DEADLINE = T0 + TTL
OBJ = ObjectMeta(10, "text/plain", "etag-1")
OTHER = ObjectMeta(20, "text/csv", "etag-2")


# ---------------------------------------------------------------------------------------------
# Building flows, edges and runs


def task(name: str, inputs: tuple[str, ...] = (), outputs: tuple[str, ...] = ("out",), **extra: Any) -> dict:
    return {
        "Name": name,
        "Inputs": [{"Name": s} for s in inputs],
        "Outputs": [{"Name": s} for s in outputs],
        "Exec": ["true"],
        **extra,
    }


def step(step_id: str, uses: str, inputs: dict[str, str] | None = None, outputs: dict[str, str] | None = None) -> dict:
    return {
        "ID": step_id,
        "Uses": uses,
        "Inputs": [{"Slot": s, "Edge": e} for s, e in (inputs or {}).items()],
        "Outputs": [{"Slot": s, "Edge": e} for s, e in (outputs or {}).items()],
    }


def make_flow(name: str, wells: list[dict], steps: list[dict] | None = None, tasks: list[dict] | None = None) -> Flow:
    return msgspec.convert({"Name": name, "DataWells": wells, "Steps": steps or [], "Tasks": tasks or []}, Flow)


def well(source: str = "upload", deadline: float | None = DEADLINE, **kw: Any) -> EdgeState:
    """A well a client or webhook fills."""
    return EdgeState("default", f"in/{source}", source, deadline=deadline, **kw)


def produced() -> EdgeState:
    """An edge a step's output fills."""
    return EdgeState("default", "out/key", FROM_STEP)


def static(obj: ObjectMeta = OBJ) -> EdgeState:
    return EdgeState("default", "assets/key", "static", object=obj, filled_at=T0 - 100)


# raw --first--> mid --second--> result ; `work` retries: 3 attempts, backoff 2s doubling.
HOP = make_flow(
    "hop",
    [{"Edge": "raw", "Source": "upload", "TTL": 60}, {"Edge": "mid"}, {"Edge": "result"}],
    [step("first", "work", {"in": "raw"}, {"out": "mid"}), step("second", "work", {"in": "mid"}, {"out": "result"})],
    [task("work", ("in",), MaxAttempts=3, Backoff=2)],
)

# raw --left--> l ; raw --right--> r ; (l, r) --join--> out. `copy` has 2 attempts, `once` one.
FAN = make_flow(
    "fan",
    [{"Edge": "raw", "Source": "upload", "TTL": 60}, {"Edge": "l"}, {"Edge": "r"}, {"Edge": "out"}],
    [
        step("left", "copy", {"in": "raw"}, {"out": "l"}),
        step("right", "once", {"in": "raw"}, {"out": "r"}),
        step("join", "join", {"a": "l", "b": "r"}, {"out": "out"}),
    ],
    [task("copy", ("in",), MaxAttempts=2, Backoff=1), task("once", ("in",)), task("join", ("a", "b"))],
)

# gen (no inputs) --> g ; u is uploaded ; (g, u) --combine--> out.
MIX = make_flow(
    "mix",
    [{"Edge": "u", "Source": "upload", "TTL": 60}, {"Edge": "g"}, {"Edge": "out"}],
    [step("gen", "make", {}, {"out": "g"}), step("combine", "join", {"a": "g", "b": "u"}, {"out": "out"})],
    [task("make", MaxAttempts=3, Backoff=2), task("join", ("a", "b"))],
)

# No steps: wells only.
WELLS = make_flow(
    "wells",
    [{"Edge": "a", "Source": "upload", "TTL": 60}, {"Edge": "b", "Source": "webhook", "TTL": 60}],
)


def hop_edges(**raw: Any) -> dict[str, EdgeState]:
    """The edges of HOP; `raw` keyword arguments go to the well (`raw=` replaces it)."""
    edge = raw.pop("raw", None) or well(**raw)
    return {"raw": edge, "mid": produced(), "result": produced()}


def fan_edges() -> dict[str, EdgeState]:
    return {"raw": well(), "l": produced(), "r": produced(), "out": produced()}


def mix_edges() -> dict[str, EdgeState]:
    return {"u": well(), "g": produced(), "out": produced()}


def wells_edges() -> dict[str, EdgeState]:
    return {"a": well(), "b": well("webhook")}


def start_hop(**raw: Any) -> Run:
    run, commands = start(HOP, "run-hop", hop_edges(**raw), T0)
    assert commands == []
    return run


def play(run: Run, flow: Flow, *events: tuple[Event, float]) -> tuple[Run, list]:
    """Apply events in order; the final run and the commands of the last one."""
    commands: list = []
    for event, now in events:
        run, commands = advance(run, flow, event, now)
    return run, commands


def hop_running() -> Run:
    """raw landed, `first` running attempt 1."""
    run, _ = play(start_hop(), HOP, (Landed("raw", OBJ), T0 + 1), (StepStarted("first", 1), T0 + 2))
    assert run.steps["first"].status == RUNNING
    return run


def fan_running() -> Run:
    """raw landed, `left` and `right` both running attempt 1."""
    run, _ = start(FAN, "run-fan", fan_edges(), T0)
    run, _ = play(
        run, FAN, (Landed("raw", OBJ), T0 + 1), (StepStarted("left", 1), T0 + 2), (StepStarted("right", 1), T0 + 2)
    )
    assert (run.steps["left"].status, run.steps["right"].status) == (RUNNING, RUNNING)
    return run


def mix_started() -> Run:
    """`gen` dispatched at start (READY, attempt 1), well `u` still empty."""
    run, commands = start(MIX, "run-mix", mix_edges(), T0)
    assert commands == [Dispatch("gen", 1)]
    return run


def mix_running() -> Run:
    """`gen` running attempt 1, well `u` still empty."""
    run, _ = advance(mix_started(), MIX, StepStarted("gen", 1), T0 + 1)
    return run


def snapshot(run: Run) -> bytes:
    return msgspec.json.encode(run)


# ---------------------------------------------------------------------------------------------
# start


def test_start_sets_up_a_fresh_run():
    run = start_hop()
    assert run.id == "run-hop"
    assert run.flow == "hop"
    assert run.status == WAITING
    assert (run.created, run.updated) == (T0, T0)
    assert set(run.steps) == {"first", "second"}
    assert all(s.status == IDLE and s.attempts == 0 for s in run.steps.values())
    assert run.error is None and run.failed_step is None
    assert waiting_edges(run) == ["raw"]
    assert next_wake(run) == DEADLINE


def test_status_constants_are_the_api_strings():
    assert (STOPPED, WAITING, RUNNING, COMPLETE, ERROR) == ("STOPPED", "WAITING", "RUNNING", "COMPLETE", "ERROR")
    assert frozenset({STOPPED, COMPLETE, ERROR}) == TERMINAL


@pytest.mark.parametrize(
    ("flow", "edges", "status", "commands"),
    [
        pytest.param(WELLS, {"a": well(), "b": well("webhook")}, WAITING, [], id="wells-empty"),
        pytest.param(WELLS, {"a": static(), "b": well("webhook")}, WAITING, [], id="one-static"),
        pytest.param(WELLS, {"a": static(), "b": static(OTHER)}, COMPLETE, [], id="all-static"),
        pytest.param(HOP, hop_edges(), WAITING, [], id="step-waits-for-upload"),
        pytest.param(HOP, hop_edges(raw=static()), RUNNING, [Dispatch("first", 1)], id="step-on-static-input"),
        pytest.param(MIX, mix_edges(), RUNNING, [Dispatch("gen", 1)], id="step-without-inputs"),
    ],
)
def test_start_status(flow: Flow, edges: dict[str, EdgeState], status: str, commands: list):
    run, got = start(flow, "r", edges, T0)
    assert run.status == status
    assert got == commands
    for command in commands:
        assert run.steps[command.step].status == READY
        assert run.steps[command.step].attempts == 1


def test_flow_without_steps_waits_for_every_well_then_completes():
    run, commands = start(WELLS, "r", wells_edges(), T0)
    assert (run.status, commands) == (WAITING, [])
    assert waiting_edges(run) == ["a", "b"]
    run, commands = advance(run, WELLS, Landed("a", OBJ), T0 + 1)
    assert (run.status, commands) == (WAITING, [])
    assert waiting_edges(run) == ["b"]
    run, commands = advance(run, WELLS, Landed("b", OTHER), T0 + 2)
    assert (run.status, commands) == (COMPLETE, [])
    assert waiting_edges(run) == []
    assert next_wake(run) is None
    assert run.edges["b"].object == OTHER


def test_static_wells_arrive_filled():
    run, _ = start(WELLS, "r", {"a": static(), "b": well("webhook")}, T0)
    assert run.edges["a"].object == OBJ
    assert waiting_edges(run) == ["b"]
    assert next_wake(run) == DEADLINE


def test_step_without_inputs_is_dispatched_at_start():
    run, commands = start(MIX, "r", mix_edges(), T0)
    assert commands == [Dispatch("gen", 1)]
    assert run.steps["gen"].status == READY
    assert run.steps["gen"].attempts == 1
    assert run.steps["combine"].status == IDLE
    assert run.status == RUNNING


# ---------------------------------------------------------------------------------------------
# Landed


def test_landed_fills_the_edge_and_dispatches():
    run = start_hop()
    new, commands = advance(run, HOP, Landed("raw", OBJ), T0 + 5)
    edge = new.edges["raw"]
    assert edge.object == OBJ
    assert edge.filled_at == T0 + 5
    assert edge.deadline is None
    assert commands == [Dispatch("first", 1)]
    assert new.status == RUNNING
    assert new.updated == T0 + 5
    assert new.steps["second"].status == IDLE


@pytest.mark.parametrize("second", [OBJ, OTHER], ids=["same-object", "different-object"])
def test_duplicate_landed_changes_nothing(second: ObjectMeta):
    run, _ = advance(start_hop(), HOP, Landed("raw", OBJ), T0 + 1)
    again, commands = advance(run, HOP, Landed("raw", second), T0 + 2)
    assert again is run
    assert commands == []
    assert again.edges["raw"].object == OBJ
    assert again.edges["raw"].filled_at == T0 + 1


def test_duplicate_landed_on_a_flow_without_steps_changes_nothing():
    run, _ = start(WELLS, "r", wells_edges(), T0)
    run, _ = advance(run, WELLS, Landed("a", OBJ), T0 + 1)
    again, commands = advance(run, WELLS, Landed("a", OTHER), T0 + 2)
    assert again is run
    assert commands == []


@pytest.mark.parametrize("edge", ["nope", "mid", "result"], ids=["unknown-edge", "step-output", "last-output"])
def test_landed_on_unknown_or_step_output_edge_is_ignored(edge: str):
    run = start_hop()
    new, commands = advance(run, HOP, Landed(edge, OBJ), T0 + 1)
    assert new is run
    assert commands == []
    assert all(e.object is None for e in new.edges.values())


def test_landed_on_step_output_while_running_is_ignored():
    run = hop_running()
    new, commands = advance(run, HOP, Landed("mid", OBJ), T0 + 3)
    assert new is run
    assert commands == []
    assert new.edges["mid"].object is None
    assert new.steps["second"].status == IDLE


# (edge constraints, arriving object, the reason)
PROBLEMS = [
    pytest.param({"expect_size": 10}, ObjectMeta(11, "text/plain", "e"),
                 "object for edge 'raw' is 11 bytes, declared 10", id="size-mismatch"),
    pytest.param({"expect_size": 10}, ObjectMeta(9, "text/plain", "e"),
                 "object for edge 'raw' is 9 bytes, declared 10", id="size-short"),
    pytest.param({"max_size": 100}, ObjectMeta(101, "text/plain", "e"),
                 "object for edge 'raw' is 101 bytes, over the limit of 100", id="over-max-size"),
    pytest.param({"content_type": "text/csv"}, ObjectMeta(1, "text/plain", "e"),
                 "object for edge 'raw' has type 'text/plain', declared 'text/csv'", id="wrong-declared-type"),
    pytest.param({"content_type": "text/csv; charset=utf-8"}, ObjectMeta(1, "text/plain; charset=utf-8", "e"),
                 "object for edge 'raw' has type 'text/plain', declared 'text/csv; charset=utf-8'",
                 id="wrong-declared-type-with-params"),
    pytest.param({"accept": ["image/*"]}, ObjectMeta(1, "text/plain", "e"),
                 "object for edge 'raw' has type 'text/plain', not one of image/*", id="outside-wildcard"),
    pytest.param({"accept": ["image/*"]}, ObjectMeta(1, "imagery/png", "e"),
                 "object for edge 'raw' has type 'imagery/png', not one of image/*", id="prefix-is-not-kind"),
    pytest.param({"accept": ["image/png", "application/pdf"]}, ObjectMeta(1, "Image/JPEG; q=1", "e"),
                 "object for edge 'raw' has type 'image/jpeg', not one of image/png, application/pdf",
                 id="outside-list"),
]  # fmt: skip

ACCEPTED = [
    pytest.param({}, ObjectMeta(123, "whatever/thing", "e"), id="no-constraints"),
    pytest.param({"expect_size": 10}, ObjectMeta(10, "text/plain", "e"), id="exact-size"),
    pytest.param({"max_size": 10}, ObjectMeta(10, "text/plain", "e"), id="max-size-boundary"),
    pytest.param({"content_type": "text/csv"}, ObjectMeta(1, "text/csv; charset=utf-8", "e"), id="object-params"),
    pytest.param({"content_type": "text/csv; charset=utf-8"}, ObjectMeta(1, "text/csv", "e"), id="declared-params"),
    pytest.param({"content_type": "text/csv"}, ObjectMeta(1, "Text/CSV", "e"), id="case-insensitive"),
    pytest.param({"accept": ["image/*"]}, ObjectMeta(1, "image/png", "e"), id="wildcard"),
    pytest.param({"accept": ["image/*"]}, ObjectMeta(1, "IMAGE/WebP; q=0.5", "e"), id="wildcard-params-case"),
    pytest.param({"accept": ["*/*"]}, ObjectMeta(1, "application/zip", "e"), id="anything"),
    pytest.param({"accept": ["text/csv", "image/*"]}, ObjectMeta(1, "image/gif", "e"), id="second-pattern"),
    pytest.param({"accept": ["text/csv"]}, ObjectMeta(1, "text/csv;charset=latin-1", "e"), id="accept-params"),
    pytest.param({"expect_size": 5, "max_size": 10, "content_type": "image/png", "accept": ["image/*"]},
                 ObjectMeta(5, "image/png", "e"), id="all-constraints"),
]  # fmt: skip


@pytest.mark.parametrize(("constraints", "obj", "reason"), PROBLEMS)
def test_landing_problem_names_the_reason(constraints: dict, obj: ObjectMeta, reason: str):
    problem = landing_problem("raw", well(**constraints), obj)
    assert problem is not None and problem.message == reason


@pytest.mark.parametrize(("constraints", "obj"), ACCEPTED)
def test_landing_problem_accepts(constraints: dict, obj: ObjectMeta):
    assert landing_problem("raw", well(**constraints), obj) is None


@pytest.mark.parametrize(("constraints", "obj", "reason"), PROBLEMS)
def test_rejected_landing_puts_the_run_in_error(constraints: dict, obj: ObjectMeta, reason: str):
    run = start_hop(**constraints)
    new, commands = advance(run, HOP, Landed("raw", obj), T0 + 1)
    assert new.status == ERROR
    assert new.error == reason
    assert new.failed_step is None
    assert commands == []
    assert new.edges["raw"].object is None
    assert all(s.status == IDLE and s.attempts == 0 for s in new.steps.values())
    assert next_wake(new) is None
    assert waiting_edges(new) == []


@pytest.mark.parametrize(("constraints", "obj"), ACCEPTED)
def test_accepted_landing_dispatches(constraints: dict, obj: ObjectMeta):
    new, commands = advance(start_hop(**constraints), HOP, Landed("raw", obj), T0 + 1)
    assert new.status == RUNNING
    assert new.edges["raw"].object == obj
    assert commands == [Dispatch("first", 1)]


def test_rejected_landing_aborts_a_running_step():
    run = mix_started()
    run, _ = advance(run, MIX, StepStarted("gen", 1), T0 + 1)
    run = structs.replace(run, edges={**run.edges, "u": well(max_size=5)})
    new, commands = advance(run, MIX, Landed("u", ObjectMeta(6, "text/plain", "e")), T0 + 2)
    assert new.status == ERROR
    assert new.error == "object for edge 'u' is 6 bytes, over the limit of 5"
    assert commands == [Abort("gen")]
    assert new.steps["gen"].status == ERROR
    assert new.steps["gen"].error == "stopped: the run ended"
    assert new.steps["gen"].finished == T0 + 2


# ---------------------------------------------------------------------------------------------
# Dispatch


def test_step_is_not_dispatched_before_its_inputs_are_filled():
    run = start_hop()
    assert run.steps["first"].status == IDLE
    run, commands = advance(run, HOP, Tick(), T0 + 1)
    assert commands == []
    assert run.steps["first"].status == IDLE


def test_fan_out_dispatches_independent_steps_together():
    run, _ = start(FAN, "r", fan_edges(), T0)
    run, commands = advance(run, FAN, Landed("raw", OBJ), T0 + 1)
    assert commands == [Dispatch("left", 1), Dispatch("right", 1)]
    assert (run.steps["left"].status, run.steps["right"].status) == (READY, READY)
    assert run.steps["join"].status == IDLE


def test_join_waits_for_both_inputs():
    run = fan_running()
    run, commands = advance(run, FAN, StepSucceeded("left", 1, {"l": OBJ}), T0 + 3)
    assert commands == []
    assert run.steps["join"].status == IDLE
    assert run.status == RUNNING
    run, commands = advance(run, FAN, StepSucceeded("right", 1, {"r": OTHER}), T0 + 4)
    assert commands == [Dispatch("join", 1)]
    assert run.steps["join"].status == READY
    assert run.steps["join"].attempts == 1


def test_a_dispatched_step_is_not_dispatched_again():
    run, commands = advance(start_hop(), HOP, Landed("raw", OBJ), T0 + 1)
    assert commands == [Dispatch("first", 1)]
    for now in (T0 + 2, T0 + 100, T0 + 10_000):
        again, commands = advance(run, HOP, Tick(), now)
        assert again is run
        assert commands == []


# ---------------------------------------------------------------------------------------------
# StepStarted


def test_step_started_marks_running():
    run, _ = advance(start_hop(), HOP, Landed("raw", OBJ), T0 + 1)
    new, commands = advance(run, HOP, StepStarted("first", 1), T0 + 3)
    assert commands == []
    assert new.steps["first"].status == RUNNING
    assert new.steps["first"].started == T0 + 3
    assert new.updated == T0 + 3
    assert new.status == RUNNING


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(StepStarted("first", 2), id="future-attempt"),
        pytest.param(StepStarted("first", 0), id="stale-attempt"),
        pytest.param(StepStarted("second", 0), id="idle-step"),
        pytest.param(StepStarted("second", 1), id="not-dispatched"),
        pytest.param(StepStarted("ghost", 1), id="unknown-step"),
    ],
)
def test_step_started_that_does_not_fit_is_ignored(event: StepStarted):
    run, _ = advance(start_hop(), HOP, Landed("raw", OBJ), T0 + 1)
    new, commands = advance(run, HOP, event, T0 + 3)
    assert new is run
    assert commands == []


def test_duplicate_step_started_keeps_the_first_start_time():
    run = hop_running()
    new, commands = advance(run, HOP, StepStarted("first", 1), T0 + 50)
    assert new is run
    assert commands == []
    assert new.steps["first"].started == T0 + 2


def test_step_started_for_a_retried_step_only_fits_the_new_attempt():
    run, _ = play(hop_running(), HOP, (StepFailed("first", 1, "boom"), T0 + 3), (Tick(), T0 + 5))
    assert run.steps["first"].attempts == 2
    stale, commands = advance(run, HOP, StepStarted("first", 1), T0 + 6)
    assert stale is run and commands == []
    new, commands = advance(run, HOP, StepStarted("first", 2), T0 + 6)
    assert new.steps["first"].status == RUNNING
    assert new.steps["first"].started == T0 + 6


# ---------------------------------------------------------------------------------------------
# StepSucceeded


def test_success_fills_outputs_and_dispatches_the_next_hop():
    run = hop_running()
    new, commands = advance(run, HOP, StepSucceeded("first", 1, {"mid": OTHER}, ["done"]), T0 + 4)
    assert commands == [Dispatch("second", 1)]
    assert new.edges["mid"].object == OTHER
    assert new.edges["mid"].filled_at == T0 + 4
    first = new.steps["first"]
    assert (first.status, first.finished, first.logs, first.error) == (COMPLETE, T0 + 4, ["done"], None)
    assert new.steps["second"].status == READY
    assert new.status == RUNNING


def test_success_adds_an_edge_for_each_file_beyond_the_first_of_an_output_numbered_0():
    wells = [{"Edge": "raw", "Source": "upload", "TTL": 60}, {"Edge": "9.images.0"}, {"Edge": "log"}]
    batch = make_flow("batch", wells,
                      [step("paint", "paint", {"in": "raw"}, {"9.images.0": "9.images.0", "log": "log"})],
                      [task("paint", ("in",), ("9.images.0", "log"))])  # fmt: skip
    edges = {"raw": well(), "9.images.0": produced(), "log": produced()}
    run, _ = start(batch, "r1", edges, T0)
    run, _ = advance(run, batch, Landed("raw", OBJ), T0 + 1)
    more = {f"9.images.{i}": ObjectMeta(i, "image/png", f"e{i}", f"out/9.images.{i}") for i in (1, 2, 4)}
    foreign = {"raw.1": OBJ, "log.1": ObjectMeta(1, "", "", "out/log.1"), "9.images.5": ObjectMeta(1, "", "")}
    new, _ = advance(run, batch, StepSucceeded("paint", 1, {"9.images.0": OBJ, "log": OBJ, **more, **foreign}), T0 + 2)
    # after the first, numbered on while unbroken (4 after a missing 3 is not one); nothing else is added
    assert list(new.edges) == ["raw", "9.images.0", "9.images.1", "9.images.2", "log"]
    second = new.edges["9.images.1"]
    assert (second.key, second.source, second.object, second.filled_at) == ("out/9.images.1", FROM_STEP,
                                                                            more["9.images.1"], T0 + 2)  # fmt: skip
    assert new.status == COMPLETE
    assert [t.edge for t in transitions(run, new) if t.kind == "edge.filled"] == list(new.edges)[1:]


def test_success_without_a_start_report_is_accepted():
    run, _ = advance(start_hop(), HOP, Landed("raw", OBJ), T0 + 1)
    new, commands = advance(run, HOP, StepSucceeded("first", 1, {"mid": OBJ}), T0 + 2)
    assert new.steps["first"].status == COMPLETE
    assert commands == [Dispatch("second", 1)]


def test_run_completes_with_every_edge_filled():
    run, commands = play(
        hop_running(),
        HOP,
        (StepSucceeded("first", 1, {"mid": OTHER}), T0 + 4),
        (StepStarted("second", 1), T0 + 5),
        (StepSucceeded("second", 1, {"result": OBJ}), T0 + 6),
    )
    assert commands == []
    assert run.status == COMPLETE
    assert run.error is None and run.failed_step is None
    assert all(e.object is not None for e in run.edges.values())
    assert (run.edges["mid"].object, run.edges["result"].object) == (OTHER, OBJ)
    assert all(s.status == COMPLETE for s in run.steps.values())
    assert next_wake(run) is None
    assert waiting_edges(run) == []
    assert run.updated == T0 + 6


def test_fan_run_completes():
    run, commands = play(
        fan_running(),
        FAN,
        (StepSucceeded("left", 1, {"l": OBJ}), T0 + 3),
        (StepSucceeded("right", 1, {"r": OBJ}), T0 + 3),
        (StepSucceeded("join", 1, {"out": OTHER}), T0 + 4),
    )
    assert commands == []
    assert run.status == COMPLETE
    assert run.edges["out"].object == OTHER


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(StepSucceeded("first", 1, {"mid": OBJ}), id="same"),
        pytest.param(StepSucceeded("first", 1, {"mid": OTHER}, ["other"]), id="different-outputs"),
        pytest.param(StepFailed("first", 1, "late failure"), id="failure-after-success"),
        pytest.param(StepStarted("first", 1), id="late-start"),
    ],
)
def test_reports_after_success_change_nothing(event: Event):
    run, _ = advance(hop_running(), HOP, StepSucceeded("first", 1, {"mid": OBJ}), T0 + 4)
    again, commands = advance(run, HOP, event, T0 + 5)
    assert again is run
    assert commands == []
    assert again.edges["mid"].object == OBJ


@pytest.mark.parametrize("attempt", [0, 2, 3])
def test_success_for_another_attempt_changes_nothing(attempt: int):
    run = hop_running()
    new, commands = advance(run, HOP, StepSucceeded("first", attempt, {"mid": OBJ}), T0 + 4)
    assert new is run
    assert commands == []
    assert new.edges["mid"].object is None


def test_success_of_a_stale_attempt_after_retry_changes_nothing():
    failed, _ = advance(hop_running(), HOP, StepFailed("first", 1, "boom"), T0 + 3)
    # while the step waits for its retry, the first attempt's success is stale
    new, commands = advance(failed, HOP, StepSucceeded("first", 1, {"mid": OBJ}), T0 + 4)
    assert new is failed and commands == []
    retried, _ = advance(failed, HOP, Tick(), T0 + 5)
    new, commands = advance(retried, HOP, StepSucceeded("first", 1, {"mid": OBJ}), T0 + 6)
    assert new is retried and commands == []
    assert new.edges["mid"].object is None
    assert new.steps["first"].status == READY


def test_success_after_a_retry_clears_the_error():
    run, _ = play(
        hop_running(),
        HOP,
        (StepFailed("first", 1, "boom", ["l1"]), T0 + 3),
        (Tick(), T0 + 5),
        (StepSucceeded("first", 2, {"mid": OBJ}, ["l2"]), T0 + 6),
    )
    first = run.steps["first"]
    assert (first.status, first.error, first.logs, first.attempts) == (COMPLETE, None, ["l2"], 2)


def test_success_reporting_extra_outputs_neither_crashes_nor_overwrites():
    run, _ = play(hop_running(), HOP, (StepSucceeded("first", 1, {"mid": OBJ}), T0 + 3))
    extra = {"result": OTHER, "mid": OTHER, "ghost": OTHER}
    new, commands = advance(run, HOP, StepSucceeded("second", 1, extra), T0 + 4)
    assert commands == []
    assert new.status == COMPLETE
    assert new.edges["mid"].object == OBJ  # filled once, never again
    assert new.edges["mid"].filled_at == T0 + 3
    assert "ghost" not in new.edges


def test_success_missing_an_output_becomes_a_failure():
    run = hop_running()
    new, commands = advance(run, HOP, StepSucceeded("first", 1, {}, ["wrote nothing"]), T0 + 4)
    assert commands == []
    first = new.steps["first"]
    assert first.status == RETRYING
    assert first.error == "no output written for mid"
    assert first.logs == ["wrote nothing"]
    assert first.retry_at == T0 + 4 + 2
    assert new.edges["mid"].object is None
    assert new.steps["second"].status == IDLE


def test_success_missing_an_output_on_the_last_attempt_fails_the_run():
    run, _ = start(FAN, "r", fan_edges(), T0)
    run, _ = advance(run, FAN, Landed("raw", OBJ), T0 + 1)
    new, commands = advance(run, FAN, StepSucceeded("right", 1, {"l": OBJ}), T0 + 2)  # wrote the wrong edge
    assert new.status == ERROR
    assert new.failed_step == "right"
    assert new.error == "step 'right' failed after 1 attempt(s): no output written for r"
    assert commands == [Abort("left")]
    assert new.edges["l"].object is None  # a failed step fills nothing


# ---------------------------------------------------------------------------------------------
# StepFailed and retries


def test_failures_retry_with_doubling_backoff_then_fail_the_run():
    run = hop_running()

    # attempt 1 fails: retry 2s later
    run, commands = advance(run, HOP, StepFailed("first", 1, "boom1", ["log1"]), T0 + 10)
    first = run.steps["first"]
    assert commands == []
    assert (first.status, first.attempts, first.retry_at) == (RETRYING, 1, T0 + 12)
    assert (first.error, first.logs, first.finished) == ("boom1", ["log1"], T0 + 10)
    assert run.status == RUNNING
    assert next_wake(run) == T0 + 12

    # a tick before the retry time does nothing
    same, commands = advance(run, HOP, Tick(), T0 + 11.999)
    assert same is run and commands == []

    # at the retry time: attempt 2
    run, commands = advance(run, HOP, Tick(), T0 + 12)
    first = run.steps["first"]
    assert commands == [Dispatch("first", 2)]
    assert (first.status, first.attempts, first.retry_at, first.started, first.finished) == (READY, 2, None, None, None)
    assert next_wake(run) is None

    # attempt 2 fails: retry 4s later
    run, _ = advance(run, HOP, StepStarted("first", 2), T0 + 13)
    run, commands = advance(run, HOP, StepFailed("first", 2, "boom2", ["log2"]), T0 + 20)
    assert commands == []
    assert run.steps["first"].retry_at == T0 + 24
    assert next_wake(run) == T0 + 24

    # after the retry time: attempt 3
    run, commands = advance(run, HOP, Tick(), T0 + 30)
    assert commands == [Dispatch("first", 3)]
    assert run.steps["first"].attempts == 3

    # attempt 3 fails: no more attempts
    run, _ = advance(run, HOP, StepStarted("first", 3), T0 + 31)
    run, commands = advance(run, HOP, StepFailed("first", 3, "boom3", ["log3"]), T0 + 32)
    first = run.steps["first"]
    assert commands == []
    assert (first.status, first.error, first.logs, first.finished) == (ERROR, "boom3", ["log3"], T0 + 32)
    assert first.retry_at is None
    assert run.status == ERROR
    assert run.error == "step 'first' failed after 3 attempt(s): boom3"
    assert run.failed_step == "first"
    assert run.steps["second"].status == IDLE
    assert next_wake(run) is None


@pytest.mark.parametrize("delay", [2.0, 2.5, 1_000.0], ids=["at-retry-time", "after", "long-after"])
def test_tick_at_or_after_retry_time_dispatches(delay: float):
    run, _ = advance(hop_running(), HOP, StepFailed("first", 1, "boom"), T0 + 10)
    run, commands = advance(run, HOP, Tick(), T0 + 10 + delay)
    assert commands == [Dispatch("first", 2)]
    assert run.steps["first"].status == READY


@pytest.mark.parametrize(("backoff", "delays"), [(2, [2, 4, 8, 16]), (0.5, [0.5, 1, 2, 4])])
def test_backoff_doubles_for_each_retry(backoff: float, delays: list[float]):
    flow = make_flow(
        "retry",
        [{"Edge": "out"}],
        [step("gen", "make", {}, {"out": "out"})],
        [task("make", MaxAttempts=5, Backoff=backoff)],
    )
    run, _ = start(flow, "r", {"out": produced()}, T0)
    now = T0
    for attempt, delay in enumerate(delays, start=1):
        run, _ = advance(run, flow, StepFailed("gen", attempt, f"boom{attempt}"), now)
        assert run.steps["gen"].retry_at == now + delay
        assert next_wake(run) == now + delay
        now += delay
        run, commands = advance(run, flow, Tick(), now)
        assert commands == [Dispatch("gen", attempt + 1)]
    run, _ = advance(run, flow, StepFailed("gen", 5, "boom5"), now)
    assert run.status == ERROR
    assert run.error == "step 'gen' failed after 5 attempt(s): boom5"


def test_zero_backoff_retries_at_once():
    flow = make_flow(
        "retry",
        [{"Edge": "out"}],
        [step("gen", "make", {}, {"out": "out"})],
        [task("make", MaxAttempts=2, Backoff=0)],
    )
    run, _ = start(flow, "r", {"out": produced()}, T0)
    run, commands = advance(run, flow, StepFailed("gen", 1, "boom"), T0 + 1)
    assert commands == [Dispatch("gen", 2)]  # no Tick needed: the retry is due now
    assert (run.steps["gen"].status, run.steps["gen"].retry_at) == (READY, None)
    run, commands = advance(run, flow, StepFailed("gen", 2, "boom"), T0 + 2)
    assert commands == []
    assert run.status == ERROR


def test_failure_of_a_stale_attempt_is_ignored():
    run, _ = play(hop_running(), HOP, (StepFailed("first", 1, "boom"), T0 + 3), (Tick(), T0 + 5))
    for event in (StepFailed("first", 1, "boom again"), StepFailed("first", 3, "future")):
        new, commands = advance(run, HOP, event, T0 + 6)
        assert new is run
        assert commands == []


def test_duplicate_failure_does_not_use_up_an_attempt():
    run, _ = advance(hop_running(), HOP, StepFailed("first", 1, "boom"), T0 + 3)
    again, commands = advance(run, HOP, StepFailed("first", 1, "boom"), T0 + 4)
    assert again is run
    assert commands == []
    assert again.steps["first"].retry_at == T0 + 5


def test_failure_without_retries_fails_the_run_at_once():
    run, _ = start(FAN, "r", fan_edges(), T0)
    run, _ = advance(run, FAN, Landed("raw", OBJ), T0 + 1)
    run, _ = advance(run, FAN, StepSucceeded("left", 1, {"l": OBJ}), T0 + 2)
    run, commands = advance(run, FAN, StepFailed("right", 1, "bad input", ["trace"]), T0 + 3)
    assert commands == []
    assert run.status == ERROR
    assert run.error == "step 'right' failed after 1 attempt(s): bad input"
    assert run.failed_step == "right"
    assert run.steps["right"].logs == ["trace"]
    assert run.steps["left"].status == COMPLETE  # finished steps stay as they were
    assert run.steps["join"].status == IDLE


def test_terminal_failure_aborts_a_parallel_running_step():
    run = fan_running()
    run, commands = advance(run, FAN, StepFailed("right", 1, "bad"), T0 + 3)
    assert commands == [Abort("left")]
    assert run.status == ERROR
    assert run.failed_step == "right"
    left = run.steps["left"]
    assert (left.status, left.error, left.finished) == (ERROR, "stopped: the run ended", T0 + 3)
    assert run.steps["right"].status == ERROR
    assert run.steps["right"].error == "bad"


def test_terminal_failure_stops_a_parallel_retrying_step_without_abort():
    run = fan_running()
    run, _ = advance(run, FAN, StepFailed("left", 1, "flaky"), T0 + 3)
    assert run.steps["left"].status == RETRYING
    run, commands = advance(run, FAN, StepFailed("right", 1, "bad"), T0 + 3.5)
    assert commands == []  # nothing runs for `left`: there is nothing to abort
    left = run.steps["left"]
    assert (left.status, left.error, left.retry_at) == (ERROR, "flaky", None)
    assert run.status == ERROR
    assert next_wake(run) is None


# ---------------------------------------------------------------------------------------------
# StepInterrupted: the engine stopped or died while an attempt ran


def test_a_failure_the_worker_says_is_not_retryable_fails_the_step_with_attempts_left():
    # `first` runs task `work`: MaxAttempts 3.
    run, commands = advance(hop_running(), HOP, StepFailed("first", 1, "bad input", retry=False), T0 + 10)
    assert commands == []
    assert (run.steps["first"].status, run.status) == (ERROR, ERROR)
    assert run.error == "step 'first' failed after 1 attempt(s): bad input"


def test_a_released_attempt_waits_again_as_the_same_attempt_and_counts_nothing():
    run, commands = advance(hop_running(), HOP, StepReleased("first", 1), T0 + 5)
    first = run.steps["first"]
    assert commands == []  # the queue holds the attempt again: nothing to dispatch
    assert (first.status, first.attempts, first.interrupted, first.started) == (READY, 1, 0, None)
    assert run.status == RUNNING
    same, _ = advance(run, HOP, StepReleased("first", 1), T0 + 6)  # again: no longer running, nothing
    assert same is run
    run, _ = advance(run, HOP, StepStarted("first", 1), T0 + 7)
    assert (run.steps["first"].status, run.steps["first"].started) == (RUNNING, T0 + 7)


def test_an_output_written_under_an_attempts_own_key_is_where_the_edge_now_points():
    run = hop_running()
    old_key = run.edges["mid"].key
    written = ObjectMeta(3, "text/plain", "e", key="outputs/x/attempt-2/a")
    run, _ = advance(run, HOP, StepSucceeded("first", 1, {"mid": written}), T0 + 5)
    assert run.edges["mid"].key == "outputs/x/attempt-2/a" != old_key
    assert run.edges["mid"].object == written


def test_an_interrupted_attempt_is_followed_by_a_new_one_at_once():
    run, commands = advance(hop_running(), HOP, StepInterrupted("first", 1), T0 + 50)
    first = run.steps["first"]
    assert commands == [Dispatch("first", 2)]
    assert (first.status, first.attempts, first.interrupted) == (READY, 2, 1)
    assert first.error == "attempt 1 was interrupted: the engine stopped while it ran"
    assert (first.started, first.finished, first.retry_at) == (None, None, None)
    assert run.status == RUNNING
    assert next_wake(run) is None  # nothing waits on time: the new attempt is dispatched already


def test_an_interruption_does_not_count_against_max_attempts():
    # `right` runs task `once`: MaxAttempts 1. The engine crashing is not the step failing.
    run, commands = advance(fan_running(), FAN, StepInterrupted("right", 1), T0 + 5)
    assert commands == [Dispatch("right", 2)]
    run, _ = advance(run, FAN, StepStarted("right", 2), T0 + 6)
    run, _ = advance(run, FAN, StepFailed("right", 2, "bad"), T0 + 7)
    assert run.status == ERROR
    assert run.error == "step 'right' failed after 1 attempt(s): bad"
    assert (run.steps["right"].attempts, run.steps["right"].interrupted) == (2, 1)


def test_retries_after_an_interruption_count_failures_only_with_the_backoff_of_the_first():
    # `first` runs task `work`: MaxAttempts 3, Backoff 2 doubling.
    run, _ = play(hop_running(), HOP, (StepInterrupted("first", 1), T0 + 3), (StepStarted("first", 2), T0 + 4))
    run, _ = advance(run, HOP, StepFailed("first", 2, "boom"), T0 + 10)
    assert (run.steps["first"].status, run.steps["first"].retry_at) == (RETRYING, T0 + 12)  # the first failure
    run, commands = advance(run, HOP, Tick(), T0 + 12)
    assert commands == [Dispatch("first", 3)]
    run, _ = play(run, HOP, (StepStarted("first", 3), T0 + 13), (StepFailed("first", 3, "boom"), T0 + 20))
    assert run.steps["first"].retry_at == T0 + 24
    run, _ = play(run, HOP, (Tick(), T0 + 24), (StepStarted("first", 4), T0 + 25))
    run, _ = advance(run, HOP, StepFailed("first", 4, "boom"), T0 + 30)
    assert run.status == ERROR
    assert run.error == "step 'first' failed after 3 attempt(s): boom"
    assert run.steps["first"].attempts == 4


def test_a_new_attempt_after_an_interruption_can_succeed():
    run, _ = play(hop_running(), HOP, (StepInterrupted("first", 1), T0 + 3), (StepStarted("first", 2), T0 + 4))
    run, _ = advance(run, HOP, StepSucceeded("first", 2, {"mid": OBJ}, ["done"]), T0 + 5)
    first = run.steps["first"]
    assert (first.status, first.error, first.logs, first.attempts) == (COMPLETE, None, ["done"], 2)
    assert run.edges["mid"].object == OBJ


@pytest.mark.parametrize(
    "late", [StepSucceeded("first", 1, {"mid": OBJ}), StepFailed("first", 1, "boom"), StepStarted("first", 1)],
    ids=["succeeded", "failed", "started"],
)  # fmt: skip
def test_a_report_from_the_interrupted_attempt_is_stale(late: Event):
    run, _ = advance(hop_running(), HOP, StepInterrupted("first", 1), T0 + 3)
    new, commands = advance(run, HOP, late, T0 + 4)
    assert new is run
    assert commands == []
    assert run.edges["mid"].object is None


def _retrying() -> Run:
    run, _ = advance(hop_running(), HOP, StepFailed("first", 1, "boom"), T0 + 3)
    return run


@pytest.mark.parametrize(
    ("base", "event"),
    [
        pytest.param(hop_running, StepInterrupted("first", 2), id="future-attempt"),
        pytest.param(hop_running, StepInterrupted("first", 0), id="stale-attempt"),
        pytest.param(hop_running, StepInterrupted("second", 0), id="idle-step"),
        pytest.param(hop_running, StepInterrupted("ghost", 1), id="unknown-step"),
        pytest.param(mix_started, StepInterrupted("gen", 1), id="dispatched-not-started"),
        pytest.param(_retrying, StepInterrupted("first", 1), id="retrying"),
        pytest.param(lambda: advance(hop_running(), HOP, StepSucceeded("first", 1, {"mid": OBJ}), T0 + 3)[0],
                     StepInterrupted("first", 1), id="complete"),
    ],
)  # fmt: skip
def test_an_interruption_that_does_not_fit_changes_nothing(base: Any, event: StepInterrupted):
    """Only a running attempt can be cut short: one merely dispatched never started (the shell
    dispatches it again as it was), and a finished or waiting one has no process to lose."""
    run = base()
    new, commands = advance(run, flow_of(run), event, T0 + 4)  # before the retry is due
    assert new is run
    assert commands == []


def flow_of(run: Run) -> Flow:
    return {"hop": HOP, "fan": FAN, "mix": MIX, "wells": WELLS}[run.flow]


def test_the_same_interruption_twice_is_one():
    run, _ = advance(hop_running(), HOP, StepInterrupted("first", 1), T0 + 3)
    again, commands = advance(run, HOP, StepInterrupted("first", 1), T0 + 4)
    assert again is run
    assert commands == []
    assert run.steps["first"].interrupted == 1


def test_an_interruption_leaves_a_parallel_step_alone():
    run, commands = advance(fan_running(), FAN, StepInterrupted("left", 1), T0 + 5)
    assert commands == [Dispatch("left", 2)]
    right = run.steps["right"]
    assert (right.status, right.attempts, right.interrupted, right.started) == (RUNNING, 1, 0, T0 + 2)


def test_a_step_interrupted_again_and_again_fails_the_run():
    run = hop_running()
    for attempt in range(1, MAX_INTERRUPTIONS):
        run, commands = advance(run, HOP, StepInterrupted("first", attempt), T0 + 10 * attempt)
        assert commands == [Dispatch("first", attempt + 1)]
        run, _ = advance(run, HOP, StepStarted("first", attempt + 1), T0 + 10 * attempt + 1)
    run, commands = advance(run, HOP, StepInterrupted("first", MAX_INTERRUPTIONS), T0 + 100)
    assert commands == []
    first = run.steps["first"]
    assert (first.status, first.attempts, first.interrupted) == (ERROR, MAX_INTERRUPTIONS, MAX_INTERRUPTIONS)
    assert run.status == ERROR
    assert run.error == f"step 'first' was interrupted {MAX_INTERRUPTIONS} times by the engine stopping"
    assert run.failed_step == "first"


def test_the_interruption_limit_counts_interruptions_not_failures():
    run = hop_running()  # MaxAttempts 3: failures in between do not bring the run to its limit sooner
    for attempt in range(1, MAX_INTERRUPTIONS):
        run, _ = advance(run, HOP, StepInterrupted("first", attempt), T0 + attempt)
        run, _ = advance(run, HOP, StepStarted("first", attempt + 1), T0 + attempt)
    run, _ = advance(run, HOP, StepFailed("first", MAX_INTERRUPTIONS, "boom"), T0 + 10)
    assert run.steps["first"].status == RETRYING  # 1 failure of 3
    assert run.status == RUNNING


def test_an_interruption_on_the_last_failed_attempt_count_still_runs_again():
    run, _ = advance(fan_running(), FAN, StepFailed("left", 1, "flaky"), T0 + 3)  # `copy`: 2 attempts
    run, _ = play(run, FAN, (Tick(), T0 + 4), (StepStarted("left", 2), T0 + 5))
    run, commands = advance(run, FAN, StepInterrupted("left", 2), T0 + 6)
    assert commands == [Dispatch("left", 3)]  # the interrupted second attempt is owed
    run, _ = play(run, FAN, (StepStarted("left", 3), T0 + 7), (StepFailed("left", 3, "flaky"), T0 + 8))
    assert run.status == ERROR
    assert run.error == "step 'left' failed after 2 attempt(s): flaky"


# ---------------------------------------------------------------------------------------------
# Tick: well deadlines


@pytest.mark.parametrize("now", [DEADLINE, DEADLINE + 0.001, DEADLINE + 10_000], ids=["at", "just-after", "long-after"])
def test_waiting_well_expires_at_its_deadline(now: float):
    run = start_hop()
    new, commands = advance(run, HOP, Tick(), now)
    assert commands == []
    assert new.status == ERROR
    assert new.error == "upload for edge 'raw' expired"
    assert new.failed_step is None
    assert new.updated == now


@pytest.mark.parametrize("now", [T0, T0 + 1, DEADLINE - 0.001])
def test_tick_before_the_deadline_changes_nothing(now: float):
    run = start_hop()
    new, commands = advance(run, HOP, Tick(), now)
    assert new is run
    assert commands == []


def test_second_well_expires_too():
    run, _ = start(WELLS, "r", {"a": well(), "b": well("webhook", deadline=T0 + 30)}, T0)
    new, _ = advance(run, WELLS, Tick(), T0 + 30)
    assert new.status == ERROR
    assert new.error == "upload for edge 'b' expired"


def test_filled_wells_never_expire():
    run, _ = advance(start_hop(), HOP, Landed("raw", OBJ), T0 + 1)
    new, commands = advance(run, HOP, Tick(), DEADLINE + 10_000)
    assert new is run
    assert commands == []


def test_filled_well_with_a_stale_deadline_never_expires():
    edges = {"a": well(object=OBJ, filled_at=T0), "b": well("webhook", deadline=T0 + 500)}
    run, _ = start(WELLS, "r", edges, T0)
    assert next_wake(run) == T0 + 500  # the filled well's deadline is not a wake-up time
    new, commands = advance(run, WELLS, Tick(), T0 + 100)
    assert new is run
    assert commands == []


def test_well_without_deadline_never_expires():
    run, _ = start(WELLS, "r", {"a": well(deadline=None), "b": static()}, T0)
    assert next_wake(run) is None
    new, commands = advance(run, WELLS, Tick(), T0 + 1e9)
    assert new is run
    assert commands == []


def test_expiry_aborts_a_running_step():
    run, _ = advance(mix_started(), MIX, StepStarted("gen", 1), T0 + 1)
    new, commands = advance(run, MIX, Tick(), DEADLINE)
    assert new.status == ERROR
    assert new.error == "upload for edge 'u' expired"
    assert commands == [Abort("gen")]
    assert new.steps["gen"].status == ERROR


def test_expiry_wins_over_a_due_retry():
    run, _ = advance(mix_started(), MIX, StepFailed("gen", 1, "boom"), DEADLINE - 1)
    assert run.steps["gen"].retry_at == DEADLINE + 1
    new, commands = advance(run, MIX, Tick(), DEADLINE + 5)
    assert new.status == ERROR
    assert commands == []
    assert new.steps["gen"].attempts == 1


# ---------------------------------------------------------------------------------------------
# Refresh


def test_refresh_moves_the_deadline_of_empty_wells_only():
    run, _ = start(WELLS, "r", wells_edges(), T0)
    run, _ = advance(run, WELLS, Landed("a", OBJ), T0 + 1)
    new, commands = advance(run, WELLS, Refresh(T0 + 500), T0 + 2)
    assert commands == []
    assert new.edges["b"].deadline == T0 + 500
    assert new.edges["a"].deadline is None
    assert new.edges["a"].object == OBJ
    assert next_wake(new) == T0 + 500


def test_refresh_leaves_filled_and_step_edges_alone():
    edges = {"raw": well(object=OBJ, filled_at=T0, deadline=T0 + 5), "mid": produced(), "result": produced()}
    run, _ = start(HOP, "r", edges, T0)
    new, commands = advance(run, HOP, Refresh(T0 + 500), T0 + 1)
    assert new is run
    assert commands == []
    assert new.edges["raw"].deadline == T0 + 5
    assert new.edges["mid"].deadline is None


def test_after_refresh_the_old_deadline_no_longer_expires_the_run():
    run, _ = advance(start_hop(), HOP, Refresh(T0 + 500), T0 + 1)
    assert run.edges["raw"].deadline == T0 + 500
    same, commands = advance(run, HOP, Tick(), DEADLINE)
    assert same is run and commands == []
    expired, _ = advance(run, HOP, Tick(), T0 + 500)
    assert expired.status == ERROR
    assert expired.error == "upload for edge 'raw' expired"


def test_refresh_to_the_same_deadline_changes_nothing():
    run = start_hop()
    new, commands = advance(run, HOP, Refresh(DEADLINE), T0 + 1)
    assert new is run
    assert commands == []


# ---------------------------------------------------------------------------------------------
# Cancel


def test_cancel_a_waiting_run():
    run = start_hop()
    new, commands = advance(run, HOP, Cancel(), T0 + 1)
    assert commands == []
    assert new.status == STOPPED
    assert new.error == "cancelled by request"
    assert new.failed_step is None
    assert all(s.status == IDLE for s in new.steps.values())
    assert waiting_edges(new) == []
    assert next_wake(new) is None


def test_cancel_a_running_run_aborts_running_steps():
    run = fan_running()
    new, commands = advance(run, FAN, Cancel("operator said so"), T0 + 3)
    assert commands == [Abort("left"), Abort("right")]
    assert new.status == STOPPED
    assert new.error == "operator said so"
    for name in ("left", "right"):
        assert new.steps[name].status == ERROR
        assert new.steps[name].error == "stopped: the run ended"
        assert new.steps[name].finished == T0 + 3
    assert new.steps["join"].status == IDLE


def test_cancel_aborts_a_dispatched_step_that_has_not_started():
    run = mix_started()
    new, commands = advance(run, MIX, Cancel(), T0 + 1)
    assert commands == [Abort("gen")]
    assert new.status == STOPPED


def test_cancel_stops_a_retrying_step_without_abort():
    run, _ = advance(mix_started(), MIX, StepFailed("gen", 1, "flaky"), T0 + 1)
    new, commands = advance(run, MIX, Cancel(), T0 + 2)
    assert commands == []
    assert new.status == STOPPED
    assert (new.steps["gen"].status, new.steps["gen"].retry_at) == (ERROR, None)
    assert next_wake(new) is None


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_cancel_on_a_terminal_run_changes_nothing(status: str):
    run = structs.replace(hop_running(), status=status)
    new, commands = advance(run, HOP, Cancel("too late"), T0 + 100)
    assert new is run
    assert commands == []
    assert new.status == status


# ---------------------------------------------------------------------------------------------
# Terminal runs


# Each of these changes `live(event)`: `mix_started()` (gen READY attempt 1, well u empty with its
# deadline), or for an interruption, which only a running attempt fits, `mix_running()`.
EVERY_EVENT = [
    pytest.param(Landed("u", OBJ), id="Landed"),
    pytest.param(StepStarted("gen", 1), id="StepStarted"),
    pytest.param(StepSucceeded("gen", 1, {"g": OBJ}), id="StepSucceeded"),
    pytest.param(StepFailed("gen", 1, "boom"), id="StepFailed"),
    pytest.param(StepInterrupted("gen", 1), id="StepInterrupted"),
    pytest.param(StepReleased("gen", 1), id="StepReleased"),
    pytest.param(StepProgressed("gen", 1, Progress(0.5)), id="StepProgressed"),
    pytest.param(Tick(), id="Tick"),
    pytest.param(Cancel(), id="Cancel"),
    pytest.param(Refresh(T0 + 5_000), id="Refresh"),
]
LATE = T0 + 1_000  # past u's deadline: a Tick would expire it


def live(event: Event) -> Run:
    return mix_running() if isinstance(event, StepInterrupted | StepReleased | StepProgressed) else mix_started()


def test_every_event_type_is_covered():
    assert {type(p.values[0]) for p in EVERY_EVENT} == set(Event.__args__)


@pytest.mark.parametrize("event", EVERY_EVENT)
def test_each_event_changes_a_live_run(event: Event):
    """The control for the test below: on a live run every one of these events does something."""
    run = live(event)
    new, _ = advance(run, MIX, event, LATE)
    assert new is not run
    assert new != run


@pytest.mark.parametrize("status", sorted(TERMINAL))
@pytest.mark.parametrize("event", EVERY_EVENT)
def test_terminal_runs_ignore_every_event(status: str, event: Event):
    run = structs.replace(live(event), status=status, error="over")
    before = snapshot(run)
    new, commands = advance(run, MIX, event, LATE)
    assert new is run
    assert commands == []
    assert snapshot(new) == before
    assert next_wake(run) is None
    assert waiting_edges(run) == []


def _terminal(status: str) -> Run:
    """A run that reached `status` the ordinary way."""
    run = mix_started()
    if status == STOPPED:
        run, _ = advance(run, MIX, Cancel(), T0 + 1)
    elif status == ERROR:
        run, _ = advance(run, MIX, Tick(), DEADLINE)
    else:
        run, _ = play(
            run,
            MIX,
            (Landed("u", OBJ), T0 + 1),
            (StepSucceeded("gen", 1, {"g": OBJ}), T0 + 2),
            (StepSucceeded("combine", 1, {"out": OBJ}), T0 + 3),
        )
    assert run.status == status
    return run


@pytest.mark.parametrize("status", sorted(TERMINAL))
@pytest.mark.parametrize(
    "event",
    [*EVERY_EVENT, pytest.param(StepStarted("combine", 1), id="StepStarted-combine"),
     pytest.param(StepFailed("combine", 1, "late"), id="StepFailed-combine")],
)  # fmt: skip
def test_runs_finished_the_ordinary_way_ignore_every_event(status: str, event: Event):
    run = _terminal(status)
    new, commands = advance(run, MIX, event, LATE)
    assert new is run
    assert commands == []


# ---------------------------------------------------------------------------------------------
# next_wake


@pytest.mark.parametrize(
    ("u_deadline", "expected"),
    [(T0 + 60, T0 + 3), (T0 + 2, T0 + 2), (None, T0 + 3)],
    ids=["retry-first", "deadline-first", "no-deadline"],
)
def test_next_wake_is_the_earliest_deadline_or_retry(u_deadline: float | None, expected: float):
    run, _ = start(MIX, "r", {"u": well(deadline=u_deadline), "g": produced(), "out": produced()}, T0)
    run, _ = advance(run, MIX, StepFailed("gen", 1, "boom"), T0 + 1)  # retry at T0 + 3
    assert next_wake(run) == expected


def test_next_wake_over_several_wells():
    edges = {"a": well(deadline=T0 + 90), "b": well("webhook", deadline=T0 + 30)}
    run, _ = start(WELLS, "r", edges, T0)
    assert next_wake(run) == T0 + 30
    run, _ = advance(run, WELLS, Landed("b", OBJ), T0 + 1)
    assert next_wake(run) == T0 + 90


def test_next_wake_is_none_when_nothing_waits_on_time():
    assert next_wake(start_hop()) == DEADLINE
    assert next_wake(hop_running()) is None


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_next_wake_is_none_for_terminal_runs(status: str):
    run, _ = advance(mix_started(), MIX, StepFailed("gen", 1, "boom"), T0 + 1)
    assert next_wake(run) == T0 + 3
    assert next_wake(structs.replace(run, status=status)) is None
    assert next_wake(_terminal(status)) is None


# ---------------------------------------------------------------------------------------------
# Whole lives: idempotency and immutability at every event


LIVES: dict[str, tuple[Flow, Any, list[tuple[Event, float]]]] = {
    "hop": (
        HOP,
        hop_edges,
        [
            (Refresh(T0 + 300), T0 + 0.5),
            (Landed("raw", OBJ), T0 + 1),
            (Landed("raw", OTHER), T0 + 1.5),
            (StepStarted("first", 1), T0 + 2),
            (StepFailed("first", 1, "boom", ["l1"]), T0 + 3),
            (Tick(), T0 + 4),
            (Tick(), T0 + 5),
            (StepStarted("first", 2), T0 + 6),
            (StepSucceeded("first", 2, {"mid": OBJ}, ["ok"]), T0 + 7),
            (StepStarted("second", 1), T0 + 8),
            (StepSucceeded("second", 1, {"result": OTHER}), T0 + 9),
            (Tick(), T0 + 10),
        ],
    ),
    "fan": (
        FAN,
        fan_edges,
        [
            (Landed("raw", OBJ), T0 + 1),
            (StepStarted("left", 1), T0 + 2),
            (StepStarted("right", 1), T0 + 2),
            (StepSucceeded("left", 1, {"l": OBJ}), T0 + 3),
            (StepFailed("right", 1, "bad"), T0 + 4),
            (Cancel(), T0 + 5),
        ],
    ),
    "mix": (
        MIX,
        mix_edges,
        [
            (Refresh(T0 + 500), T0 + 1),
            (StepStarted("gen", 1), T0 + 2),
            (StepSucceeded("gen", 1, {}), T0 + 3),
            (Tick(), T0 + 5),
            (StepFailed("gen", 2, "x"), T0 + 6),
            (Landed("u", OBJ), T0 + 7),
            (Tick(), T0 + 10),
            (Cancel("enough"), T0 + 11),
        ],
    ),
    "restarts": (
        FAN,
        fan_edges,
        [
            (Landed("raw", OBJ), T0 + 1),
            (StepStarted("left", 1), T0 + 2),
            (StepStarted("right", 1), T0 + 2),
            (StepInterrupted("left", 1), T0 + 3),
            (StepInterrupted("right", 1), T0 + 3),
            (StepSucceeded("left", 1, {"l": OBJ}), T0 + 4),
            (StepStarted("left", 2), T0 + 5),
            (StepStarted("right", 2), T0 + 5),
            (StepInterrupted("right", 2), T0 + 6),
            (StepSucceeded("left", 2, {"l": OBJ}), T0 + 7),
            (StepStarted("right", 3), T0 + 8),
            (StepFailed("right", 3, "bad"), T0 + 9),
        ],
    ),
    "expiry": (
        WELLS,
        wells_edges,
        [
            (Landed("a", OBJ), T0 + 1),
            (Tick(), T0 + 30),
            (Tick(), DEADLINE),
        ],
    ),
    "rejected": (
        HOP,
        lambda: hop_edges(accept=["image/*"]),
        [
            (Landed("mid", OBJ), T0 + 1),
            (Landed("raw", OBJ), T0 + 2),
            (Landed("raw", ObjectMeta(1, "image/png", "e")), T0 + 3),
        ],
    ),
}


def _positions() -> list:
    return [
        pytest.param(name, i, id=f"{name}-{i}") for name, (_, _, events) in LIVES.items() for i in range(len(events))
    ]


def _before(name: str, i: int) -> tuple[Flow, Run, tuple[Event, float]]:
    flow, edges, events = LIVES[name]
    run, _ = start(flow, f"run-{name}", edges(), T0)
    run, _ = play(run, flow, *events[:i])
    return flow, run, events[i]


def test_lives_end_where_expected():
    ends = {}
    for name, (flow, edges, events) in LIVES.items():
        run, _ = start(flow, f"run-{name}", edges(), T0)
        run, _ = play(run, flow, *events)
        ends[name] = (run.status, run.error)
    assert ends == {
        "hop": (COMPLETE, None),
        "fan": (ERROR, "step 'right' failed after 1 attempt(s): bad"),
        "restarts": (ERROR, "step 'right' failed after 1 attempt(s): bad"),
        "mix": (STOPPED, "enough"),
        "expiry": (ERROR, "upload for edge 'b' expired"),
        "rejected": (ERROR, "object for edge 'raw' has type 'text/plain', not one of image/*"),
    }


@pytest.mark.parametrize(("name", "i"), _positions())
def test_applying_an_event_twice_is_the_same_as_once(name: str, i: int):
    flow, run, (event, now) = _before(name, i)
    once, _ = advance(run, flow, event, now)
    twice, commands = advance(once, flow, event, now)
    assert twice == once
    assert twice is once
    assert commands == []
    if not isinstance(event, Tick):  # a later Tick may rightly find something due; any other event is stale
        later, commands = advance(once, flow, event, now + 0.25)
        assert later is once
        assert commands == []


@pytest.mark.parametrize(("name", "i"), _positions())
def test_advance_never_mutates_its_input(name: str, i: int):
    flow, run, (event, now) = _before(name, i)
    before = snapshot(run)
    new, _ = advance(run, flow, event, now)
    assert snapshot(run) == before
    if new is not run:
        assert new.updated == now
        assert snapshot(new) != before


def test_start_does_not_change_the_edges_it_is_given():
    edges = hop_edges()
    edges["raw"] = static()
    before = msgspec.json.encode(edges)
    start(HOP, "r", edges, T0)
    assert msgspec.json.encode(edges) == before


def test_a_success_report_fills_only_the_steps_own_outputs():
    flow = msgspec.convert(
        {
            "DataWells": [{"Edge": "in", "Source": "upload"}, {"Edge": "other", "Source": "upload"}],
            "Tasks": [{"Name": "t", "Inputs": [{"Name": "i"}], "Outputs": [{"Name": "o"}], "Exec": ["true"]}],
            "Steps": [{"ID": "s", "Uses": "t", "Inputs": [{"Slot": "i", "Edge": "in"}],
                       "Outputs": [{"Slot": "o", "Edge": "out"}]}],
            "Name": "f",
        },
        Flow,
    )  # fmt: skip
    edges = {
        "in": EdgeState("default", "in", "upload", deadline=100.0),
        "other": EdgeState("default", "other", "upload", deadline=100.0),
        "out": EdgeState("default", "out", FROM_STEP),
    }
    run, _ = start(flow, "r", edges, 0.0)
    obj = ObjectMeta(1, "text/plain", "e")
    run, _ = advance(run, flow, Landed("in", obj), 1.0)
    run, _ = advance(run, flow, StepSucceeded("s", 1, {"out": obj, "other": obj}), 2.0)
    assert run.edges["out"].object == obj
    assert run.edges["other"].object is None
    assert run.status == WAITING


def test_next_wake_names_only_times_a_tick_acts_on():
    flow = msgspec.convert(
        {
            "Name": "f",
            "DataWells": [{"Edge": "in", "Source": "upload"}],
            "Tasks": [{"Name": "t", "Inputs": [{"Name": "i"}], "Outputs": [{"Name": "o"}], "Exec": ["true"]}],
            "Steps": [{"ID": "s", "Uses": "t", "Inputs": [{"Slot": "i", "Edge": "in"}],
                       "Outputs": [{"Slot": "o", "Edge": "out"}]}],
        },
        Flow,
    )  # fmt: skip
    edges = {
        "in": EdgeState("default", "in", "upload", deadline=100.0),
        "out": EdgeState("default", "out", FROM_STEP, deadline=50.0),  # a Tick never expires a step's edge
    }
    run, _ = start(flow, "r", edges, 0.0)
    assert next_wake(run) == 100.0
    ticked, commands = advance(run, flow, Tick(), 60.0)
    assert ticked is run and commands == []


# ---------------------------------------------------------------------------------------------
# transitions: what the shell logs and counts


def kinds(found: list[Transition]) -> list[tuple]:
    return [(t.kind, t.status if t.kind.startswith("run.") else t.step or t.edge) for t in found]


def test_transitions_of_a_whole_run_with_a_retry():
    out = ObjectMeta(3, "text/plain", "e2")
    created = start_hop()
    assert transitions(None, created) == [Transition("run.created", "run-hop", "hop", status=WAITING)]
    landed, _ = advance(created, HOP, Landed("raw", OBJ), T0 + 1)
    assert kinds(transitions(created, landed)) == [("edge.filled", "raw"), ("run.running", RUNNING)]
    assert transitions(created, landed)[0].size == OBJ.size and transitions(created, landed)[0].source == "upload"
    started, _ = advance(landed, HOP, StepStarted("first", 1), T0 + 2)
    assert transitions(landed, started) == [Transition("step.started", "run-hop", "hop", step="first", attempt=1)]
    failed, _ = advance(started, HOP, StepFailed("first", 1, "boom"), T0 + 5)
    [t] = transitions(started, failed)
    assert (t.kind, t.attempt, t.retry, t.duration, t.error) == ("step.failed", 1, True, 3.0, "boom")
    retried, _ = advance(failed, HOP, Tick(), T0 + 7)
    assert transitions(failed, retried) == []  # READY again: nothing to report until it starts
    again, _ = advance(retried, HOP, StepStarted("first", 2), T0 + 8)
    assert kinds(transitions(retried, again)) == [("step.started", "first")]
    done, _ = advance(again, HOP, StepSucceeded("first", 2, {"mid": out}), T0 + 9)
    assert kinds(transitions(again, done)) == [("edge.filled", "mid"), ("step.succeeded", "first")]
    assert transitions(again, done)[1].duration == 1.0 and transitions(again, done)[1].error is None
    second, _ = advance(done, HOP, StepStarted("second", 1), T0 + 10)
    end, _ = advance(second, HOP, StepSucceeded("second", 1, {"result": out}), T0 + 12)
    found = transitions(second, end)
    assert kinds(found) == [("edge.filled", "result"), ("step.succeeded", "second"), ("run.complete", COMPLETE)]
    assert found[-1].duration == 12.0 and found[-1].error is None


def test_transitions_of_a_failure_and_a_cancel_name_the_reason():
    run = hop_running()
    failed, _ = advance(run, HOP, StepFailed("first", 1, "boom"), T0 + 3)
    failed, _ = play(
        failed, HOP, (Tick(), T0 + 5), (StepStarted("first", 2), T0 + 5), (StepFailed("first", 2, "x"), T0 + 6)
    )
    failed, _ = play(failed, HOP, (Tick(), T0 + 10), (StepStarted("first", 3), T0 + 10))
    end, _ = advance(failed, HOP, StepFailed("first", 3, "still"), T0 + 11)
    found = transitions(failed, end)
    assert kinds(found) == [("step.failed", "first"), ("run.error", ERROR)]
    assert found[0].retry is False and found[1].step == "first" and "still" in (found[1].error or "")
    stopped, _ = advance(hop_running(), HOP, Cancel(), T0 + 4)
    found = transitions(hop_running(), stopped)
    assert kinds(found) == [("step.failed", "first"), ("run.stopped", STOPPED)]
    assert found[1].error == "cancelled by request"


def test_a_retry_without_backoff_still_reports_the_failed_attempt():
    flow = make_flow(
        "now", [{"Edge": "a", "Source": "upload", "TTL": 60}, {"Edge": "b"}],
        [step("s", "t", {"in": "a"}, {"out": "b"})], [task("t", ("in",), MaxAttempts=2, Backoff=0)],
    )  # fmt: skip
    run, _ = start(flow, "r", {"a": well(), "b": produced()}, T0)
    run, _ = play(run, flow, (Landed("a", OBJ), T0 + 1), (StepStarted("s", 1), T0 + 2))
    after, commands = advance(run, flow, StepFailed("s", 1, "boom"), T0 + 4)
    assert commands == [Dispatch("s", 2)] and after.steps["s"].status == READY
    [t] = transitions(run, after)
    assert (t.kind, t.attempt, t.retry, t.duration, t.error) == ("step.failed", 1, True, 2.0, "boom")


def test_no_change_no_transitions():
    run = hop_running()
    assert transitions(run, run) == []
