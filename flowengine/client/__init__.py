"""A Python client of the flow API: `Client` (blocking) and `AsyncClient` (asyncio).

from flowengine.client import Client

with Client("http://127.0.0.1:1234") as client:
    run = client.start("checksum-report")
    run = client.upload(run, "document", "photo.png")
    run = client.wait(run.id, timeout=600)
    if run.status == "COMPLETE":
        client.download_outputs(run, "results")

    # a workflow of the workflow/task API, as a task
    key = client.upload_file("photo.png")
    task_id = client.run_workflow("img2img", {"input_image": key, "width": 512})
    task = client.follow(task_id, on_event=print)
    if task.task_status == "completed":
        client.download_result(client.result(task_id), "results")
"""

from flowengine.client.clients import AsyncClient, Client
from flowengine.client.definitions import input_edges, load_definition
from flowengine.client.documents import (
    Artifact,
    ArtifactRef,
    FlowInfo,
    ParameterInfo,
    PresignedFile,
    Problem,
    RunDoc,
    RunPage,
    RunSummary,
    StepDoc,
    TaskDoc,
    TaskEvent,
    TaskResult,
    WaitingURL,
    WorkflowInfo,
)
from flowengine.client.errors import (
    ApiError,
    BadRequest,
    ClientError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InputError,
    Invalid,
    NotFound,
    PreconditionFailed,
    ServerError,
    TooLarge,
    TooManyRequests,
    TransferError,
    Unauthorized,
    UnsupportedMediaType,
    WaitTimeout,
)
from flowengine.client.protocol import output_paths, result_paths

__all__ = [
    "ApiError",
    "Artifact",
    "ArtifactRef",
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClientError",
    "Conflict",
    "ConnectionFailed",
    "FlowInfo",
    "Forbidden",
    "InputError",
    "Invalid",
    "NotFound",
    "ParameterInfo",
    "PreconditionFailed",
    "PresignedFile",
    "Problem",
    "RunDoc",
    "RunPage",
    "RunSummary",
    "ServerError",
    "StepDoc",
    "TaskDoc",
    "TaskEvent",
    "TaskResult",
    "TooLarge",
    "TooManyRequests",
    "TransferError",
    "Unauthorized",
    "UnsupportedMediaType",
    "WaitTimeout",
    "WaitingURL",
    "WorkflowInfo",
    "input_edges",
    "load_definition",
    "output_paths",
    "result_paths",
]
