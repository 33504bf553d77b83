"""The distribution a user installs: its license, classifiers, type hints marker and entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_license_is_the_full_apache_2_text():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text


def test_the_wheel_carries_the_license_classifiers_and_py_typed(tmp_path: Path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "flowengine", source / "flowengine", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path / "dist"), "."],
        cwd=source, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("flowengine-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        licenses = [n for n in names if ".dist-info/" in n and n.endswith("LICENSE")]
        assert licenses and archive.read(licenses[0]) == (REPO / "LICENSE").read_bytes()
    assert {"flowengine/py.typed", "flowengine/__main__.py"} <= set(names)
    migrations = {str(p.relative_to(REPO)) for p in (REPO / "flowengine/persistence/migrations").glob("*/*.sql")}
    assert migrations and migrations <= set(names)  # read at run time: the schema
    assert "Classifier: License :: OSI Approved :: Apache Software License" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    assert "Apache-2.0" in metadata
    assert "flowengine = flowengine.cli:main" in entry_points
