"""What the dashboard's pages show, gathered from the engine: a run as the run page draws it, the
runs a list shows, and the formatting helpers the templates use."""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

import msgspec

from flowengine.api import documents
from flowengine.api.ui.graph import Graph, layout
from flowengine.core import machine
from flowengine.core.machine import Run
from flowengine.core.queue import Attempt
from flowengine.core.spec import Flow
from flowengine.runtime.engine import Engine

TAIL_BYTES = 16_384  # of a running step's log, read to show its last lines
TIMELINE_W = 600  # the timeline's drawing width (its SVG scales to the page)


class Bar(msgspec.Struct):
    """One attempt on the timeline: where its bar starts and how wide it is, and how it went."""

    x: float
    width: float
    attempt: int
    outcome: str  # a status class: complete, error, stopped, running
    took: float


# How an attempt that ended is drawn: the colour of the step status it stands for.
_OUTCOME_CLASS = {"succeeded": "complete", "cancelled": "stopped", "": "running"}


class StepView(msgspec.Struct):
    id: str
    uses: str
    status: str
    attempts: int
    started: float | None
    finished: float | None
    error: str
    tail: list[str]  # the last lines of its output: live from the log while it runs
    bars: list[Bar]  # the timeline: every attempt that ran, in order

    @property
    def duration(self) -> float | None:
        return self.finished - self.started if self.started is not None and self.finished is not None else None


class RunView(msgspec.Struct):
    run: Run
    flow: Flow
    graph: Graph
    steps: list[StepView]
    artifacts: list[documents.Artifact]
    waiting: list[documents.WaitingURL]
    deadlines: dict[str, float]  # a waiting edge's TTL, as a time
    now: float

    @property
    def terminal(self) -> bool:
        return self.run.status in machine.TERMINAL

    @property
    def active(self) -> bool:
        """A step is working: its log grows, so the page is worth refreshing often."""
        return any(s.status in machine.ACTIVE_STEP for s in self.steps)


def log_path(engine: Engine, run_id: str, step_id: str, attempt: int) -> Path:
    return engine.log_root / run_id / f"{step_id}.{attempt}.log"


def log_tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a log, reading at most its last TAIL_BYTES."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - TAIL_BYTES))
            data = f.read()
    except FileNotFoundError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]


def run_view(engine: Engine, run: Run, flow: Flow, attempts: list[Attempt], base_url: str) -> RunView:
    now = engine.clock()
    base = (engine.config.public_url or base_url).rstrip("/")
    uses = {s.id: s.uses for s in flow.steps}
    end = max([now if run.status not in machine.TERMINAL else run.updated,
               *(s.finished or 0 for s in run.steps.values())])  # fmt: skip
    span = max(end - run.created, 1e-3)
    ran: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        if attempt.acked_at is not None:  # offered but never started: nothing ran
            ran.setdefault(attempt.step, []).append(attempt)
    steps = []
    for step_id, s in run.steps.items():
        tail = s.logs
        if s.status in machine.ACTIVE_STEP and s.attempts:
            tail = log_tail(log_path(engine, run.id, step_id, s.attempts), engine.config.log_tail)
        bars = [_bar(a, run.created, end, span) for a in ran.get(step_id, [])]
        steps.append(StepView(step_id, uses.get(step_id, ""), s.status, s.attempts, s.started, s.finished,
                              s.error or "", tail, bars))  # fmt: skip
    waiting = documents.waiting_urls(engine, run, flow, base) if run.status == machine.WAITING else []
    deadlines = {name: edge.deadline for name, edge in run.edges.items() if edge.deadline is not None}
    return RunView(run, flow, layout(flow), steps, documents.artifacts(engine, run, flow, base), waiting,
                   deadlines, now)  # fmt: skip


def _bar(attempt: Attempt, created: float, end: float, span: float) -> Bar:
    started = attempt.acked_at or created
    ended = attempt.ended if attempt.ended is not None else end
    x = (started - created) / span * TIMELINE_W
    width = max((ended - started) / span * TIMELINE_W, 2.0)
    outcome = _OUTCOME_CLASS.get(attempt.outcome, "error")
    return Bar(round(x, 1), round(width, 1), attempt.attempt, outcome, ended - started)


# Formatting, for the templates.


def when(t: float | None) -> str:
    if t is None:
        return ""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso(t: float | None) -> str:
    return "" if t is None else datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def size(n: int | None) -> str:
    if n is None:
        return ""
    if n < 1024:
        return f"{n} B"
    exponent = min(int(math.log(n, 1024)), 4)
    return f"{n / 1024**exponent:.1f} {'KMGT'[exponent - 1]}iB"


def percent(fraction: float) -> str:
    return f"{fraction * 100:.0f} %"


def value(v: Any) -> str:
    """A parameter's value as a caller writes it in JSON (`false`, `2.5`), a string as it is."""
    return v if isinstance(v, str) else msgspec.json.encode(v).decode()


FILTERS: dict[str, Any] = {"when": when, "iso": iso, "duration": duration, "size": size, "percent": percent,
                           "value": value}  # fmt: skip
