"""The step queue's rules: what an attempt is, which worker may take it, and how a lease changes.

Pure: no I/O, no clock (every function is given `now`). Every step attempt is one `Attempt`; the
built-in local executor and remote agents are `Worker`s leasing from the one queue under the same
rules. The engine owns all lease arithmetic, with its clock:

    queued --offer--> offered --ack--> running --complete|fail|expire--> done
                         |                |
                         +--offer expires-+--release--> queued (not counted as an attempt)
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import structs

from flowengine.core.spec import Task

State = Literal["queued", "offered", "running", "done"]
Outcome = Literal["", "succeeded", "failed", "cancelled", "expired", "lost", "interrupted"]
Pool = Literal["team", "community"]
LOCAL_TOOLS = ("exec", "python")  # what the engine's own executor runs
LOCAL_WORKER = "local:"  # how the worker id of an engine's own executor begins (an agent's is its id)


class Attempt(msgspec.Struct, kw_only=True):
    id: str  # the lease id
    run_id: str
    step: str
    attempt: int
    team: str
    tool: str
    labels: list[str]
    pool: str
    region: str
    timeout: float
    state: State = "queued"
    outcome: Outcome = ""
    worker: str = ""
    session: str = ""
    token: str = ""
    offered_at: float | None = None
    offer_expires: float | None = None
    acked_at: float | None = None
    lease_expires: float | None = None
    deadline: float | None = None
    created: float = 0.0
    log_seq: int = 0
    ended: float | None = None  # done: when (a run's timeline draws every attempt)


class Worker(msgspec.Struct, frozen=True, kw_only=True):
    """Who leases: an agent's session, or the local executor (`local`: of no team, serving every one)."""

    id: str
    session: str
    team: str = ""
    labels: tuple[str, ...] = ()
    tools: tuple[str, ...] = LOCAL_TOOLS
    region: str = ""
    community: bool = False
    local: bool = False


def tool_of(task: Task) -> str:
    if task.exec is not None:
        return "exec"
    if task.python is not None:
        return "python"
    return task.tool or ""


def may_take(worker: Worker, attempt: Attempt) -> bool:
    """Eligibility, apart from region preference: the tool, every label, and the team's pool."""
    if attempt.tool not in worker.tools or not set(attempt.labels) <= set(worker.labels):
        return False
    if worker.local:
        return True
    return attempt.team == worker.team or (attempt.pool == "community" and worker.community)


def in_region(worker: Worker, attempt: Attempt, now: float, region_wait: float) -> bool:
    """A preference, not a wall: an attempt for another region waits `region_wait` seconds for a
    worker of its own, then any region may take it."""
    return not attempt.region or attempt.region == worker.region or attempt.created + region_wait <= now


def offer(attempt: Attempt, worker: Worker, token: str, now: float, offer_timeout: float) -> Attempt:
    return structs.replace(attempt, state="offered", worker=worker.id, session=worker.session, token=token,
                           offered_at=now, offer_expires=now + offer_timeout)  # fmt: skip


def ack(attempt: Attempt, now: float, lease: float) -> Attempt:
    """The worker acknowledged the offer: the attempt runs; its timeout counts from now."""
    return structs.replace(attempt, state="running", acked_at=now, lease_expires=now + lease,
                           deadline=now + attempt.timeout + lease)  # fmt: skip


def requeue(attempt: Attempt, deadline: float | None) -> Attempt:
    """Back to the queue (an offer not acknowledged in time, a release): not an attempt of the step's."""
    return structs.replace(attempt, state="queued", worker="", session="", token="", offered_at=None,
                           offer_expires=None, acked_at=None, lease_expires=None, deadline=deadline)  # fmt: skip


def end(attempt: Attempt, outcome: Outcome, now: float) -> Attempt:
    return structs.replace(attempt, state="done", outcome=outcome, lease_expires=None, offer_expires=None, ended=now)


def output_key(key: str, attempt: int) -> str:
    """Where attempt `attempt` writes the object of an edge whose key is `key`: the key itself for the
    first, `<dir>/attempt-<n>/<name>` for later ones, so a late worker never overwrites the winner's."""
    if attempt <= 1:
        return key
    head, _, name = key.rpartition("/")
    return f"{head}/attempt-{attempt}/{name}" if head else f"attempt-{attempt}/{name}"


def more_key(key: str, i: int) -> str:
    """The key of file `i` of an output whose first file's key is `key`: its name's `.0` numbered `.i`
    (`.../9.images.0`: `.../9.images.3`), else `.i` before its extension (`out/a.png`: `out/a.3.png`)."""
    head, slash, name = key.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if name.endswith(".0"):
        return f"{head}{slash}{stem}.{i}"
    return f"{head}{slash}{stem}.{i}.{ext}" if dot and stem else f"{key}.{i}"


class Lack(msgspec.Struct, frozen=True):
    worker: str  # an agent's name
    missing: str  # what it lacks: "label 'gpu'", "tool 'comfyui'", "team"


def unplaced_reason(attempt: Attempt, workers: list[tuple[str, Worker]], waited: float) -> str:
    """Why no worker took an attempt before its schedule-to-start deadline, naming what was missing."""
    needs = f"tool {attempt.tool!r}"
    if attempt.labels:
        needs += f", labels {', '.join(attempt.labels)}"
    needs += ", in the community pool" if attempt.pool == "community" else ", in its team"
    if not workers:
        return f"no agent took the step within {waited:g}s: it needs {needs}, and no agent is connected"
    lacks = [f"{name} lacks {_missing(w, attempt)}" for name, w in workers if not may_take(w, attempt)]
    why = "; ".join(lacks) if lacks else "every eligible agent was busy"
    return f"no agent took the step within {waited:g}s: it needs {needs} ({why})"


def _missing(worker: Worker, attempt: Attempt) -> str:
    if attempt.tool not in worker.tools:
        return f"tool {attempt.tool!r}"
    labels = [label for label in attempt.labels if label not in worker.labels]
    if labels:
        return f"label(s) {', '.join(labels)}"
    return "the team (another team's agent, not serving the community pool)"
