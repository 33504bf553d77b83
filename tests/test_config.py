"""Settings: absolute paths, durations, and errors that name the file, variable or flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowengine.config import Config, load_config, unknown_variables
from flowengine.errors import Error, Problem


@pytest.fixture
def started_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder the engine is started in."""
    folder = tmp_path / "here"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_default_paths_are_absolute_in_the_start_folder(started_in: Path):
    config = load_config(None, {})
    assert (config.data_dir, config.flows_dir) == (str(started_in / "data"), str(started_in / "flows"))


def test_paths_in_a_config_file_are_relative_to_its_folder(started_in: Path, tmp_path: Path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "config.yaml").write_text("data_dir: ./state\nflows_dir: ../shared/flows\n")
    config = load_config(etc / "config.yaml", {})
    assert (config.data_dir, config.flows_dir) == (str(etc / "state"), str(tmp_path / "shared" / "flows"))


def test_paths_from_the_environment_and_flags_are_relative_to_the_start_folder(started_in: Path, tmp_path: Path):
    (tmp_path / "config.yaml").write_text("data_dir: from-file\n")
    config = load_config(tmp_path / "config.yaml", {"FLOWENGINE_DATA_DIR": "from-env"}, flows_dir="from-flag")
    assert (config.data_dir, config.flows_dir) == (str(started_in / "from-env"), str(started_in / "from-flag"))
    assert Config(data_dir="direct").data_dir == str(started_in / "direct")  # however a Config is made
    assert load_config(None, {"FLOWENGINE_DATA_DIR": "~/fe"}).data_dir == str(Path.home() / "fe")


def test_the_database_is_sqlite_in_the_data_dir_unless_set(started_in: Path, tmp_path: Path):
    assert load_config(None, {}).database_url == f"sqlite:///{started_in / 'data' / 'flowengine.db'}"
    assert load_config(None, {}, data_dir="/srv/fe").database_url == "sqlite:////srv/fe/flowengine.db"
    # sqlite:///PATH is relative (to the config file's folder, or where the engine started), sqlite:////PATH absolute
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "config.yaml").write_text("database: sqlite:///state/engine.db\n")
    assert load_config(etc / "config.yaml", {}).database_url == f"sqlite:///{etc / 'state' / 'engine.db'}"
    assert load_config(None, {"FLOWENGINE_DATABASE": "sqlite:///e.db"}).database == f"sqlite:///{started_in / 'e.db'}"
    assert load_config(None, {"FLOWENGINE_DATABASE": "sqlite:////var/e.db"}).database == "sqlite:////var/e.db"
    assert Config(database="sqlite:///direct.db").database == f"sqlite:///{started_in / 'direct.db'}"
    url = "postgresql://fe:pw@db.internal:5432/flowengine?sslmode=require"
    assert load_config(None, {"FLOWENGINE_DATABASE": url}).database_url == url


@pytest.mark.parametrize(
    "value", ["mysql://root:hunter2@db/flowengine", "host=db password=hunter2", "sqlite:///", "sqlite://relative.db"]
)
def test_a_database_that_is_neither_sqlite_nor_postgresql_is_refused_without_echoing_it(tmp_path: Path, value: str):
    (tmp_path / "config.yaml").write_text(f"database: '{value}'\n")
    for where, load in [
        (str(tmp_path / "config.yaml"), lambda: load_config(tmp_path / "config.yaml", {})),
        ("FLOWENGINE_DATABASE", lambda: load_config(None, {"FLOWENGINE_DATABASE": value})),
    ]:
        with pytest.raises(Error) as caught:
            load()
        assert caught.value.message.startswith(f"{where}: ")
        assert any(
            f in caught.value.message
            for f in ("expected sqlite:///PATH or postgresql://", "sqlite:/// needs a path", "is sqlite:///PATH")
        )
        assert "hunter2" not in caught.value.message and "password" not in caught.value.message


def test_durations_take_strings_in_the_file_and_the_environment(tmp_path: Path):
    (tmp_path / "config.yaml").write_text("upload_ttl: 15m\ninput_retention: 1d\nreconcile_interval: 500ms\n")
    config = load_config(
        tmp_path / "config.yaml", {"FLOWENGINE_SWEEP_INTERVAL": "1h30m", "FLOWENGINE_DOWNLOAD_TTL": "90"}
    )
    assert (config.upload_ttl, config.input_retention, config.reconcile_interval) == (900.0, 86400.0, 0.5)
    assert (config.sweep_interval, config.download_ttl) == (5400.0, 90.0)


def test_every_problem_of_a_config_file_comes_at_once(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text("prot: 80\nconcurrency: many\nupload_ttl: soon\nsweep_interval: 0\nstores: [{Nme: x}]\n")
    with pytest.raises(Error) as caught:
        load_config(path, {})
    assert caught.value.location == str(path)
    assert caught.value.problems == [
        Problem("upload_ttl", "duration 'soon' is not a number with a unit ms, s, m, h or d, like '90s', '15m' or "
                              "'1h30m'"),
        Problem("sweep_interval", "duration 0 must be more than 0 seconds"),
        Problem("", "unknown key 'prot', did you mean 'port'?"),
        Problem("concurrency", "expected an integer (at least 1), got the string 'many'"),
        Problem("stores[0]", "unknown key 'Nme', did you mean 'Name'?"),
        Problem("stores[0]", "missing key 'Name'"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port: [1\n", "not valid YAML: line 2, column 1: "),
        ("- port: 1\n", "expected a mapping of settings (name: value), got a list"),
        ("just words\n", "expected a mapping of settings (name: value), got the string 'just words'"),
    ],
)
def test_a_config_file_that_is_not_settings_says_why(tmp_path: Path, text: str, message: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(Error) as caught:
        load_config(path, {})
    assert caught.value.message.startswith(f"{path}: {message}")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"FLOWENGINE_PORT": "abc"}, "FLOWENGINE_PORT: 'abc' is not an integer from 0 to 65535"),
        ({"FLOWENGINE_PORT": "65536"}, "FLOWENGINE_PORT: '65536' is not an integer from 0 to 65535"),
        ({"FLOWENGINE_INLINE_FLOWS": "maybe"}, "FLOWENGINE_INLINE_FLOWS: 'maybe' is not true or false"),
        ({"FLOWENGINE_UPLOAD_TTL": "-5"}, "FLOWENGINE_UPLOAD_TTL: duration '-5' is not a number with a unit"),
    ],
)
def test_a_bad_environment_value_names_its_variable(environ: dict[str, str], message: str):
    with pytest.raises(Error) as caught:
        load_config(None, environ)
    assert caught.value.message.startswith(message)


def test_a_bad_flag_names_the_flag():
    with pytest.raises(Error, match=r"^--port: 70000 is not an integer from 0 to 65535$"):
        load_config(None, {}, port=70000)


def test_unknown_variables_are_named_with_the_setting_meant():
    assert unknown_variables({"FLOWENGINE_PROT": "1", "FLOWENGINE_URL": "x", "FLOWENGINE_PORT": "1", "PATH": "/"}) == [
        "FLOWENGINE_PROT is not a setting and is ignored; did you mean FLOWENGINE_PORT?"
    ]
    assert unknown_variables({"FLOWENGINE_STORES": "[]"}) == [
        "FLOWENGINE_STORES is ignored: stores are defined in the config file"
    ]
