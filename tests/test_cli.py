"""`flowengine validate` and the settings it and `serve` read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from flowengine.config import load_config

REPO = Path(__file__).resolve().parent.parent


def validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowengine.cli", "validate", *args], capture_output=True, text=True)


def test_the_shipped_flows_are_valid():
    result = validate(str(REPO / "flows"))
    assert result.returncode == 0, result.stdout
    assert result.stdout.count(": ok") >= 2


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


def test_the_documented_config_file_lists_every_setting_with_its_default():
    documented = load_config(REPO / "config.yaml", {})
    assert documented == load_config(None, {})
    text = (REPO / "config.yaml").read_text()
    import msgspec

    from flowengine.config import Config

    for field in msgspec.structs.fields(Config):
        assert f"{field.name}:" in text, field.name
