"""A task's status and SSE events, derived from its run: tested with plain values over the state
machine's states and whole lives (the flows and lives of test_machine.py)."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec import structs
from test_machine import (
    DEADLINE,
    FAN,
    HOP,
    LIVES,
    MIX,
    OBJ,
    OTHER,
    T0,
    WELLS,
    fan_running,
    hop_running,
    mix_running,
    mix_started,
    play,
    produced,
    start_hop,
    static,
    wells_edges,
)

from flowengine.core import machine
from flowengine.core.machine import (
    Cancel,
    Event,
    Landed,
    Run,
    StepFailed,
    StepInterrupted,
    StepProgressed,
    StepStarted,
    StepSucceeded,
    Tick,
    advance,
    start,
)
from flowengine.core.tasks import (
    TASK_STATUSES,
    TERMINAL_TASK,
    TaskEvent,
    TaskEventData,
    task_events,
    task_status,
)

# ---------------------------------------------------------------------------------------------
# task_status, state by state


def hop_retrying() -> Run:
    """`first` failed its first attempt and waits for its retry (3 attempts, backoff 2 s)."""
    run, _ = advance(hop_running(), HOP, StepFailed("first", 1, "boom"), T0 + 3)
    assert run.steps["first"].status == machine.RETRYING
    return run


def hop_retry_dispatched() -> Run:
    run, _ = advance(hop_retrying(), HOP, Tick(), T0 + 5)
    assert (run.steps["first"].status, run.steps["first"].attempts) == (machine.READY, 2)
    return run


def hop_interrupted() -> Run:
    """The engine stopped while `first` ran: a new attempt is dispatched at once."""
    run, _ = advance(hop_running(), HOP, StepInterrupted("first", 1), T0 + 3)
    assert (run.steps["first"].status, run.steps["first"].attempts) == (machine.READY, 2)
    return run


def hop_second_queued() -> Run:
    run, _ = advance(hop_running(), HOP, StepSucceeded("first", 1, {"mid": OBJ}), T0 + 3)
    assert (run.steps["first"].status, run.steps["second"].status) == (machine.COMPLETE, machine.READY)
    return run


def fan_static_edges() -> dict[str, machine.EdgeState]:
    """FAN's edges with its input already there: both first steps are dispatched at start."""
    return {"raw": static(), "l": produced(), "r": produced(), "out": produced()}


def fan_one_running_one_queued() -> Run:
    run, _ = start(FAN, "run-fan", fan_static_edges(), T0)
    run, _ = advance(run, FAN, StepStarted("left", 1), T0 + 1)
    assert (run.steps["left"].status, run.steps["right"].status) == (machine.RUNNING, machine.READY)
    return run


def mix_waiting() -> Run:
    """`gen` done; `combine` needs the upload `u`, which has not come: nothing can run."""
    run, _ = advance(mix_running(), MIX, StepSucceeded("gen", 1, {"g": OBJ}), T0 + 2)
    assert run.status == machine.WAITING
    assert all(s.status not in machine.ACTIVE_STEP for s in run.steps.values())
    return run


def wells_one_landed() -> Run:
    run, _ = start(WELLS, "run-wells", wells_edges(), T0)
    run, _ = advance(run, WELLS, Landed("a", OBJ), T0 + 1)
    return run


def ended(run: Run, flow: Any, event: Event) -> Run:
    new, _ = advance(run, flow, event, DEADLINE + 1)  # past the upload's TTL
    assert new.status in machine.TERMINAL
    return new


STATES = [
    pytest.param(start_hop, "pending", id="waiting-for-its-upload"),
    pytest.param(wells_one_landed, "pending", id="no-steps-one-well-of-two"),
    pytest.param(lambda: start(WELLS, "r", {"a": static(), "b": static(OTHER)}, T0)[0], "completed",
                 id="no-steps-all-static"),
    pytest.param(lambda: advance(start_hop(), HOP, Landed("raw", OBJ), T0 + 1)[0], "waiting", id="step-dispatched"),
    pytest.param(mix_started, "waiting", id="dispatched-at-start-while-a-well-waits"),
    pytest.param(hop_running, "running", id="step-running"),
    pytest.param(mix_running, "running", id="running-while-a-well-waits"),
    pytest.param(hop_retrying, "running", id="between-attempts"),
    pytest.param(hop_retry_dispatched, "waiting", id="retry-dispatched"),
    pytest.param(hop_interrupted, "waiting", id="interrupted-and-dispatched-again"),
    pytest.param(hop_second_queued, "waiting", id="first-done-second-dispatched"),
    pytest.param(lambda: offered(advance(start_hop(), HOP, Landed("raw", OBJ), T0 + 1)[0], "first"), "queued",
                 id="step-offered-to-a-worker"),
    pytest.param(lambda: offered(hop_second_queued(), "second"), "queued", id="second-offered"),
    pytest.param(lambda: offered(mix_started(), "elsewhere"), "waiting", id="another-runs-step-offered"),
    pytest.param(lambda: offered(fan_one_running_one_queued(), "right", "left"), "running",
                 id="one-running-one-offered"),
    pytest.param(fan_running, "running", id="two-running"),
    pytest.param(fan_one_running_one_queued, "running", id="one-running-one-queued"),
    pytest.param(mix_waiting, "waiting", id="begun-then-waits-for-an-upload"),
    pytest.param(lambda: ended(hop_second_queued(), HOP, StepSucceeded("second", 1, {"result": OBJ})), "completed",
                 id="complete"),
    pytest.param(lambda: ended(fan_running(), FAN, StepFailed("right", 1, "bad")), "failed", id="step-failed"),
    pytest.param(lambda: ended(start_hop(), HOP, Tick()), "failed", id="upload-expired"),
    pytest.param(lambda: ended(start_hop(accept=["image/*"]), HOP, Landed("raw", OBJ)), "failed",
                 id="upload-rejected"),
    pytest.param(lambda: ended(start_hop(), HOP, Cancel()), "cancelled", id="cancelled-while-pending"),
    pytest.param(lambda: ended(hop_running(), HOP, Cancel()), "cancelled", id="cancelled-while-running"),
    pytest.param(lambda: ended(hop_retrying(), HOP, Cancel()), "cancelled", id="cancelled-between-attempts"),
    pytest.param(lambda: ended(mix_waiting(), MIX, Cancel()), "cancelled", id="cancelled-while-waiting"),
]  # fmt: skip


class Offered(msgspec.Struct):
    """A run, and the steps whose attempts are offered to a worker (not acknowledged yet)."""

    run: Run
    steps: tuple[str, ...]


def offered(run: Run, *steps: str) -> Offered:
    return Offered(run, steps)


@pytest.mark.parametrize(("make", "status"), STATES)
def test_task_status_of_each_state(make: Any, status: str):
    made = make()
    found = task_status(made.run, made.steps) if isinstance(made, Offered) else task_status(made)
    assert found == status


def test_every_status_is_reached_by_some_state():
    assert {p.values[1] for p in STATES} == set(TASK_STATUSES)


def test_status_values_are_the_references():
    assert TASK_STATUSES == ("pending", "waiting", "queued", "running", "completed", "failed", "cancelled")
    assert frozenset({"completed", "failed", "cancelled"}) == TERMINAL_TASK


@pytest.mark.parametrize("status", sorted(machine.TERMINAL))
def test_a_terminal_run_is_terminal_whatever_its_steps_say(status: str):
    """Steps are stopped when a run ends; the run's status decides even if one looked active."""
    run = structs.replace(hop_running(), status=status)
    assert task_status(run) == {"COMPLETE": "completed", "ERROR": "failed", "STOPPED": "cancelled"}[status]


# ---------------------------------------------------------------------------------------------
# Whole lives


def statuses_of(flow: Any, run: Run, events: list[tuple[Event, float]]) -> list[str]:
    """The task's status after creation and after each event, repeats left out (what a stream shows)."""
    seen = [task_status(run)]
    for event, now in events:
        run, _ = advance(run, flow, event, now)
        if task_status(run) != seen[-1]:
            seen.append(task_status(run))
    return seen


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hop", ["pending", "waiting", "running", "waiting", "running", "waiting", "running", "completed"]),
        ("fan", ["pending", "waiting", "running", "failed"]),
        ("mix", ["waiting", "running", "waiting", "running", "waiting", "cancelled"]),
        ("restarts", ["pending", "waiting", "running", "waiting", "running", "waiting", "running", "failed"]),
        ("expiry", ["pending", "failed"]),
        ("rejected", ["pending", "failed"]),
    ],
)
def test_status_through_whole_lives(name: str, expected: list[str]):
    flow, edges, events = LIVES[name]
    run, _ = start(flow, f"run-{name}", edges(), T0)
    assert statuses_of(flow, run, events) == expected


def test_a_task_that_waits_mid_way():
    events = [
        (StepStarted("gen", 1), T0 + 1),
        (StepSucceeded("gen", 1, {"g": OBJ}), T0 + 2),
        (Landed("u", OBJ), T0 + 3),
        (StepStarted("combine", 1), T0 + 4),
        (StepSucceeded("combine", 1, {"out": OTHER}), T0 + 5),
    ]
    assert statuses_of(MIX, mix_started(), events) == ["waiting", "running", "waiting", "running", "completed"]


# ---------------------------------------------------------------------------------------------
# task_events


def encoded(events: list[TaskEvent]) -> list[tuple[str, bytes]]:
    return [(e.kind, msgspec.json.encode(e.data)) for e in events]


def test_a_new_task_announces_its_status():
    run = start_hop()
    assert task_events(None, run) == [TaskEvent("status", TaskEventData("run-hop", "pending", "1970-01-01T00:16:40Z"),
                                                T0)]  # fmt: skip
    assert encoded(task_events(None, run)) == [
        ("status", b'{"task_id":"run-hop","status":"pending","timestamp":"1970-01-01T00:16:40Z"}')
    ]


def test_no_change_of_status_no_event():
    run = hop_running()
    assert task_events(run, run) == []
    retrying = hop_retrying()  # RUNNING -> RETRYING: both are `running`
    assert task_events(run, retrying) == []
    refreshed, _ = advance(start_hop(), HOP, machine.Refresh(T0 + 500), T0 + 1)
    assert refreshed is not start_hop() and task_events(start_hop(), refreshed) == []


def test_each_change_of_status_is_one_status_event_with_the_time_of_the_change():
    before = start_hop()
    after, _ = advance(before, HOP, Landed("raw", OBJ), T0 + 61.7)
    assert encoded(task_events(before, after)) == [
        ("status", b'{"task_id":"run-hop","status":"waiting","timestamp":"1970-01-01T00:17:41Z"}')
    ]
    assert task_events(before, after)[0].at == T0 + 61.7


def test_completed_carries_the_output_the_caller_makes():
    before = hop_second_queued()
    after, _ = play(before, HOP, (StepStarted("second", 1), T0 + 4),
                    (StepSucceeded("second", 1, {"result": OTHER}), T0 + 5))  # fmt: skip
    asked = []

    def output(run: Run) -> dict:
        asked.append(run)
        return {"result": {"size": run.edges["result"].object.size}}

    running, _ = advance(before, HOP, StepStarted("second", 1), T0 + 4)
    assert [e.kind for e in task_events(before, running, output)] == ["status"]
    assert asked == []  # asked only for a completed event
    assert encoded(task_events(running, after, output)) == [
        ("completed", b'{"task_id":"run-hop","status":"completed","timestamp":"1970-01-01T00:16:45Z",'
                      b'"output":{"result":{"size":20}}}')
    ]  # fmt: skip
    assert asked == [after]


def test_completed_without_an_output_says_null():
    run, _ = start(WELLS, "w", {"a": static(), "b": static(OTHER)}, T0)
    assert encoded(task_events(None, run)) == [
        ("completed", b'{"task_id":"w","status":"completed","timestamp":"1970-01-01T00:16:40Z","output":null}')
    ]


def test_failed_carries_the_error():
    before = fan_running()
    after, _ = advance(before, FAN, StepFailed("right", 1, "bad input"), T0 + 4)
    assert encoded(task_events(before, after)) == [
        ("failed", b'{"task_id":"run-fan","status":"failed","timestamp":"1970-01-01T00:16:44Z",'
                   b'"error":"step \'right\' failed after 1 attempt(s): bad input"}')
    ]  # fmt: skip


def test_an_expired_upload_fails_the_task_with_the_reason():
    before = start_hop()
    after, _ = advance(before, HOP, Tick(), DEADLINE)
    [event] = task_events(before, after)
    assert (event.kind, event.data.error) == ("failed", "upload for edge 'raw' expired")


@pytest.mark.parametrize("make", [start_hop, hop_running, hop_retrying, mix_waiting])
def test_cancelled_is_the_terminal_event_of_a_cancel(make: Any):
    before = make()
    after, _ = advance(before, HOP if before.flow == "hop" else MIX, Cancel(), T0 + 30)
    assert encoded(task_events(before, after)) == [
        ("cancelled", b'{"task_id":"%s","status":"cancelled","timestamp":"1970-01-01T00:17:10Z"}' % before.id.encode())
    ]


def test_event_data_is_one_line_whatever_the_error_says():
    before = fan_running()
    after, _ = advance(before, FAN, StepFailed("right", 1, "line one\nline two\r\n\u2028"), T0 + 4)
    [(_, data)] = encoded(task_events(before, after))
    assert b"\n" not in data and b"\r" not in data
    assert msgspec.json.decode(data)["error"].endswith("line one\nline two\r\n\u2028")


def test_an_offer_and_its_acknowledgement_walk_waiting_queued_running():
    """The queue's offers are not run changes: the task's status before is the one it had (`was`)."""
    ready, _ = advance(start_hop(), HOP, Landed("raw", OBJ), T0 + 1)
    assert [e.data.status for e in task_events(None, ready)] == ["waiting"]
    assert encoded(task_events(None, ready, offered=["first"], was="waiting")) == [
        ("status", b'{"task_id":"run-hop","status":"queued","timestamp":"1970-01-01T00:16:41Z"}')
    ]
    assert task_events(None, ready, offered=["first"], was="queued") == []  # offered again: no change
    assert [e.data.status for e in task_events(None, ready, was="queued")] == ["waiting"]  # the offer went back
    running, _ = advance(ready, HOP, StepStarted("first", 1), T0 + 2)
    assert [e.data.status for e in task_events(ready, running, was="queued")] == ["running"]


def test_a_workers_progress_is_a_progress_event_each_time_it_says_something_new():
    running = hop_running()
    said = machine.Progress(0.35, "3", "sampling")
    after, _ = advance(running, HOP, StepProgressed("first", 1, said), T0 + 5)
    assert encoded(task_events(running, after)) == [
        ("progress", b'{"task_id":"run-hop","status":"running","progress":0.35,"current_node":"3",'
                     b'"message":"sampling","step":"first","timestamp":"1970-01-01T00:16:45Z","step_current":null,'
                     b'"step_total":null}')
    ]  # fmt: skip
    again, _ = advance(after, HOP, StepProgressed("first", 1, said), T0 + 6)
    assert task_events(after, again) == []  # the same again: nothing new
    unknown, _ = advance(after, HOP, StepProgressed("first", 1, machine.Progress(message="saving")), T0 + 7)
    [event] = task_events(after, unknown)
    assert (event.kind, event.data.progress, event.data.message) == ("progress", None, "saving")
    stale, _ = advance(after, HOP, StepProgressed("first", 9, said), T0 + 8)  # not the running attempt's
    assert task_events(after, stale) == []


# A random life: any event the machine knows, in any order, at increasing times. Whatever happens,
# the stream is consistent: one event per change of status, the terminal one last, nothing after.
EVENTS = st.sampled_from([
    Landed("raw", OBJ), Landed("l", OBJ), Tick(), Cancel(),
    *(StepStarted(s, a) for s in ("left", "right", "join") for a in (1, 2)),
    *(StepSucceeded(s, a, {o: OBJ}) for s, o in (("left", "l"), ("right", "r"), ("join", "out")) for a in (1, 2)),
    *(StepFailed(s, a, "x") for s in ("left", "right", "join") for a in (1, 2)),
    *(StepInterrupted(s, a) for s in ("left", "right", "join") for a in (1, 2)),
])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(EVENTS, st.floats(0.1, 30)), max_size=25))
def test_random_lives_make_consistent_streams(steps: list[tuple[Event, float]]):
    run, _ = start(FAN, "run-fan", fan_static_edges(), T0)
    stream = task_events(None, run)
    now = T0
    for event, pause in steps:
        now += pause
        new, _ = advance(run, FAN, event, now)
        found = task_events(run, new)
        assert len(found) == (task_status(new) != task_status(run))
        stream += found
        run = new
    kinds = [e.kind for e in stream]
    statuses = [e.data.status for e in stream]
    assert statuses[-1] == task_status(run)
    assert all(a != b for a, b in itertools.pairwise(statuses))  # every event is a change
    assert all(k == "status" for k in kinds[:-1])  # only the last may be terminal
    assert (kinds[-1] in TERMINAL_TASK) == (run.status in machine.TERMINAL)
    assert all(e.data.task_id == "run-fan" for e in stream)
