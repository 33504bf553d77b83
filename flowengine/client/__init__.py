"""A Python client of the flow API: `Client` (blocking) and `AsyncClient` (asyncio).

from flowengine.client import Client

with Client("http://127.0.0.1:1234") as client:
    run = client.start("checksum-report")
    run = client.upload(run, "document", "photo.png")
    run = client.wait(run.id, timeout=600)
    if run.status == "COMPLETE":
        client.download_outputs(run, "results")
"""

from flowengine.client.clients import AsyncClient, Client
from flowengine.client.definitions import input_edges, load_definition
from flowengine.client.documents import (
    Artifact,
    ArtifactRef,
    FlowInfo,
    Problem,
    RunDoc,
    RunPage,
    RunSummary,
    StepDoc,
    WaitingURL,
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
from flowengine.client.protocol import output_paths

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
    "PreconditionFailed",
    "Problem",
    "RunDoc",
    "RunPage",
    "RunSummary",
    "ServerError",
    "StepDoc",
    "TooLarge",
    "TooManyRequests",
    "TransferError",
    "Unauthorized",
    "UnsupportedMediaType",
    "WaitTimeout",
    "WaitingURL",
    "input_edges",
    "load_definition",
    "output_paths",
]
