"""The step queue with agents: lease latency, tiny steps per second through agents beside the local
executor, and how long a step of a killed agent takes to run elsewhere.

    python bench/agents.py [--latency 200] [--steps 200]

- latency: `--pollers` protocol clients in this process long-poll (`wait` 25 s) for a Tool step no
  local executor takes. One run at a time is created; its step is ready when the creation commits.
  The figure is from just before the creation request is sent to a poller receiving the lease (so it
  includes the creation request itself), p50/p99/max.
- throughput: `--steps` runs of one tiny exec step (`cp`), created and their input uploaded by
  `--senders` clients at once over keep-alive connections, until every one is COMPLETE: on the local
  executor alone (concurrency 4), then with the step's Labels sending it to 1, 2 and 4
  `flowengine agent` processes (concurrency 4 each). Beside each, the pace at which the runs were
  created and uploaded: the driver's own ceiling (a driver sending one run at a time, with a new
  connection per upload, had bounded every figure at about 4 runs/s).
- kill -9: an agent runs a long step and is killed; another agent already polls. The time from the
  kill to the step's next attempt running on the other agent: the lease (here `--lease` seconds; 30 by
  default in production) plus up to one expiry tick.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from run import HOST, server

TOOL_FLOW = {"Flow": {"Steps": [{"ID": "s", "Uses": "t"}], "Tasks": [{"Name": "t", "Tool": "bench"}]}}


def copy_flow(labels: list[str]) -> dict:
    task = {"Name": "copy", "Labels": labels, "Inputs": [{"Name": "in"}], "Outputs": [{"Name": "out"}],
            "Exec": ["cp", "${in}", "${out}"]}  # fmt: skip
    step = {"ID": "copy", "Uses": "copy", "Inputs": [{"Slot": "in", "Edge": "in"}],
            "Outputs": [{"Slot": "out", "Edge": "out"}]}  # fmt: skip
    return {"Flow": {"DataWells": [{"Edge": "in", "Source": "upload"}], "Steps": [step], "Tasks": [task]}}


def admin(data: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "flowengine.cli", *args, "--data-dir", str(data)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency(base: str, key: str, agent_key: str, runs: int, pollers: int) -> list[float]:
    """Seconds from just before a run's creation to a poller holding its step's lease."""
    received: asyncio.Queue[float] = asyncio.Queue()
    agent = httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {agent_key}"}, timeout=60)
    sessions = []
    for i in range(pollers):
        body = {"name": f"poller-{i}", "tools": ["bench"], "capacity": 1}
        sessions.append((await agent.post("/api/v1/agent/register", json=body)).json()["session"])

    async def poll(session: str) -> None:
        while True:
            got = await agent.post("/api/v1/agent/lease", json={"session": session, "wait": 25})
            for lease in got.json()["leases"]:
                received.put_nowait(time.monotonic())
                calls = f"/api/v1/agent/leases/{lease['lease_id']}"
                await agent.post(f"{calls}/ack", json={"token": lease["token"]})
                await agent.post(f"{calls}/complete", json={"token": lease["token"], "outputs": {}})

    tasks = [asyncio.create_task(poll(s)) for s in sessions]
    client = httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    found = []
    await asyncio.sleep(0.5)  # every poller waiting
    for _ in range(runs):
        sent = time.monotonic()
        assert (await client.post("/api/v1/flow/lat", json=TOOL_FLOW)).status_code == 201
        found.append(await received.get() - sent)
        await asyncio.sleep(0.01)
    for task in tasks:
        task.cancel()
    await client.aclose()
    await agent.aclose()
    return found


async def throughput(base: str, key: str, count: int, labels: list[str], senders: int) -> tuple[float, float]:
    """Runs per second of one tiny step, from the first creation to the last COMPLETE; and runs
    created and uploaded per second, the driver's own pace (the ceiling of the first)."""
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as client, \
            httpx.AsyncClient(timeout=60, limits=limits) as uploads:  # fmt: skip
        ids: list[str] = []
        left = count

        async def send() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                run = (await client.post("/api/v1/flow/tp", json=copy_flow(labels))).json()
                await uploads.put(run["WaitingURLs"][0]["PutURL"], content=b"x")
                ids.append(run["ID"])

        began = time.monotonic()
        await asyncio.gather(*(send() for _ in range(senders)))
        sent = time.monotonic() - began
        for run_id in ids:
            while (doc := (await client.get(f"/api/v1/flow/status/{run_id}")).json())["Status"] not in (
                "COMPLETE", "ERROR"
            ):  # fmt: skip
                await asyncio.sleep(0.01)
            assert doc["Status"] == "COMPLETE", doc
        return count / (time.monotonic() - began), count / sent


def start_agent(base: str, agent_key: str, name: str, work: Path, concurrency: int = 4) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flowengine.cli", "agent", "--server", base, "--key", agent_key, "--name", name,
         "--labels", "remote", "--concurrency", str(concurrency), "--work-dir", str(work / name)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def kill9(base: str, key: str, agent_key: str, work: Path) -> float:
    """Seconds from SIGKILL of the agent running a step to that step's next attempt running elsewhere."""
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    marks = work / "marks"
    flow = copy_flow(["remote"])
    flow["Flow"]["Tasks"][0].update(MaxAttempts=2, Exec=["sh", "-c", f'echo x >> {marks}; sleep 20; cp "$0" "$1"',
                                                         "${in}", "${out}"])  # fmt: skip
    doomed = start_agent(base, agent_key, "doomed", work, 1)
    run = client.post("/api/v1/flow/k9", json=flow).json()
    httpx.put(run["WaitingURLs"][0]["PutURL"], content=b"x")
    while not marks.exists():
        time.sleep(0.01)
    rescuer = start_agent(base, agent_key, "rescuer", work, 1)
    time.sleep(2)  # registered and polling
    killed = time.monotonic()
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    while marks.read_text().count("x") < 2:
        time.sleep(0.01)
    elapsed = time.monotonic() - killed
    rescuer.send_signal(signal.SIGKILL)
    rescuer.wait()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=int, default=200, help="runs for the lease latency")
    parser.add_argument("--pollers", type=int, default=4, help="agents long-polling meanwhile")
    parser.add_argument("--steps", type=int, default=200, help="runs per throughput figure")
    parser.add_argument("--senders", type=int, default=8, help="runs created and uploaded at once")
    parser.add_argument("--lease", type=float, default=5.0, help="the engine's lease, seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        (work / "flows").mkdir()
        admin(data, "teams", "create", "bench")
        key = admin(data, "keys", "create", "--team", "bench", "--kind", "integration")
        agent_key = admin(data, "keys", "create", "--team", "bench", "--kind", "agent")
        argv = [sys.executable, "-m", "flowengine.cli", "serve", "--host", HOST, "--data-dir", str(data),
                "--flows-dir", str(work / "flows"), "--no-access-log", "--log-level", "warning"]  # fmt: skip
        env = {"FLOWENGINE_AUTH": "keys", "FLOWENGINE_INLINE_COMMANDS": "true", "FLOWENGINE_LEASE": str(args.lease),
               "FLOWENGINE_HEARTBEAT_INTERVAL": "1"}  # fmt: skip
        with server(argv, work, env) as engine:
            base = f"http://{HOST}:{engine.port}"
            found = asyncio.run(latency(base, key, agent_key, args.latency, args.pollers))
            print(f"lease latency ({args.pollers} pollers, {len(found)} runs): p50 {pct(found, 0.5) * 1000:.1f} ms, "
                  f"p99 {pct(found, 0.99) * 1000:.1f} ms, max {max(found) * 1000:.1f} ms, "
                  f"mean {statistics.mean(found) * 1000:.1f} ms")  # fmt: skip

            def figure(name: str, labels: list[str]) -> None:
                done, sent = asyncio.run(throughput(base, key, args.steps, labels, args.senders))
                print(f"{name}: {done:.1f} runs/s (created and uploaded at {sent:.1f}/s)")

            figure("local executor", [])
            agents: list[subprocess.Popen] = []
            for n in (1, 2, 4):
                while len(agents) < n:
                    agents.append(start_agent(base, agent_key, f"a{len(agents)}", work))
                time.sleep(2)
                figure(f"{n} agent(s)", ["remote"])
            for proc in agents:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
            print(
                f"kill -9 to the step running elsewhere: {kill9(base, key, agent_key, work):.1f} s "
                f"(lease {args.lease:g} s)"
            )


if __name__ == "__main__":
    main()
