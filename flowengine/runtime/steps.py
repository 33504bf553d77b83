"""Run one attempt of one step: materialize its inputs, run it, store its outputs.

The answer is an event for the state machine (StepSucceeded or StepFailed); nothing here
changes a run. A step sees only local files: it never holds store credentials.
"""

from __future__ import annotations

import mimetypes
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import anyio
import msgspec

from flowengine.core.keys import VAR
from flowengine.core.machine import EdgeState, ObjectMeta, StepFailed, StepSucceeded
from flowengine.core.spec import Scalar, Step, Task
from flowengine.runtime.executors.process import run_process
from flowengine.runtime.executors.pyrun import Request
from flowengine.stores.base import Store, StoreUnavailable


class StepJob(msgspec.Struct, kw_only=True):
    run_id: str
    step: Step
    task: Task
    attempt: int
    edges: dict[str, EdgeState]
    store_of: Callable[[EdgeState], Store]
    work_root: Path
    log_path: Path
    log_tail: int
    python_path: str  # where a Python task's module is found: the flows directory


def flag_values(step: Step, task: Task) -> dict[str, Scalar]:
    values = {f.name: f.default for f in task.flags if f.default is not None}
    values.update(step.flags)
    return values


def output_type(task: Task, slot: str, edge: EdgeState) -> str:
    declared = next((s.content_type for s in task.outputs if s.name == slot), None)
    guessed = mimetypes.guess_type(edge.key)[0]
    return declared or edge.content_type or guessed or "application/octet-stream"


def expand_arg(arg: str, values: dict[str, str]) -> str:
    return VAR.sub(lambda m: values.get(m.group(1), m.group(0)), arg)


async def run_step(job: StepJob) -> StepSucceeded | StepFailed:
    work = job.work_root / job.run_id / f"{job.step.id}.{job.attempt}"
    await anyio.to_thread.run_sync(shutil.rmtree, work, True)
    work.mkdir(parents=True)
    try:
        return await _attempt(job, work)
    except (StoreUnavailable, OSError) as exc:
        return StepFailed(job.step.id, job.attempt, f"{type(exc).__name__}: {exc}")
    finally:
        await anyio.to_thread.run_sync(shutil.rmtree, work, True)


async def _attempt(job: StepJob, work: Path) -> StepSucceeded | StepFailed:
    step, task = job.step, job.task
    inputs: dict[str, str] = {}
    for b in step.inputs:
        edge = job.edges[b.edge]
        dest = work / "in" / b.slot / PurePosixPath(edge.key).name
        await job.store_of(edge).download(edge.key, dest)
        inputs[b.slot] = str(dest)
    outputs = {b.slot: work / "out" / b.slot / PurePosixPath(job.edges[b.edge].key).name for b in step.outputs}
    for path in outputs.values():
        path.parent.mkdir(parents=True)
    flags = flag_values(step, task)

    if task.exec is not None:
        values = {**inputs, **{s: str(p) for s, p in outputs.items()}, **{k: str(v) for k, v in flags.items()}}
        argv = [expand_arg(a, values) for a in task.exec]
        answer = None
    else:
        answer = work / "answer.json"
        request = Request(task.python or "", inputs, flags, str(work), str(answer))
        (work / "request.json").write_bytes(msgspec.json.encode(request))
        # -B: importing the task's module must not leave __pycache__ in the operator's flows directory.
        argv = [sys.executable, "-B", "-m", "flowengine.runtime.executors.pyrun", str(work / "request.json")]
    python_path = os.pathsep.join(p for p in (job.python_path, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": python_path, "FLOWENGINE_RUN_ID": job.run_id,
           "FLOWENGINE_STEP_ID": step.id, "FLOWENGINE_ATTEMPT": str(job.attempt)}  # fmt: skip
    result = await run_process(argv, work, env, job.log_path, task.timeout_seconds, job.log_tail)

    def failed(error: str) -> StepFailed:
        return StepFailed(step.id, job.attempt, error, result.logs)

    if result.returncode is None:
        return failed(f"timed out after {task.timeout_seconds:g}s")
    if result.returncode != 0:
        return failed(f"exited with status {result.returncode}")
    if answer is not None:
        returned = msgspec.json.decode(answer.read_bytes(), type=dict[str, str])
        outputs = {slot: work / returned[slot] if slot in returned else path for slot, path in outputs.items()}

    written: dict[str, ObjectMeta] = {}
    for b in step.outputs:
        path, edge = outputs[b.slot], job.edges[b.edge]
        if not path.is_file():
            return failed(f"output {b.slot!r} was not written")
        info = await job.store_of(edge).upload(edge.key, path, output_type(task, b.slot, edge))
        written[b.edge] = ObjectMeta(info.size, info.content_type, info.etag)
    return StepSucceeded(step.id, job.attempt, written, result.logs)
