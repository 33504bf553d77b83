"""Steps are isolated from the engine, and one engine owns its data dir: real servers, real steps.

The suite runs as root, so these steps run as `nobody` in namespaces of their own, under Landlock.
Each step below tries what a hostile one would, and says in its log when something worked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
from live import Server, free_port, wait_for_status
from test_api import inline, start, upload_well

from flowengine.runtime.executors import landlock

AS_USER = Path(__file__).parent / "as_user.py"
NOBODY = 65534

SECRETS = {"FLOWENGINE_S3_SECRET_KEY": "s3-secret-6f1e", "FLOWENGINE_EVENTS_TOKEN": "events-token-93ab",
           "AWS_SECRET_ACCESS_KEY": "aws-secret-27cd"}  # fmt: skip


def one_step(task: dict, wells: list[dict] | None = None, inputs: dict | None = None, outputs: dict | None = None):
    step = {"ID": "s", "Uses": task["Name"],
            "Inputs": [{"Slot": k, "Edge": v} for k, v in (inputs or {}).items()],
            "Outputs": [{"Slot": k, "Edge": v} for k, v in (outputs or {}).items()]}  # fmt: skip
    return inline(wells or [], [step], [task])


def log_of(client: httpx.Client, run_id: str, attempt: int | None = None) -> str:
    params = {"attempt": attempt} if attempt else {}
    response = client.get(f"/api/v1/flow/{run_id}/logs/s", params=params)
    assert response.status_code == 200, response.text
    return response.text


def test_a_step_sees_only_its_own_environment_never_the_engines_secrets(start_server, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRETS["AWS_SECRET_ACCESS_KEY"])
    server = start_server(s3_secret_key=SECRETS["FLOWENGINE_S3_SECRET_KEY"],
                          events_token=SECRETS["FLOWENGINE_EVENTS_TOKEN"])  # fmt: skip
    task = {"Name": "env", "Exec": ["env"], "Env": {"GREETING": "hello", "LANG": "en_US.UTF-8"}}
    with server.client() as client:
        run = start(client, "env", one_step(task))
        done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
        assert done["Status"] == "COMPLETE", done
        text = log_of(client, run["ID"])
    env = dict(line.split("=", 1) for line in text.splitlines())
    assert set(env) == {"PATH", "LANG", "HOME", "TMPDIR", "GREETING", "FLOWENGINE_RUN_ID", "FLOWENGINE_STEP_ID",
                        "FLOWENGINE_ATTEMPT"}  # fmt: skip
    assert (env["GREETING"], env["LANG"]) == ("hello", "en_US.UTF-8")  # what the task declares wins over defaults
    assert (env["FLOWENGINE_RUN_ID"], env["FLOWENGINE_STEP_ID"], env["FLOWENGINE_ATTEMPT"]) == (run["ID"], "s", "1")
    scratch = Path(env["HOME"])  # the scratch dir, the one place the step may write, is its HOME and TMPDIR
    assert env["TMPDIR"] == env["HOME"] and scratch.name == f"{run['ID']}.s.1"
    assert not scratch.is_relative_to(server.data_dir)  # scratch dirs live outside the data dir
    for value in SECRETS.values():
        assert value not in text
        assert value not in str(done)


def test_a_step_cannot_read_the_engines_memory_or_files(start_server, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRETS["AWS_SECRET_ACCESS_KEY"])
    server = start_server()
    data = server.data_dir
    with server.client() as client:
        # Something of each kind the data dir holds: a stored object, another run's log.
        other = start(client, "other", one_step({"Name": "say", "Exec": ["echo", "private log line"]},
                                                [upload_well("in")]))  # fmt: skip
        assert httpx.put(other["WaitingURLs"][0]["PutURL"], content=b"private upload").status_code == 200
        wait_for_status(client, other["ID"], {"COMPLETE"})
        stored = [p for p in (data / "objects").rglob("*") if p.is_file()]
        logs = [p for p in (data / "logs").rglob("*.log")]
        assert stored and logs
        targets = [data / "secret", data / "flowengine.persistence.sqlite", *stored, *logs,
                   Path(f"/proc/{server.proc.pid}/environ"), Path(f"/proc/{server.proc.pid}/mem")]  # fmt: skip
        script = "; ".join(f"cat '{t}' > /dev/null 2>&1 && echo 'LEAK {t}'" for t in targets)
        script += f"; ls -A '{data}' 2>/dev/null | grep -q . && echo 'LEAK listing'"
        script += f"; ls '{data.parent}' > /dev/null 2>&1 && echo 'LEAK parent'"
        script += "; cat /etc/passwd > /dev/null && echo control: can read the system"
        run = start(client, "snoop", one_step({"Name": "snoop", "Exec": ["sh", "-c", script]}))
        done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
        text = log_of(client, run["ID"])
    assert text == "control: can read the system\n", text
    assert done["Status"] == "COMPLETE"


def test_a_step_cannot_reach_another_steps_scratch_dir(start_server):
    # `keeper` leaves a file in its scratch dir and waits; `snoop` runs meanwhile and looks for it.
    keeper = {"Name": "keeper", "Exec": ["sh", "-c", "echo kept > kept.txt; sleep 2"]}
    snoop = {"Name": "snoop", "Exec": ["sh", "-c", "sleep 0.5; ls -A .. 2>/dev/null | grep -q keep && echo LEAK list;"
             " cat ../keep.1/kept.txt 2>/dev/null && echo LEAK read; { echo > ../keep.1/x; } 2>/dev/null && echo LEAK"
             " write; echo done"]}  # fmt: skip
    steps = [{"ID": "keep", "Uses": "keeper"}, {"ID": "s", "Uses": "snoop"}]
    server = start_server()
    with server.client() as client:
        run = start(client, "neighbours", inline([], steps, [keeper, snoop]))
        done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
        assert done["Status"] == "COMPLETE", done
        assert log_of(client, run["ID"]) == "done\n"


def test_a_step_cannot_change_a_stored_object(start_server):
    task = {"Name": "append", "Inputs": [{"Name": "src"}], "Outputs": [{"Name": "out"}],
            "Exec": ["sh", "-c", 'echo tampered >> "$0"; cp "$0" "$1"', "${src}", "${out}"]}  # fmt: skip
    server = start_server()
    with server.client() as client:
        run = start(client, "append", one_step(task, [upload_well("in")], {"src": "in"}, {"out": "out"}))
        assert httpx.put(run["WaitingURLs"][0]["PutURL"], content=b"original\n").status_code == 200
        done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
    assert done["Status"] == "COMPLETE", done
    artifacts = {a["EdgeName"]: a for a in done["Artifacts"]}
    assert httpx.get(artifacts["out"]["GetURL"]).content == b"original\ntampered\n"  # the step had its own copy
    assert httpx.get(artifacts["in"]["GetURL"]).content == b"original\n"  # the stored upload is as uploaded
    assert artifacts["in"]["Size"] == len(b"original\n")


PYTASKS = """\
import os
from pathlib import Path

def outside(inputs, flags, workdir):
    return {"out": "/etc/hostname"}

def climbs(inputs, flags, workdir):
    return {"out": os.path.join(workdir, "..", "..", "x")}

def linked(inputs, flags, workdir):
    os.symlink("/etc/hostname", Path(workdir) / "link")
    return {"out": str(Path(workdir) / "link")}
"""


@pytest.mark.parametrize(
    ("task", "problem"),
    [
        pytest.param({"Exec": ["sh", "-c", 'ln -s "$0" "$1"', "DATA/secret", "${out}"]},
                     "output 'out' (out/out/result.txt) is a symbolic link or lies beyond one", id="symlink"),
        pytest.param({"Exec": ["sh", "-c", 'rmdir "$(dirname "$0")"; ln -s DATA "$(dirname "$0")"', "${out}"]},
                     "output 'out' (out/out/result.txt) is a symbolic link or lies beyond one", id="symlinked-dir"),
        pytest.param({"Exec": ["sh", "-c", 'mkfifo "$0"', "${out}"]},
                     "output 'out' (out/out/result.txt) is not a regular file", id="fifo"),
        pytest.param({"Exec": ["true"]}, "output 'out' was not written", id="missing"),
        pytest.param({"Python": "pytasks:outside"}, "output 'out' is '/etc/hostname', outside the step's scratch dir",
                     id="python-absolute"),
        pytest.param({"Python": "pytasks:climbs"}, "outside the step's scratch dir", id="python-dotdot"),
        pytest.param({"Python": "pytasks:linked"}, "output 'out' (link) is a symbolic link", id="python-symlink"),
    ],
)  # fmt: skip
def test_only_regular_files_in_the_scratch_dir_are_taken_as_outputs(start_server, flows_dir, task, problem):
    (flows_dir / "pytasks.py").write_text(PYTASKS)
    server = start_server()
    if "Exec" in task:
        task = {"Exec": [a.replace("DATA", str(server.data_dir)) for a in task["Exec"]]}
    task = {"Name": "t", "Outputs": [{"Name": "out"}], **task}
    with server.client() as client:
        run = start(client, "outputs", one_step(task, [{"Edge": "result", "Key": "${RUN_ID}/result.txt"}],
                                                outputs={"out": "result"}))  # fmt: skip
        done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
    assert done["Status"] == "ERROR", done
    assert problem in done["Error"]
    assert not [a for a in done["Artifacts"] if a["EdgeName"] == "result"]  # nothing was stored


def _processes_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_no_step_process_outlives_a_killed_engine_and_the_rerun_is_a_new_attempt(start_server, tmp_path):
    token = f"tick-{uuid.uuid4().hex}"  # in the command line of the step and of the child it starts
    script = """
        echo "attempt $FLOWENGINE_ATTEMPT"
        if [ "$FLOWENGINE_ATTEMPT" -ge 2 ]; then echo second > "$1"; exit 0; fi
        (while :; do echo tick >> ticks; echo tick; sleep 0.05; done) &
        echo started; wait
    """
    task = {"Name": "ticker", "Outputs": [{"Name": "out"}], "MaxAttempts": 1, "Exec": ["sh", "-c", script, token,
            "${out}"]}  # fmt: skip
    data, work = tmp_path / "data", tmp_path / "work"
    server = start_server(data_dir=data, work_dir=work)
    with server.client() as client:
        run = start(client, "ticker", one_step(task, [{"Edge": "result"}], outputs={"out": "result"}))
        ticks = work / f"{run['ID']}.s.1" / "ticks"
        log1 = data / "logs" / run["ID"] / "s.1.log"
        deadline = time.monotonic() + 10
        while not (ticks.exists() and ticks.stat().st_size > 20) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_processes_with(token)) >= 2  # the step and its child, both running
    server.kill9()
    deadline = time.monotonic() + 2
    while _processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(token) == []
    sizes = (ticks.stat().st_size, log1.stat().st_size)
    time.sleep(0.3)
    assert (ticks.stat().st_size, log1.stat().st_size) == sizes  # nothing writes any more

    server = start_server(data_dir=data, work_dir=work, port=server.port)
    with server.client() as client:
        done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
        assert done["Status"] == "COMPLETE", done  # MaxAttempts 1: the crash did not use it up
        assert done["Steps"][0]["Attempts"] == 2
        first, second = log_of(client, run["ID"], 1), log_of(client, run["ID"], 2)
        result = next(a for a in done["Artifacts"] if a["EdgeName"] == "result")
        assert httpx.get(result["GetURL"]).content == b"second\n"
    assert first.startswith("attempt 1\n") and "started" in first and "attempt 2" not in first
    assert len(first.encode()) == sizes[1]  # the first attempt's log ends where the engine died
    assert second == "attempt 2\n"


def _serve(data: Path, port: int, flows_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWENGINE_")}
    env["FLOWENGINE_FLOWS_DIR"] = str(flows_dir)
    args = [sys.executable, "-m", "flowengine.cli", "serve", "--port", str(port), "--data-dir", str(data)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=30)


def test_a_second_engine_on_a_live_data_dir_refuses_and_leaves_it_alone(start_server, flows_dir, tmp_path):
    task = {"Name": "slow", "Outputs": [{"Name": "out"}], "Exec": ["sh", "-c", 'sleep 1.5; echo ok > "$0"', "${out}"]}
    data = tmp_path / "data"
    server = start_server(data_dir=data)
    with server.client() as client:
        run = start(client, "slow", one_step(task, [{"Edge": "result"}], outputs={"out": "result"}))
        wait_for_status(client, run["ID"], {"RUNNING"})
        for port in (server.port, free_port()):  # on the live engine's busy port, and on a free one
            second = _serve(data, port, flows_dir)
            assert second.returncode != 0
            assert second.stderr.strip().splitlines() == [
                f"flowengine: data dir {data} is in use by another engine (pid {server.proc.pid}); "
                "stop it or use another"
            ]
        assert (data / "tmp").is_dir()
        done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
        assert done["Status"] == "COMPLETE", done  # its running step was left alone


@pytest.mark.skipif(os.geteuid() != 0 or not landlock.abi_version(), reason="needs root (for nobody), Landlock")
def test_an_engine_that_is_not_root_keeps_its_steps_from_its_data_dir_and_its_secrets():
    """The usual deployment: the engine runs as an ordinary user, and so do its steps. Landlock
    keeps them from the data dir, and the engine's /proc files are not theirs to read."""
    base = Path(tempfile.mkdtemp(prefix="flowengine-as-nobody-"))  # outside pytest's dirs, closed to nobody
    data, flows = base / "data", base / "flows"
    flows.mkdir()
    (flows / "pytasks.py").write_text(PYTASKS + "\ndef hello(inputs, flags, workdir):\n    print('python runs')\n")
    for path in (base, flows, flows / "pytasks.py"):
        os.chown(path, NOBODY, NOBODY)
    server = Server(data, flows, events_token=SECRETS["FLOWENGINE_EVENTS_TOKEN"])
    server.prefix = [sys.executable, str(AS_USER), "nobody", "--"]
    try:
        server.start()
        pid = server.proc.pid
        checks = [f"cat {data}/secret", f"ls {data}", f"cat /proc/{pid}/environ", f"echo x > {data}/planted",
                  f"cat /proc/{pid}/mem"] + ([f"kill -0 {pid}"] if landlock.abi_version() >= 6 else [])  # fmt: skip
        script = "; ".join(f"{c} > /dev/null 2>&1 && echo 'LEAK {c}'" for c in checks) + "; id -u; env"
        with server.client() as client:
            run = start(client, "snoop", one_step({"Name": "snoop", "Exec": ["sh", "-c", script]}))
            done = wait_for_status(client, run["ID"], {"COMPLETE", "ERROR"})
            text = log_of(client, run["ID"])
            python = start(client, "python", one_step({"Name": "hello", "Python": "pytasks:hello"}))
            ran = wait_for_status(client, python["ID"], {"COMPLETE", "ERROR"})
        assert done["Status"] == "COMPLETE", done
        assert ran["Status"] == "COMPLETE" and ran["Steps"][0]["Logs"] == ["python runs"], ran
        assert "LEAK" not in text, text
        assert f"{NOBODY}\n" in text  # the engine's own user: no step user when it is not root
        assert SECRETS["FLOWENGINE_EVENTS_TOKEN"] not in text
        assert (data / "secret").stat().st_uid == NOBODY and not (data / "planted").exists()
    finally:
        server.stop()
        shutil.rmtree(base)
