"""Python tasks for the flows in this directory (stdlib only).

The engine calls each one as `function(inputs={slot: path}, flags={...}, workdir=path)` in a
fresh work dir and stores the file it returns for each output slot. Files are read in chunks,
so a task's memory does not grow with the size of what was uploaded.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import shutil
import subprocess
import time
from pathlib import Path

CHUNK = 1 << 20  # 1 MiB: big enough to hash at disk speed, small enough to never matter for memory


def _int_flag(flags: dict, name: str, default: int, low: int, high: int) -> int:
    """A whole-number flag within bounds; a step may set it as a string ("32") as well as a number."""
    value = int(flags.get(name, default))
    if not low <= value <= high:
        raise ValueError(f"flag {name!r} must be between {low} and {high}, got {value}")
    return value


def _bool_flag(flags: dict, name: str, default: bool) -> bool:
    value = flags.get(name, default)
    if isinstance(value, str):  # "false" must not count as true
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _detect_mime(path: Path) -> tuple[str, str]:
    """(MIME type, how it was found): libmagic's `file` looks at the bytes; mimetypes only at the name."""
    if shutil.which("file"):
        done = subprocess.run(
            ["file", "--brief", "--mime-type", "--", str(path)], capture_output=True, text=True, timeout=60
        )
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip(), "file"
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream", "mimetypes"


def checksum_report(inputs: dict[str, str], flags: dict, workdir: str) -> dict[str, str]:
    """Input slot `file` -> output slot `report`: a JSON report of size, digests, type and first bytes."""
    source = Path(inputs["file"])
    head_size = _int_flag(flags, "head_bytes", 32, 0, 4096)
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    size, head = 0, b""
    with source.open("rb") as f:
        while chunk := f.read(CHUNK):
            if len(head) < head_size:
                head += chunk[: head_size - len(head)]
            sha256.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    mime, mime_source = _detect_mime(source)
    report = {
        "name": source.name,
        "size": size,
        "sha256": sha256.hexdigest(),
        "md5": md5.hexdigest(),
        "mime_type": mime,
        "mime_source": mime_source,
        "head_hex": head.hex(),
        "head_bytes": len(head),
        "run_id": os.environ.get("FLOWENGINE_RUN_ID", ""),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(workdir) / "report.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    return {"report": str(out)}


def merge(inputs: dict[str, str], flags: dict, workdir: str) -> dict[str, str]:
    """Input slots `first`, `second` -> output slot `merged`: `first`, then `second`, streamed.

    Flags: `separator` is written between the two files, as UTF-8 (in YAML, "\\n" in double quotes
    is a newline); `skip_second_header` drops the second file's first line, for CSV files that
    both carry the same header.
    A missing final newline on either file is added: the first file's last line never runs into
    the second, and line counts downstream (`wc -l` counts newlines) see every line.
    """
    separator = str(flags.get("separator", "")).encode()
    skip_header = _bool_flag(flags, "skip_second_header", False)
    out = Path(workdir) / "merged.txt"
    with out.open("wb") as dest:
        with open(inputs["first"], "rb") as src:
            _end_line(dest, _copy(src, dest))
        dest.write(separator)
        with open(inputs["second"], "rb") as src:
            if skip_header:
                _skip_line(src)
            _end_line(dest, _copy(src, dest))
    return {"merged": str(out)}


def _end_line(dest, last: bytes) -> None:
    """Finish a file's last line if it had no newline (`last`: the last byte written)."""
    if last not in (b"", b"\n"):
        dest.write(b"\n")


def _copy(src, dest) -> bytes:
    """Copy in chunks; returns the last byte copied (b"" for an empty file)."""
    last = b""
    while chunk := src.read(CHUNK):
        dest.write(chunk)
        last = chunk[-1:]
    return last


def _skip_line(src) -> None:
    """Advance past the first newline, reading in chunks (a header line may be long)."""
    while chunk := src.read(CHUNK):
        end = chunk.find(b"\n")
        if end != -1:
            src.seek(end + 1 - len(chunk), os.SEEK_CUR)
            return
