"""The `flowengine` command: `validate`, `serve`'s flags and start-up log, errors without tracebacks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from live import free_port, stop, wait_healthy

from flowengine.config import load_config

REPO = Path(__file__).resolve().parent.parent


def flowengine(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m flowengine ARGS` (the same command as the `flowengine` console script)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWENGINE_")}
    return subprocess.run([sys.executable, "-m", "flowengine", *args], capture_output=True, text=True, cwd=cwd,
                          env={**clean, **(env or {})}, timeout=60)  # fmt: skip


def validate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return flowengine("validate", *args, cwd=cwd)


def test_the_shipped_flows_are_valid():
    result = validate(cwd=REPO)  # no argument: the flows dir, ./flows by default
    assert result.returncode == 0, result.stdout
    assert "flows/checksum-report.yaml: ok\nflows/merge-fanout.yaml: ok\n" in result.stdout


def test_validate_prints_every_problem_with_its_path_and_fails(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        "Name: bad\nDataWells: [{Edge: a, Source: fax}, {Edge: b, Store: nowhere, Source: upload}]\n"
        "Steps: [{ID: s, Uses: ghost}]\n"
    )
    (tmp_path / "broken.json").write_text("{nope")
    result = validate(str(tmp_path))
    assert result.returncode == 1
    assert "bad.yaml: DataWells[0].Source:" in result.stdout
    assert "bad.yaml: DataWells[1].Store:" in result.stdout
    assert "bad.yaml: Steps[0].Uses:" in result.stdout
    assert "broken.json" in result.stdout


def test_validate_knows_the_stores_a_config_defines(tmp_path):
    (tmp_path / "uses-media.yaml").write_text("DataWells: [{Edge: a, Store: media, Source: upload}]\n")
    config = tmp_path / "config.yaml"
    config.write_text("stores:\n  - Name: media\n    Type: s3\n    Params: {endpoint: 127.0.0.1:9, bucket: m}\n")
    assert validate(str(tmp_path / "uses-media.yaml")).returncode == 1
    assert validate(str(tmp_path / "uses-media.yaml"), "--config", str(config)).returncode == 0


def test_settings_come_from_defaults_then_file_then_environment_then_flags(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("port: 2000\nconcurrency: 8\nupload_ttl: 60\n")
    loaded = load_config(config, {"FLOWENGINE_PORT": "3000", "FLOWENGINE_INLINE_FLOWS": "false"}, host="127.0.0.2")
    assert (loaded.port, loaded.concurrency, loaded.upload_ttl, loaded.host) == (3000, 8, 60.0, "127.0.0.2")
    assert loaded.inline_flows is False
    assert load_config(None, {}).max_upload_size == 500_000_000


def test_the_documented_config_file_lists_every_setting_with_its_default(monkeypatch):
    monkeypatch.chdir(REPO)  # its relative paths are relative to its folder; the defaults', to this one
    documented = load_config(REPO / "config.yaml", {})
    assert documented == load_config(None, {})
    text = (REPO / "config.yaml").read_text()
    import msgspec

    from flowengine.config import Config

    for field in msgspec.structs.fields(Config):
        assert f"{field.name}:" in text, field.name


# --- validate: every problem, one path style ---------------------------------------------------


def test_validate_fails_on_a_yaml_syntax_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("Name: bad\nDataWells:\n  - Edge: a\n   Source: upload\n")
    result = validate(str(tmp_path / "bad.yaml"))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{tmp_path / 'bad.yaml'}: not valid YAML: line 4, column 4: ")
    assert "ok" not in result.stdout


def test_validate_prints_every_structural_problem_of_a_file_at_once(tmp_path):
    (tmp_path / "typos.yaml").write_text(
        "Name: typos\n"
        "DataWells: [{Edge: in, Source: upload, ttl: 15m}, {Source: upload}]\n"
        "Tasks: [{Name: t, Exec: ['true'], timeout: 60, MaxAttempts: two}]\n"
    )
    result = validate("typos.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "typos.yaml: DataWells[0]: unknown key 'ttl', did you mean 'TTL'?",
        "typos.yaml: DataWells[1]: missing key 'Edge'",
        "typos.yaml: Tasks[0]: unknown key 'timeout', did you mean 'Timeout'?",
        "typos.yaml: Tasks[0].MaxAttempts: expected an integer, got the string 'two'",
    ]


def test_validate_takes_durations_as_strings(tmp_path):
    flow = (
        "DataWells: [{Edge: in, Source: upload, TTL: 15m}, {Edge: out}]\n"
        "Tasks: [{Name: t, Exec: [cp, '${i}', '${o}'], Inputs: [{Name: i}], Outputs: [{Name: o}], "
        "Timeout: %s, Backoff: 30s, MaxAttempts: 2}]\n"
        "Steps: [{ID: s, Uses: t, Inputs: [{Slot: i, Edge: in}], Outputs: [{Slot: o, Edge: out}]}]\n"
    )
    (tmp_path / "good.yaml").write_text(flow % "1m")
    (tmp_path / "long.yaml").write_text(flow % "8d")
    result = validate(str(tmp_path))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{tmp_path / 'good.yaml'}: ok",
        f"{tmp_path / 'long.yaml'}: Tasks[0].Timeout: duration '8d' must be more than 0 and at most 604800 seconds "
        "(7 days)",
    ]


PYTHON_TASKS = """\
DataWells: [{Edge: out}]
Tasks:
  - {Name: a, Python: "tools:run", Outputs: [{Name: o}]}
  - {Name: b, Python: "tools:rnu", Outputs: [{Name: o}]}
  - {Name: c, Python: "tools:LIMIT", Outputs: [{Name: o}]}
  - {Name: d, Python: "nowhere:run", Outputs: [{Name: o}]}
  - {Name: e, Python: "broken:run", Outputs: [{Name: o}]}
  - {Name: f, Python: "raises:run", Outputs: [{Name: o}]}
Steps: [{ID: s, Uses: a, Outputs: [{Slot: o, Edge: out}]}]
"""


def test_validate_checks_that_python_tasks_import_in_a_child_process(tmp_path):
    marker = tmp_path / "imported-by"
    (tmp_path / "tools.py").write_text(
        f"import os\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\nLIMIT = 5\ndef run(**kw):\n    return {{}}\n"
    )
    (tmp_path / "broken.py").write_text("def run(:\n")
    (tmp_path / "raises.py").write_text("raise RuntimeError('needs a GPU')\n")
    (tmp_path / "tasks.yaml").write_text(PYTHON_TASKS)
    proc = subprocess.Popen([sys.executable, "-m", "flowengine", "validate", "tasks.yaml"], cwd=tmp_path,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert out.splitlines() == [
        "tasks.yaml: Tasks[1].Python: cannot call 'tools:rnu': module 'tools' has no 'rnu', did you mean 'run'?",
        "tasks.yaml: Tasks[2].Python: cannot call 'tools:LIMIT': 'LIMIT' in module 'tools' is not callable "
        "(it is of type int)",
        "tasks.yaml: Tasks[3].Python: cannot call 'nowhere:run': no module named 'nowhere' in the flows directory "
        "(or installed)",
        "tasks.yaml: Tasks[4].Python: cannot call 'broken:run': importing 'broken' failed: SyntaxError: invalid "
        "syntax (broken.py, line 1)",
        "tasks.yaml: Tasks[5].Python: cannot call 'raises:run': importing 'raises' failed: RuntimeError: needs a GPU",
    ]
    assert int(marker.read_text()) != proc.pid  # the operator's module ran in a child, not in the CLI


# --- what the user typed or configured: one line, exit 2 ---------------------------------------


CONFIG = ["serve", "--config", "c.yaml"]
USAGE_ERRORS = [  # files in the folder, arguments, environment, the one line expected (after "flowengine: ")
    ({}, ["validate", "nope.yaml"], {}, "nope.yaml: no such file or folder"),
    ({"empty/.keep": ""}, ["validate", "empty"], {}, "empty: no flow files (.yaml, .yml, .json) in this folder"),
    ({"notes.txt": "x"}, ["validate", "notes.txt"], {}, "notes.txt: not a flow file (expected .yaml, .yml, .json)"),
    ({}, ["serve", "--config", "nope.yaml"], {}, "nope.yaml: no such file"),
    ({"c.yaml": "port: [1\n"}, CONFIG, {}, "c.yaml: not valid YAML: line 2, column 1: "),
    ({"c.yaml": "[1, 2]\n"}, CONFIG, {}, "c.yaml: expected a mapping of settings (name: value), got a list"),
    ({"c.yaml": "prot: 8080\n"}, CONFIG, {}, "c.yaml: unknown key 'prot', did you mean 'port'?"),
    ({"c.yaml": "port: high\n"}, CONFIG, {}, "c.yaml: port: expected an integer from 0 to 65535, got the string"),
    ({}, ["serve"], {"FLOWENGINE_PORT": "abc"}, "FLOWENGINE_PORT: 'abc' is not an integer from 0 to 65535"),
    ({}, ["serve"], {"FLOWENGINE_UPLOAD_TTL": "soon"}, "FLOWENGINE_UPLOAD_TTL: duration 'soon' is not a number"),
    ({"flows": "a file"}, ["serve", "--flows-dir", "flows"], {}, "{cwd}/flows: the flows dir is not a directory"),
    ({}, ["serve", "--port", "70000"], {}, "--port: 70000 is not an integer from 0 to 65535"),
]


@pytest.mark.parametrize(("files", "args", "env", "line"), USAGE_ERRORS)
def test_usage_errors_are_one_line_and_exit_2(tmp_path, files, args, env, line):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    result = flowengine(*args, cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"flowengine: {line.format(cwd=tmp_path)}"), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything


def test_version_and_python_m_flowengine():
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert flowengine("--version").stdout == f"flowengine {version}\n"
    script = Path(sys.executable).parent / "flowengine"
    if script.exists():  # the console script, where this interpreter installed it
        assert subprocess.run([script, "--version"], capture_output=True, text=True).stdout == f"flowengine {version}\n"


# --- serve: --flows-dir and what it logs at start ---------------------------------------------


BROKEN_IMPORT = "DataWells: [{Edge: out}]\nTasks: [{Name: t, Python: 'tools:gone', Outputs: [{Name: o}]}]\n" \
    "Steps: [{ID: s, Uses: t, Outputs: [{Slot: o, Edge: out}]}]\n"  # fmt: skip


def test_serve_takes_a_flows_dir_and_logs_what_it_found(tmp_path):
    flows = tmp_path / "elsewhere" / "flows"
    flows.mkdir(parents=True)
    shutil.copy(REPO / "flows" / "checksum-report.yaml", flows)
    shutil.copy(REPO / "flows" / "filetools.py", flows)
    shutil.copytree(REPO / "flows" / "tasks", flows / "tasks")
    (flows / "tools.py").write_text("def run(**kw):\n    return {}\n")
    (flows / "broken.yaml").write_text(BROKEN_IMPORT)
    (tmp_path / "config.yaml").write_text(
        "stores:\n  - Name: media\n    Type: s3\n    Params: {endpoint: 127.0.0.1:9, bucket: media, "
        "secret_key: hunter2-very-secret}\n"
    )
    port, log = free_port(), tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWENGINE_")}
    env.update(FLOWENGINE_PROT="1", FLOWENGINE_S3_SECRET_KEY="another-secret")
    args = [sys.executable, "-m", "flowengine", "serve", "--port", str(port), "--flows-dir", "elsewhere/flows",
            "--config", "config.yaml"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}", log)
        started = httpx.post(f"http://127.0.0.1:{port}/api/v1/flow/checksum-report")
        assert started.status_code == 201, started.text
        deadline = time.monotonic() + 30
        while "problem(s)" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop(proc)
    text = log.read_text()
    for line in [
        f"flowengine {flowengine('--version').stdout.split()[1]} on http://127.0.0.1:{port}",
        f"data dir: {tmp_path / 'data'}",
        f"database: sqlite:///{tmp_path / 'data' / 'flowengine.db'}",
        f"flows dir: {flows}: 2 flow(s): broken, checksum-report",
        "task library: 5 task(s): checksum-report, compress, line-count, merge, sha256",
        "flow broken (broken.yaml) cannot run, 1 problem(s):",
        "broken.yaml: Tasks[0].Python: cannot call 'tools:gone': module 'tools' has no 'gone'",
        "stores: default (local, in the data dir), media (s3: endpoint=127.0.0.1:9, bucket=media)",
        "FLOWENGINE_PROT is not a setting and is ignored; did you mean FLOWENGINE_PORT?",
    ]:
        assert line in text, text
    assert "hunter2" not in text and "another-secret" not in text
