"""`flowengine run FLOW --input EDGE=PATH ...`: start a run, upload its inputs, follow its steps,
download its outputs.

Exit status: 0 the run is COMPLETE and its outputs are downloaded; 1 it ended in ERROR or was
stopped, or a request failed; 2 a usage error (found before any run is started where it can be);
130 interrupted (Ctrl-C): the run was cancelled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar

from flowengine.client.clients import Client
from flowengine.client.definitions import input_edges, is_flow_file, load_definition, with_flags
from flowengine.client.display import Display, make_display, printable
from flowengine.client.documents import RunDoc
from flowengine.client.errors import ApiError, ClientError, InputError, Invalid, NotFound, WaitTimeout
from flowengine.client.protocol import check_inputs, output_paths

OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130
STOP_WAIT = 10.0  # seconds to wait for a cancelled run to say STOPPED
P = TypeVar("P")


class Usage(Exception):
    """What was typed cannot work: exit status 2, and no run is started (or the one started is cancelled)."""


@dataclass
class Plan:
    """What the command line asks for, checked as far as it can be without the engine."""

    flow: str  # the flow's name on the engine, or the local file's path
    definition: dict[str, Any] | None  # a local flow file's flow (posted inline), or None: the engine's flow
    inputs: dict[str, Path]
    types: dict[str, str]
    out: Path
    timeout: float | None


@dataclass(kw_only=True)
class Session(ABC):
    """A command that follows one run of the engine (`flowengine run`) or one task (`flowengine task run`)
    to its end: what it keeps, and how what it started is cancelled when it cannot go on."""

    noun: ClassVar[str]  # what it follows: run, task
    client: Client
    display: Display
    quiet: bool = False
    report: list[str] = field(default_factory=list)  # for stderr, once the live view is gone
    saved: list[Path] = field(default_factory=list)  # for stdout

    @abstractmethod
    def follow(self) -> int:
        """The whole of it: start, upload, follow, download; the exit status."""

    @abstractmethod
    def pending(self) -> str | None:
        """The id of what it started and has not seen end (None: nothing to cancel)."""

    @abstractmethod
    def cancel(self, id: str) -> None: ...

    @abstractmethod
    def settle(self, id: str) -> str:
        """Once cancelled, wait a little for it to end: where it stands (`is STOPPED`)."""

    def describe(self, exc: ClientError) -> str:
        return _describe(exc)


def drive(prog: str, args: argparse.Namespace, make_plan: Callable[[argparse.Namespace], P],
          kind: Callable[..., Session]) -> int:  # fmt: skip
    """Run a command that follows one run or task (a `kind` of Session, made with the plan): usage errors
    before anything starts are 2; Ctrl-C and failures cancel what was started; the report goes to stderr,
    the files saved to stdout."""
    try:
        return _drive(prog, args, make_plan, kind)
    except KeyboardInterrupt:  # before anything was started, or a second Ctrl-C: nothing to cancel
        return INTERRUPTED


def _drive(prog: str, args: argparse.Namespace, make_plan: Callable[[argparse.Namespace], P],
           kind: Callable[..., Session]) -> int:  # fmt: skip
    try:
        plan = make_plan(args)
    except (Usage, InputError) as exc:
        return _say(prog, USAGE, str(exc))
    display = make_display(args.quiet)
    with Client(args.server, args.key) as client:
        session = kind(client=client, display=display, quiet=args.quiet, plan=plan)
        try:
            code = session.follow()
        except KeyboardInterrupt:
            code = interrupted(session)
        except (Usage, InputError) as exc:
            code = _stop(session, USAGE, str(exc))
        except ClientError as exc:
            code = _stop(session, FAILED, session.describe(exc))
        finally:
            display.close()
    for line in map(printable, session.report):
        print(line if line.startswith("  ") else f"{prog}: {line}", file=sys.stderr)
    for path in session.saved:
        print(path)
    return code


@dataclass(kw_only=True)
class RunSession(Session):
    noun: ClassVar[str] = "run"
    plan: Plan
    run: RunDoc | None = None

    def follow(self) -> int:
        return follow(self)

    def pending(self) -> str | None:
        return None if self.run is None or self.run.done else self.run.id

    def cancel(self, id: str) -> None:
        self.client.cancel(id)

    def settle(self, id: str) -> str:
        try:
            return f"is {self.client.wait(id, timeout=STOP_WAIT).status}"
        except WaitTimeout as exc:
            return f"was cancelled, and is still {exc.run.status}"

    def describe(self, exc: ClientError) -> str:
        if isinstance(exc, WaitTimeout):
            return f"{exc} after {self.plan.timeout:g}s"
        return _describe(exc)


def main(args: argparse.Namespace) -> int:
    return drive("flowengine run", args, make_plan, RunSession)


def make_plan(args: argparse.Namespace) -> Plan:
    inputs: dict[str, Path] = {}
    for spec in args.input:
        edge, path = _pair(spec, "--input", "EDGE=PATH")
        if edge in inputs:
            raise Usage(f"--input {spec}: {edge!r} is given twice")
        if not Path(path).is_file():
            raise Usage(f"--input {spec}: {path}: no such file" if not Path(path).exists() else
                        f"--input {spec}: {path}: not a regular file")  # fmt: skip
        inputs[edge] = Path(path)
    types = dict(_pair(spec, "--type", "EDGE=MIME") for spec in args.type)
    for edge in types:
        if edge not in inputs:
            raise Usage(f"--type {edge}=...: no --input {edge}=PATH")
    if args.out.exists() and not args.out.is_dir():
        raise Usage(f"--out {args.out}: not a folder")
    if args.timeout is not None and args.timeout <= 0:
        raise Usage("--timeout: seconds, more than 0")
    definition = load_definition(args.flow) if is_flow_file(args.flow) else None
    definition = apply_flags(args.flow, definition, [_flag(spec) for spec in args.flag])
    return Plan(args.flow, definition, inputs, types, args.out, args.timeout)


def apply_flags(
    flow: str, definition: dict[str, Any] | None, flags: list[tuple[str, str, Any]]
) -> dict[str, Any] | None:
    """The one place `--flag STEP.FLAG=VALUE` is applied: set in a local flow's steps before it is
    posted. The flow API takes no flag values with a run of the engine's own flow files."""
    if not flags:
        return definition
    if definition is None:
        raise Usage(f"--flag needs a local flow file: {flow!r} is a flow on the engine, and its steps' flags "
                    f"cannot be set per run (give a flow file's path instead, e.g. flows/{flow}.yaml)")  # fmt: skip
    try:
        return with_flags(definition, flags)
    except InputError as exc:
        raise Usage(f"--flag {exc}") from None


def follow(session: RunSession) -> int:
    """The whole run: start, upload, follow, download."""
    plan, client, display = session.plan, session.client, session.display
    check_inputs(_expected_edges(session), plan.inputs)
    try:
        run = session.run = client.start(plan.flow if plan.definition is None else None, definition=plan.definition)
    except Invalid as exc:  # the definition (a local file, the flags given) has problems: every one is listed
        raise Usage(_describe(exc)) from None
    display.show(run)
    try:
        check_inputs([w.edge for w in run.waiting_urls], plan.inputs)
    except InputError as exc:
        raise Usage(str(exc)) from None
    for edge, path in plan.inputs.items():
        bar = display.transfer(f"{path.name} → {edge}", path.stat().st_size, upload=True)
        run = client.upload(run, edge, path, content_type=plan.types.get(edge), progress=bar.update)
        bar.finish()
    run = session.run = client.wait(run.id, timeout=plan.timeout, on_update=display.show)
    if run.status != "COMPLETE":
        return failed(session, run)
    paths = output_paths(run, plan.out)
    for art in run.outputs:
        dest = paths[art.edge_name]
        bar = display.transfer(f"{art.edge_name} → {dest}", art.size, upload=False)
        session.saved.append(client.download(run, art.edge_name, dest, progress=bar.update))
        bar.finish()
    if not session.quiet:
        session.report.append(f"run {run.id}: COMPLETE, {len(session.saved)} output(s) in {plan.out}")
    return OK


def _expected_edges(session: RunSession) -> list[str]:
    """The inputs a run of the flow will wait for, known before it is started: from the local
    file, or the engine's list of its flows (a name it does not list is a usage error)."""
    plan = session.plan
    if plan.definition is not None:
        return input_edges(plan.definition)
    try:
        flows = {f.name: f for f in session.client.flows()}
    except NotFound:  # an engine without the listing: the run's own WaitingURLs are checked instead
        return list(plan.inputs)
    if plan.flow not in flows:
        known = ", ".join(sorted(flows)) or "none"
        hint = " (a local file needs a path: ./NAME.yaml)" if Path(plan.flow).exists() else ""
        raise Usage(f"the engine has no flow {plan.flow!r}; its flows: {known}{hint}")
    return flows[plan.flow].inputs


def failed(session: RunSession, run: RunDoc) -> int:
    if run.status == "STOPPED":
        session.report.append(f"run {run.id} was stopped (cancelled) before it ended")
        return FAILED
    session.report.append(f"run {run.id} ended {run.status}: {run.error or 'no reason given'}")
    step = next((s for s in run.steps if s.id == run.failed_step), None)
    if step is not None:
        session.report.append(f"failed step: {step.id} ({step.uses}), attempt {step.attempts}")
        if run.logs:
            session.report.append(f"last lines of its log ({_log_hint(session.client, run, step.id)}):")
            session.report += [f"  | {line}" for line in run.logs]
    return FAILED


def _log_hint(client: Client, run: RunDoc, step: str) -> str:
    return f"all of it: {client.url}/api/v1/flow/{run.id}/logs/{step}"


def interrupted(session: Session) -> int:
    """Ctrl-C: cancel what was started and wait a little for it to end; a second Ctrl-C quits at once."""

    def quit_now(signum: int, frame: Any) -> NoReturn:
        raise SystemExit(INTERRUPTED)

    signal.signal(signal.SIGINT, quit_now)
    noun, id = session.noun, session.pending()
    if id is None:
        session.report.append("interrupted")
        return INTERRUPTED
    session.display.note(f"interrupted: cancelling {noun} {id} (Ctrl-C again to quit at once)")
    try:
        session.cancel(id)
        session.report.append(f"interrupted: {noun} {id} {session.settle(id)}")
    except ClientError as exc:
        session.report.append(f"interrupted, and the {noun} {id} could not be cancelled: {_describe(exc)}")
    return INTERRUPTED


def _stop(session: Session, code: int, message: str) -> int:
    """A failure before the end: what was started is cancelled (it would only wait out its TTL, and nobody
    would collect its outputs)."""
    session.report.append(message)
    id = session.pending()
    if id is not None:
        try:
            session.cancel(id)
            session.report.append(f"{session.noun} {id}: cancelled")
        except ClientError as exc:
            session.report.append(f"{session.noun} {id} could not be cancelled: {_describe(exc)}")
    return code


def _describe(exc: ClientError) -> str:
    """One line for the error, then one per problem the engine listed."""
    if not isinstance(exc, ApiError):
        return str(exc)
    problems = [f"  {p.path}: {p.message}" if p.path else f"  {p.message}" for p in exc.problems]
    return "\n".join([f"{exc.method} {exc.url}: {exc}", *problems])


def _pair(spec: str, option: str, form: str) -> tuple[str, str]:
    key, sep, value = spec.partition("=")
    if not (key and sep and value):
        raise Usage(f"{option} {spec!r}: expected {form}")
    return key, value


def _flag(spec: str) -> tuple[str, str, Any]:
    """STEP.FLAG=VALUE; VALUE is JSON where it parses as JSON (9, true, "x", [1]), else the string itself."""
    key, value = _pair(spec, "--flag", "STEP.FLAG=VALUE")
    step, dot, flag = key.rpartition(".")
    if not (step and dot and flag):
        raise Usage(f"--flag {spec!r}: expected STEP.FLAG=VALUE")
    with contextlib.suppress(ValueError):
        return step, flag, json.loads(value)
    return step, flag, value


def _say(prog: str, code: int, message: str) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return code
