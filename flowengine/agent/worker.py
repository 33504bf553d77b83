"""The reference agent (`flowengine agent`): registers with an engine, long-polls for leases, runs
`exec` and `python` steps, and `comfyui` ones on a ComfyUI server (`--comfyui-url`, through comfyui.py),
and reports, over the protocol of `/api/v1/agent/` (README "Agents", "ComfyUI steps").

It never holds store credentials: it downloads inputs from the lease's presigned GET URLs and
uploads outputs to its presigned PUT URLs, streamed. Steps run as the engine's local executor runs
them (the same argv expansion, the same Python calling convention through the `pyrun` shim), in a
scratch dir of their own with an explicit environment. One heartbeat per interval covers every lease
and says which to cancel. When the engine is away the agent retries with a growing backoff; on
SIGTERM it stops leasing, lets running steps finish for a grace period, and releases the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import re
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec

from flowengine import version
from flowengine.agent import comfyui
from flowengine.aio import wait_event
from flowengine.core.machine import MAX_FILES
from flowengine.runtime.executors import pyrun
from flowengine.runtime.steps import STEP_PATH, expand_arg

log = logging.getLogger("flowengine.agent")
BACKOFF_FIRST, BACKOFF_MOST = 0.5, 30.0  # seconds between tries while the engine is away
LOG_EVERY = 1.0  # seconds between log chunks sent while a step runs
COMFYUI_TIMEOUT = 10.0  # seconds ComfyUI has to answer /system_stats before it counts as away
_COMFY_NAME = re.compile(r"[^.]+\.[^.]+\.[0-9]+")  # a file of a ComfyUI prompt: <node>.<kind>.<i>
_MORE_PER_CALL = MAX_FILES  # files beyond the first asked for in one call (the most the engine takes)
T = TypeVar("T")


class Options(msgspec.Struct, kw_only=True):
    server: str
    key: str
    name: str
    labels: list[str] = []
    region: str = ""
    concurrency: int = 1
    community: bool = False
    work_dir: Path = Path(".")
    grace: float = 30.0  # seconds running steps may finish after SIGTERM before they are released
    poll: float = 25.0  # seconds a lease call waits for work
    comfyui_url: str = ""  # the ComfyUI server comfyui steps run on; "": this agent takes none


class StepFailed(Exception):
    """An attempt that did not give its outputs: `retryable` says whether another attempt may."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class Gone(Exception):
    """The engine says the lease or the session is no longer ours (409)."""


class Agent:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.http = httpx.AsyncClient(base_url=options.server.rstrip("/"), timeout=httpx.Timeout(30, read=90),
                                      headers={"Authorization": f"Bearer {options.key}"})  # fmt: skip
        # Presigned URLs carry their own authority: sent without the agent's key, on connections of their own.
        self.plain = httpx.AsyncClient(timeout=httpx.Timeout(30, read=300, write=300))
        self.session = ""
        self.heartbeat_interval = 10.0
        self.running: dict[str, asyncio.Task] = {}  # lease id -> its step
        self.tokens: dict[str, str] = {}
        self.stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self.comfyui_up: bool | None = None  # ComfyUI answered when last asked (None: not asked yet)
        self._beat_now = asyncio.Event()  # the tools it offers changed: say so without waiting

    # talking to the engine

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        """One call; a 409 is Gone, any other refusal an HTTPStatusError, the engine away a TransportError."""
        answer = await self.http.post(path, json=body)
        if answer.status_code == 409:
            raise Gone(answer.text)
        answer.raise_for_status()
        return answer.json()

    async def _patiently(self, path: str, body: dict[str, Any]) -> Any:
        """A call tried again, with a growing backoff, while the engine is away or overloaded."""
        delay = BACKOFF_FIRST
        while True:
            try:
                return await self._post(path, body)
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
                if status is not None and status < 500 and status != 429:
                    raise
                log.warning("%s: the engine did not answer (%s); again in %.1fs", path, status or exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MOST)

    def tools(self) -> list[str]:
        """The tools it offers now: comfyui only while its ComfyUI answers."""
        return ["exec", "python", *([comfyui.TOOL] if self.comfyui_up else [])]

    async def _ask_comfyui(self) -> comfyui.SystemStats | None:
        """ComfyUI's facts, or None when it does not answer; a change is logged, and changes `tools()`."""
        try:
            stats = await comfyui.check(self.options.comfyui_url, COMFYUI_TIMEOUT)
        except comfyui.ComfyUIError as exc:
            if self.comfyui_up is not False:
                log.warning("%s: taking no comfyui steps until it answers", exc.message)
            self.comfyui_up = False
            return None
        if not self.comfyui_up:
            log.info("ComfyUI %s answers: taking comfyui steps", stats.comfyui_version)
        self.comfyui_up = True
        return stats

    async def register(self) -> None:
        system = _system()
        if self.options.comfyui_url and (stats := await self._ask_comfyui()):
            system.update(_comfy_facts(stats))
        body = {"name": self.options.name, "labels": self.options.labels, "tools": self.tools(),
                "region": self.options.region, "capacity": self.options.concurrency,
                "community": self.options.community, "system": system}  # fmt: skip
        answer = await self._patiently("/api/v1/agent/register", body)
        self.session = answer["session"]
        self.heartbeat_interval = answer["heartbeat_interval"]
        log.info("registered as %s", answer["agent_id"])

    # the loops

    async def run(self) -> None:
        """Until SIGTERM (or `stopping` is set): lease, run, report."""
        self.options.work_dir.mkdir(parents=True, exist_ok=True)
        await self.register()
        loops = [asyncio.create_task(self._heartbeats())]
        if self.options.comfyui_url:
            loops.append(asyncio.create_task(self._watch_comfyui()))
        try:
            await self._lease_loop()
        finally:
            await self._wind_down()
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self.http.aclose()
            await self.plain.aclose()

    async def _lease_loop(self) -> None:
        while not self.stopping.is_set():
            free = self.options.concurrency - len(self.running)
            if free <= 0:
                self._slot_freed.clear()
                await _first(self._slot_freed.wait(), self.stopping.wait())
                continue
            body = {"session": self.session, "wait": self.options.poll, "slots": free}
            try:
                leases = await _first(self._patiently("/api/v1/agent/lease", body), self.stopping.wait()) or {}
            except Gone:  # another process registered under this name, or the engine lost us: a new session
                await self.register()
                continue
            for lease in leases["leases"] if isinstance(leases, dict) else []:
                if lease["lease_id"] not in self.running and not self.stopping.is_set():
                    self._start(lease)

    async def _heartbeats(self) -> None:
        while True:
            await wait_event(self._beat_now, self.heartbeat_interval)
            self._beat_now.clear()
            try:
                answer = await self._post("/api/v1/agent/heartbeat", {"session": self.session,
                                          "running": list(self.running), "tools": self.tools()})  # fmt: skip
            except (httpx.HTTPError, Gone) as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            for lease_id in [*answer["cancel"], *answer["lost"]]:
                task = self.running.get(lease_id)
                if task is not None:
                    log.info("lease %s: %s", lease_id, "cancelled" if lease_id in answer["cancel"] else "lost")
                    task.cancel()

    async def _watch_comfyui(self) -> None:
        """Ask ComfyUI every heartbeat interval: while it does not answer the agent offers no comfyui steps
        (its next heartbeat, sent at once, says so), and offers them again once it does. A step it runs
        meanwhile fails as retryable when ComfyUI stays away (comfyui.run_graph's `unreachable_grace`)."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            was = self.comfyui_up
            await self._ask_comfyui()
            if self.comfyui_up != was:
                self._beat_now.set()

    async def _wind_down(self) -> None:
        """Running steps get `grace` seconds to finish; the rest are stopped and their leases released."""
        if self.running:
            await asyncio.wait(list(self.running.values()), timeout=self.options.grace)
        for lease_id, task in list(self.running.items()):
            token = self.tokens[lease_id]  # before the task ends: its end forgets it
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            with contextlib.suppress(httpx.HTTPError, Gone):
                await self._post(f"/api/v1/agent/leases/{lease_id}/release", {"token": token})
                log.info("lease %s released", lease_id)

    def _start(self, lease: dict[str, Any]) -> None:
        lease_id = lease["lease_id"]
        self.tokens[lease_id] = lease["token"]
        task = asyncio.create_task(self._serve(lease))
        self.running[lease_id] = task

        def done(_: asyncio.Task) -> None:
            self.running.pop(lease_id, None)
            self.tokens.pop(lease_id, None)
            self._slot_freed.set()

        task.add_done_callback(done)

    # one step

    async def _serve(self, lease: dict[str, Any]) -> None:
        lease_id, token = lease["lease_id"], lease["token"]
        calls = f"/api/v1/agent/leases/{lease_id}"
        try:
            await self._post(f"{calls}/ack", {"token": token})
        except (Gone, httpx.HTTPError) as exc:
            log.info("lease %s not taken: %s", lease_id, exc)
            return
        scratch = self.options.work_dir / lease_id
        shutil.rmtree(scratch, ignore_errors=True)
        reporter = _Logs(self, calls, token)
        try:
            try:
                outcome = await self._attempt(lease, scratch, reporter)
            except (OSError, msgspec.MsgspecError) as exc:  # the step's answer, or this machine's disk
                outcome = {"error": f"{type(exc).__name__}: {exc}", "retryable": True}
            await reporter.flush()
            report = {"token": token, "logs": reporter.pending(), **outcome}
            action = "complete" if "outputs" in outcome else "fail"
            await self._patiently(f"{calls}/{action}", report)
        except Gone:
            log.info("lease %s: no longer ours; its report was refused", lease_id)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def _attempt(self, lease: dict[str, Any], scratch: Path, reporter: _Logs) -> dict[str, Any]:
        """Download, run, upload: `{"outputs": ...}` on success, `{"error", "retryable"}` otherwise."""
        inputs: dict[str, Path] = {}
        try:
            for slot, given in lease["inputs"].items():
                inputs[slot] = scratch / "in" / slot / given["name"]
                await self._download(given["url"], inputs[slot])
        except httpx.HTTPError as exc:
            return {"error": f"downloading an input failed: {exc}", "retryable": True}
        try:
            if lease["tool"] == comfyui.TOOL:
                outputs = await self._comfyui(lease, scratch, inputs, reporter)
            else:
                outputs = await self._process(lease, scratch, inputs, reporter)
        except StepFailed as exc:
            return {"error": exc.message, "retryable": exc.retryable}
        try:
            more = await self._more_urls(lease, [slot for slot in outputs if slot not in lease["outputs"]])
        except httpx.HTTPStatusError as exc:  # the engine takes no such file: another attempt gives the same
            return {"error": f"the engine refused the step's files: {exc.response.text}", "retryable": False}
        urls = {**lease["outputs"], **more}
        written = {}
        try:
            for slot, path in outputs.items():
                given = urls[slot]
                written[slot] = {"size": await self._upload(given["url"], given["headers"], path),
                                 "content_type": given["content_type"]}  # fmt: skip
        except FileNotFoundError as exc:
            return {"error": f"output not written: {exc.filename}", "retryable": True}
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 409:
                raise Gone(exc.response.text) from None
            return {"error": f"uploading an output failed: {exc}", "retryable": True}
        return {"outputs": written}

    async def _more_urls(self, lease: dict[str, Any], slots: list[str]) -> dict[str, Any]:
        """Upload URLs for the files beyond the first of numbered outputs (`9.images.1`, ...), asked for once
        the step has run: only then is their number known."""
        urls: dict[str, Any] = {}
        for i in range(0, len(slots), _MORE_PER_CALL):
            body = {"token": lease["token"], "slots": slots[i : i + _MORE_PER_CALL]}
            urls.update((await self._patiently(f"/api/v1/agent/leases/{lease['lease_id']}/outputs", body))["outputs"])
        return urls

    async def _process(self, lease: dict[str, Any], scratch: Path, inputs: dict[str, Path],
                       reporter: _Logs) -> dict[str, Path]:  # fmt: skip
        """An exec or python step, run as the engine's local executor runs it: the files of its outputs."""
        outputs = {slot: scratch / "out" / slot / given["name"] for slot, given in lease["outputs"].items()}
        for path in [p.parent for p in outputs.values()]:
            path.mkdir(parents=True, exist_ok=True)
        payload, flags = lease["payload"], lease["flags"]
        answer = None
        if "exec" in payload:
            values = {**{s: str(p) for s, p in {**inputs, **outputs}.items()}, **{k: str(v) for k, v in flags.items()}}
            argv = [expand_arg(a, values) for a in payload["exec"]]
        elif "python" in payload:
            answer = scratch / "answer.json"
            request = pyrun.Request(payload["python"], {s: str(p) for s, p in inputs.items()}, flags, str(scratch),
                                    str(answer))  # fmt: skip
            (scratch / "request.json").write_bytes(msgspec.json.encode(request))
            argv = [sys.executable, "-B", "-P", pyrun.__file__, str(scratch / "request.json")]
        else:
            raise StepFailed(f"this agent does not run {lease['tool']!r} steps", retryable=False)
        env = {"PATH": STEP_PATH, "LANG": "C.UTF-8", "HOME": str(scratch), "TMPDIR": str(scratch),
               **payload.get("env", {}), "FLOWENGINE_RUN_ID": lease["run_id"], "FLOWENGINE_STEP_ID": lease["step"],
               "FLOWENGINE_ATTEMPT": str(lease["attempt"])}  # fmt: skip
        if "python" in payload and os.environ.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ["PYTHONPATH"], env.get("PYTHONPATH")) if p)
        code = await _run(argv, scratch, env, lease["timeout"], reporter)
        if code is None:
            raise StepFailed(f"timed out after {lease['timeout']:g}s", retryable=True)
        if code != 0:
            raise StepFailed(f"exited with status {code}", retryable=True)
        if answer is not None:
            returned = msgspec.json.decode(answer.read_bytes(), type=dict[str, str])
            outputs.update({s: (scratch / p if not os.path.isabs(p) else Path(p)) for s, p in returned.items()
                            if s in outputs})  # fmt: skip
        return outputs

    async def _comfyui(self, lease: dict[str, Any], scratch: Path, inputs: dict[str, Path],
                       reporter: _Logs) -> dict[str, Path]:  # fmt: skip
        """A comfyui step: its graph run on the ComfyUI server as the prompt named by the lease id (asking
        again for a lease already run follows the prompt ComfyUI has, rather than queueing it twice);
        the files of its outputs."""
        payload = lease["payload"]
        if not self.options.comfyui_url:
            raise StepFailed("this agent has no ComfyUI (--comfyui-url)", retryable=True)
        if not isinstance(payload.get("graph"), dict):
            raise StepFailed("the step carries no ComfyUI graph: run it as a task of a comfyui workflow",
                             retryable=False)  # fmt: skip
        files = {(node["node_id"], node["field"]): inputs[slot]
                 for slot, node in payload.get("files", {}).items() if slot in inputs}  # fmt: skip
        try:
            produced = await comfyui.run_graph(self.options.comfyui_url, payload["graph"], files, lease["lease_id"],
                                               scratch / "out", reporter.progress, lease["timeout"])  # fmt: skip
        except comfyui.ComfyUIError as exc:
            for line in exc.traceback.splitlines():
                reporter.add(line)
            raise StepFailed(exc.message, retryable=exc.retryable) from None
        for output in produced:
            reporter.add(f"output {output.name}: {output.filename}, {output.size} bytes")
        return _comfy_outputs(list(lease["outputs"]), produced)

    async def _download(self, url: str, dest: Path) -> None:
        await _again_while_away(lambda: self._get(url, dest))

    async def _upload(self, url: str, headers: dict[str, str], path: Path) -> int:
        return await _again_while_away(lambda: self._put(url, headers, path))

    async def _get(self, url: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        async with self.plain.stream("GET", url) as got:
            got.raise_for_status()
            with open(dest, "wb") as f:
                async for chunk in got.aiter_bytes(1 << 20):
                    f.write(chunk)

    async def _put(self, url: str, headers: dict[str, str], path: Path) -> int:
        size = path.stat().st_size

        async def chunks() -> Any:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk

        put = await self.plain.put(url, content=chunks(), headers={**headers, "Content-Length": str(size)})
        put.raise_for_status()
        return size


class _Logs:
    """A step's output lines, sent as numbered chunks while it runs; the rest go with its report."""

    def __init__(self, agent: Agent, calls: str, token: str) -> None:
        self.agent, self.calls, self.token = agent, calls, token
        self.seq = 0
        self.unsent: list[dict[str, Any]] = []
        self.said = ""  # the last progress message, also a line of the log

    def add(self, line: str) -> None:
        self.seq += 1
        self.unsent.append({"seq": self.seq, "text": line})

    async def flush(self) -> None:
        if not self.unsent:
            return
        chunks, self.unsent = self.unsent, []
        try:
            await self.agent._post(f"{self.calls}/progress", {"token": self.token, "logs": chunks})
        except httpx.HTTPError:
            self.unsent = chunks + self.unsent  # sent again later: numbered, so never twice in the log

    async def progress(self, progress: comfyui.Progress) -> None:
        """How far the step is, with the lines logged since the last report."""
        if progress.message and progress.message != self.said:
            self.said = progress.message
            self.add(progress.message)
        chunks, self.unsent = self.unsent, []
        body = {"token": self.token, "fraction": progress.fraction, "step": progress.current_node or "",
                "message": progress.message, "step_current": progress.step_current, "step_total": progress.step_total,
                "logs": chunks}  # fmt: skip
        try:
            await self.agent._post(f"{self.calls}/progress", body)
        except (httpx.HTTPError, Gone) as exc:  # a lost lease is the heartbeat's to stop
            self.unsent = chunks + self.unsent
            log.warning("%s: progress not reported: %s", self.calls, exc)

    def pending(self) -> list[dict[str, Any]]:
        chunks, self.unsent = self.unsent, []
        return chunks


async def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float, logs: _Logs) -> int | None:
    """Run the step's process in a session of its own; None when it was killed at the timeout. A
    cancel (the engine's, or SIGTERM's grace over) kills it and all it started."""
    proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, start_new_session=True)  # fmt: skip

    async def pump() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            logs.add(line.decode(errors="replace").rstrip("\n"))

    async def send() -> None:
        while True:
            await asyncio.sleep(LOG_EVERY)
            await logs.flush()

    reading, sending = asyncio.create_task(pump()), asyncio.create_task(send())
    try:
        async with asyncio.timeout(timeout):
            await reading
            return await proc.wait()
    except TimeoutError:
        return None
    finally:
        sending.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await proc.wait()


async def _again_while_away(transfer: Callable[[], Awaitable[T]]) -> T:
    """A transfer tried again, with a growing backoff, while the store (the engine, for its embedded
    store) does not answer or answers 5xx; until the lease is lost, which cancels it."""
    delay = BACKOFF_FIRST
    while True:
        try:
            return await transfer()
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code < 500:
                raise
            log.warning("a transfer failed (%s); again in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MOST)


async def _first(*aws: Any) -> Any:
    """The result of whichever finishes first (the others are cancelled); None if it was a wait."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    first = next(iter(done))
    return first.result() if first is tasks[0] else None


_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}  # platform_arch as the reference writes it (linux/amd64)


def _system() -> dict[str, Any]:
    machine = platform.machine().lower()
    arch = f"{platform.system().lower()}/{_ARCH.get(machine, machine)}"
    return {"os_type": sys.platform, "python_version": sys.version.split()[0], "cpus": os.cpu_count() or 1,
            "agent_version": version(), "platform_arch": arch}  # fmt: skip


def _comfy_facts(stats: comfyui.SystemStats) -> dict[str, Any]:
    """What an agent with ComfyUI registers besides: ComfyUI's version and its GPUs as ComfyUI lists
    them (the reference's `gpu_devices`; the first is the task's `gpu_type`)."""
    gpus = [msgspec.structs.asdict(d) for d in stats.gpu_devices if d.device_type != "cpu"]
    return {"comfyui_version": stats.comfyui_version, "pytorch_version": stats.pytorch_version, "gpu_devices": gpus}


def _comfy_outputs(slots: list[str], produced: list[comfyui.Output]) -> dict[str, Path]:
    """The file each output slot of a comfyui step takes: a slot named like a file of the prompt
    (`9.images.0`) that file; any other slot the files no slot names, in the prompt's order. Then each
    file left that is one more of a slot numbered `.0` (`9.images.1`), under its own name: the engine
    gives it an upload URL and an output of its own."""
    named = {output.name: output.path for output in produced}
    rest = [output for output in produced if output.name not in slots]
    chosen = {}
    for slot in slots:
        if slot in named:
            chosen[slot] = named[slot]
        elif rest and not _COMFY_NAME.fullmatch(slot):
            chosen[slot] = rest.pop(0).path
        else:
            gave = ", ".join(named) or "no file"
            raise StepFailed(f"the graph gave no file for output {slot!r} (it gave {gave})", retryable=False)
    chosen.update((o.name, o.path) for o in rest if o.name.rpartition(".")[0] + ".0" in slots)
    return chosen


def main(options: Options) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent = Agent(options)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, agent.stopping.set)
        loop.add_signal_handler(signal.SIGINT, agent.stopping.set)
        await agent.run()

    asyncio.run(run())
    return 0
