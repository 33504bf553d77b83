"""The README's commands, exactly as printed, run as a new user would: from a fresh folder.

The folder holds only copies of the repository's `flows/` and `examples/` (the sample input and the
example scripts the README runs). The server is the README's serve command, no flag added, only its
port moved through the environment (`FLOWENGINE_PORT`). The commands are read out of README.md, so
the README and this test cannot drift apart.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from live import free_port, stop, wait_for_status, wait_healthy

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PHOTO = "examples/photo.png"
NEEDS_CURL_AND_JQ = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("jq")),
    reason="the README's commands use curl and jq; install them (.ci/run does: apt-get install curl jq)",
)


def sh_blocks(section: str) -> list[str]:
    """The ```sh blocks under a README heading `## {section}`."""
    text = README.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", body, re.DOTALL)


def serve_command() -> str:
    """`flowengine serve` from "python3 -m pip install -e . && flowengine serve" (we are installed)."""
    first = sh_blocks("Two commands")[0].strip().splitlines()[0]
    install, serve = (part.strip() for part in first.split("&&"))
    assert install == "python3 -m pip install -e ."
    return serve


@dataclass
class Fresh:
    folder: Path
    url: str
    port: int
    env: dict[str, str]  # for clients: the environment with FLOWENGINE_URL pointing at the server
    log: Path


def _environment() -> dict[str, str]:
    """This environment without FLOWENGINE_* settings, with the installed console scripts on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWENGINE_")}
    env["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), str(Path(sys.executable).parent), env["PATH"]])
    return env


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fresh]:
    folder = tmp_path_factory.mktemp("fresh")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "flows", folder / "flows", ignore=ignore)
    shutil.copytree(REPO / "examples", folder / "examples", ignore=ignore)
    port = free_port()
    env = _environment()
    argv = shlex.split(serve_command())
    assert argv == ["flowengine", "serve"], "the README's serve command takes no flag"
    assert shutil.which(argv[0], path=env["PATH"]), "the flowengine console script is not installed"
    log = folder.parent / f"{folder.name}-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=folder, env={**env, "FLOWENGINE_PORT": str(port)}, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, log)
        yield Fresh(folder, url, port, {**env, "FLOWENGINE_URL": url}, log)
    finally:
        stop(proc, signal.SIGTERM)
    assert "Traceback" not in log.read_text(), log.read_text()


def run_block(block: str, fresh: Fresh) -> subprocess.CompletedProcess:
    """A README block as printed, in the fresh folder; only its port is moved to the test server's."""
    script = block.replace("127.0.0.1:1234", f"127.0.0.1:{fresh.port}")
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=fresh.folder, env=fresh.env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def runs_total(fresh: Fresh) -> int:
    return httpx.get(f"{fresh.url}/api/v1/flow/runs").json()["Total"]


def check_report(report: dict, data: bytes) -> None:
    """checksum-report's report.json describes exactly the bytes uploaded."""
    assert report["sha256"] == hashlib.sha256(data).hexdigest()
    assert report["size"] == len(data)
    if report["mime_source"] == "file":  # detected from the bytes when the host has `file`
        assert report["mime_type"] == "image/png"


def test_the_server_runs_with_absolute_paths_from_where_it_started(fresh: Fresh):
    flows = {f["Name"]: f for f in httpx.get(f"{fresh.url}/api/v1/flow").json()["Flows"]}
    assert flows["checksum-report"]["Valid"] and flows["merge-fanout"]["Valid"], flows
    assert (fresh.folder / "data" / "secret").is_file()  # the default ./data, in the folder it started in
    found = f"flows dir: {fresh.folder / 'flows'}: 2 flow(s): checksum-report, merge-fanout"
    deadline = time.monotonic() + 10  # the start-up overview checks the flows in the background
    while found not in fresh.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert found in fresh.log.read_text() and f"data dir: {fresh.folder / 'data'}" in fresh.log.read_text()


def test_the_sample_input_is_a_real_png():
    assert (REPO / PHOTO).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    [block] = sh_blocks("Try it")[:1]
    assert f"@{PHOTO}" in block  # the README uploads the file the repository ships


@NEEDS_CURL_AND_JQ
def test_try_it_as_printed_completes(fresh: Fresh):
    done = run_block(sh_blocks("Try it")[0], fresh)
    assert done.returncode == 0, done.stderr
    # The last command prints the run document (jq's pretty output starts with a lone "{" line).
    lines = done.stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    run_id = json.loads("\n".join(lines[start:]))["ID"]
    with httpx.Client(base_url=fresh.url, timeout=10) as client:
        doc = wait_for_status(client, run_id, {"COMPLETE", "ERROR"}, timeout=60)
        assert doc["Status"] == "COMPLETE", doc
        report_url = next(a["GetURL"] for a in doc["Artifacts"] if a["EdgeName"] == "report")
        check_report(client.get(report_url).json(), (fresh.folder / PHOTO).read_bytes())


@NEEDS_CURL_AND_JQ
def test_the_example_scripts_as_printed_complete_and_download(fresh: Fresh):
    done = run_block(sh_blocks("Try it")[1], fresh)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    photo = (fresh.folder / PHOTO).read_bytes()
    # upload-workflow.sh: the inline flow's sha256 of the photo, at the URL it prints.
    assert "Flow completed successfully" in done.stdout
    digest_url = re.search(r"^digest: (\S+)$", done.stdout, re.MULTILINE)
    assert digest_url, done.stdout
    assert httpx.get(digest_url.group(1)).text.strip() == hashlib.sha256(photo).hexdigest()
    # upload_workflow.py on both shipped flows: outputs downloaded into results/.
    results = fresh.folder / "results"
    check_report(json.loads((results / "report.json").read_bytes()), photo)
    merged = (results / "merged.txt").read_bytes()
    assert merged == (fresh.folder / "first.txt").read_bytes() + (fresh.folder / "second.txt").read_bytes()
    assert json.loads((results / "stats.json").read_bytes()) == {"lines": 3, "words": 3, "bytes": len(merged)}
    assert gzip.decompress((results / "merged.txt.gz").read_bytes()) == merged


@NEEDS_CURL_AND_JQ
def test_the_bash_example_fails_loudly_on_a_missing_input(fresh: Fresh):
    before = runs_total(fresh)
    env = {**fresh.env, "INPUT_FILE": "no-such-photo.png"}
    done = subprocess.run(["examples/upload-workflow.sh"], cwd=fresh.folder, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert "no-such-photo.png: no such file" in done.stderr
    assert runs_total(fresh) == before  # it stopped before starting a run, nothing was uploaded


def test_the_python_example_fails_loudly_on_a_missing_input(fresh: Fresh):
    before = runs_total(fresh)
    script = [sys.executable, "examples/upload_workflow.py"]
    for args, named in [
        (["checksum-report", "--file", "no-such-photo.png"], "--file no-such-photo.png: no such file"),
        (["test", "--definition", "nope.json", "--file", PHOTO], "--definition nope.json: no such file"),
    ]:
        done = subprocess.run([*script, *args], cwd=fresh.folder, env=fresh.env, capture_output=True, text=True)
        assert done.returncode == 2 and named in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert runs_total(fresh) == before


def test_the_command_line_client_as_printed_downloads_the_outputs(fresh: Fresh):
    before = runs_total(fresh)
    done = run_block(sh_blocks("Command-line client")[0], fresh)
    assert done.returncode == 0, done.stderr
    assert runs_total(fresh) == before + 2
    assert done.stdout.splitlines() == ["results/report.json", "merged/merged.txt", "merged/stats.json",
                                        "merged/merged.txt.gz"]  # fmt: skip
    check_report(
        json.loads((fresh.folder / "results" / "report.json").read_bytes()), (fresh.folder / PHOTO).read_bytes()
    )
    # --flag merge.skip_second_header=true: the second file's header is left out
    assert (fresh.folder / "merged" / "merged.txt").read_bytes() == b"name,n\nA,1\nB,2\n"


def test_the_python_client_snippet_as_printed_runs(fresh: Fresh):
    text = README.read_text().split("\n## Command-line client\n", 1)[1].split("\n## ", 1)[0]
    [snippet] = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    script = snippet.replace("127.0.0.1:1234", f"127.0.0.1:{fresh.port}")
    done = subprocess.run([sys.executable, "-c", script], cwd=fresh.folder, env=fresh.env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "COMPLETE\n[PosixPath('results/report.json')]\n" in done.stdout
    assert "404 not_found run 'no-such-run' not found path.runID []" in done.stdout
