"""`flowengine serve`, `migrate`, `validate`, `webhook-key`, `run`, `task run`, `--version` (also as
`python -m flowengine`).

A problem with what the user typed or configured (a missing file, a bad setting) is one line
naming it and exit status 2, never a traceback. `validate` exits 1 when a flow has problems.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import logging.config
import os
import socket
import sys
import tempfile
from pathlib import Path

from flowengine import admin, version
from flowengine.errors import Error, Problem

USAGE_ERROR = 2
log = logging.getLogger("flowengine")


def _serve(args: argparse.Namespace) -> int:
    from flowengine.api import server
    from flowengine.api.app import create_app
    from flowengine.config import load_config, unknown_variables
    from flowengine.logs import logging_config
    from flowengine.persistence import check_database
    from flowengine.runtime import datadir
    from flowengine.stores.registry import refuse_unshared_local

    config = load_config(
        args.config, host=args.host, port=args.port, data_dir=args.data_dir, flows_dir=args.flows_dir,
        log_format=args.log_format,
    )  # fmt: skip
    if config.flows_path.exists() and not config.flows_path.is_dir():
        raise _usage(config.flows_dir, "the flows dir is not a directory")
    if config.auth == "open" and not config.allow_open and not _loopback(config.host):
        why = "anyone who can reach it could run flows. Set auth: keys (see 'flowengine keys'), or allow_open: true"
        raise _usage("host", f"{config.host} is not a loopback address and auth is open: {why}")
    try:
        config.data_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _usage(config.data_dir, f"cannot create the data dir: {exc.strerror}") from None
    try:
        datadir.hold(config.data_path)  # for the life of the process; before anything else touches the data dir
    except datadir.DataDirBusy as exc:
        print(f"flowengine: {exc}", file=sys.stderr)
        return 1
    try:
        check_database(config)  # here, what the engine would refuse is one line, not a traceback
        refuse_unshared_local(config)
    except Error as exc:
        print(f"flowengine: {exc.message}", file=sys.stderr)
        return 1
    # Logging is set up here, for the engine's lines and uvicorn's alike, before anything is logged.
    logging.config.dictConfig(logging_config(args.log_level, config.log_format))
    for warning in unknown_variables(dict(os.environ)):
        log.warning(warning)
    app = create_app(config)
    server.run(app, config, log_level=args.log_level, access_log=args.access_log)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from flowengine.config import load_config
    from flowengine.persistence import migrate, redacted

    config = load_config(args.config, data_dir=args.data_dir)
    where = redacted(config.database_url)
    try:
        applied, version = migrate(config)
    except Error as exc:
        print(f"flowengine: {exc.message}", file=sys.stderr)
        return 1
    for migration in applied:
        print(f"applied {migration.name}")
    print(f"{where}: schema version {version}{'' if applied else ', already up to date'}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from flowengine.config import load_config
    from flowengine.runtime.catalog import LIBRARY_DIR, check_files, load_library

    config = load_config(args.config)
    targets = args.paths or [_relative(config.flows_path)]
    paths = _flow_paths(targets)
    known_stores = [*args.store, *(s.name for s in config.stores)]
    results: list[tuple[Path, list[Problem]]] = []
    # Each folder's flows are checked with its task library (FOLDER/tasks/), which is checked too.
    for folder in dict.fromkeys(p.parent.parent if p.parent.name == LIBRARY_DIR else p.parent for p in paths):
        library = load_library(folder)
        named = [p for p in paths if p.parent == folder / LIBRARY_DIR]
        shown = [f for f in library.files if f.path in named or folder in targets]
        results += [(f.path, f.problems) for f in shown]
        flows = [p for p in paths if p.parent == folder]
        checked = check_files(flows, known_stores, library, config.webhook_allow_private)
        results += [(e.path, e.problems) for e in checked]
    for path, problems in results:
        for problem in problems:
            print(problem.line(str(path)))
        if not problems:
            print(f"{path}: ok")
    return 1 if any(problems for _, problems in results) else 0


def _webhook_key(args: argparse.Namespace) -> int:
    from flowengine.config import load_config
    from flowengine.runtime.webhooks import signing_key

    config = load_config(args.config, data_dir=args.data_dir)
    config.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)  # as `serve` would make it
    print(signing_key(config))
    return 0


def _flow_paths(targets: list[Path]) -> list[Path]:
    """The flow files named, or found in the folders named; every target that is neither is an error."""
    from flowengine.core.spec import FLOW_SUFFIXES, flow_files

    paths: list[Path] = []
    problems: list[Problem] = []
    for target in targets:
        if target.is_dir():
            found = list(flow_files(target).values())
            if not found:
                problems.append(Problem(str(target), f"no flow files ({', '.join(FLOW_SUFFIXES)}) in this folder"))
            paths += found
        elif not target.exists():
            problems.append(Problem(str(target), "no such file or folder"))
        elif target.suffix not in FLOW_SUFFIXES:
            problems.append(Problem(str(target), f"not a flow file (expected {', '.join(FLOW_SUFFIXES)})"))
        else:
            paths.append(target)
    if problems:
        raise Error("invalid", "usage", problems[0].message, "", problems)
    return paths


def _run(args: argparse.Namespace) -> int:
    from flowengine.client import command  # the client (httpx, rich) only for this command

    return command.main(args)


def _task_run(args: argparse.Namespace) -> int:
    from flowengine.client import task_command

    return task_command.main(args)


def _relative(path: Path) -> Path:
    """`path` as seen from here, when it is below here: what a user would have typed."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _usage(where: str, message: str) -> Error:
    return Error("invalid", "usage", f"{where}: {message}", where, [Problem("", message)])


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowengine", description="A flow engine for file-processing pipelines.")
    parser.add_argument("--version", action="version", version=f"flowengine {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 1234)")
    serve.add_argument("--config", type=Path, help="YAML settings file (see config.yaml)")
    serve.add_argument("--data-dir", help="where the database and the embedded store live (default ./data)")
    serve.add_argument("--flows-dir", help="where the flow files are (default ./flows)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--no-access-log", dest="access_log", action="store_false")
    serve.add_argument("--log-format", choices=["text", "logfmt", "json"], help="log line format (default text)")
    serve.set_defaults(run=_serve)
    migrate = sub.add_parser(
        "migrate",
        help="bring the database's schema up to this version's, then exit",
        description="Apply the schema migrations the configured database lacks, in order, and print each. "
        "PostgreSQL needs this before an engine of a new version starts on it; SQLite is also upgraded "
        "when an engine opens it. Several at once take turns.",
    )
    migrate.add_argument("--config", type=Path, help="YAML settings file (see config.yaml): its `database`")
    migrate.add_argument("--data-dir", help="the data dir, where the SQLite database is by default (default ./data)")
    migrate.set_defaults(run=_migrate)
    check = sub.add_parser("validate", help="check flow files; prints every problem, exits 1 if any")
    check.add_argument("paths", nargs="*", type=Path, help="flow files or folders (default: the flows dir)")
    check.add_argument("--store", action="append", default=[], help="a store name the operator configured")
    check.add_argument("--config", type=Path, help="settings file whose stores flows may name")
    check.set_defaults(run=_validate)
    key = sub.add_parser(
        "webhook-key",
        help="print the key that signs flow-API runs' webhook deliveries (whsec_...), for their receivers",
        description="Print webhook_signing_key, or the key generated once into the data dir when it is not set "
        "(making it if no engine has yet). Receivers verify X-Webhook-Signature-256 and the Standard Webhooks "
        "signature with it.",
    )
    key.add_argument("--config", type=Path, help="YAML settings file (see config.yaml)")
    key.add_argument("--data-dir", help="the engine's data dir (default ./data)")
    key.set_defaults(run=_webhook_key)
    admin.add_parsers(sub)
    _agent_parser(sub.add_parser(
        "agent",
        help="run an agent: lease steps from an engine over HTTP and run them on this machine",
        description="Register with the engine under --name, long-poll for exec and python steps, run them here "
        "(inputs and outputs through presigned URLs: no store credentials), and report. SIGTERM stops leasing, "
        "lets running steps finish for --grace seconds, and gives the rest back.",
    ))  # fmt: skip
    _run_parser(
        sub.add_parser(
            "run",
            help="run a flow: upload its inputs, follow its steps, download its outputs",
            description=RUN_DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    task = sub.add_parser("task", help="the workflow/task API's tasks, from the command line")
    tasks = task.add_subparsers(dest="task_command", required=True)
    _task_run_parser(
        tasks.add_parser(
            "run",
            help="run a workflow as a task: upload its files, follow it, download its outputs",
            description=TASK_RUN_DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    return parser


RUN_DESCRIPTION = """Start a run of FLOW, upload each --input with a progress bar, show the steps until the run
ends, and download its outputs into --out.

FLOW is the name of a flow on the engine (checksum-report), or the path of a local flow file
(./my-flow.yaml, flows/merge-fanout.yaml: a / or a .yaml/.yml/.json suffix), posted inline.

exit status: 0 COMPLETE and the outputs downloaded; 1 the run ended in ERROR or was stopped, or a
request failed; 2 a usage error (a missing file, an input the flow does not take); 130 Ctrl-C
(the run is cancelled; a second Ctrl-C quits at once)."""


TASK_RUN_DESCRIPTION = """Run the workflow SLUG (slug, or slug@version) of the workflow/task API as a task: upload
each -f file (presigned, with a progress bar), start the task with the -p values typed as the
workflow declares them, follow its events until it ends, and download its outputs into --out.

exit status: 0 completed and the outputs downloaded; 1 the task failed or was cancelled, or a
request failed; 2 a usage error (an unknown parameter, a value of the wrong type, a missing file or
required parameter), found before any task is started; 130 Ctrl-C (the task is cancelled)."""


def _connection_options(parser: argparse.ArgumentParser) -> None:
    server = os.environ.get("FLOWENGINE_URL") or "http://127.0.0.1:1234"
    parser.add_argument("--server", default=server, metavar="URL",
                        help="the engine (default: $FLOWENGINE_URL, else http://127.0.0.1:1234)")  # fmt: skip
    parser.add_argument("--key", default=os.environ.get("FLOWENGINE_KEY") or None,
                        help="an API key, sent as a bearer token (default: $FLOWENGINE_KEY)")  # fmt: skip
    parser.add_argument("--out", "-o", type=Path, default=Path("."), metavar="DIR",
                        help="where the outputs go (default: the current folder)")  # fmt: skip
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="no progress: only errors, and the paths of the outputs"
    )


def _task_run_parser(run: argparse.ArgumentParser) -> None:
    run.add_argument("slug", metavar="SLUG", help="the workflow's slug, or slug@version")
    run.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                     help="a parameter's value, typed as the workflow declares it (number, boolean...)")  # fmt: skip
    run.add_argument("--file", "-f", action="append", default=[], metavar="KEY=PATH",
                     help="a file for a file parameter: uploaded, and its file_key passed")  # fmt: skip
    _connection_options(run)
    run.set_defaults(run=_task_run)


def _run_parser(run: argparse.ArgumentParser) -> None:
    run.add_argument("flow", metavar="FLOW", help="a flow's name on the engine, or a local flow file's path")
    run.add_argument("--input", "-i", action="append", default=[], metavar="EDGE=PATH",
                     help="a file for the input EDGE (one per input the flow waits for)")  # fmt: skip
    run.add_argument("--type", action="append", default=[], metavar="EDGE=MIME",
                     help="the Content-Type of an input (default: guessed from its file name)")  # fmt: skip
    run.add_argument("--flag", action="append", default=[], metavar="STEP.FLAG=VALUE",
                     help="set a step's flag (local flow files only); VALUE: JSON if it parses, else text")  # fmt: skip
    _connection_options(run)
    run.add_argument("--timeout", type=float, metavar="SECONDS", help="give up (and cancel the run) after this long")
    run.set_defaults(run=_run)


def _agent_parser(agent: argparse.ArgumentParser) -> None:
    agent.add_argument("--server", default=os.environ.get("FLOWENGINE_URL") or "http://127.0.0.1:1234", metavar="URL",
                       help="the engine (default: $FLOWENGINE_URL, else http://127.0.0.1:1234)")  # fmt: skip
    agent.add_argument("--key", default=os.environ.get("FLOWENGINE_KEY") or None,
                       help="the team's agent key, ak-... (default: $FLOWENGINE_KEY)")  # fmt: skip
    agent.add_argument("--name", default=socket.gethostname(), help="unique in the team (default: the host name)")
    agent.add_argument("--labels", default="", help="comma-separated labels steps may ask for: gpu,a100")
    agent.add_argument("--region", default="", help="where this machine is: steps from this region prefer it")
    agent.add_argument("--concurrency", type=int, default=1, help="steps run at once (default 1)")
    agent.add_argument("--community", action="store_true", help="also take steps of other teams' community pool")
    agent.add_argument(
        "--comfyui-url",
        default="",
        metavar="URL",
        help="a ComfyUI server to run comfyui steps on (taken only while it answers)",
    )
    agent.add_argument("--work-dir", type=Path, default=None, help="scratch dirs of steps (default: a temp dir)")
    agent.add_argument("--grace", type=float, default=30.0, help="seconds steps may finish after SIGTERM (30)")
    agent.set_defaults(run=_agent)


def _agent(args: argparse.Namespace) -> int:
    from flowengine.agent import worker

    if not args.key or not args.key.startswith("ak-"):
        raise _usage("--key", "an agent key (ak-...) is required: flowengine keys create --team T --kind agent")
    if args.concurrency < 1:
        raise _usage("--concurrency", f"{args.concurrency} is not at least 1")
    if args.comfyui_url and not args.comfyui_url.startswith(("http://", "https://")):
        raise _usage("--comfyui-url", f"{args.comfyui_url!r} is not an http:// or https:// URL")
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="flowengine-agent-"))
    return worker.main(worker.Options(server=args.server, key=args.key, name=args.name, labels=labels,
                                      region=args.region, concurrency=args.concurrency, community=args.community,
                                      work_dir=work_dir.resolve(), grace=args.grace,
                                      comfyui_url=args.comfyui_url))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except Error as exc:
        lines = [problem.line(exc.location) for problem in exc.problems] or [exc.message]
        for line in lines:
            print(f"flowengine: {line}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
