"""`flowengine run` as a user runs it: a subprocess against a real server, with the shipped flows,
local flow files, a failing step, usage errors, Ctrl-C, and a terminal (a pty) for the live view."""

from __future__ import annotations

import gzip
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from live import Server, free_port, wait_for_status

REPO = Path(__file__).resolve().parent.parent
FAILING = {
    "Name": "fails",
    "DataWells": [{"Edge": "doc", "Source": "upload"}, {"Edge": "out"}],
    "Tasks": [{"Name": "boom", "Inputs": [{"Name": "src"}], "Outputs": [{"Name": "dst"}],
               "Exec": ["sh", "-c", "echo looking at the input; printf '\\033[2Jwiped\\n'; echo 'disk on fire' >&2;"
                        "exit 3", "${src}"]}],
    "Steps": [{"ID": "burn", "Uses": "boom", "Inputs": [{"Slot": "src", "Edge": "doc"}],
               "Outputs": [{"Slot": "dst", "Edge": "out"}]}],
}  # fmt: skip
SLOW = {
    "Name": "slow",
    "DataWells": [{"Edge": "doc", "Source": "upload"}, {"Edge": "out"}],
    "Tasks": [{"Name": "nap", "Inputs": [{"Name": "src"}], "Outputs": [{"Name": "dst"}],
               "Exec": ["sh", "-c", 'sleep 60; cp "$0" "$1"', "${src}", "${dst}"]}],
    "Steps": [{"ID": "nap", "Uses": "nap", "Inputs": [{"Slot": "src", "Edge": "doc"}],
               "Outputs": [{"Slot": "dst", "Edge": "out"}]}],
}  # fmt: skip


def command(*args: str, server: Server | None = None) -> list[str]:
    return [sys.executable, "-m", "flowengine", "run", *args, *(["--server", server.url] if server else [])]


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLOWENGINE_")}


def flowengine_run(*args: str, server: Server, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args, server=server), cwd=cwd, env=environment(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def runs_total(server: Server) -> int:
    return httpx.get(f"{server.url}/api/v1/flow/runs").json()["Total"]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder with two text files and the flow files the tests run."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "first.txt").write_bytes(b"one\ntwo\n")
    (folder / "second.txt").write_bytes(b"three\n")
    (folder / "fails.yaml").write_text(yaml.safe_dump(FAILING))
    (folder / "slow.json").write_text(json.dumps({"Flow": SLOW}))
    return folder


def test_a_run_of_an_engine_flow_completes_and_its_outputs_are_downloaded(shipped: Server, work: Path):
    done = flowengine_run("merge-fanout", "--input", "first=first.txt", "--input", "second=second.txt",
                          "--out", "results", server=shipped, cwd=work)  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = work / "results"
    merged = b"one\ntwo\nthree\n"
    assert (results / "merged.txt").read_bytes() == merged
    assert gzip.decompress((results / "merged.txt.gz").read_bytes()) == merged
    assert json.loads((results / "stats.json").read_text()) == {"lines": 3, "words": 3, "bytes": len(merged)}
    assert sorted(p.name for p in results.iterdir()) == ["merged.txt", "merged.txt.gz", "stats.json"]
    # stdout: where the outputs are, one a line; stderr (not a terminal): plain lines of progress.
    assert done.stdout.splitlines() == ["results/merged.txt", "results/stats.json", "results/merged.txt.gz"]
    for line in ["uploading first.txt → first (8 bytes)", "step merge: RUNNING", "step compress: COMPLETE",
                 "downloading stats → results/stats.json", ": COMPLETE, 3 output(s) in results"]:  # fmt: skip
        assert line in done.stderr, done.stderr
    assert "\x1b[" not in done.stderr  # no terminal codes in a log


def test_a_local_flow_file_runs_with_the_flags_given(shipped: Server, work: Path):
    flow = str(REPO / "flows" / "merge-fanout.yaml")
    done = flowengine_run(flow, "-i", "first=first.txt", "-i", "second=second.txt", "--flag", 'merge.separator="--\\n"',
                          "--flag", "compress.level=1", "--quiet", server=shipped, cwd=work)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (work / "merged.txt").read_bytes() == b"one\ntwo\n--\nthree\n"  # --out defaults to here
    assert done.stderr == ""  # --quiet: nothing but errors
    assert done.stdout.splitlines() == ["merged.txt", "stats.json", "merged.txt.gz"]


def test_a_failed_run_exits_1_with_the_reason_the_step_and_its_log(server: Server, work: Path):
    done = flowengine_run("./fails.yaml", "--input", "doc=first.txt", server=server, cwd=work)
    assert done.returncode == 1, done.stderr
    assert "ended ERROR: step 'burn' failed after 1 attempt(s): exited with status 3" in done.stderr
    assert "failed step: burn (boom), attempt 1" in done.stderr
    assert "  | disk on fire" in done.stderr and "  | looking at the input" in done.stderr
    assert "  | \\x1b[2Jwiped" in done.stderr and "\x1b" not in done.stderr  # shown, not obeyed
    assert done.stdout == "" and sorted(p.name for p in work.iterdir()) == ["fails.yaml", "first.txt", "second.txt",
                                                                             "slow.json"]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["merge-fanout", "-i", "first=first.txt", "-i", "second=missing.txt"],
         "--input second=missing.txt: missing.txt: no such file"),
        (["merge-fanout", "-i", "first=first.txt", "-i", "third=second.txt"],
         "the run waits for first, second: no input 'third'; no file for 'second'"),
        (["merge-fanout", "-i", "first=first.txt"], "the run waits for first, second: no file for 'second'"),
        (["merge-fanout", "-i", "first=first.txt", "-i", "second=second.txt", "--flag", "merge.separator=x"],
         "--flag needs a local flow file"),
        (["no-such-flow", "-i", "a=first.txt"],
         "the engine has no flow 'no-such-flow'; its flows: checksum-report, merge-fanout"),
        (["./nowhere.yaml", "-i", "a=first.txt"], "nowhere.yaml: no such file"),
        (["./fails.yaml", "-i", "doc=first.txt", "--flag", "burnt.x=1"],
         "--flag burnt.x: the flow has no step 'burnt' (its steps: burn)"),
        (["merge-fanout", "-i", "first"], "--input 'first': expected EDGE=PATH"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_before_any_run_is_started(shipped: Server, work: Path, args: list[str], said: str):
    before = runs_total(shipped)
    done = flowengine_run(*args, server=shipped, cwd=work)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr
    assert runs_total(shipped) == before


def test_an_invalid_local_flow_is_a_usage_error_listing_every_problem(server: Server, work: Path):
    wells = [{"Edge": "a", "Source": "upload"}, {"Edge": "b", "Source": "fax"}]
    (work / "bad.yaml").write_text(yaml.safe_dump({"DataWells": wells, "Steps": [{"ID": "s", "Uses": "ghost"}]}))
    before = runs_total(server)
    done = flowengine_run("./bad.yaml", "-i", "a=first.txt", server=server, cwd=work)
    assert done.returncode == 2, done.stderr
    assert "422 invalid_flow" in done.stderr
    assert "  DataWells[1].Source: unknown Source 'fax'" in done.stderr and "  Steps[0].Uses:" in done.stderr
    assert runs_total(server) == before


def test_an_unreachable_engine_exits_1_saying_so(work: Path):
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(command("merge-fanout", "-i", "first=first.txt", "--server", url), cwd=work,
                          env=environment(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1 and f"GET {url}/api/v1/flow: ConnectError" in done.stderr, done.stderr


def _running_run(server: Server, flow: str, timeout: float = 30) -> str:
    """The ID of the run of `flow` once its step is running."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.url, timeout=5) as client:
        while time.monotonic() < deadline:
            for summary in client.get("/api/v1/flow/runs", params={"flow": flow}).json()["Runs"]:
                doc = client.get(f"/api/v1/flow/status/{summary['ID']}").json()
                if any(step["Status"] == "RUNNING" for step in doc["Steps"]):
                    return doc["ID"]
            time.sleep(0.05)
    raise AssertionError(f"no run of {flow} got to a running step")


def test_ctrl_c_cancels_the_run_and_exits_130(server: Server, work: Path):
    proc = subprocess.Popen(command("./slow.json", "-i", "doc=first.txt", server=server), cwd=work,
                            env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        run_id = _running_run(server, "slow")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert f"cancelling run {run_id}" in err and f"interrupted: run {run_id} is STOPPED" in err
    with server.client() as client:
        assert wait_for_status(client, run_id, {"STOPPED"}, timeout=5)["Status"] == "STOPPED"


def test_a_second_ctrl_c_quits_at_once_when_the_cancel_hangs(server: Server, work: Path):
    proc = subprocess.Popen(command("./slow.json", "-i", "doc=first.txt", server=server), cwd=work,
                            env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert server.proc is not None
    try:
        _running_run(server, "slow")
        server.proc.send_signal(signal.SIGSTOP)  # the engine stops answering: the cancel waits
        proc.send_signal(signal.SIGINT)
        time.sleep(1)
        assert proc.poll() is None  # still cancelling
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        server.proc.send_signal(signal.SIGCONT)
        proc.kill()
    assert proc.returncode == 130, err
    assert "Ctrl-C again to quit at once" in err and "Traceback" not in err


def test_the_engine_starts_without_importing_the_client():
    loaded = subprocess.run([sys.executable, "-c", "import sys, flowengine.cli; print(sorted(sys.modules))"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    for module in ("'flowengine.client'", "'httpx'", "'rich'"):
        assert module not in loaded


def test_on_a_terminal_the_view_is_redrawn_in_place(shipped: Server, work: Path):
    """stderr on a pty: progress bars and the steps' table, drawn with cursor movements."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(command("merge-fanout", "-i", "first=first.txt", "-i", "second=second.txt", "-o", "out",
                                    server=shipped), cwd=work, env={**environment(), "COLUMNS": "120"},
                            stdout=subprocess.PIPE, stderr=follower)  # fmt: skip
    os.close(follower)
    screen = b""
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 60)
            assert ready, screen.decode(errors="replace")
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the command closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        stdout = proc.communicate(timeout=30)[0]
    finally:
        os.close(leader)
        proc.kill()
    text = screen.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "\x1b[1A" in text or "\x1b[2K" in text  # redrawn in place
    assert "8/8 bytes" in text and "6/6 bytes" in text  # each upload's bar, to its last byte
    for step in ("merge", "line-count", "compress"):
        assert step in text
    assert "COMPLETE" in text and "stats → out/stats.json" in text
    assert stdout.decode().splitlines() == ["out/merged.txt", "out/stats.json", "out/merged.txt.gz"]
