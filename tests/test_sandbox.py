"""The pieces that isolate steps, one by one: the mount plan, Landlock, the step user's view,
the reaper, the data dir lock and the scratch root, and a runner that fails."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from flowengine.config import Config, load_config
from flowengine.core import machine
from flowengine.core.spec import Flow
from flowengine.persistence.sqlite import SqliteDatabase
from flowengine.runtime import datadir, steps
from flowengine.runtime.engine import Engine
from flowengine.runtime.executors import landlock
from flowengine.runtime.executors.reaper import Reaper
from flowengine.runtime.executors.sandbox import Cover, Reveal, Sandbox, StepUser, mount_plan, python_dirs

P = Path
ROOT = os.geteuid() == 0
ABI = landlock.abi_version()
PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4


# ---------------------------------------------------------------------------------------------
# The mount plan (pure)


def test_hidden_dirs_are_covered_and_reveals_under_no_cover_need_nothing():
    plan = mount_plan([P("/srv/data"), P("/tmp/work")], [P("/usr/lib/python3"), P("/srv/flows")], set())
    assert plan == [Cover(P("/srv/data")), Cover(P("/tmp/work"))]


def test_a_closed_dir_on_the_way_is_covered_and_only_the_needed_path_bound_back():
    plan = mount_plan([P("/srv/data")], [P("/root/.pyenv/versions/3.11"), P("/srv/flows")], {P("/root")})
    assert plan == [Cover(P("/root")), Cover(P("/srv/data")), Reveal(P("/root/.pyenv/versions/3.11"))]


def test_the_scratch_dir_is_bound_back_into_the_covered_scratch_root():
    scratch = P("/tmp/fe/run-1/step.2")
    plan = mount_plan([P("/srv/data"), P("/tmp/fe")], [scratch], set())
    assert plan == [Cover(P("/srv/data")), Cover(P("/tmp/fe")), Reveal(scratch)]


def test_closed_dirs_nested_under_a_cover_need_no_cover_of_their_own():
    # Inside the tmpfs over /root, the way down to the revealed path is made of tmpfs dirs.
    plan = mount_plan([], [P("/root/a/b/c")], {P("/root"), P("/root/a"), P("/root/a/b")})
    assert plan == [Cover(P("/root")), Reveal(P("/root/a/b/c"))]


def test_a_hidden_dir_inside_a_revealed_one_is_covered_after_the_reveal():
    plan = mount_plan([P("/srv/flows/data")], [P("/srv/flows")], {P("/srv")})
    assert plan == [Cover(P("/srv")), Reveal(P("/srv/flows")), Cover(P("/srv/flows/data"))]


def test_a_revealed_dir_inside_a_hidden_one_is_bound_back_into_it():
    plan = mount_plan([P("/srv/data")], [P("/srv/data/flows")], set())
    assert plan == [Cover(P("/srv/data")), Reveal(P("/srv/data/flows"))]


def test_a_hidden_dir_cannot_be_revealed():
    assert mount_plan([P("/srv/data")], [P("/srv/data")], set()) == [Cover(P("/srv/data"))]


def test_a_closed_dir_to_reveal_on_the_way_to_another_is_covered_and_the_other_bound_into_it():
    plan = mount_plan([P("/t/data"), P("/t/work")], [P("/t"), P("/t/work/run/s.1")], {P("/t")})
    assert plan == [Cover(P("/t")), Reveal(P("/t/work/run/s.1"))]


def test_a_closed_dir_inside_a_reveal_is_covered_again_and_the_deeper_path_bound_back():
    plan = mount_plan([], [P("/srv/a"), P("/srv/a/b/c")], {P("/srv"), P("/srv/a/b")})
    assert plan == [Cover(P("/srv")), Reveal(P("/srv/a")), Cover(P("/srv/a/b")), Reveal(P("/srv/a/b/c"))]


def test_a_sandbox_plans_the_shared_mounts_once_and_each_scratch_dir_after_them(tmp_path):
    data, work, flows = tmp_path / "data", tmp_path / "work", tmp_path / "flows"
    for d in (data, work, flows):
        d.mkdir()
    reveal = [*python_dirs(), flows]
    sandbox = Sandbox(data_dir=data, work_root=work, reveal=reveal, user=StepUser("nobody", 65534, 65534),
                      namespaces=True, rules=None)  # fmt: skip
    scratch = work / "run" / "s.1"
    assert set(sandbox._plan) | {Reveal(scratch)} == set(mount_plan([data, work], [*reveal, scratch], sandbox._closed))
    assert Reveal(flows) in sandbox._plan  # beneath pytest's closed temp dir


# ---------------------------------------------------------------------------------------------
# What a step can and cannot do


def run_confined(sandbox: Sandbox, scratch: Path, script: str) -> tuple[int, str]:
    """Start `sh -c script` as a step would be, in `scratch`; its exit status and output."""
    log = scratch.parent / "log"
    with open(log, "wb") as out:
        proc = sandbox.start(["sh", "-c", script], {"PATH": "/usr/bin:/bin"}, scratch, out.fileno()).result()
    code = proc.wait(10)
    return code, log.read_text()


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    data, work, shared = tmp_path / "data", tmp_path / "work", tmp_path / "shared"
    for d in (data, work / "run" / "s.1", shared):
        d.mkdir(parents=True)
    (data / "secret").write_text("hmac key")
    (shared / "tool.txt").write_text("a tool")
    return {"data": data, "work": work, "scratch": work / "run" / "s.1", "shared": shared}


@pytest.mark.skipif(not ABI, reason="this kernel has no Landlock")
def test_landlock_alone_confines_a_step_as_for_an_engine_that_is_not_root(places):
    """No step user, no namespaces: what an engine running as an ordinary user relies on. As root
    here, it also shows Landlock holds where file permissions would let everything through."""
    rules = landlock.Rules(ABI)
    for path in ("/usr", "/bin", "/lib", "/lib64", "/etc", "/proc"):
        rules.allow(P(path), landlock.READ)
    rules.allow(places["shared"], landlock.READ)
    rules.allow(P("/dev"), landlock.DEVICES)
    sandbox = Sandbox(data_dir=places["data"], work_root=places["work"], reveal=[places["shared"]], user=None,
                      namespaces=False, rules=rules)  # fmt: skip
    engine = os.getpid()
    checks = {
        "write scratch": "echo x > mine && cat mine",
        "read shared": f"cat {places['shared']}/tool.txt",
        "devices": "echo x > /dev/null",
        "read data": f"cat {places['data']}/secret",
        "list data": f"ls {places['data']}",
        "write shared": f"echo x > {places['shared']}/new",
        "write tmp": "echo x > /tmp/flowengine-landlock-test",
        "signal engine": f"kill -0 {engine}",
    }
    try:
        results = {name: run_confined(sandbox, places["scratch"], script)[0] for name, script in checks.items()}
    finally:
        rules.close()
    allowed = {"write scratch", "read shared", "devices"}
    if ABI < 6:
        allowed.add("signal engine")  # signal scoping came with ABI 6
    assert {name for name, code in results.items() if code == 0} == allowed
    assert not P("/tmp/flowengine-landlock-test").exists()


@pytest.mark.skipif(not ROOT, reason="the engine is not root here")
def test_as_root_a_step_runs_as_the_step_user_and_sees_an_empty_data_dir(places, tmp_path):
    sandbox = Sandbox.prepare(places["data"], places["work"], places["shared"], "nobody", [])
    os.chown(places["scratch"], 65534, 65534)
    script = (f"id -u; ls -A {places['data']} 2>/dev/null; echo listed; cat {places['data']}/secret; "
              f"{sys.executable} -c 'print(\"python runs\")'; echo $$")  # fmt: skip
    try:
        code, output = run_confined(sandbox, places["scratch"], script)
    finally:
        sandbox.close()
    lines = output.splitlines()
    assert code == 0
    assert lines[0] == str(sandbox.user.uid) and lines[1] == "listed"  # nothing in the data dir to list
    assert "python runs" in lines and "hmac key" not in output
    assert lines[-1] == "1"  # the first process of its own PID namespace
    assert all(not p.is_relative_to(tmp_path) for p in python_dirs())


# ---------------------------------------------------------------------------------------------
# The reaper


def _alive(pid: int) -> bool:
    try:
        return P(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_the_reaper_kills_listed_groups_when_the_pipe_closes_and_comes_back_if_it_dies():
    step = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, start_new_session=True)
    child = int(step.stdout.readline())

    async def scenario() -> None:
        reaper = Reaper()
        reaper.start()
        reaper.add(step.pid)
        first = reaper._proc.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while reaper._proc.pid == first and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # the new reaper has read what it was told
        assert step.poll() is None and _alive(child)  # the reaper's death took no step with it
        reaper.stop()

    asyncio.run(scenario())
    assert step.wait(5) == -signal.SIGKILL
    deadline = time.monotonic() + 2
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child)  # the whole group, not only its first process


# ---------------------------------------------------------------------------------------------
# The data dir lock and the scratch root


def test_one_process_holds_a_data_dir_and_another_is_told_its_pid(tmp_path):
    data = tmp_path / "data"
    lock = datadir.hold(data)
    assert datadir.hold(data) is lock  # the CLI and its engine share it
    assert oct(data.stat().st_mode & 0o777) == "0o700"
    probe = [
        sys.executable,
        "-c",
        "import sys; from pathlib import Path; from flowengine.runtime import datadir\n"
        "try:\n    datadir.hold(Path(sys.argv[1]))\nexcept datadir.DataDirBusy as e:\n    print(e)",
        str(data),
    ]
    assert f"(pid {os.getpid()})" in subprocess.run(probe, capture_output=True, text=True).stdout  # fmt: skip
    lock.release()
    assert f"(pid {os.getpid()})" in subprocess.run(probe, capture_output=True, text=True).stdout  # still held once
    lock.release()
    assert subprocess.run(probe, capture_output=True, text=True).stdout == ""  # free


def test_the_default_scratch_root_is_outside_the_data_dir_and_one_per_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = load_config(environ={}), load_config(environ={}, data_dir=str(tmp_path / "other"))
    assert a.work_path.is_absolute() and not a.work_path.is_relative_to(tmp_path)
    assert a.work_path != b.work_path
    assert a.work_path == load_config(environ={}, data_dir=str(tmp_path / "data")).work_path  # the same dir, spelled so
    assert load_config(environ={"FLOWENGINE_WORK_DIR": "scratch"}).work_path == tmp_path / "scratch"


def test_step_read_paths_come_from_the_environment_like_path(tmp_path):
    config = load_config(environ={"FLOWENGINE_STEP_READ_PATHS": f"/opt/tools{os.pathsep}/srv/models"})
    assert config.step_read_paths == ["/opt/tools", "/srv/models"]


def test_the_scratch_root_is_made_private_and_emptied(tmp_path):
    work = tmp_path / "work"
    (work / "old-run" / "s.1").mkdir(parents=True)
    work.chmod(0o755)
    datadir.prepare_work_root(work, tmp_path / "data")
    assert list(work.iterdir()) == []
    assert oct(work.stat().st_mode & 0o777) == "0o711"


@pytest.mark.parametrize("problem", ["symlink", "group-writable", "inside-data", "holds-data"])
def test_a_scratch_root_that_is_not_safe_is_refused(tmp_path, problem):
    data, work = tmp_path / "data", tmp_path / "work"
    data.mkdir()
    if problem == "symlink":
        work.symlink_to(data)
    elif problem == "group-writable":
        work.mkdir()
        work.chmod(0o775)
    elif problem == "inside-data":
        work = data / "work"
    else:
        work, data = tmp_path, data
    with pytest.raises(ValueError, match="work_dir"):
        datadir.prepare_work_root(work, data)
    assert (tmp_path / "data").is_dir()


# ---------------------------------------------------------------------------------------------
# The engine around a step: a runner that fails, a database that refuses a result, its own memory


FLOW = {"Name": "f", "DataWells": [{"Edge": "out"}], "Steps": [{"ID": "s", "Uses": "t", "Outputs": [
    {"Slot": "o", "Edge": "out"}]}], "Tasks": [{"Name": "t", "Outputs": [{"Name": "o"}], "MaxAttempts": 2,
    "Backoff": 0, "Exec": ["sh", "-c", 'echo ok > "$0"', "${o}"]}]}  # fmt: skip
LIBC = ctypes.CDLL(None, use_errno=True)


@pytest.fixture
def engine_config(tmp_path: Path) -> Iterator[Config]:
    """An engine in this process: it makes the process undumpable, which this puts back afterwards."""
    yield Config(data_dir=str(tmp_path / "data"), flows_dir=str(tmp_path), work_dir=str(tmp_path / "work"))
    LIBC.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)


def run_flow(config: Config) -> machine.Run:
    """Start an engine, run FLOW to its end (5 s at most), stop the engine; the run as it ended."""

    async def scenario() -> machine.Run:
        engine = Engine(config)
        await engine.start()
        try:
            run = await engine.create_run(engine.plan(msgspec.convert(FLOW, Flow)))
            deadline = time.monotonic() + 5
            while (
                run := (await engine.get_run(run.id))[0]
            ).status not in machine.TERMINAL and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return run
        finally:
            await engine.stop()

    return asyncio.run(scenario())


def test_a_steps_end_is_recorded_before_its_scratch_dir_is_removed_and_the_stop_waits(engine_config, monkeypatch):
    completed = threading.Event()
    seen: list[tuple[list[str], bool]] = []
    remove = steps._remove_scratches

    def slow(batch: list[Path]) -> None:
        # The run's COMPLETE must be visible while the removal has not begun; were the removal before
        # the report, the run could not complete before this gives up waiting.
        seen.append(([scratch.name for scratch in batch], completed.wait(5)))
        time.sleep(0.3)  # a slow filesystem: the engine's stop must wait for the removal
        remove(batch)

    async def scenario() -> machine.Run:
        engine = Engine(engine_config)
        await engine.start()
        try:
            run = await engine.create_run(engine.plan(msgspec.convert(FLOW, Flow)))
            deadline = time.monotonic() + 10
            while (run := (await engine.get_run(run.id))[0]).status != machine.COMPLETE:
                assert time.monotonic() < deadline, run
                await asyncio.sleep(0.02)
            completed.set()
            return run
        finally:
            await engine.stop()

    monkeypatch.setattr(steps, "_remove_scratches", slow)
    run = asyncio.run(scenario())
    assert run.steps["s"].status == machine.COMPLETE
    assert seen == [([f"{run.id}.s.1"], True)]
    assert not Path(engine_config.work_dir).exists()  # every scratch dir gone by the stop, and the root with them


def test_the_engine_stops_when_its_loops_are_woken_just_as_the_stop_cancels_them(engine_config):
    # A step's end kicks the local executor just as a stop cancels it: the cancel must not be lost
    # (asyncio.wait_for on Python 3.11 returned the wake-up instead, and the stop waited for good).
    async def scenario() -> None:
        engine = Engine(engine_config)
        await engine.start()
        await asyncio.sleep(0.3)  # every loop idle, waiting to be woken
        engine.local.kick()
        engine._wake.set()
        engine.webhooks.wake.set()
        stopping = asyncio.ensure_future(engine.stop())
        done, _ = await asyncio.wait([stopping], timeout=5)  # not wait_for: a cancelled stop goes on regardless
        assert done, "the stop is still waiting for a loop that was cancelled"
        await stopping

    asyncio.run(scenario())


def test_a_step_whose_runner_raises_is_retried_then_fails_never_left_running(engine_config, monkeypatch, caplog):
    raised = []

    async def broken(job):
        raised.append(job.attempt)
        raise RuntimeError(f"bug {job.attempt}")

    monkeypatch.setattr("flowengine.runtime.local.run_step", broken)
    run = run_flow(engine_config)
    assert raised == [1, 2]  # the first failure was retried, as any failure is
    assert run.status == machine.ERROR
    assert run.error == "step 's' failed after 2 attempt(s): internal error: RuntimeError: bug 2"
    assert "the runner failed" in caplog.text and "RuntimeError: bug 1" in caplog.text


def test_a_result_the_database_refuses_for_a_moment_is_recorded_once_it_takes_it(engine_config, monkeypatch, caplog):
    refused = []
    save = SqliteDatabase.save_run

    async def flaky(self: SqliteDatabase, run: machine.Run, wake_at: float | None) -> None:
        if run.steps["s"].status == machine.COMPLETE and len(refused) < 2:
            refused.append(run)
            raise sqlite3.OperationalError("disk I/O error")  # inside the transaction: it rolls back
        await save(self, run, wake_at)

    monkeypatch.setattr(SqliteDatabase, "save_run", flaky)
    run = run_flow(engine_config)
    assert len(refused) == 2
    assert run.status == machine.COMPLETE and run.steps["s"].attempts == 1  # the same result, not a new attempt
    assert caplog.text.count("recording the result of step 's' failed") == 2


def test_the_engines_memory_and_environment_are_out_of_its_own_users_reach(engine_config):
    """Where there is no Landlock, a step of the engine's own user could read /proc/<engine>/environ:
    a process that is not dumpable has its /proc files owned by root, and cannot be traced."""

    async def dumpable_while_running() -> int:
        engine = Engine(engine_config)
        await engine.start()
        try:
            return LIBC.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
        finally:
            await engine.stop()

    assert asyncio.run(dumpable_while_running()) == 0
