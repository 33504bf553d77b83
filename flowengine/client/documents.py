"""The flow API's documents, as a client reads them (field for field the engine's run document).

Unknown fields are ignored, so a client keeps working against an engine that added some.
"""

from __future__ import annotations

import msgspec

TERMINAL = ("COMPLETE", "ERROR", "STOPPED")  # a run in one of these never changes again


class _Doc(msgspec.Struct, rename="pascal", kw_only=True):
    pass


class Problem(_Doc):
    """One thing wrong with a request or a definition, and where (`Steps[2].Inputs[0].Edge`)."""

    path: str = ""
    message: str = ""


class ErrorBody(_Doc):
    """The engine's error answer: `{"Code", "Message", "Location", "Problems"}`."""

    code: str = ""
    message: str = ""
    location: str = ""
    problems: list[Problem] = []


class ArtifactRef(_Doc):
    store_name: str
    object_name: str
    edge_name: str


class WaitingURL(_Doc):
    """Where one input goes: PUT the file to `put_url` with exactly the `headers` listed (they are signed)."""

    artifact: ArtifactRef
    put_url: str = msgspec.field(name="PutURL")
    ttl: str = msgspec.field(name="TTL")  # RFC 3339: when the URL, and the run's wait for it, expire
    headers: dict[str, str] = {}

    @property
    def edge(self) -> str:
        return self.artifact.edge_name


class Artifact(_Doc):
    """A filled edge: an input that landed (`source` upload, webhook, static) or a step's output (`step`)."""

    store_name: str
    object_name: str
    edge_name: str
    source: str
    size: int
    content_type: str
    etag: str = msgspec.field(default="", name="ETag")
    landed: str = ""
    get_url: str = msgspec.field(default="", name="GetURL")
    expires: str = ""  # when get_url stops working
    expired: bool = False  # past retention: the object is gone and there is no get_url


class StepDoc(_Doc, kw_only=True):
    id: str = msgspec.field(name="ID")
    uses: str = ""
    status: str  # IDLE, READY, RUNNING, RETRYING, COMPLETE, ERROR
    attempts: int = 0
    error: str = ""
    started: str = ""
    finished: str = ""
    retry_at: str = ""
    logs: list[str] = []  # the last lines of its output


class RunDoc(_Doc, kw_only=True):
    """A run: what starting it, its status, cancelling and refreshing it answer."""

    id: str = msgspec.field(name="ID")
    flow: str
    status: str  # WAITING, RUNNING, COMPLETE, ERROR, STOPPED
    created: str
    updated: str
    waiting_urls: list[WaitingURL] = msgspec.field(default_factory=list, name="WaitingURLs")
    steps: list[StepDoc] = []
    artifacts: list[Artifact] = []
    error: str = ""
    failed_step: str = ""
    logs: list[str] = []  # the failed step's last lines of output

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def waiting(self, edge: str) -> WaitingURL | None:
        return next((w for w in self.waiting_urls if w.edge == edge), None)

    def artifact(self, edge: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.edge_name == edge), None)

    @property
    def outputs(self) -> list[Artifact]:
        """The artifacts the run's steps made."""
        return [a for a in self.artifacts if a.source == "step"]


class RunSummary(_Doc):
    id: str = msgspec.field(name="ID")
    flow: str
    status: str
    created: str
    updated: str
    error: str = ""


class RunPage(_Doc):
    """One page of runs, newest first. `next` is the cursor of the page after it (None on the last
    page); UNSET from an engine that pages by offset only."""

    runs: list[RunSummary]
    total: int
    limit: int
    offset: int = 0
    next: str | msgspec.UnsetType | None = msgspec.UNSET


class FlowInfo(_Doc):
    """A flow file the engine runs by name, with the edges a client fills."""

    name: str
    file: str = ""
    valid: bool = True
    description: str = ""
    inputs: list[str] = []
    steps: list[str] = []
    problems: list[Problem] = []


class FlowList(_Doc):
    flows: list[FlowInfo]


# the workflow/task API (`/api/v1/r/`): snake_case, as the reference has it

TASK_TERMINAL = ("completed", "failed", "cancelled")  # a task in one of these never changes again


class _RDoc(msgspec.Struct, kw_only=True):
    pass


class PresignedFile(_RDoc):
    """Where a file for a task goes: PUT it to `upload_url` with every one of `upload_headers`;
    `file_key` is then the value of a `file` parameter."""

    file_key: str
    upload_url: str
    upload_headers: dict[str, str] = {}


class ParameterInfo(_RDoc):
    """One parameter a workflow takes (its ParameterDef, without the binding)."""

    key: str
    type: str  # string, number, boolean, select, file
    label: str = ""
    description: str = ""
    required: bool = False
    default: str | int | float | bool | None = None
    min: int | float | None = None
    max: int | float | None = None
    options: list[str] = []
    accept: list[str] = []


class WorkflowInfo(_RDoc):
    id: str
    workflow_slug: str
    version: int
    display_name: str = ""
    description: str = ""
    workflow_status: str = "active"
    parameters: list[ParameterInfo] = []

    def parameter(self, key: str) -> ParameterInfo | None:
        return next((p for p in self.parameters if p.key == key), None)


class TaskDoc(_RDoc):
    """A task, as `GET /api/v1/r/tasks/{id}` shows it (the fields a client acts on)."""

    id: str
    task_status: str  # pending, waiting, queued, running, completed, failed, cancelled
    workflow_id: str = ""
    workflow_version: int = 0
    created_at: str = ""
    started_at: str | None = None
    completed_at: str | None = None
    task_error: str = ""
    retry_count: int = 0

    @property
    def done(self) -> bool:
        return self.task_status in TASK_TERMINAL


class OutputFile(_RDoc):
    storage_key: str
    size: int
    content_type: str = ""


class TaskOutput(_RDoc):
    storage_key: str | None = None
    outputs: dict[str, OutputFile] = {}


class TaskResult(_RDoc):
    """`GET /api/v1/r/tasks/{id}/result`: a completed task's outputs, one download URL per output edge."""

    id: str
    task_status: str
    task_output: TaskOutput | None = None
    download_url: str | None = None
    download_urls: dict[str, str] | None = None
    expires_at: str | None = None
    task_error: str = ""
    completed_at: str | None = None


class TaskEvent(_RDoc):
    """One event of a task's stream: `event` is status, progress, completed, failed or cancelled;
    `data` the event's JSON (`task_id`, `status`, `timestamp`, and `output` or `error`)."""

    id: str
    event: str
    data: dict[str, object] = {}

    @property
    def status(self) -> str:
        return str(self.data.get("status", ""))

    @property
    def final(self) -> bool:
        return self.event in TASK_TERMINAL


class _Submitted(_RDoc):
    task_id: str


class RErrorBody(_RDoc):
    """The workflow/task API's error answer: `{"error_message", "error_code", "field"}`."""

    error_message: str = ""
    error_code: str = ""
    field: str = ""
