"""A stand-in ComfyUI for the tests: a real HTTP and websocket server on a loopback port that answers as
ComfyUI 0.3.64 does (its routes, JSON shapes, status codes, upload form, queue, history entries and
websocket messages in their order), and executes the model-free nodes LoadImage, ImageInvert, RepeatImageBatch,
SaveImage and PreviewImage for real, on image files. Written from reading ComfyUI's server.py, execution.py and
main.py and checked by hand against a running ComfyUI 0.3.64 (README, "ComfyUI steps"); it holds none of
ComfyUI's code.

What real ComfyUI does and this does too: a prompt_id posted twice is queued and run twice; node outputs
are cached across prompts by the signature of their inputs (an unchanged node does not run again, and its
outputs come back from the cache); an interrupt that lands before a prompt starts executing is forgotten;
ImageInvert then SaveImage computes in float32 and truncates, so 200 becomes 54, not 55.

Knobs make it misbehave the ways a real one is known to: `ws_drop` (message types never delivered),
`ws_close_after` (the next socket is closed after that many messages), `ws_refuse` (no socket at all),
`node_delay` and `progress_steps` (every node takes that long, reporting steps like a sampler). A graph is
rejected, and a node fails, the way they do in ComfyUI: with an invalid graph, or an input file that is
no image. `/view`'s `preview` and `channel` options and the frontend's routes are not served.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import heapq
import json
import logging
import mimetypes
import os
import random
import re
import socket
import struct
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

log = logging.getLogger("comfy_standin")

VERSION = "0.3.64"
HISTORY_LIMIT = 10000
# every kind of JSON message the websocket carries (for ws_drop)
MESSAGES = frozenset({
    "status", "feature_flags", "execution_start", "execution_cached", "executing", "progress", "progress_state",
    "executed", "execution_success", "execution_error", "execution_interrupted",
})  # fmt: skip
MAX_UPLOAD_SIZE = 100 * 1024 * 1024


class Json(JSONResponse):
    """JSON as aiohttp writes it (json.dumps' defaults), which is not Starlette's compact form."""

    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        return json.dumps(content).encode()


class Interrupted(Exception):
    """ComfyUI's InterruptProcessingException."""


def f32(x: float) -> float:
    """`x` rounded to float32, as torch computes an IMAGE."""
    return struct.unpack("f", struct.pack("f", x))[0]


@dataclass
class Picture:
    """An IMAGE: the loaded pixels and the float32 value each byte value of them now stands for (ComfyUI
    holds a float32 tensor; a node that maps values one by one maps this table instead)."""

    image: Image.Image
    values: list[float] = field(default_factory=lambda: [f32(f32(v) / 255.0) for v in range(256)])

    def pixels(self) -> Image.Image:
        """What SaveImage writes: 255 * value, clipped, truncated to a byte."""
        table = [int(min(max(f32(255.0 * v), 0.0), 255.0)) for v in self.values]
        return self.image.point(table * len(self.image.getbands()))


@dataclass(frozen=True)
class Node:
    """A node class: its inputs as ComfyUI declares them (`(type, options)`), what it returns, and how it
    runs: run(server, prompt, node_id, **inputs) -> (outputs, ui)."""

    display_name: str
    required: dict[str, tuple[Any, ...]]
    returns: tuple[str, ...]
    run: Callable[..., tuple[tuple[Any, ...], dict[str, Any] | None]]
    output_node: bool = False
    description: str = ""
    hidden: dict[str, str] = field(default_factory=dict)
    validate: Callable[..., bool | str] | None = None  # VALIDATE_INPUTS: it, not the type, checks its inputs
    is_changed: Callable[..., str] | None = None


Batch = list[Picture]  # an IMAGE is a batch of images, as ComfyUI's [B, H, W, C] tensor


def load_image(server: StandIn, prompt: dict[str, Any], node_id: str, image: str) -> tuple[tuple[Any, ...], None]:
    with Image.open(server.annotated_path(image)) as opened:
        picture = ImageOps.exif_transpose(opened).convert("RGB")
    return ([Picture(picture)], None), None


def invert(server: StandIn, prompt: dict[str, Any], node_id: str, image: Batch) -> tuple[tuple[Any, ...], None]:
    return ([Picture(p.image, [f32(1.0 - v) for v in p.values]) for p in image],), None


def repeat_batch(
    server: StandIn, prompt: dict[str, Any], node_id: str, image: Batch, amount: int
) -> tuple[tuple[Any, ...], None]:
    return (image * int(amount),), None


def save_images(
    folder: str, prefix_extra: str, compress_level: int
) -> Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]:
    def run(
        server: StandIn, prompt: dict[str, Any], node_id: str, images: Batch, filename_prefix: str = "ComfyUI"
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        root = server.folders[folder]
        prefix = os.path.normpath(filename_prefix + prefix_extra)
        subfolder, base = os.path.dirname(prefix), os.path.basename(prefix)
        directory = os.path.abspath(os.path.join(root, subfolder))
        if os.path.commonpath((root, directory)) != root:
            raise Exception("**** ERROR: Saving image outside the output folder is not allowed.")
        os.makedirs(directory, exist_ok=True)
        numbers = [int(m.group(1)) for f in os.listdir(directory) if (m := re.match(rf"{re.escape(base)}_(\d+)_", f))]
        counter = max(numbers, default=0) + 1
        info = PngInfo()
        info.add_text("prompt", server.json_text(prompt))
        saved = []
        for i, picture in enumerate(images):  # one file each, numbered on, as ComfyUI's SaveImage does
            name = f"{base.replace('%batch_num%', str(i))}_{counter + i:05}_.png"
            picture.pixels().save(os.path.join(directory, name), pnginfo=info, compress_level=compress_level)
            saved.append({"filename": name, "subfolder": subfolder, "type": folder})
        return (), {"images": saved}

    return run


def validate_load_image(server: StandIn, image: str) -> bool | str:
    return True if os.path.exists(server.annotated_path(image)) else f"Invalid image file: {image}"


def image_hash(server: StandIn, image: str) -> str:
    return hashlib.sha256(Path(server.annotated_path(image)).read_bytes()).hexdigest()


_PREFIX_TIP = (
    "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% "
    "or %Empty Latent Image.width% to include values from nodes."
)
_SAVES = "Saves the input images to your ComfyUI output directory."
_PNG_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}

NODES: dict[str, Node] = {
    "LoadImage": Node(
        "Load Image", {"image": ("COMBO", {"image_upload": True})}, ("IMAGE", "MASK"), load_image,
        validate=validate_load_image, is_changed=image_hash,
    ),
    "ImageInvert": Node("Invert Image", {"image": ("IMAGE",)}, ("IMAGE",), invert),
    "RepeatImageBatch": Node(
        "RepeatImageBatch", {"image": ("IMAGE",), "amount": ("INT", {"default": 1, "min": 1, "max": 4096})},
        ("IMAGE",), repeat_batch,
    ),
    "SaveImage": Node(
        "Save Image",
        {"images": ("IMAGE", {"tooltip": "The images to save."}),
         "filename_prefix": ("STRING", {"default": "ComfyUI", "tooltip": _PREFIX_TIP})},
        (), save_images("output", "", 4), output_node=True, description=_SAVES, hidden=_PNG_HIDDEN,
    ),
    "PreviewImage": Node(
        "Preview Image", {"images": ("IMAGE",)}, (),
        save_images("temp", "_temp_" + "".join(random.choices("abcdefghijklmnopqrstupvxyz", k=5)), 1),
        output_node=True, description=_SAVES, hidden=_PNG_HIDDEN,
    ),
}  # fmt: skip


def trouble() -> Response:
    """aiohttp's answer to a handler that raised (a body that is no JSON, an upload of an unknown type)."""
    return Response("500 Internal Server Error\n\nServer got itself in trouble", 500, media_type="text/plain")


def guarded(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception:
            log.exception("Error handling request")
            return trouble()

    return run


def reason(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class Socket:
    """One websocket client, with the knobs that make it lose messages."""

    def __init__(self, websocket: WebSocket, close_after: int | None) -> None:
        self.websocket = websocket
        self.close_after = close_after
        self.delivered = 0

    async def deliver(self, message: dict[str, Any], drop: set[str]) -> None:
        if message["type"] in drop:
            return
        try:
            if self.close_after is not None and self.delivered >= self.close_after:
                await self.websocket.close(1011)
                return
            await self.websocket.send_text(json.dumps(message))
            self.delivered += 1
        except Exception:  # ComfyUI logs a send error and goes on
            pass


class StandIn:
    """The server; start() it (or use it as a context manager), then point a driver at `url`."""

    def __init__(self, root: Path, port: int = 0) -> None:
        self.folders = {name: str((root / name).resolve()) for name in ("input", "output", "temp")}
        for folder in self.folders.values():
            os.makedirs(folder, exist_ok=True)
        self.port = port
        self.url = ""
        # knobs, set by a test at any time
        self.ws_drop: set[str] = set()
        self.ws_close_after: int | None = None
        self.ws_refuse = False
        self.node_delay = 0.0
        self.progress_steps = 0
        # what happened, for a test to look at
        self.posted: list[str] = []  # prompt_ids posted to /prompt
        self.started: list[str] = []  # prompt_ids whose execution started
        self.interrupts: list[str | None] = []  # the prompt_id of each POST /interrupt
        self.ws_connections = 0
        # ComfyUI's state
        self.queue: list[tuple[Any, ...]] = []
        self.running: dict[int, tuple[Any, ...]] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.number = 0
        self.task_counter = 0
        self.sockets: dict[str, Socket] = {}
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.interrupted = False
        self.cache: dict[str, tuple[tuple[Any, ...], dict[str, Any] | None]] = {}
        self.wake: asyncio.Event | None = None

    # --- running the server -------------------------------------------------------------------------

    def start(self) -> StandIn:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app(), log_level="warning", ws="websockets-sansio", lifespan="on", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listener]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the stand-in ComfyUI did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def app(self) -> Starlette:
        endpoints = [
            ("/prompt", "POST", self.post_prompt),
            ("/prompt", "GET", self.get_prompt),
            ("/queue", "GET", self.get_queue),
            ("/queue", "POST", self.post_queue),
            ("/history", "GET", self.get_history),
            ("/history", "POST", self.post_history),
            ("/history/{prompt_id}", "GET", self.get_history_item),
            ("/interrupt", "POST", self.post_interrupt),
            ("/upload/image", "POST", self.upload_image),
            ("/view", "GET", self.view),
            ("/system_stats", "GET", self.system_stats),
            ("/features", "GET", self.features),
            ("/object_info", "GET", self.object_info),
            ("/object_info/{node_class}", "GET", self.object_info),
        ]
        routes: list[Route | WebSocketRoute] = []
        for prefix in ("", "/api"):  # ComfyUI serves every route under /api too
            routes.append(WebSocketRoute(prefix + "/ws", self.websocket))
            routes += [
                Route(prefix + path, guarded(endpoint), methods=[method]) for path, method, endpoint in endpoints
            ]
        return Starlette(routes=routes, lifespan=self.lifespan)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.wake = asyncio.Event()
        worker = asyncio.create_task(self.worker())
        yield
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker

    # --- messages -----------------------------------------------------------------------------------

    async def send(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        """To one client, or to all of them when sid is None."""
        targets = list(self.sockets.values()) if sid is None else [self.sockets[sid]] if sid in self.sockets else []
        for target in targets:
            await target.deliver({"type": event, "data": data}, self.ws_drop)

    async def to_client(self, event: str, data: dict[str, Any]) -> None:
        """To the client that submitted the running prompt, if it gave its id."""
        if self.client_id is not None:
            await self.send(event, data, self.client_id)

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self.queue) + len(self.running)}}

    async def queue_updated(self) -> None:
        await self.send("status", {"status": self.queue_info()})

    async def websocket(self, websocket: WebSocket) -> None:
        if self.ws_refuse:
            await websocket.close()  # before accepting: the handshake is answered 403
            return
        await websocket.accept()
        self.ws_connections += 1
        sid = websocket.query_params.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = Socket(websocket, self.ws_close_after)
        self.ws_close_after = None
        try:
            await self.send("status", {"status": self.queue_info(), "sid": sid}, sid)
            if self.client_id == sid and self.last_node_id is not None:
                await self.send("executing", {"node": self.last_node_id}, sid)
            first = True
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if first and '"feature_flags"' in (message.get("text") or ""):
                    await self.send("feature_flags", self.server_features(), sid)
                first = False
        finally:
            # as ComfyUI does, even when a newer socket has taken over the id
            self.sockets.pop(sid, None)

    # --- the queue and its worker -------------------------------------------------------------------

    async def put(self, item: tuple[Any, ...]) -> None:
        heapq.heappush(self.queue, item)
        await self.queue_updated()
        assert self.wake is not None
        self.wake.set()

    async def worker(self) -> None:
        assert self.wake is not None
        while True:
            while not self.queue:
                self.wake.clear()
                await self.wake.wait()
            item = heapq.heappop(self.queue)
            task = self.task_counter
            self.task_counter += 1
            self.running[task] = copy.deepcopy(item)
            await self.queue_updated()
            try:
                outcome, messages = await self.execute(*item)
            except Exception:
                traceback.print_exc()  # a bug of the stand-in: say so, loudly
                raise
            prompt = self.running.pop(task)
            if len(self.history) > HISTORY_LIMIT:
                self.history.pop(next(iter(self.history)))
            ok = messages[-1][0] == "execution_success"
            status = {"status_str": "success" if ok else "error", "completed": ok, "messages": messages}
            self.history[prompt[1]] = {"prompt": prompt, "outputs": {}, "status": status, **outcome}
            await self.queue_updated()
            if self.client_id is not None:
                await self.send("executing", {"node": None, "prompt_id": prompt[1]}, self.client_id)

    async def execute(
        self, number: float, prompt_id: str, prompt: dict[str, Any], extra: dict[str, Any], outputs: list[str]
    ) -> tuple[dict[str, Any], list[list[Any]]]:
        self.started.append(prompt_id)
        self.interrupted = False  # an interrupt from before the prompt started is forgotten
        self.client_id = extra.get("client_id")
        messages: list[list[Any]] = []

        async def add(event: str, data: dict[str, Any], broadcast: bool) -> None:
            data = {**data, "timestamp": int(time.time() * 1000)}
            messages.append([event, data])
            if self.client_id is not None or broadcast:
                await self.send(event, data, self.client_id)

        await add("execution_start", {"prompt_id": prompt_id}, False)
        signatures = {node: self.signature(prompt, node) for node in prompt}
        for node, spec in prompt.items():  # what SaveImage writes into its PNGs, as ComfyUI does
            if NODES[spec["class_type"]].is_changed:
                spec["is_changed"] = [json.loads(signatures[node])[1]]
        cached_nodes = [n for n in prompt if signatures[n] in self.cache]
        await add("execution_cached", {"nodes": cached_nodes, "prompt_id": prompt_id}, False)
        states: dict[str, dict[str, Any]] = {}
        results: dict[str, tuple[Any, ...]] = {}
        ui: dict[str, dict[str, Any]] = {}
        executed: list[str] = []
        for node in self.order(prompt, outputs, signatures):
            kind, cached = prompt[node]["class_type"], self.cache.get(signatures[node])
            if cached is not None:
                results[node], node_ui = cached
                if node_ui:
                    ui[node] = node_ui
                await self.to_client(
                    "executed", {"node": node, "display_node": node, "output": node_ui, "prompt_id": prompt_id}
                )
                states[node] = {"value": 1, "max": 1, "state": "finished"}
                await self.progress_state(prompt_id, states)
                continue
            states[node] = {"value": 0.0, "max": 1.0, "state": "running"}
            await self.progress_state(prompt_id, states)
            if self.client_id is not None:
                self.last_node_id = node
            await self.to_client("executing", {"node": node, "display_node": node, "prompt_id": prompt_id})
            inputs = self.inputs(prompt[node]["inputs"], NODES[kind], results)
            try:
                await self.work(prompt_id, node, states)
                output, node_ui = NODES[kind].run(self, prompt, node, **inputs)
            except Interrupted:
                data = {"prompt_id": prompt_id, "node_id": node, "node_type": kind, "executed": executed}
                await add("execution_interrupted", data, True)
                break
            except Exception as exc:
                data = {
                    "prompt_id": prompt_id, "node_id": node, "node_type": kind, "executed": executed,
                    "exception_message": f"{exc}\n", "exception_type": type_name(exc),
                    "traceback": traceback.format_tb(exc.__traceback__),
                    "current_inputs": {k: [v if isinstance(v, (int, float, bool, str)) else str(v)] for k, v in inputs.items()},  # noqa: E501
                    "current_outputs": list(prompt),
                }  # fmt: skip
                await add("execution_error", data, False)
                break
            results[node] = output
            self.cache[signatures[node]] = (output, node_ui)
            if node_ui:
                ui[node] = node_ui
                await self.to_client(
                    "executed", {"node": node, "display_node": node, "output": node_ui, "prompt_id": prompt_id}
                )
            states[node] = {"value": 1.0, "max": 1.0, "state": "finished"}
            await self.progress_state(prompt_id, states)
            executed.append(node)
        else:
            await add("execution_success", {"prompt_id": prompt_id}, False)
        # The classic cache keeps what the last prompt used, and nothing else.
        used = {signatures[n] for n in prompt}
        self.cache = {key: value for key, value in self.cache.items() if key in used}
        self.last_node_id = None
        meta = {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in ui}
        return {"outputs": ui, "meta": meta}, messages

    async def work(self, prompt_id: str, node: str, states: dict[str, dict[str, Any]]) -> None:
        """The node's time, in steps it reports like a sampler does; an interrupt is seen before it starts
        and at each step."""
        self.check_interrupt()
        steps = self.progress_steps
        for step in range(1, steps + 1):
            await asyncio.sleep(self.node_delay / steps)
            self.check_interrupt()
            states[node] = {"value": float(step), "max": float(steps), "state": "running"}
            await self.progress_state(prompt_id, states)
            await self.send(
                "progress", {"value": step, "max": steps, "prompt_id": prompt_id, "node": node}, self.client_id
            )
        if not steps:
            await asyncio.sleep(self.node_delay)

    def check_interrupt(self) -> None:
        if self.interrupted:
            self.interrupted = False
            raise Interrupted

    async def progress_state(self, prompt_id: str, states: dict[str, dict[str, Any]]) -> None:
        nodes = {
            node: {**state, "node_id": node, "prompt_id": prompt_id, "display_node_id": node,
                   "parent_node_id": None, "real_node_id": node}
            for node, state in states.items()
        }  # fmt: skip
        await self.send("progress_state", {"prompt_id": prompt_id, "nodes": nodes}, self.client_id)

    def order(self, prompt: dict[str, Any], outputs: list[str], signatures: dict[str, str]) -> list[str]:
        """The nodes to visit, each after the ones it takes inputs from; a cached node's inputs are not
        needed."""
        seen: list[str] = []

        def visit(node: str) -> None:
            if node in seen:
                return
            if signatures[node] not in self.cache:
                for value in prompt[node]["inputs"].values():
                    if isinstance(value, list):
                        visit(value[0])
            seen.append(node)

        for output in outputs:
            visit(output)
        return seen

    def signature(self, prompt: dict[str, Any], node: str) -> str:
        """What a node's outputs depend on: its class, its inputs (an input from another node: that node's
        signature), and for LoadImage the file's content."""
        spec = prompt[node]
        kind = NODES[spec["class_type"]]
        inputs = {
            name: ["link", self.signature(prompt, value[0]) if value[0] in prompt else None, value[1]]
            if isinstance(value, list)
            else value
            for name, value in sorted(spec["inputs"].items())
        }
        changed = kind.is_changed(self, **spec["inputs"]) if kind.is_changed else None
        return self.json_text([spec["class_type"], changed, inputs])

    def inputs(self, given: dict[str, Any], kind: Node, results: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
        return {
            name: results[value[0]][value[1]] if isinstance(value, list) else value
            for name, value in given.items()
            if name in kind.required
        }

    # --- validation ---------------------------------------------------------------------------------

    def validate(self, prompt: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str], dict[str, Any]]:
        """(error, outputs to run, node_errors): ComfyUI's validate_prompt, for these node classes."""
        outputs = []
        for node, spec in prompt.items():
            if "class_type" not in spec:
                message = "Cannot execute because a node is missing the class_type property."
                return reason("invalid_prompt", message, f"Node ID '#{node}'"), [], {}
            if spec["class_type"] not in NODES:
                message = f"Cannot execute because node {spec['class_type']} does not exist."
                return reason("invalid_prompt", message, f"Node ID '#{node}'"), [], {}
            if NODES[spec["class_type"]].output_node:
                outputs.append(node)
        if not outputs:
            return reason("prompt_no_outputs", "Prompt has no outputs", ""), [], {}
        validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
        good, failed, node_errors = [], [], {}
        for output in outputs:
            try:
                valid, reasons = self.validate_node(prompt, output, validated)
            except Exception as exc:
                valid, reasons = False, [reason(
                    "exception_during_validation", "Exception when validating node", str(exc),
                    exception_type=type_name(exc), traceback=traceback.format_tb(exc.__traceback__),
                )]  # fmt: skip
                validated[output] = (False, reasons)
            if valid:
                good.append(output)
                continue
            failed += reasons
            for node, (ok, why) in validated.items():
                if not ok and why:
                    found = node_errors.setdefault(
                        node, {"errors": why, "dependent_outputs": [], "class_type": prompt[node]["class_type"]}
                    )
                    found["dependent_outputs"].append(output)
        if not good:
            details = "\n".join(f"{r['message']}: {r['details']}" for r in failed)
            error = reason("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
            return error, [], node_errors
        return None, good, node_errors

    def validate_node(
        self, prompt: dict[str, Any], node: str, validated: dict[str, tuple[bool, list[dict[str, Any]]]]
    ) -> tuple[bool, list[dict[str, Any]]]:
        if node in validated:
            return validated[node]
        kind = NODES[prompt[node]["class_type"]]
        inputs = prompt[node]["inputs"]
        errors: list[dict[str, Any]] = []
        valid = True
        for name, declared in kind.required.items():
            config = [declared[0], declared[1] if len(declared) > 1 else {}]
            if name not in inputs:
                errors.append(reason("required_input_missing", "Required input is missing", name, input_name=name))
                continue
            value = inputs[name]
            if not isinstance(value, list):
                if declared[0] == "STRING":
                    inputs[name] = str(value)
                continue  # a combo is checked by the node's own validation, for these nodes
            if len(value) != 2:
                errors.append(reason(
                    "bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", name,
                    input_name=name, input_config=config, received_value=value,
                ))  # fmt: skip
                continue
            received = NODES[prompt[value[0]]["class_type"]].returns[value[1]]
            if received != declared[0]:
                errors.append(reason(
                    "return_type_mismatch", "Return type mismatch between linked nodes",
                    f"{name}, received_type({received}) mismatch input_type({declared[0]})",
                    input_name=name, input_config=config, received_type=received, linked_node=value,
                ))  # fmt: skip
                continue
            if not self.validate_node(prompt, value[0], validated)[0]:
                valid = False
        if kind.validate is not None and not errors:
            for name in kind.required:
                verdict = kind.validate(self, **{name: inputs[name]})
                if verdict is not True:
                    details = name if verdict is False else f"{name} - {verdict}"
                    errors.append(reason(
                        "custom_validation_failed", "Custom validation failed for node", details, input_name=name
                    ))  # fmt: skip
        validated[node] = (valid and not errors, errors)
        return validated[node]

    # --- routes -------------------------------------------------------------------------------------

    async def post_prompt(self, request: Request) -> Response:
        body = await request.json()
        if "number" in body:
            number: float = float(body["number"])
        else:
            number = -self.number if body.get("front") else self.number
            self.number += 1
        if "prompt" not in body:
            error = reason("no_prompt", "No prompt provided", "No prompt provided")
            return Json({"error": error, "node_errors": {}}, 400)
        prompt, prompt_id = body["prompt"], str(body.get("prompt_id", uuid.uuid4()))
        self.posted.append(prompt_id)
        error, outputs, node_errors = self.validate(prompt)
        extra = dict(body.get("extra_data", {}))
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        if error is not None:
            return Json({"error": error, "node_errors": node_errors}, 400)
        await self.put((number, prompt_id, prompt, extra, outputs))
        return Json({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def get_prompt(self, request: Request) -> Response:
        return Json(self.queue_info())

    async def get_queue(self, request: Request) -> Response:
        return Json({"queue_running": list(self.running.values()), "queue_pending": list(self.queue)})

    async def post_queue(self, request: Request) -> Response:
        body = await request.json()
        if body.get("clear"):
            self.queue = []
            await self.queue_updated()
        for prompt_id in body.get("delete", []):
            index = next((i for i, item in enumerate(self.queue) if item[1] == prompt_id), None)
            if index is not None:
                self.queue.pop(index)
                heapq.heapify(self.queue)
                await self.queue_updated()
        return Response(status_code=200)

    async def get_history(self, request: Request) -> Response:
        max_items = int(request.query_params["max_items"]) if "max_items" in request.query_params else None
        offset = int(request.query_params.get("offset", -1))
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        items = list(self.history.items())[max(offset, 0) :]
        return Json(dict(items[:max_items] if max_items is not None else items))

    async def get_history_item(self, request: Request) -> Response:
        prompt_id = request.path_params["prompt_id"]
        return Json({prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    async def post_history(self, request: Request) -> Response:
        body = await request.json()
        if body.get("clear"):
            self.history = {}
        for prompt_id in body.get("delete", []):
            self.history.pop(prompt_id, None)
        return Response(status_code=200)

    async def post_interrupt(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        prompt_id = body.get("prompt_id")
        self.interrupts.append(prompt_id)
        if not prompt_id or any(item[1] == prompt_id for item in self.running.values()):
            self.interrupted = True
        return Response(status_code=200)

    async def upload_image(self, request: Request) -> Response:
        async with request.form() as form:
            return await self.store_upload(form)

    async def store_upload(self, form: FormData) -> Response:
        image, overwrite = form.get("image"), form.get("overwrite")
        kind = str(form.get("type") or "input")
        if kind not in self.folders:
            return trouble()
        if not image:
            return Response(status_code=400)
        if not isinstance(image, UploadFile):
            return trouble()
        filename = image.filename
        if not filename:
            return Response(status_code=400)
        root, subfolder = self.folders[kind], str(form.get("subfolder", ""))
        folder = os.path.join(root, os.path.normpath(subfolder))
        path = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((root, path)) != root:
            return Response(status_code=400)
        os.makedirs(folder, exist_ok=True)
        content = await image.read()
        duplicate = False
        if overwrite not in ("true", "1"):
            stem, extension = os.path.splitext(filename)
            copies = 1
            while os.path.exists(path):
                if Path(path).read_bytes() == content:
                    duplicate = True
                    break
                filename = f"{stem} ({copies}){extension}"
                path = os.path.join(folder, filename)
                copies += 1
        if not duplicate:
            Path(path).write_bytes(content)
        return Json({"name": filename, "subfolder": subfolder, "type": kind})

    async def view(self, request: Request) -> Response:
        query = request.query_params
        if "filename" not in query:
            return Response(status_code=404)
        filename, folder = self.annotated(query["filename"])
        if not filename or filename[0] == "/" or ".." in filename:
            return Response(status_code=400)
        folder = folder or self.folders.get(query.get("type", "output"))
        if folder is None:
            return Response(status_code=400)
        if "subfolder" in query:
            inner = os.path.join(folder, query["subfolder"])
            if os.path.commonpath((os.path.abspath(inner), folder)) != folder:
                return Response(status_code=403)
            folder = inner
        filename = os.path.basename(filename)
        path = os.path.join(folder, filename)
        if not os.path.isfile(path):
            return Response(status_code=404)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}:
            content_type = "application/octet-stream"
        return FileResponse(path, headers={"Content-Disposition": f'filename="{filename}"'}, media_type=content_type)

    async def system_stats(self, request: Request) -> Response:
        memory = 16 * 1024**3
        return Json({
            "system": {
                "os": os.name, "ram_total": memory, "ram_free": memory // 2, "comfyui_version": VERSION,
                "required_frontend_version": "1.27.10", "installed_templates_version": "0.1.95",
                "required_templates_version": "0.1.95", "python_version": "3.11.7 (main) [GCC 12.2.0]",
                "pytorch_version": "2.14.1+cpu", "embedded_python": False, "argv": ["main.py", "--cpu"],
            },
            "devices": [{
                "name": "cpu", "type": "cpu", "index": None, "vram_total": memory, "vram_free": memory // 2,
                "torch_vram_total": memory, "torch_vram_free": memory // 2,
            }],
        })  # fmt: skip

    def server_features(self) -> dict[str, Any]:
        return {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}

    async def features(self, request: Request) -> Response:
        return Json(self.server_features())

    async def object_info(self, request: Request) -> Response:
        wanted = request.path_params.get("node_class")
        names = [wanted] if wanted in NODES else [] if wanted else list(NODES)
        return Json({name: self.node_info(name) for name in names})

    def node_info(self, name: str) -> dict[str, Any]:
        kind = NODES[name]
        inputs = self.folders["input"]
        files = sorted(f for f in os.listdir(inputs) if os.path.isfile(os.path.join(inputs, f)))
        required = {k: [files, *v[1:]] if v[0] == "COMBO" else list(v) for k, v in kind.required.items()}
        declared = {"required": required, **({"hidden": kind.hidden} if kind.hidden else {})}
        return {
            "input": declared, "input_order": {k: list(v) for k, v in declared.items()},
            "output": list(kind.returns), "output_is_list": [False] * len(kind.returns),
            "output_name": list(kind.returns), "name": name, "display_name": kind.display_name,
            "description": kind.description, "python_module": "nodes", "category": "image",
            "output_node": kind.output_node,
        }  # fmt: skip

    # --- files --------------------------------------------------------------------------------------

    def annotated(self, name: str) -> tuple[str, str | None]:
        """`name [output]` names a file in another folder than the one a route would look in."""
        for folder in ("output", "input", "temp"):
            if name.endswith(f"[{folder}]"):
                return name[: -len(folder) - 3], self.folders[folder]
        return name, None

    def annotated_path(self, name: str) -> str:
        name, folder = self.annotated(name)
        return os.path.join(folder or self.folders["input"], name)

    @staticmethod
    def json_text(value: Any) -> str:
        return json.dumps(value)
