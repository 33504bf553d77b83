"""Warm Python workers: a module imported once, every call isolated as a step of its own. Real servers.

Each task module below records, at import, a random token: calls that print the same token were
served by the same import. Workers are found among the machine's processes by their module's
name, which each test makes unique.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
from live import Server, wait_for_status
from test_api import start
from test_isolation import AS_USER, NOBODY, _processes_with, log_of, one_step

from flowengine.runtime.executors import landlock

pytestmark = pytest.mark.skipif(not landlock.abi_version(), reason="warm workers need Landlock")

MODULE = """\
import os
import sys
import time
import uuid
from pathlib import Path

TOKEN = uuid.uuid4().hex  # once per import
HOME = os.environ["HOME"]  # the worker's own
CALLS = []
handle = open(os.path.join(HOME, "opened-at-import"), "w+")


def hello(inputs, flags, workdir):
    CALLS.append(1)
    print("token", TOKEN, "calls", len(CALLS), "attempt", os.environ["FLOWENGINE_ATTEMPT"])
    if flags.get("fail"):
        raise RuntimeError("asked to fail")


def snoop(inputs, flags, workdir):
    print("cwd", os.getcwd() == workdir)
    print("env", os.environ.get("PLANTED"), "global", len(CALLS), "path", "/planted" in sys.path)
    print("home", os.environ["HOME"] == os.environ["TMPDIR"] == workdir)
    CALLS.append(1)
    os.environ["PLANTED"] = "yes"
    sys.path.append("/planted")
    for what, act in [("worker home", lambda: Path(HOME, "planted").write_text("x")),
                      ("parent dir", lambda: os.listdir(os.path.dirname(workdir))),
                      ("import handle", lambda: handle.write("x") and handle.flush()),
                      ("signal worker", lambda: os.kill(os.getppid(), 0))]:
        try:
            act()
            print("LEAK", what)
        except OSError:
            pass
    Path(workdir, "left.txt").write_text("mine")
    print("left", sorted(p.name for p in Path(workdir).parent.glob("*/left.txt")))


def sleeps(inputs, flags, workdir):
    print("asleep", os.environ["FLOWENGINE_ATTEMPT"], flush=True)
    if os.environ["FLOWENGINE_ATTEMPT"] == "1" or flags.get("always"):
        time.sleep(60)


def strays(inputs, flags, workdir):
    left, told = os.pipe()
    if os.fork() == 0:
        os.setsid()
        os.write(told, b"x")
        time.sleep(60)
        os._exit(0)
    os.read(left, 1)  # it has left the call's process group
    print("token", TOKEN)
"""


@pytest.fixture
def module(flows_dir: Path) -> str:
    name = f"warm_{uuid.uuid4().hex[:12]}"
    (flows_dir / f"{name}.py").write_text(MODULE)
    return name


def run_one(client: httpx.Client, module: str, function: str, **flags) -> dict:
    task = {"Name": "t", "Python": f"{module}:{function}", "MaxAttempts": 1, "Flags": [{"Name": f} for f in flags]}
    flow = one_step(task)
    flow["Flow"]["Steps"][0]["Flags"] = flags
    run = start(client, "warm", flow)
    return wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})


def tokens(done: dict) -> str:
    return next(line.split()[1] for line in done["Steps"][0]["Logs"] if line.startswith("token"))


def workers_of(module: str) -> list[int]:
    return _processes_with(f'"module":"{module}"')


def gone(module: str, within: float = 5) -> bool:
    deadline = time.monotonic() + within
    while workers_of(module) and time.monotonic() < deadline:
        time.sleep(0.05)
    return workers_of(module) == []


def test_a_module_is_imported_once_for_many_calls_and_each_call_starts_from_the_import(start_server, module):
    server = start_server()
    with server.client() as client:
        runs = [run_one(client, module, "hello") for _ in range(5)]
    assert all(r["Status"] == "COMPLETE" for r in runs), runs
    assert len({tokens(r) for r in runs}) == 1  # one import served them all
    assert all("calls 1 " in r["Steps"][0]["Logs"][0] for r in runs)  # no call saw another's module globals
    assert len(workers_of(module)) == 1  # kept warm, idle


def test_without_warm_workers_every_call_imports_again(start_server, module):
    server = start_server(python_workers=0)
    with server.client() as client:
        runs = [run_one(client, module, "hello") for _ in range(3)]
    assert len({tokens(r) for r in runs}) == 3
    assert workers_of(module) == []


def test_a_worker_is_retired_after_its_calls_and_after_a_failure(start_server, module):
    server = start_server(python_worker_calls=3)
    with server.client() as client:
        runs = [run_one(client, module, "hello") for _ in range(7)]
        order = [tokens(r) for r in runs]
        assert order[0] == order[1] == order[2] != order[3] == order[4] == order[5] != order[6]
        failed = run_one(client, module, "hello", fail=True)
        assert failed["Status"] == "ERROR" and "exited with status 1" in failed["Error"], failed
        assert "RuntimeError: asked to fail" in log_of(client, failed["ID"])
        after = run_one(client, module, "hello")
    assert tokens(failed) == order[6]
    assert tokens(after) != tokens(failed)  # the failure retired the worker
    assert len(workers_of(module)) == 1


def test_a_call_sees_nothing_of_an_earlier_call_nor_of_its_worker(start_server, module):
    server = start_server()
    with server.client() as client:
        first, second = (run_one(client, module, "snoop") for _ in range(2))
        logs = [log_of(client, run["ID"]) for run in (first, second)]
    assert first["Status"] == second["Status"] == "COMPLETE", (first, second)
    for text in logs:
        assert text.splitlines()[:3] == ["cwd True", "env None global 0 path False", "home True"], text
        assert "LEAK" not in text, text
        assert "left []" in text  # no earlier call's file to be found


def test_a_worker_killed_mid_call_fails_that_attempt_only_and_the_retry_gets_a_new_worker(start_server, module):
    server = start_server()
    task = {"Name": "t", "Python": f"{module}:sleeps", "MaxAttempts": 2}
    with server.client() as client:
        run = start(client, "crash", one_step(task))
        deadline = time.monotonic() + 10
        while len(workers_of(module)) < 2 and time.monotonic() < deadline:  # the worker and its call
            time.sleep(0.05)
        first = workers_of(module)
        worker = min(first)  # forked after it: a greater pid (no wrap-around in a test's time)
        os.kill(worker, signal.SIGKILL)
        done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
        assert done["Status"] == "COMPLETE", done
        assert done["Steps"][0]["Attempts"] == 2
        assert "the Python worker ended during the call (status -9)" in log_of(client, run["ID"], 1)
        assert log_of(client, run["ID"], 2) == "asleep 2\n"
    assert not set(first) & set(workers_of(module))  # the call died with its worker


def test_a_timeout_kills_the_worker_and_its_call(start_server, module):
    server = start_server()
    task = {"Name": "t", "Python": f"{module}:sleeps", "MaxAttempts": 1, "Timeout": 1}
    with server.client() as client:
        run = start(client, "timeout", one_step(task))
        done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
    assert done["Status"] == "ERROR" and "timed out after 1s" in done["Error"], done
    assert gone(module, 2)


def test_a_cancel_kills_the_worker_and_its_call(start_server, module):
    server = start_server()
    task = {"Name": "t", "Python": f"{module}:sleeps", "MaxAttempts": 1}
    with server.client() as client:
        run = start(client, "cancel", one_step(task))
        deadline = time.monotonic() + 10
        while len(workers_of(module)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.post(f"/api/v1/flow/{run['ID']}/cancel").status_code == 200
        assert gone(module)


def test_a_process_a_call_leaves_behind_retires_its_worker(start_server, module):
    server = start_server()
    with server.client() as client:
        first = run_one(client, module, "strays")
        assert gone(module)  # the stray (it left the call's process group) went with the worker
        second = run_one(client, module, "strays")
    assert first["Status"] == second["Status"] == "COMPLETE"
    assert tokens(first) != tokens(second)


def test_no_worker_outlives_a_killed_engine(start_server, module):
    server = start_server()
    task = {"Name": "t", "Python": f"{module}:sleeps", "MaxAttempts": 1, "Flags": [{"Name": "always"}],
            "Env": {"OTHER": "1"}}  # another environment: another worker than the idle one  # fmt: skip
    with server.client() as client:
        idle = run_one(client, module, "hello")  # leaves an idle worker
        assert idle["Status"] == "COMPLETE"
        flow = one_step(task)
        flow["Flow"]["Steps"][0]["Flags"] = {"always": True}
        start(client, "busy", flow)
        deadline = time.monotonic() + 10
        while len(workers_of(module)) < 3 and time.monotonic() < deadline:  # idle, busy and its call
            time.sleep(0.05)
        assert len(workers_of(module)) == 3
    server.kill9()
    assert gone(module, 3)


def test_a_changed_module_is_imported_again_and_a_failing_import_fails_the_step_with_its_traceback(
    start_server, flows_dir, module
):
    server = start_server()
    source = flows_dir / f"{module}.py"
    with server.client() as client:
        first = run_one(client, module, "hello")
        source.write_text(MODULE.replace("TOKEN = ", "import nowhere_to_be_found\nTOKEN = "))
        os.utime(source, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime, however coarse the clock
        broken = run_one(client, module, "hello")
        assert broken["Status"] == "ERROR" and "exited with status 1" in broken["Error"], broken
        assert "ModuleNotFoundError: No module named 'nowhere_to_be_found'" in log_of(client, broken["ID"])
        source.write_text(MODULE.replace('print("token"', 'print("edited", "token"'))
        os.utime(source, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
        fixed = run_one(client, module, "hello")
    assert fixed["Status"] == "COMPLETE", fixed
    assert fixed["Steps"][0]["Logs"][0].startswith("edited token")  # the code as it is now
    assert tokens(first) != fixed["Steps"][0]["Logs"][0].split()[2]


def test_a_worker_that_died_while_idle_is_replaced_before_the_next_call(start_server, module):
    server = start_server()
    with server.client() as client:
        first = run_one(client, module, "hello")
        (worker,) = workers_of(module)
        os.kill(worker, signal.SIGKILL)
        assert gone(module)
        second = run_one(client, module, "hello")
    assert first["Status"] == second["Status"] == "COMPLETE", second
    assert tokens(first) != tokens(second)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to start the engine as nobody")
def test_an_engine_that_is_not_root_ends_strays_and_leaves_no_worker_or_call_after_kill9():
    """No PID namespaces: strays come back to the worker as their subreaper, and the reaper knows
    each call's process group besides its worker's."""
    base = Path(tempfile.mkdtemp(prefix="flowengine-warm-nobody-"))  # outside pytest's dirs, closed to nobody
    data, flows = base / "data", base / "flows"
    flows.mkdir()
    module = f"warm_{uuid.uuid4().hex[:12]}"
    (flows / f"{module}.py").write_text(MODULE)
    for path in (base, flows, flows / f"{module}.py"):
        os.chown(path, NOBODY, NOBODY)
    server = Server(data, flows)
    server.prefix = [sys.executable, str(AS_USER), "nobody", "--"]
    try:
        server.start()
        with server.client() as client:
            strayed = run_one(client, module, "strays")
            assert strayed["Status"] == "COMPLETE", strayed
            assert gone(module)  # the worker, retired, and the stray it found
            flow = one_step({"Name": "t", "Python": f"{module}:sleeps", "Flags": [{"Name": "always"}]})
            flow["Flow"]["Steps"][0]["Flags"] = {"always": True}
            start(client, "busy", flow)
            deadline = time.monotonic() + 10
            while len(workers_of(module)) < 2 and time.monotonic() < deadline:  # the worker and its call
                time.sleep(0.05)
            assert len(workers_of(module)) == 2
        server.kill9()
        assert gone(module, 3)
    finally:
        server.stop()
        shutil.rmtree(base)


def test_an_idle_worker_is_retired_after_python_worker_idle(start_server, module):
    server = start_server(python_worker_idle="1s")
    with server.client() as client:
        done = run_one(client, module, "hello")
        assert done["Status"] == "COMPLETE", done
        assert gone(module, 5)  # idle 1 s, swept every second
        again = run_one(client, module, "hello")
    assert tokens(again) != tokens(done)
