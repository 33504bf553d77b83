"""`flowengine task run SLUG -p KEY=VALUE -f KEY=PATH ...`: run a workflow of the workflow/task API
as a task: upload its files (presigned), start it, follow its events, download its outputs.

Exit status as `flowengine run`'s: 0 the task completed and its outputs are downloaded; 1 it failed
or was cancelled, or a request failed; 2 a usage error (found before the task is started: the
workflow's parameters say what each takes); 130 interrupted (Ctrl-C): the task was cancelled.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from flowengine.client.command import FAILED, OK, STOP_WAIT, Session, Usage, _describe, drive
from flowengine.client.display import Display, Transfer
from flowengine.client.documents import ParameterInfo, TaskEvent, WorkflowInfo
from flowengine.client.errors import BadRequest, Invalid, NotFound

PROG = "flowengine task run"
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass
class TaskPlan:
    """What the command line asks for, checked as far as it can be without the engine."""

    slug: str
    values: dict[str, str]  # -p, as typed: typed by the workflow's parameters once it is read
    files: dict[str, Path]  # -f
    out: Path


@dataclass(kw_only=True)
class TaskSession(Session):
    noun: ClassVar[str] = "task"
    plan: TaskPlan
    task_id: str | None = None
    done: bool = False

    def follow(self) -> int:
        return run_task(self, self.plan)

    def pending(self) -> str | None:
        return None if self.done else self.task_id

    def cancel(self, id: str) -> None:
        self.client.cancel_task(id)

    def settle(self, id: str) -> str:
        deadline = time.monotonic() + STOP_WAIT
        while not (task := self.client.task(id)).done and time.monotonic() < deadline:
            time.sleep(0.2)
        return f"is {task.task_status}"


def main(args: argparse.Namespace) -> int:
    return drive(PROG, args, make_plan, TaskSession)


def make_plan(args: argparse.Namespace) -> TaskPlan:
    values: dict[str, str] = {}
    files: dict[str, Path] = {}
    for spec in args.param:
        key, value = _pair(spec, "-p", "KEY=VALUE")
        if key in values:
            raise Usage(f"-p {spec}: {key!r} is given twice")
        values[key] = value
    for spec in args.file:
        key, path = _pair(spec, "-f", "KEY=PATH")
        if key in files or key in values:
            raise Usage(f"-f {spec}: {key!r} is given twice")
        if not Path(path).is_file():
            raise Usage(f"-f {spec}: {path}: " + ("not a regular file" if Path(path).exists() else "no such file"))
        files[key] = Path(path)
    if args.out.exists() and not args.out.is_dir():
        raise Usage(f"--out {args.out}: not a folder")
    return TaskPlan(args.slug, values, files, args.out)


def typed_parameters(workflow: WorkflowInfo, values: dict[str, str], files: dict[str, Path]) -> dict[str, Any]:
    """The -p values as the workflow's parameters take them (a number, a boolean, one of a select's
    options, a string); every key known, every file given with -f, every required parameter given."""
    takes = ", ".join(f"{p.key} ({p.type}{', required' if p.required else ''})" for p in workflow.parameters)
    said = f"workflow {workflow.workflow_slug} takes {takes or 'no parameter'}"
    typed: dict[str, Any] = {}
    for key, text in values.items():
        param = workflow.parameter(key)
        if param is None:
            raise Usage(f"-p {key}=...: no parameter {key!r}; {said}")
        if param.type == "file":
            raise Usage(f"-p {key}=...: {key!r} is a file: give it with -f {key}=PATH")
        typed[key] = _typed(param, text)
    for key in files:
        param = workflow.parameter(key)
        if param is None:
            raise Usage(f"-f {key}=...: no parameter {key!r}; {said}")
        if param.type != "file":
            raise Usage(f"-f {key}=...: {key!r} is a {param.type}, not a file: give it with -p {key}=VALUE")
    missing = [p for p in workflow.parameters if p.required and p.key not in values and p.key not in files]
    if missing:
        needed = ", ".join(f"-f {p.key}=PATH" if p.type == "file" else f"-p {p.key}=VALUE" for p in missing)
        raise Usage(f"workflow {workflow.workflow_slug} requires {needed}")
    return typed


def _typed(param: ParameterInfo, text: str) -> Any:
    where = f"-p {param.key}={text}"
    if param.type == "number":
        try:
            number: int | float = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise Usage(f"{where}: {param.key!r} is a number") from None
            if not math.isfinite(number):
                raise Usage(f"{where}: {param.key!r} is a finite number") from None
        if param.min is not None and number < param.min:
            raise Usage(f"{where}: {param.key!r} is at least {param.min:g}")
        if param.max is not None and number > param.max:
            raise Usage(f"{where}: {param.key!r} is at most {param.max:g}")
        return number
    if param.type == "boolean":
        if text.lower() not in TRUE + FALSE:
            raise Usage(f"{where}: {param.key!r} is a boolean: true or false")
        return text.lower() in TRUE
    if param.type == "select" and text not in param.options:
        raise Usage(f"{where}: {param.key!r} is one of {', '.join(param.options)}")
    return text


def run_task(session: TaskSession, plan: TaskPlan) -> int:
    """The whole task: read the workflow, upload its files, start it, follow it, download its outputs."""
    client, display = session.client, session.display
    try:
        workflow = client.workflow(plan.slug)
    except NotFound:
        raise Usage(f"the engine has no workflow {plan.slug!r} (or not one this key's team may run)") from None
    parameters = typed_parameters(workflow, plan.values, plan.files)
    for key, path in plan.files.items():
        bar = display.transfer(f"{path.name} → {key}", path.stat().st_size, upload=True)
        parameters[key] = client.upload_file(path, progress=bar.update)
        bar.finish()
    try:
        task_id = session.task_id = client.run_workflow(plan.slug, parameters)
    except (BadRequest, Invalid) as exc:  # a value the engine refuses (a file's type...): no task was made
        raise Usage(_describe(exc)) from None
    display.note(f"task {task_id} of {workflow.workflow_slug}@{workflow.version}: started")
    task = client.follow(task_id, on_event=lambda event: _show(display, task_id, event))
    session.done = True
    if task.task_status == "failed":
        session.report.append(f"task {task_id} failed: {task.task_error or 'no reason given'}")
        return FAILED
    if task.task_status != "completed":
        session.report.append(f"task {task_id} was {task.task_status} before it ended")
        return FAILED
    bars: dict[str, Transfer] = {}

    def progress(edge: str, done: int, total: int) -> None:
        if edge not in bars:
            bars[edge] = display.transfer(edge, total, upload=False)
        bars[edge].update(done, total)

    result = client.result(task_id)
    for path in client.download_result(result, plan.out, progress=progress):
        session.saved.append(path)
    for bar in bars.values():
        bar.finish()
    if not session.quiet:
        session.report.append(f"task {task_id}: completed, {len(session.saved)} output(s) in {plan.out}")
    return OK


def _show(display: Display, task_id: str, event: TaskEvent) -> None:
    """One line per event: a change of status, a step's progress, the end."""
    extra = {k: v for k, v in event.data.items() if k not in ("task_id", "status", "timestamp", "output")}
    details = ", ".join(f"{k}: {v}" for k, v in extra.items())
    name = event.status if event.event == "status" else f"{event.event} ({event.status})"
    display.note(f"task {task_id}: {name}" + (f", {details}" if details else ""))


def _pair(spec: str, option: str, form: str) -> tuple[str, str]:
    """KEY=VALUE; the value may be empty (an empty string parameter), the key may not."""
    key, sep, value = spec.partition("=")
    if not (key and sep):
        raise Usage(f"{option} {spec!r}: expected {form}")
    return key, value
