"""The run document: what POST /api/v1/flow/{name} and GET /api/v1/flow/status/{id} answer.

URLs are minted here, at render time, from the run's stored state: nothing signed is stored.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal
from urllib.parse import quote

import msgspec

from flowengine.core import machine
from flowengine.core.lru import LRU
from flowengine.core.machine import Progress, Run
from flowengine.core.spec import Flow
from flowengine.core.times import rfc3339
from flowengine.runtime.engine import Engine
from flowengine.stores.base import PutConditions
from flowengine.stores.signing import hook_resource

_encode = msgspec.json.Encoder().encode

# The values the documents carry (machine.py's), as types: the API's schema lists them.
RunStatus = Literal["STOPPED", "WAITING", "RUNNING", "COMPLETE", "ERROR"]
StepStatus = Literal["IDLE", "READY", "RUNNING", "RETRYING", "COMPLETE", "ERROR"]
Source = Literal["upload", "webhook", "static", "step"]  # an input's well, or a step's output
Time = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]  # RFC 3339, UTC
URL = Annotated[str, msgspec.Meta(extra_json_schema={"format": "uri"})]
# Fields left out of a document while empty: "" is their default, which their schema must allow too.
OptionalTime = Annotated[str, msgspec.Meta(extra_json_schema={"anyOf": [{"format": "date-time"}, {"maxLength": 0}]})]
OptionalURL = Annotated[str, msgspec.Meta(extra_json_schema={"anyOf": [{"format": "uri"}, {"maxLength": 0}]})]


class _Doc(msgspec.Struct, rename="pascal", omit_defaults=True, gc=False):  # acyclic, like machine.Run
    pass


class ArtifactRef(_Doc):
    store_name: str
    object_name: str
    edge_name: str


class WaitingURL(_Doc):
    artifact: ArtifactRef
    put_url: URL = msgspec.field(name="PutURL")
    ttl: Time = msgspec.field(name="TTL")  # when PutURL stops working
    headers: dict[str, str] = {}  # every header the PUT must carry, when the URL signs any


class Artifact(_Doc):
    store_name: str
    object_name: str
    edge_name: str
    source: Source
    size: int
    content_type: str
    etag: str = msgspec.field(name="ETag")
    landed: Time
    get_url: OptionalURL = msgspec.field(default="", name="GetURL")
    expires: OptionalTime = ""  # when GetURL stops working
    expired: bool = False  # the object is past retention: no URL is given


class StepProgress(_Doc):
    fraction: float | None = None  # 0 to 1
    current: str = ""  # what runs now (a ComfyUI node, a phase)
    message: str = ""
    step_current: int | None = None  # within `current`, for work that counts its steps (a sampler)
    step_total: int | None = None


class StepDoc(_Doc):
    id: str = msgspec.field(name="ID")
    uses: str
    status: StepStatus
    attempts: int
    error: str = ""
    started: OptionalTime = ""
    finished: OptionalTime = ""
    retry_at: OptionalTime = ""
    logs: list[str] = []
    progress: StepProgress | None = None  # what the worker running it last reported


class RunDoc(_Doc):
    id: str = msgspec.field(name="ID")
    flow: str
    status: RunStatus
    created: Time
    updated: Time
    waiting_urls: list[WaitingURL] = msgspec.field(name="WaitingURLs")
    steps: list[StepDoc]
    artifacts: list[Artifact]
    error: str = ""
    failed_step: str = ""
    logs: list[str] = []  # the failing step's last lines of output


class RunSummary(_Doc):
    id: str = msgspec.field(name="ID")
    flow: str
    status: RunStatus
    created: Time
    updated: Time
    error: str = ""


class RunPage(msgspec.Struct, rename="pascal", gc=False):
    runs: list[RunSummary]
    total: int  # every run the filters match
    limit: int
    offset: int
    next: str | None  # the cursor of the next page (?cursor=), null on the last one


def _opt(t: float | None) -> str:
    return rfc3339(t) if t is not None else ""


def hook_url(engine: Engine, run_id: str, edge: str, expires: float, base_url: str) -> str:
    query = engine.stores.signer.query("PUT", hook_resource(run_id, edge), expires, {})
    return f"{base_url}/api/v1/hook/{run_id}/{quote(edge, safe='')}?{query}"


def waiting_urls(engine: Engine, run: Run, flow: Flow, base_url: str) -> list[WaitingURL]:
    urls = []
    for name in machine.waiting_edges(run):
        edge = run.edges[name]
        expires = edge.deadline or engine.clock() + engine.config.upload_ttl
        ref = ArtifactRef(edge.store, edge.key, name)
        if edge.source == "webhook":
            urls.append(WaitingURL(ref, hook_url(engine, run.id, name, expires, base_url), rfc3339(expires, False)))
            continue
        well = flow.well(name)
        conditions = PutConditions(well.size, well.content_type, not well.overwrite)
        signed = engine.store_of(flow, edge).presign_put(edge.key, expires, conditions, base_url)
        urls.append(WaitingURL(ref, signed.url, rfc3339(expires, False), signed.headers))
    return urls


def artifacts(engine: Engine, run: Run, flow: Flow, base_url: str) -> list[Artifact]:
    now = engine.clock()
    # Rounded up to the minute: a poller sees the same URL for a minute, not a new one each time.
    expires = math.ceil((now + engine.config.download_ttl) / 60) * 60
    found = []
    for name, edge in run.edges.items():
        obj = edge.object
        if obj is None or edge.filled_at is None:
            continue
        art = Artifact(
            edge.store, edge.key, name, edge.source, obj.size, obj.content_type, obj.etag, rfc3339(edge.filled_at)
        )
        if now >= engine.expires_at(edge):
            art.expired = True
        else:
            art.get_url = engine.store_of(flow, edge).presign_get(edge.key, expires, base_url).url
            art.expires = rfc3339(expires, False)
        found.append(art)
    return found


def _progress(progress: Progress | None) -> StepProgress | None:
    if progress is None:
        return None
    return StepProgress(progress.fraction, progress.current, progress.message, progress.step_current,
                        progress.step_total)  # fmt: skip


def run_document(engine: Engine, run: Run, flow: Flow, base_url: str) -> RunDoc:
    base_url = (engine.config.public_url or base_url).rstrip("/")
    uses = {s.id: s.uses for s in flow.steps}
    steps = [
        StepDoc(name, uses[name], s.status, s.attempts, s.error or "", _opt(s.started), _opt(s.finished),
                _opt(s.retry_at), s.logs, _progress(s.progress))
        for name, s in run.steps.items()
    ]  # fmt: skip
    failed = run.steps.get(run.failed_step or "")
    return RunDoc(
        id=run.id,
        flow=run.flow,
        status=run.status,
        created=rfc3339(run.created),
        updated=rfc3339(run.updated),
        waiting_urls=waiting_urls(engine, run, flow, base_url),
        steps=steps,
        artifacts=artifacts(engine, run, flow, base_url),
        error=run.error or "",
        failed_step=run.failed_step or "",
        logs=failed.logs if failed else [],
    )


def run_summary(run: Run) -> RunSummary:
    return RunSummary(run.id, run.flow, run.status, rfc3339(run.created), rfc3339(run.updated), run.error or "")


class RenderedDocuments:
    """Encoded status documents, reused while nothing in them can have changed.

    A document is a function of the run (its Updated time changes with every transition), the
    base URL, and time: download URLs are minted per minute, and an artifact turns Expired at
    its retention's end. A rendering is kept until the earlier of the two. Pollers of a busy
    run then cost a dictionary lookup, not a render.
    """

    def __init__(self, engine: Engine, size: int = 10_000) -> None:
        self.engine = engine
        self._docs: LRU[str, tuple[tuple, float, bytes]] = LRU(size)

    def get(self, run: Run, flow: Flow, base_url: str) -> bytes:
        now = self.engine.clock()
        stamp = (run.updated, run.status, base_url)
        hit = self._docs.get(run.id)
        if hit is not None and hit[0] == stamp and now < hit[1]:
            return hit[2]
        body = _encode(run_document(self.engine, run, flow, base_url))
        self._docs.put(run.id, (stamp, self._valid_until(run, now), body))
        return body

    def for_webhook(self, run: Run, flow: Flow) -> bytes:
        """The document a run's webhook delivery sends: a poll's, its URLs on public_url (else on the
        address the engine listens on: there is no request to take a base URL from)."""
        config = self.engine.config
        host = f"[{config.host}]" if ":" in config.host else config.host
        return self.get(run, flow, f"http://{host}:{config.port}")

    def _valid_until(self, run: Run, now: float) -> float:
        until = (now // 60 + 1) * 60
        later = [at for at in map(self.engine.expires_at, run.edges.values()) if at > now]
        return min([until, *later])
