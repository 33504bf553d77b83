"""Webhook delivery: latency from a task's (or a flow-API run's) end to the receiver, and deliveries
per second.

    python bench/webhooks.py                  # 200 tasks and 200 flow runs, ~45 s on 2 cores
    python bench/webhooks.py --tasks 1000

An engine (auth: keys, webhook_allow_private so it may POST to loopback) runs a one-step operator
workflow; a team's webhook points at a receiver in this process (a threaded HTTP server on loopback)
that stamps each request's arrival. Tasks are submitted from 8 threads at once. Figures:

- latency: the receiver's arrival time minus the task's `completed_at` (the commit that ended it,
  microseconds, from `GET /api/v1/r/tasks/{id}`; one clock, one machine): p50, p99, max;
- deliveries/s: deliveries received over the span from the first to the last, beside tasks ended/s
  over the same burst (the deliveries cannot outrun the tasks they report);
- every task delivered exactly once (webhook-id and task_id checked).

Then as many flow-API runs of the same flow, each naming the receiver as its `Webhook`: the same
figures, the latency from the run document's `Updated` (milliseconds) to the arrival. These
deliveries render the run document (fresh download URLs) at each attempt.
"""

from __future__ import annotations

import argparse
import http.server
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
from run import HOST, server

FLOW = """
Name: hello
DataWells:
  - {Edge: out}
Steps:
  - {ID: make, Uses: make, Outputs: [{Slot: out, Edge: out}]}
Tasks:
  - Name: make
    Exec: [sh, -c, 'echo made > "$0"', "${out}"]
    Outputs: [{Name: out}]
Workflow:
  Slug: hello
"""


def receiver(arrivals: dict[str, tuple[float, str, int]]) -> http.server.ThreadingHTTPServer:
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            at = time.time()
            doc = json.loads(body)
            task = doc.get("task_id") or doc["ID"]  # a task's delivery, or a flow-API run's document
            with lock:
                seen = arrivals.get(task)
                arrivals[task] = (seen[0] if seen else at, self.headers["webhook-id"], (seen[2] if seen else 0) + 1)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def cli(data: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "flowengine.cli", *args, "--data-dir", str(data)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    arrivals: dict[str, tuple[float, str, int]] = {}
    hook_server = receiver(arrivals)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "flows").mkdir()
        (work / "flows" / "hello.yaml").write_text(FLOW)
        env = {"FLOWENGINE_AUTH": "keys", "FLOWENGINE_WEBHOOK_ALLOW_PRIVATE": "true",
               "FLOWENGINE_FLOWS_DIR": str(work / "flows")}  # fmt: skip
        argv = [sys.executable, "-m", "flowengine.cli", "serve", "--host", HOST, "--data-dir", str(work / "data"),
                "--no-access-log", "--log-level", "warning"]  # fmt: skip
        with server(argv, work, env) as srv:
            cli(work / "data", "teams", "create", "bench")
            key = cli(work / "data", "keys", "create", "--team", "bench", "--kind", "integration")
            headers = {"Authorization": f"Bearer {key}"}
            url = f"http://127.0.0.1:{hook_server.server_address[1]}/hook"
            with httpx.Client(base_url=f"http://127.0.0.1:{srv.port}", headers=headers, timeout=30) as client:
                doc = {"display_name": "bench", "webhook_url": url, "webhook_events": ["task.completed"]}
                client.post("/api/v1/webhooks", json=doc).raise_for_status()

                def submit(_: int) -> str:
                    answer = client.post("/api/v1/r/workflows/slug/hello/run", json={})
                    answer.raise_for_status()
                    return answer.json()["task_id"]

                with ThreadPoolExecutor(8) as pool:
                    tasks = list(pool.map(submit, range(args.tasks)))
                _wait(arrivals, tasks)
                ended = {t: _epoch(client.get(f"/api/v1/r/tasks/{t}").json()["completed_at"]) for t in tasks}
                report("task", tasks, arrivals, ended)

                def start_run(_: int) -> str:
                    answer = client.post("/api/v1/flow/hello", json={"Webhook": url})
                    answer.raise_for_status()
                    return answer.json()["ID"]

                with ThreadPoolExecutor(8) as pool:
                    runs = list(pool.map(start_run, range(args.tasks)))
                _wait(arrivals, [*tasks, *runs])
                ended = {r: _epoch(client.get(f"/api/v1/flow/status/{r}").json()["Updated"]) for r in runs}
                report("flow run", runs, arrivals, ended)
    hook_server.shutdown()


def _wait(arrivals: dict[str, tuple[float, str, int]], expected: list[str]) -> None:
    deadline = time.monotonic() + 120
    while len(arrivals) < len(expected) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a repeat would come now


def report(what: str, ids: list[str], everything: dict[str, tuple[float, str, int]], ended: dict[str, float]) -> None:
    arrivals = {i: everything[i] for i in ids if i in everything}
    latencies = [(arrivals[i][0] - ended[i]) * 1000 for i in arrivals]
    first, last = min(a[0] for a in arrivals.values()), max(a[0] for a in arrivals.values())
    span = max(ended.values()) - min(ended.values())
    print(f"{what}s {len(ids)}, delivered {len(arrivals)}, repeats {sum(a[2] - 1 for a in arrivals.values())}, "
          f"distinct webhook-ids {len({a[1] for a in arrivals.values()})}")  # fmt: skip
    print(f"latency {what} end -> receiver: p50 {percentile(latencies, 0.5):.1f} ms, "
          f"p99 {percentile(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms")  # fmt: skip
    rate, ended_rate = len(arrivals) / max(last - first, 1e-9), len(ids) / max(span, 1e-9)
    print(f"deliveries/s {rate:.0f} ({what}s ended/s over the same burst {ended_rate:.0f})")


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    main()
