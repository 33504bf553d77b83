"""Real agent processes (`flowengine agent`) against a real server: work spread across them, an agent
killed with SIGKILL mid-step (the step is re-leased and completes once), one stopped with SIGSTOP past
its lease and resumed (refused: it gives the step up, the winner's output stays), SIGTERM (a step it
cannot finish in its grace is given back, not counted), Python steps, cancel reaching an agent's step,
the engine killed while agents hold leases; routing through the task API as a client runs a workflow
(labels, team and community pools, region preference), and a step no connected agent can take."""

from __future__ import annotations

import re
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

# Where the routing query and the leases kept over a restart are the database's own code: on each backend.
ON_BOTH = pytest.mark.backends("sqlite", "postgres")

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

    def task(self, slug: str, **fields: str) -> str:
        """A task of the operator's workflow `slug` (flows/<slug>.yaml), started through the task API as a
        client starts one, with `fields` (target_pool, submitter_region); its id is its run's."""
        deadline = time.monotonic() + 20
        while (answer := self.client.post(f"/api/v1/r/workflows/slug/{slug}/run", json=fields)).status_code == 404:
            assert time.monotonic() < deadline, answer.text  # the engine reads flow files every 2 seconds
            time.sleep(0.1)
        assert answer.status_code == 202, answer.text
        return answer.json()["task_id"]

    def ran_on(self, run_id: str) -> str:
        """The agent that ran a `where` step: the step wrote its working dir, the agent's --work-dir's."""
        return Path(self.output(run_id).decode().strip()).parent.name.removeprefix("work-")

    def started(self, run_id: str) -> bool:
        return self.client.get(f"/api/v1/flow/status/{run_id}").json()["Steps"][0]["Status"] != "READY"


def where(flows_dir: Path, slug: str, labels: list[str]) -> None:
    """An operator's workflow whose one Exec step writes where it ran: only agents with `labels` take it
    (a workflow's RequiredLabels are its Tool tasks': an Exec task says its own)."""
    (flows_dir / f"{slug}.yaml").write_text(
        f"Name: {slug}\nWorkflow: {{}}\n"
        f"Tasks: [{{Name: where, Labels: {labels}, Outputs: [{{Name: out}}], "
        "Exec: [sh, -c, 'sleep 0.3; pwd > \"$0\"', '${out}']}]\n"
        "Steps: [{ID: where, Uses: where, Outputs: [{Slot: out, Edge: out}]}]\n"
    )


@pytest.fixture
def engine(start_server) -> Engine:
    return Engine(start_server(**SETTINGS))


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """agents(engine, name, *flags, key=, labels=): a `flowengine agent` process against `engine` (with
    its team's agent key unless `key` is given), stopped at the end."""
    started: list[subprocess.Popen] = []

    def start(engine: Engine, name: str, *flags: str, key: str = "", labels: str = "remote") -> subprocess.Popen:
        log = open(tmp_path / f"agent-{name}.log", "ab")  # noqa: SIM115 (the process writes it until it ends)
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowengine.cli", "agent", "--server", engine.server.url, "--key",
             key or engine.agent_key, "--name", name, "--labels", labels, "--work-dir", str(tmp_path / f"work-{name}"),
             *flags],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop(proc, signal.SIGKILL)  # a stopped (SIGSTOP) one too


def until(condition: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_work_spreads_across_agents_and_runs_through_presigned_urls(engine: Engine, agents):
    agents(engine, "one")
    agents(engine, "two")
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
    agents(engine, "py")
    run_id = engine.run({"Flow": {"DataWells": [{"Edge": "in", "Source": "upload"}], "Steps": [step],
                                  "Tasks": [task]}}, b"quiet")  # fmt: skip
    assert engine.output(run_id) == b"QUIET!"


def test_an_agent_killed_mid_step_loses_its_lease_and_the_step_completes_once_elsewhere(
    engine: Engine, agents, tmp_path: Path
):
    marks = tmp_path / "marks"
    script = f'echo "$FLOWENGINE_ATTEMPT" >> {marks}; sleep 3; cp "$1" "$2"'
    doomed = agents(engine, "doomed")
    run_id = engine.run(remote_flow(script), b"kept")
    until(lambda: marks.exists())  # the step runs on the only agent there is
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    agents(engine, "rescuer")
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
    leaving = agents(engine, "leaving", "--grace", "0.5")
    run_id = engine.run(remote_flow(script, attempts=1), b"handed over")
    until(lambda: marks.exists())
    leaving.send_signal(signal.SIGTERM)
    assert leaving.wait(20) == 0
    agents(engine, "staying")
    assert engine.output(run_id) == b"handed over"  # MaxAttempts 1: the release was not an attempt
    assert marks.read_text() == "1\n1\n"
    assert engine.client.get(f"/api/v1/flow/status/{run_id}").json()["Steps"][0]["Attempts"] == 1


def test_cancel_reaches_a_step_running_on_an_agent(engine: Engine, agents, tmp_path: Path):
    marks = tmp_path / "marks"
    script = f'echo started >> {marks}; sleep 3; echo finished >> {marks}; cp "$1" "$2"'
    agents(engine, "busy")
    run_id = engine.run(remote_flow(script), b"x")
    until(lambda: marks.exists())
    assert engine.client.post(f"/api/v1/flow/{run_id}/cancel").json()["Status"] == "STOPPED"
    time.sleep(4)
    assert marks.read_text() == "started\n"  # killed at the next heartbeat, before it went on
    assert engine.agents()["busy"]["running_count"] == 0


@ON_BOTH
def test_an_engine_killed_while_agents_hold_leases_loses_nothing_and_runs_each_step_once(
    start_server, agents, tmp_path: Path
):
    settings = {**SETTINGS, "lease": 5}  # the restart under load must fit in two leases
    first = start_server(data_dir=tmp_path / "kept", **settings)
    engine = Engine(first)
    marks = tmp_path / "marks"
    script = f'echo "$FLOWENGINE_RUN_ID $FLOWENGINE_ATTEMPT" >> {marks}; sleep 4; cp "$1" "$2"'
    agents(engine, "left")
    agents(engine, "right")
    until(lambda: len(engine.agents()) == 2)
    runs = [engine.run(remote_flow(script, attempts=1), f"survives {i}".encode()) for i in range(3)]
    until(lambda: marks.exists() and len(marks.read_text().splitlines()) == 2)  # two held, one queued
    first.kill9()  # while both agents run a step
    engine.server = start_server(data_dir=tmp_path / "kept", port=first.port, **settings)
    assert [engine.output(r) for r in runs] == [f"survives {i}".encode() for i in range(3)]
    # Each ran once, as attempt 1: the leases outlived the engine's absence, and the agents reported
    # (and leased the queued step) to the new process.
    assert sorted(marks.read_text().splitlines()) == sorted(f"{r} 1" for r in runs)
    for run_id in runs:
        assert engine.client.get(f"/api/v1/flow/status/{run_id}").json()["Steps"][0]["Attempts"] == 1
    completed = {name: a["tasks_completed"] for name, a in engine.agents().items()}
    assert sum(completed.values()) == 3 and min(completed.values()) >= 1, completed  # both reconnected


def test_an_agent_stopped_past_its_lease_then_resumed_is_refused_and_leaves_the_winners_output_alone(
    start_server, agents, tmp_path: Path
):
    engine = Engine(start_server(access_log=True, **SETTINGS))  # the access log: what the late agent sent
    marks = tmp_path / "marks"
    script = f'echo "$FLOWENGINE_ATTEMPT" >> {marks}; sleep 1; echo "written by attempt $FLOWENGINE_ATTEMPT" > "$2"'
    frozen = agents(engine, "frozen")
    run_id = engine.run(remote_flow(script), b"x")
    until(lambda: marks.exists())
    frozen.send_signal(signal.SIGSTOP)  # its step's process, in a session of its own, runs on and ends
    try:
        agents(engine, "rescuer")  # takes attempt 2 once attempt 1's lease (2 s) ran out, unheard from
        assert engine.output(run_id) == b"written by attempt 2\n"
    finally:
        resumed_at = engine.server.log.stat().st_size
        frozen.send_signal(signal.SIGCONT)
    # Resumed, it finds its step ended. Its heartbeat says the lease is lost, or its late upload and
    # report are refused, whichever it sends first: either way, it gives the step up.
    agent_log = tmp_path / "agent-frozen.log"
    until(lambda: "no longer ours" in agent_log.read_text() or ": lost" in agent_log.read_text())
    until(lambda: engine.agents().get("frozen", {}).get("running_count") == 0)  # it heartbeats again
    [lease_id] = re.findall(r"/leases/([0-9a-f-]+)/ack", agent_log.read_text())
    late = [line for line in engine.server.log.read_text()[resumed_at:].splitlines()
            if f"/leases/{lease_id}/" in line or f"PUT /store/default/outputs/job/{run_id}/out?" in line]  # fmt: skip
    assert all(line.endswith("status=409") for line in late), late  # whatever it sent late was refused
    done = engine.client.get(f"/api/v1/flow/status/{run_id}").json()
    [out] = [a for a in done["Artifacts"] if a["EdgeName"] == "out"]
    assert httpx.get(out["GetURL"]).content == b"written by attempt 2\n"  # not the late worker's bytes
    assert (done["Status"], done["Steps"][0]["Attempts"]) == ("COMPLETE", 2)
    assert marks.read_text() == "1\n2\n"
    completed = {name: a["tasks_completed"] for name, a in engine.agents().items()}
    assert completed == {"frozen": 0, "rescuer": 1}  # exactly one completion
    assert frozen.poll() is None  # it carries on, leasing again


@ON_BOTH
def test_a_step_goes_only_to_an_agent_with_every_label_its_task_requires(start_server, flows_dir: Path, agents):
    where(flows_dir, "on-gpu", ["gpu"])
    engine = Engine(start_server(**SETTINGS))
    agents(engine, "plain")  # labels: remote
    first = engine.task("on-gpu")
    time.sleep(2)  # two long polls of an idle agent: it lacks the label
    assert not engine.started(first)
    agents(engine, "gpu-box", labels="gpu,a100")
    assert engine.ran_on(first) == "gpu-box"
    assert [engine.ran_on(engine.task("on-gpu")) for _ in range(2)] == ["gpu-box"] * 2  # plain idles meanwhile
    assert engine.agents()["plain"]["tasks_completed"] == 0


@ON_BOTH
def test_the_team_pool_keeps_a_step_in_its_team_and_the_community_pool_reaches_only_opted_in_agents(
    start_server, flows_dir: Path, agents
):
    where(flows_dir, "where", ["remote"])
    engine = Engine(start_server(**SETTINGS))
    elsewhere = make_key(engine.server, "elsewhere", "agent")
    agents(engine, "private", key=elsewhere)  # another team's, not serving the community pool
    own_team = engine.task("where", target_pool="team")
    shared = engine.task("where", target_pool="community")
    time.sleep(2)
    assert not engine.started(own_team) and not engine.started(shared)
    agents(engine, "volunteer", "--community", key=elsewhere)
    assert engine.ran_on(shared) == "volunteer"
    assert not engine.started(own_team)  # the team pool: never another team's agent, opted in or not
    agents(engine, "ours")
    assert engine.ran_on(own_team) == "ours"
    assert engine.agents().keys() == {"ours"}  # a team lists its own agents only


@ON_BOTH
def test_an_agent_in_the_submitters_region_is_preferred_and_after_region_wait_any_region_may_take_it(
    start_server, flows_dir: Path, agents
):
    where(flows_dir, "where", ["remote"])
    engine = Engine(start_server(**SETTINGS, region_wait=8))
    agents(engine, "paris", "--region", "eu")
    agents(engine, "ohio", "--region", "us", "--concurrency", "2")
    until(lambda: len(engine.agents()) == 2)
    european = [engine.task("where", submitter_region="EU ") for _ in range(2)]  # trimmed, lower-cased
    # paris takes one, then the other once it is free: ohio, idle with two slots, waits for region_wait.
    assert [engine.ran_on(t) for t in european] == ["paris", "paris"]
    asian = engine.task("where", submitter_region="ap")  # no agent of its region
    time.sleep(3)
    assert not engine.started(asian)  # a preference: for region_wait, only an agent of its region...
    assert engine.ran_on(asian) in ("paris", "ohio")  # ...not a wall: then any region's


def test_a_step_no_connected_agent_can_take_waits_then_fails_naming_what_each_lacks(
    start_server, flows_dir: Path, agents
):
    where(flows_dir, "on-tpu", ["tpu"])
    (flows_dir / "splat.yaml").write_text(
        "Name: splat\nWorkflow: {RequiredLabels: [gpu]}\n"
        "Tasks: [{Name: splat, Tool: nerfstudio, Outputs: [{Name: scene}]}]\n"
        "Steps: [{ID: splat, Uses: splat, Outputs: [{Slot: scene, Edge: scene}]}]\n"
    )
    engine = Engine(start_server(**{**SETTINGS, "schedule_to_start": 4}))
    agents(engine, "gpu-box", labels="gpu")  # tools exec and python
    until(lambda: engine.agents())
    tasks = {"on-tpu": engine.task("on-tpu"), "splat": engine.task("splat")}
    time.sleep(2)
    for task_id in tasks.values():
        task = engine.client.get(f"/api/v1/r/tasks/{task_id}").json()
        assert task["task_status"] not in ("running", "failed") and task["started_at"] is None, task  # it waits

    def failed(task_id: str) -> dict | None:
        task = engine.client.get(f"/api/v1/r/tasks/{task_id}").json()
        return task if task["task_status"] == "failed" else None

    lacking_label = until(lambda: failed(tasks["on-tpu"]))
    assert lacking_label["task_error"].endswith(
        "no agent took the step within 4s: it needs tool 'exec', labels tpu, in its team (gpu-box lacks label(s) tpu)"
    )
    lacking_tool = until(lambda: failed(tasks["splat"]))
    assert lacking_tool["task_error"].endswith(
        "no agent took the step within 4s: it needs tool 'nerfstudio', labels gpu, in its team "
        "(gpu-box lacks tool 'nerfstudio')"
    )
    assert engine.agents()["gpu-box"]["tasks_completed"] == 0
