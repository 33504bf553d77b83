"""Tasks submitted per second through the workflow/task API, beside runs created per second through the
flow API on the same server: what the facade costs.

    python bench/tasks.py                  # ~40 s on 2 cores
    python bench/tasks.py --json out.json  # also writes every round as JSON

One engine (`flowengine serve`, a temp data dir, a free loopback port) with one flow file, `bench-task`,
published as a workflow: a `string` parameter (`label`) and a `number` one (`seconds`), both flags of its
one step, and no file parameter, so a task's run starts at once. The step sleeps `seconds` (600 by
default): the engine's `concurrency` slots (4) fill with the first runs and every later one waits for a
slot, so no step process competes with the HTTP work for the cores, under either API.

- facade: `POST /api/v1/r/workflows/slug/bench-task/run` with `{"parameters": {"label": ..., "seconds":
  600}}` and an `sk-` key: authentication, the workflow looked up, the parameters validated and bound,
  the task recorded with its run. 202s counted.
- ceiling: `POST /api/v1/flow/bench-task` (no body: the flow file, its flags' defaults) with the same key,
  on the same server: the run alone. 201s counted.

The same load generator as run.py (bench/load.py, its own process), the same connections, rounds
alternating so drift on the machine hits both alike; medians of the rounds. Beside the rates, the
server's CPU time per request (from /proc), which moves less than rates when other work shares the
machine. The ratio is facade / flow API.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from load import JSON, Client, encode_request
from run import HOST, Load, Server, cpu_note, engine, median

SLUG = "bench-task"
FLOW = """\
# A workflow of the task benchmarks: no file, so a task starts at once; its step holds a slot `seconds`.
Name: bench-task
Workflow:
  Parameters:
    - {Key: label, Type: string, Default: bench, Step: hold, Flag: label}
    - {Key: seconds, Type: number, Min: 0, Max: 86400, Default: 600, Step: hold, Flag: seconds}
Tasks:
  - Name: hold
    Flags: [{Name: label, Type: string, Default: bench}, {Name: seconds, Type: integer, Default: 600}]
    Exec: [sh, -c, 'exec sleep "$0"', "${seconds}", "${label}"]
Steps:
  - {ID: hold, Uses: hold}
"""


def cli(data_dir: Path, *args: str) -> str:
    """An operator's command on a running engine's data dir (as tests/live.py's `admin`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWENGINE_")}
    done = subprocess.run([sys.executable, "-m", "flowengine.cli", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, check=True, env=env)  # fmt: skip
    return done.stdout.strip()


@contextlib.contextmanager
def task_engine(workdir: Path, settings: dict[str, str] | None = None) -> Iterator[tuple[Server, str]]:
    """An engine serving the `bench-task` workflow, and an `sk-` key of a team `bench` on it."""
    (workdir / "flows").mkdir(exist_ok=True)
    (workdir / "flows" / f"{SLUG}.yaml").write_text(FLOW)
    with engine(workdir, "tasks", settings=settings) as srv:
        cli(workdir / "tasks", "teams", "create", "bench")
        key = cli(workdir / "tasks", "keys", "create", "--team", "bench", "--kind", "integration")
        client = Client(HOST, srv.port)
        try:  # the engine looks at its flow files every 2 s
            deadline = time.monotonic() + 20
            while client.request("GET", f"/api/v1/r/workflows/slug/{SLUG}", headers=bearer(key))[0] != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"workflow {SLUG} not published after 20 s")
                time.sleep(0.1)
        finally:
            client.close()
        yield srv, key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit_vs_create(load: Load, srv: Server, key: str, args: argparse.Namespace) -> dict:
    host = f"{HOST}:{srv.port}"
    body = json.dumps({"parameters": {"label": "bench", "seconds": 600}}).encode()
    requests = {
        "facade": encode_request("POST", f"/api/v1/r/workflows/slug/{SLUG}/run", host, body, {**JSON, **bearer(key)}),
        "flow": encode_request("POST", f"/api/v1/flow/{SLUG}", host, b"", bearer(key)),
    }
    for request in requests.values():
        load.rate(srv, request, args.conns, args.warmup)
    rounds: dict[str, list[dict]] = {"facade": [], "flow": []}
    for i in range(args.rounds):  # alternate, so drift on the machine hits both alike
        for name, request in requests.items():
            rounds[name].append(load.rate(srv, request, args.conns, args.duration))
        f, c = rounds["facade"][-1], rounds["flow"][-1]
        print(f"  round {i + 1}: facade {f['rate']:,.0f} tasks/s {cpu_note(f)},")
        print(f"           flow API {c['rate']:,.0f} runs/s {cpu_note(c)}")
    rates = {name: median([r["rate"] for r in rs]) for name, rs in rounds.items()}
    cpu_us = {name: median([r["server_cpu"] / r["rate"] * 1e6 for r in rs]) for name, rs in rounds.items()}
    return {"tasks_per_s": rates["facade"], "runs_per_s": rates["flow"], "ratio": rates["facade"] / rates["flow"],
            "cpu_us": cpu_us, "conns": args.conns, "rounds": rounds}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per round (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each API; medians shown")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load on each API before the rounds")
    parser.add_argument("--conns", type=int, default=32, help="keep-alive connections, each one request in flight")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    started, load_before = time.monotonic(), os.getloadavg()[0]
    ctx = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="flowengine-tasks-"))
        pool = stack.enter_context(ProcessPoolExecutor(1, mp_context=ctx))
        srv, key = stack.enter_context(task_engine(Path(tmp)))
        print(f"tasks submitted/s (facade) vs runs created/s (flow API), {args.conns} conns")
        result = submit_vs_create(Load(pool), srv, key, args)
    result["loadavg"] = {"before": load_before, "after": os.getloadavg()[0]}
    print()
    print(f"flowengine task bench: {os.cpu_count()} cores, {args.rounds} rounds x {args.duration:g}s, "
          f"{time.monotonic() - started:.0f}s in all; load average (1 min) before {load_before:.2f}, "
          f"after {result['loadavg']['after']:.2f}: other work on the machine skews every figure")  # fmt: skip
    print(f"  tasks submitted /s (facade, sk- key)   {result['tasks_per_s']:8,.0f}   "
          f"{result['cpu_us']['facade']:5.0f} us server CPU each")  # fmt: skip
    print(f"  runs created /s (flow API, same key)   {result['runs_per_s']:8,.0f}   "
          f"{result['cpu_us']['flow']:5.0f} us server CPU each")  # fmt: skip
    print(f"  facade / flow API                      {result['ratio']:8.2f}   "
          f"{result['cpu_us']['facade'] / result['cpu_us']['flow']:5.2f}x the CPU per request")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
