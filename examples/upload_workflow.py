"""Start a flow run, upload its inputs, wait for it to end and download its outputs (httpx).

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
import json
import mimetypes
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import httpx

DONE = ("COMPLETE", "ERROR", "STOPPED")
UPLOAD_TRIES = 3
TTL_MARGIN = 60  # seconds: a URL this close to expiry may die mid-upload, so get fresh ones first


class Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with httpx.Client(base_url=args.url, timeout=httpx.Timeout(60.0, connect=10.0)) as client:
            return run(client, args)
    except Failure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except httpx.TransportError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 3


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


def run(client: httpx.Client, args: argparse.Namespace) -> int:
    # Check what can be checked before a run exists, so a typo does not leave one waiting.
    types = dict(_pair(spec, "--type") for spec in args.type)
    for spec in args.file:
        if not Path(spec).is_file() and not Path(spec.partition("=")[2]).is_file():
            raise Failure(2, f"--file {spec}: no such file")
    if args.definition and not args.definition.is_file():
        raise Failure(2, f"--definition {args.definition}: no such file")
    body = args.definition.read_bytes() if args.definition else None
    doc = _call(client, "POST", f"/api/v1/flow/{args.flow}", content=body,
                headers={"Content-Type": "application/json"} if body else {})  # fmt: skip
    run_id = doc["ID"]
    print(f"run {run_id}: {doc['Status']}", file=sys.stderr)

    inputs: list[str] = []
    if doc["Status"] == "WAITING":  # otherwise nothing to upload: every input was already there
        try:
            files = assign_files([w["Artifact"]["EdgeName"] for w in doc["WaitingURLs"]], args.file)
            if _expires_soon(doc["WaitingURLs"]):
                doc = _call(client, "POST", f"/api/v1/flow/{run_id}/refresh")
            for waiting in doc["WaitingURLs"]:
                edge = waiting["Artifact"]["EdgeName"]
                upload(client, waiting, files[edge], types.get(edge))
                inputs.append(edge)
                print(f"uploaded {files[edge]} to {edge}", file=sys.stderr)
        except Failure:
            # Without all its inputs the run would only wait out its TTL: stop it now.
            with contextlib.suppress(httpx.HTTPError):
                client.post(f"/api/v1/flow/{run_id}/cancel")
            print(f"run {run_id}: cancelled", file=sys.stderr)
            raise

    doc = wait(client, run_id, args.timeout)
    if doc["Status"] != "COMPLETE":
        print(f"run {run_id} ended {doc['Status']}: {doc.get('Error', 'no reason given')}", file=sys.stderr)
        for line in doc.get("Logs", []):  # the failing step's last lines of output
            print(f"  | {line}", file=sys.stderr)
        return 1
    for path in download(client, doc, skip=set(inputs), out=args.out):
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


def upload(client: httpx.Client, waiting: dict, path: Path, content_type: str | None) -> None:
    """PUT one file to its presigned URL, streamed from disk, with exactly the headers it was signed with."""
    headers = httpx.Headers(waiting.get("Headers", {}))
    if "content-type" not in headers:  # a signed Content-Type wins: the URL only works with it
        headers["Content-Type"] = content_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    for attempt in range(1, UPLOAD_TRIES + 1):
        try:
            with path.open("rb") as f:  # httpx reads a file in chunks and sends its size as Content-Length
                response = client.put(waiting["PutURL"], content=f, headers=headers)
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code < 500:  # 4xx will not change on a retry: the engine said no
                _check(response)
                return
            problem = f"{response.status_code} {response.text}"
        if attempt < UPLOAD_TRIES:
            print(f"upload of {path} failed ({problem}); retrying", file=sys.stderr)
            time.sleep(2**attempt)
    raise Failure(3, f"upload of {path} failed {UPLOAD_TRIES} times, last: {problem}")


def wait(client: httpx.Client, run_id: str, timeout: float) -> dict:
    """Poll the run until it ends: quickly at first, then backing off to every 10 s."""
    deadline, interval, seen = time.monotonic() + timeout, 0.25, ""
    while True:
        doc = _call(client, "GET", f"/api/v1/flow/status/{run_id}")
        progress = f"{doc['Status']} " + ", ".join(f"{s['ID']} {s['Status']}" for s in doc["Steps"])
        if progress != seen:
            print(f"run {run_id}: {progress}", file=sys.stderr)
            seen = progress
        if doc["Status"] in DONE:
            return doc
        if time.monotonic() + interval > deadline:
            raise Failure(4, f"run {run_id} is still {doc['Status']} after {timeout:g}s")
        time.sleep(interval)
        interval = min(interval * 2, 10.0)


def download(client: httpx.Client, doc: dict, skip: set[str], out: Path) -> list[Path]:
    """Stream every artifact not in `skip` into `out`, named after its object; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    for art in doc["Artifacts"]:
        if art["EdgeName"] in skip:
            continue
        if art.get("Expired") or not art.get("GetURL"):
            print(f"{art['EdgeName']}: past retention, not downloaded", file=sys.stderr)
            continue
        dest = out / PurePosixPath(art["ObjectName"]).name
        if dest in saved:  # two outputs with the same file name: keep both
            dest = out / f"{art['EdgeName']}-{dest.name}"
        partial = dest.with_name(dest.name + ".part")  # never leave a half file under the real name
        with client.stream("GET", art["GetURL"]) as response, partial.open("wb") as f:
            _check(response)
            for chunk in response.iter_bytes():
                f.write(chunk)
        partial.replace(dest)
        saved.append(dest)
    return saved


def _expires_soon(waiting: list[dict]) -> bool:
    now = datetime.now(UTC)
    return any((datetime.fromisoformat(w["TTL"]) - now).total_seconds() < TTL_MARGIN for w in waiting)


def _pair(spec: str, option: str) -> tuple[str, str]:
    key, sep, value = spec.partition("=")
    if not (key and sep and value):
        raise Failure(2, f"{option} {spec!r}: expected NAME=VALUE")
    return key, value


def _call(client: httpx.Client, method: str, url: str, **kwargs) -> dict:
    response = client.request(method, url, **kwargs)
    _check(response)
    return response.json()


def _check(response: httpx.Response) -> None:
    """A 4xx/5xx becomes a Failure carrying the engine's machine-readable reason."""
    if response.is_success:
        return
    response.read()
    try:
        reason = json.dumps(response.json())
    except ValueError:
        reason = response.text
    raise Failure(3, f"{response.request.method} {response.request.url.path}: {response.status_code} {reason}")


if __name__ == "__main__":
    sys.exit(main())
