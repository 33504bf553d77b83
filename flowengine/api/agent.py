"""The agent protocol (`/api/v1/agent/`, `ak-` keys only) and the agents' listing (`/api/v1/agents`,
`/api/v1/r/agents`). Thin: decode, authenticate, call runtime/agents.py and runtime/queue.py, encode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from flowengine.api.auth import AGENT_CALLERS, RUNTIME_CALLERS, RUNTIME_SECURITY, authenticate
from flowengine.api.errors import ReferenceErrorBody
from flowengine.api.http import engine_of, json_response
from flowengine.api.openapi import Answer, ApiRoute, Body, Operation, Param
from flowengine.api.r.common import PageMeta, body_of, page_answer, page_params, public_base
from flowengine.core import machine
from flowengine.core.keys import is_name
from flowengine.core.times import rfc3339
from flowengine.errors import bad_request
from flowengine.runtime.agents import AgentState, Lease, LogChunk, OutputURL, Registration, Written

if TYPE_CHECKING:
    from flowengine.core.queue import Worker
    from flowengine.runtime.engine import Engine

B = TypeVar("B", bound=msgspec.Struct)

Label = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=60)]
TAG = "agents"


class Registered(msgspec.Struct):
    agent_id: str  # the agent's name: unique in its team
    session: str  # send it with every lease and heartbeat call; a new registration ends it
    heartbeat_interval: float  # seconds between heartbeats
    lease_seconds: float  # a lease lasts this long past the last heartbeat
    poll_seconds: float  # how long a lease call waits for work unless it says


class LeaseRequest(msgspec.Struct):
    session: str
    wait: Seconds | None = None  # seconds to wait for work (default: the engine's agent_poll)
    slots: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1  # how many leases the agent can take now


class Leases(msgspec.Struct):
    leases: list[Lease]


class Token(msgspec.Struct):
    token: str


class Heartbeat(msgspec.Struct):
    session: str
    running: list[str] = []  # lease ids the agent runs
    tools: list[str] | None = None  # the tools it offers from now on (null: as before)


class HeartbeatAnswer(msgspec.Struct):
    cancel: list[str]  # stop these: their step was cancelled
    lost: list[str]  # these are no longer the agent's (expired, fenced, unknown): stop them, report nothing


class Progress(msgspec.Struct):
    token: str
    fraction: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    step: str = ""  # what runs now (a ComfyUI node, a phase)
    message: str = ""
    step_current: Annotated[int, msgspec.Meta(ge=0)] | None = None  # within `step`, for work that counts steps
    step_total: Annotated[int, msgspec.Meta(ge=0)] | None = None
    logs: list[LogChunk] = []


class MoreOutputs(msgspec.Struct):
    token: str
    # files beyond the first of outputs numbered `.0` (`9.images.1` for slot `9.images.0`)
    slots: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=300)]],
                     msgspec.Meta(max_length=machine.MAX_FILES)]  # fmt: skip


class OutputURLs(msgspec.Struct):
    outputs: dict[str, OutputURL]  # slot -> where to upload its file, as a lease's outputs


class Complete(msgspec.Struct):
    token: str
    outputs: dict[str, Written]  # output slot (and each file beyond the first, asked for) -> what was uploaded
    logs: list[LogChunk] = []


class Fail(msgspec.Struct):
    token: str
    error: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    retryable: bool = True
    logs: list[LogChunk] = []


class Ok(msgspec.Struct):
    ok: Literal[True] = True


class GpuDevice(msgspec.Struct, omit_defaults=False):
    device_name: str
    device_type: str | None
    vram_total: int | None  # bytes
    vram_free: int | None


class SystemStats(msgspec.Struct, omit_defaults=False):
    """The reference's `system_stats`, from what the agent registered (null where it said nothing)."""

    comfyui_version: str | None
    pytorch_version: str | None
    os_type: str | None
    gpu_devices: list[GpuDevice]
    facts: dict[str, Any]  # everything the agent registered, as it said it


class AgentItem(msgspec.Struct, omit_defaults=False):
    """An agent as `GET /agents` lists it: the reference's fields (§7.4), and `region` and `community`."""

    agent_id: str  # the agent's name, unique in its team
    agent_status: Literal["idle", "busy", "offline"]  # offline: no heartbeat for three intervals
    agent_labels: list[str]
    last_heartbeat: str
    agent_version: str | None  # the agent's `agent_version` fact, as the next ones
    tool: list[str]  # the tools it runs (exec, python, comfyui, ...)
    tool_version: str | None
    comfyui_version: str | None
    gpu_capacity: int  # steps it runs at once
    running_count: int
    running_tasks: list[str]  # the runs (task ids, for tasks) of the steps it runs now
    platform_arch: str | None  # e.g. linux/amd64
    sync_phase: str | None  # null: agents here sync no models
    sync_detail: str | None
    sync_percent: float | None
    connected_at: str  # its current session's registration
    tasks_completed: int
    current_task_id: str | None  # the first of running_tasks
    system_stats: SystemStats
    region: str
    community: bool


class AgentList(msgspec.Struct):
    agent_list: list[AgentItem]
    page_meta: PageMeta


def _check_registration(body: Registration) -> None:
    if not is_name(body.name):
        raise bad_request("invalid_field", f"name {body.name!r}: a name may only use letters, digits, '.', '_' and "
                          "'-', at most 128 characters", "name")  # fmt: skip
    _check_names("labels", body.labels)
    _check_tools(body.tools)
    if not 1 <= body.capacity <= 1024:
        raise bad_request("invalid_field", f"capacity {body.capacity} is not between 1 and 1024", "capacity")
    if len(body.region) > 64:
        raise bad_request("invalid_field", "region is longer than 64 characters", "region")


def _check_names(field: str, values: list[str]) -> None:
    for i, value in enumerate(values):
        if not is_name(value) or len(value) > 64:
            raise bad_request("invalid_field", f"{value!r} is not a {field[:-1]}: letters, digits, '.', '_', '-'",
                              f"{field}[{i}]")  # fmt: skip


def _check_tools(tools: list[str]) -> None:
    _check_names("tools", tools)
    if not tools:
        raise bad_request("invalid_field", "an agent runs at least one tool (exec, python, comfyui, ...)", "tools")


async def register(request: Request) -> Response:
    principal = await authenticate(request.scope, AGENT_CALLERS)
    body = await body_of(request, Registration)
    _check_registration(body)
    engine = engine_of(request)
    agent = await engine.agents.register(principal.team, body)
    config = engine.config
    return json_response(Registered(agent.name, agent.session, config.heartbeat_interval, config.lease,
                                    config.agent_poll))  # fmt: skip


async def lease(request: Request) -> Response:
    principal = await authenticate(request.scope, AGENT_CALLERS)
    body = await body_of(request, LeaseRequest)
    engine = engine_of(request)
    worker = await engine.agents.session_worker(principal.team, body.session)
    wait = engine.config.agent_poll if body.wait is None else body.wait
    return json_response(Leases(await engine.agents.lease(worker, body.slots, wait, public_base(request))))


async def heartbeat(request: Request) -> Response:
    principal = await authenticate(request.scope, AGENT_CALLERS)
    body = await body_of(request, Heartbeat)
    if body.tools is not None:
        _check_tools(body.tools)
    engine = engine_of(request)
    agent = await engine.db.agent(id=body.session.partition(".")[0])
    if agent is None or agent.team != principal.team or agent.session != body.session:
        return json_response(HeartbeatAnswer([], list(body.running)))  # a fenced session: all of it is lost
    cancel, lost = await engine.agents.heartbeat(engine.agents.worker_of(agent), body.running, body.tools)
    return json_response(HeartbeatAnswer(cancel, lost))


async def _lease_call(request: Request, kind: type[B]) -> tuple[Engine, str, B, Worker]:
    """What every report on a lease starts with: the agent's key, the body, and the worker holding it."""
    principal = await authenticate(request.scope, AGENT_CALLERS)
    body = await body_of(request, kind)
    engine, lease_id = engine_of(request), request.path_params["lease_id"]
    return engine, lease_id, body, await engine.agents.lease_worker(principal.team, lease_id)


async def ack(request: Request) -> Response:
    engine, lease_id, body, worker = await _lease_call(request, Token)
    await engine.queue.ack(lease_id, body.token, worker)
    return json_response(Ok())


async def progress(request: Request) -> Response:
    engine, lease_id, body, worker = await _lease_call(request, Progress)
    await engine.agents.logs(lease_id, body.token, worker, body.logs)
    said = machine.Progress(body.fraction, body.step, body.message, body.step_current, body.step_total)
    await engine.agents.progress(lease_id, body.token, worker, said)
    return json_response(Ok())


async def more_outputs(request: Request) -> Response:
    engine, lease_id, body, worker = await _lease_call(request, MoreOutputs)
    urls = await engine.agents.more_outputs(lease_id, body.token, worker, body.slots, public_base(request))
    return json_response(OutputURLs(urls))


async def complete(request: Request) -> Response:
    engine, lease_id, body, worker = await _lease_call(request, Complete)
    await engine.agents.logs(lease_id, body.token, worker, body.logs)
    await engine.agents.complete(lease_id, body.token, worker, body.outputs)
    return json_response(Ok())


async def fail(request: Request) -> Response:
    engine, lease_id, body, worker = await _lease_call(request, Fail)
    await engine.agents.logs(lease_id, body.token, worker, body.logs)
    attempt = await engine.queue.running(lease_id, body.token, worker, done_ok=True)
    await engine.queue.fail(lease_id, body.token, worker, body.error, body.retryable, engine.agents.tail(attempt))
    return json_response(Ok())


async def release(request: Request) -> Response:
    engine, lease_id, body, worker = await _lease_call(request, Token)
    await engine.queue.release(lease_id, body.token, worker)
    return json_response(Ok())


def _fact(system: dict[str, Any], name: str, kind: type) -> Any:
    value = system.get(name)
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def _system_stats(system: dict[str, Any]) -> SystemStats:
    devices = system.get("gpu_devices")
    gpus = [GpuDevice(str(d.get("device_name") or ""), _fact(d, "device_type", str), _fact(d, "vram_total", int),
                      _fact(d, "vram_free", int)) for d in devices] if isinstance(devices, list) else []  # fmt: skip
    if not gpus and _fact(system, "gpu", str):
        gpus = [GpuDevice(system["gpu"], None, None, None)]
    return SystemStats(_fact(system, "comfyui_version", str), _fact(system, "pytorch_version", str),
                       _fact(system, "os_type", str), gpus, system)  # fmt: skip


def agent_item(state: AgentState) -> AgentItem:
    agent, runs, system = state.record, [r.run_id for r in state.running], state.record.system
    return AgentItem(
        agent_id=agent.name, agent_status=state.status, agent_labels=agent.labels,
        last_heartbeat=rfc3339(agent.last_heartbeat), agent_version=_fact(system, "agent_version", str),
        tool=agent.tools, tool_version=_fact(system, "tool_version", str),
        comfyui_version=_fact(system, "comfyui_version", str), gpu_capacity=agent.capacity, running_count=len(runs),
        running_tasks=runs, platform_arch=_fact(system, "platform_arch", str), sync_phase=None, sync_detail=None,
        sync_percent=None, connected_at=rfc3339(agent.connected_at), tasks_completed=agent.tasks_completed,
        current_task_id=runs[0] if runs else None, system_stats=_system_stats(system), region=agent.region,
        community=agent.community,
    )  # fmt: skip


async def list_agents(request: Request) -> Response:
    principal = await authenticate(request.scope, RUNTIME_CALLERS)
    engine = engine_of(request)

    async def states(limit: int, offset: int) -> tuple[list[AgentState], int]:
        return await engine.agents.states(principal.team, limit, offset), await engine.db.count_agents(principal.team)

    return await page_answer(request, states, agent_item, AgentList)


_LEASE_ID = Param("lease_id", "path", str, "the lease's id, from the lease call", required=True)
_AGENT_SECURITY = ("bearer",)
_COMMON = {401: "no ak- key, or a key of another kind", 404: "no such lease among the team's agents'"}
_STALE = "the token is not the lease's current one (expired, released, fenced, or the step was cancelled): " \
         "nothing changed; stop the step"  # fmt: skip


OK = Answer("accepted", Ok)
LIST = Operation(
    summary="The team's agents",
    tag=TAG,
    params=page_params("agents"),
    security=RUNTIME_SECURITY,
    errors=ReferenceErrorBody,
    description="A page of the team's agents, by name, with the reference's fields: `agent_status` idle, busy "
    "(running a step) or offline (no heartbeat for three intervals); `running_tasks` the runs (task ids) of the "
    "steps it runs now; `agent_version`, `tool_version`, `comfyui_version`, `platform_arch` and `system_stats` from "
    "the `system` facts it registered (null where it said nothing); `sync_*` null (agents here sync no models).",
    answers={200: Answer("the agents, by name", AgentList), 401: "no credential, or an ak- key"},
)  # fmt: skip


def _lease_op(summary: str, body: Body, description: str, **more: Answer | str) -> Operation:
    answers: dict[int, Answer | str] = {200: OK, 400: "a field is missing or of the wrong type", 409: _STALE, **_COMMON}
    answers.update({int(k.removeprefix("s")): v for k, v in more.items()})
    return Operation(summary=summary, tag=TAG, description=description, body=body, security=_AGENT_SECURITY,
                     errors=ReferenceErrorBody, answers=answers, params=(_LEASE_ID,))  # fmt: skip


routes = [
    ApiRoute("/api/v1/agent/register", register, post=Operation(
        summary="Register an agent: a new session (the agent's previous session's leases are lost)",
        tag=TAG, body=Body(Registration, "the agent's name, labels, tools, region, capacity, pool and system facts"),
        security=_AGENT_SECURITY, errors=ReferenceErrorBody,
        answers={200: Answer("the session and the timings to keep", Registered),
                 400: "a field is missing, of the wrong type, or not a name", 401: _COMMON[401]},
    )),
    ApiRoute("/api/v1/agent/lease", lease, post=Operation(
        summary="Long poll for work: answers at once when a step is ready for this agent, else within `wait`",
        description="Each lease is an offer: acknowledge it before `lease_expires`, or it goes back to the queue. "
        "An offer whose answer was lost comes again (same lease_id and token) on the next call.",
        tag=TAG, body=Body(LeaseRequest, "the session, how long to wait, how many leases it can take"),
        security=_AGENT_SECURITY, errors=ReferenceErrorBody,
        answers={200: Answer("the leases (an empty list when the wait ran out)", Leases),
                 400: "a field is missing or of the wrong type", 401: _COMMON[401],
                 409: "the session is over (the agent registered again): register again"},
    )),
    ApiRoute("/api/v1/agent/heartbeat", heartbeat, post=Operation(
        summary="One heartbeat for all the agent's leases: extends them, and says which to cancel and which are lost",
        description="With `tools`, the agent offers those tools from now on (its ComfyUI went away, or came back): "
        "its lease calls, the one waiting now included, take only steps of those tools.",
        tag=TAG, body=Body(Heartbeat, "the session, the leases it runs, the tools it offers now"),
        security=_AGENT_SECURITY,
        errors=ReferenceErrorBody,
        answers={200: Answer("the leases to cancel and those lost", HeartbeatAnswer),
                 400: "a field is missing or of the wrong type", 401: _COMMON[401]},
    )),
    ApiRoute("/api/v1/agent/leases/{lease_id}/ack", ack, post=_lease_op(
        "Acknowledge an offer: the step runs (its timeout counts from now)", Body(Token, "the lease's token"), "")),
    ApiRoute("/api/v1/agent/leases/{lease_id}/progress", progress, post=_lease_op(
        "Progress and numbered log chunks of a running step", Body(Progress, "progress, and log chunks"),
        "A chunk whose number was accepted before is ignored: sending again never duplicates a line.")),
    ApiRoute("/api/v1/agent/leases/{lease_id}/outputs", more_outputs, post=_lease_op(
        "Upload URLs for more files of an output than its first: the images of a batch",
        Body(MoreOutputs, "the lease's token and the files' slot names"),
        "An output slot numbered `.0` (a ComfyUI node's `9.images.0`) may give more files, known only once the step "
        "ran: `9.images.1`, `9.images.2`, ... get URLs here, are uploaded, and are reported with the others on "
        "completion; each becomes an output of its own (`download_urls` key) after the first. At most 256 files "
        "per output.", s200=Answer("a URL for each slot, as a lease's outputs", OutputURLs),
        s400="a field is missing or of the wrong type, or a slot is not one more file of an output numbered `.0`")),
    ApiRoute("/api/v1/agent/leases/{lease_id}/complete", complete, post=_lease_op(
        "The step succeeded: every output is uploaded to its URL", Body(Complete, "each output's size and type"),
        "Accepted once every output the step declares, and every further file it reports (see `outputs`), has "
        "landed with the reported size; reporting again is harmless.", s400="a field is missing or of the wrong "
        "type, or an output is not reported, is not one of the step's, has not landed, or landed with another size")),
    ApiRoute("/api/v1/agent/leases/{lease_id}/fail", fail, post=_lease_op(
        "The step failed: retried (counted against its attempts) unless not retryable",
        Body(Fail, "the error, whether another attempt may help, the log"), "")),
    ApiRoute("/api/v1/agent/leases/{lease_id}/release", release, post=_lease_op(
        "Give a lease back unfinished (a graceful stop): the step waits for a worker again, not counted",
        Body(Token, "the lease's token"), "")),
    ApiRoute("/api/v1/agents", list_agents, get=LIST),
    ApiRoute("/api/v1/r/agents", list_agents, name="list_agents_r", get=LIST),
]  # fmt: skip
