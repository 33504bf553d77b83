"""Start a flow run, upload its inputs, wait for it to end and download its outputs (flowengine.client).

The same workflow as upload-workflow.sh, for any number of inputs:

  python examples/upload_workflow.py checksum-report --file photo.png
  python examples/upload_workflow.py merge-fanout --file first=a.csv --file second=b.csv --out results
  python examples/upload_workflow.py test --definition examples/flow-definition.json --file input.jpg

FLOW is a flow file's name on the engine, or with --definition the name an inline flow runs
under. `--file EDGE=PATH` names the input it fills; a bare PATH fills the next input not named.

Exit status: 0 the run is COMPLETE and its outputs are downloaded; 1 it ended in ERROR (or was
stopped); 2 bad arguments; 3 the engine refused a request or could not be reached; 4 timed out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from flowengine.client import ApiError, Client, ClientError, ConnectionFailed, InputError, RunDoc, WaitTimeout

T = TypeVar("T")


class Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with Client(args.url) as client:
            return run(client, args)
    except Failure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("flow", help="the flow's name (with --definition: the name the inline flow runs under)")
    parser.add_argument("--url", default=os.environ.get("FLOWENGINE_URL", "http://127.0.0.1:1234"),
                        help="the engine (default: $FLOWENGINE_URL or http://127.0.0.1:1234)")  # fmt: skip
    parser.add_argument("--definition", type=Path, help='a JSON file {"Flow": {...}} to run instead of a flow file')
    parser.add_argument("--file", action="append", default=[], metavar="[EDGE=]PATH", help="an input to upload")
    parser.add_argument("--type", action="append", default=[], metavar="EDGE=MIME",
                        help="Content-Type for an input (default: guessed from its name)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="where outputs go (default ./outputs)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the run (default 600)")
    return parser


def run(client: Client, args: argparse.Namespace) -> int:
    # Check what can be checked before a run exists, so a typo does not leave one waiting.
    types = dict(_pair(spec, "--type") for spec in args.type)
    for spec in args.file:
        if not Path(spec).is_file() and not Path(spec.partition("=")[2]).is_file():
            raise Failure(2, f"--file {spec}: no such file")
    if args.definition and not args.definition.is_file():
        raise Failure(2, f"--definition {args.definition}: no such file")
    doc = _call(client.start, args.flow, definition=args.definition)
    print(f"run {doc.id}: {doc.status}", file=sys.stderr)
    try:
        files = assign_files([w.edge for w in doc.waiting_urls], args.file)
        for edge, path in files.items():
            doc = _call(client.upload, doc, edge, path, content_type=types.get(edge))
            print(f"uploaded {path} to {edge}", file=sys.stderr)
    except Failure:
        # Without all its inputs the run would only wait out its TTL: stop it now.
        with contextlib.suppress(ClientError):
            client.cancel(doc.id)
        print(f"run {doc.id}: cancelled", file=sys.stderr)
        raise

    doc = _call(client.wait, doc.id, timeout=args.timeout, on_update=_progress)
    if doc.status != "COMPLETE":
        print(f"run {doc.id} ended {doc.status}: {doc.error or 'no reason given'}", file=sys.stderr)
        for line in doc.logs:  # the failing step's last lines of output
            print(f"  | {line}", file=sys.stderr)
        return 1
    for path in _call(client.download_outputs, doc, args.out):
        print(path)
    return 0


def assign_files(edges: list[str], specs: list[str]) -> dict[str, Path]:
    """Which file fills each waiting edge: EDGE=PATH by name, bare paths in order."""
    named: dict[str, Path] = {}
    bare: list[Path] = []
    for spec in specs:
        edge, _, path = spec.partition("=")
        if path and edge in edges:  # a file whose name holds "=" still works as a bare path
            named[edge] = Path(path)
        else:
            bare.append(Path(spec))
    rest = [edge for edge in edges if edge not in named]
    if len(bare) != len(rest):
        raise Failure(2, f"the run waits for {', '.join(edges)}; got files for {len(named) + len(bare)} of them "
                         "(use --file EDGE=PATH)")  # fmt: skip
    for path in bare:
        if not path.is_file():  # e.g. "EDGE=PATH" with an EDGE the run does not wait for
            raise Failure(2, f"--file {path}: no such file, and the run waits for {', '.join(edges)}")
    return {**named, **dict(zip(rest, bare, strict=True))}


def _progress(doc: RunDoc) -> None:
    steps = ", ".join(f"{s.id} {s.status}" for s in doc.steps)
    print(f"run {doc.id}: {doc.status} {steps}", file=sys.stderr)


def _call(method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A client call, its failures turned into this script's exit statuses."""
    try:
        return method(*args, **kwargs)
    except InputError as exc:
        raise Failure(2, str(exc)) from None
    except WaitTimeout as exc:
        raise Failure(4, f"{exc} after {kwargs.get('timeout', 0):g}s") from None
    except ConnectionFailed as exc:
        raise Failure(3, f"cannot reach the engine: {exc}") from None
    except ApiError as exc:
        raise Failure(3, f"{exc.method} {exc.url}: {exc}") from None
    except ClientError as exc:
        raise Failure(3, str(exc)) from None


def _pair(spec: str, option: str) -> tuple[str, str]:
    key, sep, value = spec.partition("=")
    if not (key and sep and value):
        raise Failure(2, f"{option} {spec!r}: expected NAME=VALUE")
    return key, value


if __name__ == "__main__":
    sys.exit(main())
