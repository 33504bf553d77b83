"""Real agent processes (`flowengine agent`) against a real server: work spread across them, an agent
killed with SIGKILL mid-step (the step is re-leased and completes once), SIGTERM (a step it cannot
finish in its grace is given back, not counted), Python steps, and cancel reaching an agent's step."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from live import Server, make_key, stop, wait_for_status

import flowengine

SETTINGS = {"auth": "keys", "lease": 2, "heartbeat_interval": 0.5, "offer_timeout": 2, "schedule_to_start": 60}


def remote_flow(script: str, labels: tuple[str, ...] = ("remote",), attempts: int = 2) -> dict:
    """One Exec step, with labels the local executor lacks: only agents run it."""
    task = {"Name": "work", "Labels": list(labels), "MaxAttempts": attempts, "Backoff": 0.1,
            "Inputs": [{"Name": "in"}], "Outputs": [{"Name": "out"}],
            "Exec": ["sh", "-c", script, "sh", "${in}", "${out}"]}  # fmt: skip
    step = {"ID": "work", "Uses": "work", "Inputs": [{"Slot": "in", "Edge": "in"}],
            "Outputs": [{"Slot": "out", "Edge": "out"}]}  # fmt: skip
    return {"Flow": {"DataWells": [{"Edge": "in", "Source": "upload"}], "Steps": [step], "Tasks": [task]}}


class Engine:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.client = httpx.Client(base_url=server.url, timeout=30,
                                   headers={"Authorization": f"Bearer {make_key(server, 'lab')}"})  # fmt: skip
        self.agent_key = make_key(server, "lab", "agent")

    def run(self, body: dict, data: bytes = b"payload") -> str:
        created = self.client.post("/api/v1/flow/job", json=body)
        assert created.status_code == 201, created.text
        run = created.json()
        assert httpx.put(run["WaitingURLs"][0]["PutURL"], content=data).status_code in (200, 201)
        return run["ID"]

    def output(self, run_id: str) -> bytes:
        done = wait_for_status(self.client, run_id, {"COMPLETE", "ERROR"}, timeout=60)
        assert done["Status"] == "COMPLETE", done
        [out] = [a for a in done["Artifacts"] if a["EdgeName"] == "out"]
        return httpx.get(out["GetURL"]).content

    def agents(self) -> dict[str, dict]:
        return {a["agent_id"]: a for a in self.client.get("/api/v1/agents").json()["agent_list"]}


@pytest.fixture
def engine(start_server) -> Engine:
    return Engine(start_server(**SETTINGS))


@pytest.fixture
def agents(engine: Engine, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """agents(name, *flags): a `flowengine agent` process against the engine, stopped at the end."""
    started: list[subprocess.Popen] = []

    def start(name: str, *flags: str) -> subprocess.Popen:
        log = open(tmp_path / f"agent-{name}.log", "ab")  # noqa: SIM115 (the process writes it until it ends)
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowengine.cli", "agent", "--server", engine.server.url, "--key",
             engine.agent_key, "--name", name, "--labels", "remote", "--work-dir", str(tmp_path / f"work-{name}"),
             *flags],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop(proc, signal.SIGKILL)


def until(condition: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_work_spreads_across_agents_and_runs_through_presigned_urls(engine: Engine, agents):
    agents("one")
    agents("two")
    until(lambda: len(engine.agents()) == 2)
    runs = [engine.run(remote_flow('sleep 0.5; tr a-z A-Z < "$1" > "$2"'), f"job {i}".encode()) for i in range(6)]
    assert [engine.output(r) for r in runs] == [f"JOB {i}".encode() for i in range(6)]
    completed = {name: a["tasks_completed"] for name, a in engine.agents().items()}
    assert sum(completed.values()) == 6 and min(completed.values()) >= 1, completed  # both took some
    one = engine.agents()["one"]  # what the agent says of itself, in the reference's fields
    assert one["agent_version"] == flowengine.version() and one["platform_arch"].startswith(f"{sys.platform}/")
    assert one["system_stats"]["os_type"] == sys.platform and one["tool"] == ["exec", "python"]


def test_a_python_step_runs_on_an_agent_as_on_the_engine(engine: Engine, agents, tmp_path: Path):
    (tmp_path / "shout.py").write_text(
        "def run(inputs, flags, workdir):\n"
        "    out = workdir + '/loud.txt'\n"
        "    open(out, 'w').write(open(inputs['in']).read().upper() + flags['mark'])\n"
        "    return {'out': out}\n"
    )
    task = {"Name": "shout", "Labels": ["remote"], "Python": "shout:run", "Inputs": [{"Name": "in"}],
            "Outputs": [{"Name": "out"}], "Flags": [{"Name": "mark", "Default": "!"}],
            "Env": {"PYTHONPATH": str(tmp_path)}}  # fmt: skip
    step = {"ID": "work", "Uses": "shout", "Inputs": [{"Slot": "in", "Edge": "in"}],
            "Outputs": [{"Slot": "out", "Edge": "out"}]}  # fmt: skip
    agents("py")
    run_id = engine.run({"Flow": {"DataWells": [{"Edge": "in", "Source": "upload"}], "Steps": [step],
                                  "Tasks": [task]}}, b"quiet")  # fmt: skip
    assert engine.output(run_id) == b"QUIET!"


def test_an_agent_killed_mid_step_loses_its_lease_and_the_step_completes_once_elsewhere(
    engine: Engine, agents, tmp_path: Path
):
    marks = tmp_path / "marks"
    script = f'echo "$FLOWENGINE_ATTEMPT" >> {marks}; sleep 3; cp "$1" "$2"'
    doomed = agents("doomed")
    run_id = engine.run(remote_flow(script), b"kept")
    until(lambda: marks.exists())  # the step runs on the only agent there is
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    agents("rescuer")
    assert engine.output(run_id) == b"kept"
    assert marks.read_text() == "1\n2\n"  # attempt 1 died with its agent; attempt 2 ran once
    done = engine.client.get(f"/api/v1/flow/status/{run_id}").json()
    assert done["Steps"][0]["Attempts"] == 2
    assert engine.agents()["rescuer"]["tasks_completed"] == 1


def test_sigterm_gives_back_a_step_it_cannot_finish_in_its_grace_without_counting_it(
    engine: Engine, agents, tmp_path: Path
):
    marks = tmp_path / "marks"
    script = f'echo "$FLOWENGINE_ATTEMPT" >> {marks}; sleep 4; cp "$1" "$2"'
    leaving = agents("leaving", "--grace", "0.5")
    run_id = engine.run(remote_flow(script, attempts=1), b"handed over")
    until(lambda: marks.exists())
    leaving.send_signal(signal.SIGTERM)
    assert leaving.wait(20) == 0
    agents("staying")
    assert engine.output(run_id) == b"handed over"  # MaxAttempts 1: the release was not an attempt
    assert marks.read_text() == "1\n1\n"
    assert engine.client.get(f"/api/v1/flow/status/{run_id}").json()["Steps"][0]["Attempts"] == 1


def test_cancel_reaches_a_step_running_on_an_agent(engine: Engine, agents, tmp_path: Path):
    marks = tmp_path / "marks"
    script = f'echo started >> {marks}; sleep 3; echo finished >> {marks}; cp "$1" "$2"'
    agents("busy")
    run_id = engine.run(remote_flow(script), b"x")
    until(lambda: marks.exists())
    assert engine.client.post(f"/api/v1/flow/{run_id}/cancel").json()["Status"] == "STOPPED"
    time.sleep(4)
    assert marks.read_text() == "started\n"  # killed at the next heartbeat, before it went on
    assert engine.agents()["busy"]["running_count"] == 0


def test_an_engine_restarted_while_an_agent_holds_a_lease_loses_nothing(start_server, agents, tmp_path: Path):
    # The fixture's engine is not used: this one is restarted on its own data dir and port.
    settings = {**SETTINGS, "lease": 5}  # the restart under load must fit in two leases
    first = start_server(data_dir=tmp_path / "kept", **settings)
    engine = Engine(first)
    marks = tmp_path / "marks"
    script = f'echo "$FLOWENGINE_ATTEMPT" >> {marks}; sleep 5; cp "$1" "$2"'
    # The agents fixture talks to the fixture's engine: start this agent by hand, against `first`.
    log = open(tmp_path / "agent-steady.log", "ab")  # noqa: SIM115 (the process writes it until it ends)
    agent = subprocess.Popen(
        [sys.executable, "-m", "flowengine.cli", "agent", "--server", first.url, "--key", engine.agent_key, "--name",
         "steady", "--labels", "remote", "--work-dir", str(tmp_path / "work-steady")],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        run_id = engine.run(remote_flow(script, attempts=1), b"survives")
        until(lambda: marks.exists())
        first.kill9()  # while the agent runs the step
        second = start_server(data_dir=tmp_path / "kept", port=first.port, **settings)
        engine.server = second
        assert engine.output(run_id) == b"survives"  # the agent reported to the new process
        assert marks.read_text() == "1\n"  # it ran once: the lease outlived the engine's absence
    finally:
        stop(agent, signal.SIGKILL)
