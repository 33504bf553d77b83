"""The overview's figures of steps: how long they took and how often they failed. Pure."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from flowengine.core import machine


class StepStat(msgspec.Struct):
    flow: str
    step: str
    finished: int = 0  # attempts that ended (COMPLETE or ERROR) in the window
    failed: int = 0
    total_seconds: float = 0.0
    longest: float = 0.0

    @property
    def mean(self) -> float:
        return self.total_seconds / self.finished if self.finished else 0.0

    @property
    def failure_rate(self) -> float:
        return self.failed / self.finished if self.finished else 0.0


def step_stats(runs: Iterable[machine.Run], since: float) -> list[StepStat]:
    """Per flow and step, the steps that finished at or after `since`: the most failing first, then by name."""
    found: dict[tuple[str, str], StepStat] = {}
    for run in runs:
        for step_id, state in run.steps.items():
            if state.status not in (machine.COMPLETE, machine.ERROR) or state.finished is None:
                continue
            if state.finished < since:
                continue
            stat = found.setdefault((run.flow, step_id), StepStat(run.flow, step_id))
            took = max(0.0, state.finished - (state.started or state.finished))
            stat.finished += 1
            stat.failed += state.status == machine.ERROR
            stat.total_seconds += took
            stat.longest = max(stat.longest, took)
    return sorted(found.values(), key=lambda s: (-s.failure_rate, s.flow, s.step))
