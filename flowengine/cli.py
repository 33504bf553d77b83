"""`flowengine serve` and `flowengine validate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flowengine.errors import Error


def _serve(args: argparse.Namespace) -> int:
    from flowengine.api import server
    from flowengine.api.app import create_app
    from flowengine.config import load_config

    config = load_config(args.config, host=args.host, port=args.port, data_dir=args.data_dir)
    app = create_app(config)
    server.run(app, config, log_level=args.log_level, access_log=args.access_log)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from flowengine.config import load_config
    from flowengine.core.spec import FLOW_SUFFIXES, flow_files, load_flow_file
    from flowengine.core.validate import validate

    known_stores = [*args.store, *(s.name for s in load_config(args.config).stores)]

    paths: list[Path] = []
    for target in args.paths:
        paths += list(flow_files(target).values()) if target.is_dir() else [target]
    failed = 0
    for path in paths:
        if path.suffix not in FLOW_SUFFIXES:
            print(f"{path}: not a flow file (expected {', '.join(FLOW_SUFFIXES)})")
            failed += 1
            continue
        try:
            problems = validate(load_flow_file(path), known_stores)
        except Error as exc:
            problems = exc.problems or []
            if not problems:
                print(f"{path}: {exc.message}")
        for problem in problems:
            print(f"{path}: {problem.path}: {problem.message}")
        failed += bool(problems)
        if not problems:
            print(f"{path}: ok")
    return 1 if failed or not paths else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flowengine", description="A flow engine for file-processing pipelines.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 1234)")
    serve.add_argument("--config", type=Path, help="YAML settings file (see config.yaml)")
    serve.add_argument("--data-dir", help="where the database and the embedded store live (default ./data)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--no-access-log", dest="access_log", action="store_false")
    serve.set_defaults(run=_serve)
    check = sub.add_parser("validate", help="check flow files; prints every problem, exits 1 if any")
    check.add_argument("paths", nargs="*", type=Path, default=[Path("flows")])
    check.add_argument("--store", action="append", default=[], help="a store name the operator configured")
    check.add_argument("--config", type=Path, help="settings file whose stores flows may name")
    check.set_defaults(run=_validate)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
