"""`Client` and `AsyncClient`: the flow API's operations (`protocol.py`), carried out with httpx.

Each is a thin shell: it sends what an operation asks for and sleeps when it says so. Everything
else (URLs, headers, retries, polling, checks, files) is the one implementation in `protocol.py`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from flowengine import version
from flowengine.client.definitions import Definition
from flowengine.client.documents import (
    FlowInfo,
    RunDoc,
    RunPage,
    RunSummary,
    TaskDoc,
    TaskResult,
    WaitingURL,
    WorkflowInfo,
)
from flowengine.client.protocol import POLL, Effect, OnEvent, Op, Progress, Protocol, Send, Sleep, Steps, T, next_page

FileProgress = Callable[[str, int, int], None]  # (edge, bytes moved so far, bytes in all)


def _timeout(timeout: float | httpx.Timeout) -> httpx.Timeout:
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=min(timeout, 10.0))


def _request(http: httpx.Client | httpx.AsyncClient, send: Send, content: Any) -> httpx.Request:
    return http.build_request(send.method, send.url, headers=send.headers, params=send.params, content=content)


class Client:
    """The flow API over HTTP, blocking. `url`: the engine (default $FLOWENGINE_URL, then
    http://127.0.0.1:1234); `key`: a bearer key for its API; `timeout`: seconds any one network
    operation (connect, a read, a write) may take; `http`: an httpx.Client of your own to use."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 60.0,
        poll: tuple[float, float] = POLL,
        http: httpx.Client | None = None,
    ) -> None:
        self.protocol = Protocol(url, key, poll=poll)
        self._own = http is None
        self.http = http or httpx.Client(timeout=_timeout(timeout), headers={"User-Agent": f"flowengine/{version()}"})

    @property
    def url(self) -> str:
        return self.protocol.base_url

    def close(self) -> None:
        if self._own:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(self, op: Op[T]) -> T:
        """Carry out an operation of `protocol.py`."""
        with Steps(op) as steps:
            while (effect := steps.next()) is not None:
                try:
                    steps.reply(self._do(effect))
                except Exception as exc:
                    steps.fail(exc)
            return steps.result

    def _do(self, effect: Effect) -> httpx.Response | None:
        if isinstance(effect, Sleep):
            time.sleep(effect.seconds)
            return None
        content = iter(effect.body) if effect.body else effect.content
        response = self.http.send(_request(self.http, effect, content), stream=True)
        try:
            if effect.sink and response.is_success:
                for chunk in response.iter_raw(effect.sink.chunk):
                    effect.sink.write(chunk)
            else:
                response.read()
        finally:
            response.close()
        return response

    # the flow API: see Protocol for what each does

    def start(self, flow: str | None = None, *, definition: Definition | None = None) -> RunDoc:
        return self.run(self.protocol.start(flow, definition=definition))

    def status(self, run_id: str) -> RunDoc:
        return self.run(self.protocol.status(run_id))

    def cancel(self, run_id: str) -> RunDoc:
        return self.run(self.protocol.cancel(run_id))

    def refresh(self, run_id: str) -> RunDoc:
        return self.run(self.protocol.refresh(run_id))

    def flows(self) -> list[FlowInfo]:
        return self.run(self.protocol.flows())

    def logs(self, run_id: str, step_id: str, attempt: int | None = None) -> str:
        return self.run(self.protocol.logs(run_id, step_id, attempt))

    def list_runs(
        self,
        *,
        status: str | None = None,
        flow: str | None = None,
        limit: int = 50,
        offset: int = 0,
        cursor: str | None = None,
    ) -> RunPage:
        return self.run(self.protocol.list_runs(status=status, flow=flow, limit=limit, offset=offset, cursor=cursor))

    def runs(self, *, status: str | None = None, flow: str | None = None, page_size: int = 50) -> Iterator[RunSummary]:
        """Every run (matching the filters), newest first, a page at a time."""
        args: dict[str, Any] | None = {}
        while args is not None:
            page = self.list_runs(status=status, flow=flow, limit=page_size, **args)
            yield from page.runs
            args = next_page(page)

    def put(
        self,
        waiting: WaitingURL,
        path: str | os.PathLike[str],
        *,
        content_type: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.run(self.protocol.put(waiting, path, content_type=content_type, progress=progress))

    def upload(
        self,
        run: RunDoc,
        edge: str,
        path: str | os.PathLike[str],
        *,
        content_type: str | None = None,
        progress: Progress | None = None,
    ) -> RunDoc:
        return self.run(self.protocol.upload(run, edge, path, content_type=content_type, progress=progress))

    def upload_inputs(
        self,
        run: RunDoc,
        files: Mapping[str, str | os.PathLike[str]],
        *,
        content_types: Mapping[str, str] | None = None,
        progress: FileProgress | None = None,
    ) -> RunDoc:
        return self.run(self.protocol.upload_inputs(run, files, content_types=content_types, progress=progress))

    def wait(
        self, run_id: str, *, timeout: float | None = None, on_update: Callable[[RunDoc], None] | None = None
    ) -> RunDoc:
        return self.run(self.protocol.wait(run_id, timeout=timeout, on_update=on_update))

    def download(
        self, run: RunDoc, edge: str, dest: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> Path:
        return self.run(self.protocol.download(run, edge, dest, progress=progress))

    def download_outputs(
        self, run: RunDoc, out: str | os.PathLike[str], *, progress: FileProgress | None = None
    ) -> list[Path]:
        return self.run(self.protocol.download_outputs(run, out, progress=progress))

    # the workflow/task API: see Protocol for what each does

    def workflow(self, slug: str) -> WorkflowInfo:
        return self.run(self.protocol.workflow(slug))

    def upload_file(
        self, path: str | os.PathLike[str], *, content_type: str | None = None, progress: Progress | None = None
    ) -> str:
        return self.run(self.protocol.upload_file(path, content_type=content_type, progress=progress))

    def run_workflow(
        self, slug: str, parameters: Mapping[str, Any] | None = None, *, idempotency_key: str | None = None
    ) -> str:
        return self.run(self.protocol.run_workflow(slug, parameters, idempotency_key=idempotency_key))

    def task(self, task_id: str) -> TaskDoc:
        return self.run(self.protocol.task(task_id))

    def result(self, task_id: str) -> TaskResult:
        return self.run(self.protocol.result(task_id))

    def cancel_task(self, task_id: str) -> None:
        self.run(self.protocol.cancel_task(task_id))

    def follow(self, task_id: str, *, on_event: OnEvent | None = None) -> TaskDoc:
        return self.run(self.protocol.follow(task_id, on_event=on_event))

    def download_result(
        self, result: TaskResult, out: str | os.PathLike[str], *, progress: FileProgress | None = None
    ) -> list[Path]:
        return self.run(self.protocol.download_result(result, out, progress=progress))


class AsyncClient:
    """The flow API over HTTP, for asyncio: `Client`'s methods, awaited."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 60.0,
        poll: tuple[float, float] = POLL,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.protocol = Protocol(url, key, poll=poll)
        self._own = http is None
        self.http = http or httpx.AsyncClient(
            timeout=_timeout(timeout), headers={"User-Agent": f"flowengine/{version()}"}
        )

    @property
    def url(self) -> str:
        return self.protocol.base_url

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def run(self, op: Op[T]) -> T:
        """Carry out an operation of `protocol.py`."""
        with Steps(op) as steps:
            while (effect := steps.next()) is not None:
                try:
                    steps.reply(await self._do(effect))
                except Exception as exc:
                    steps.fail(exc)
            return steps.result

    async def _do(self, effect: Effect) -> httpx.Response | None:
        if isinstance(effect, Sleep):
            await asyncio.sleep(effect.seconds)
            return None
        content = aiter(effect.body) if effect.body else effect.content
        response = await self.http.send(_request(self.http, effect, content), stream=True)
        try:
            if effect.sink and response.is_success:
                async for chunk in response.aiter_raw(effect.sink.chunk):
                    effect.sink.write(chunk)
            else:
                await response.aread()
        finally:
            await response.aclose()
        return response

    async def start(self, flow: str | None = None, *, definition: Definition | None = None) -> RunDoc:
        return await self.run(self.protocol.start(flow, definition=definition))

    async def status(self, run_id: str) -> RunDoc:
        return await self.run(self.protocol.status(run_id))

    async def cancel(self, run_id: str) -> RunDoc:
        return await self.run(self.protocol.cancel(run_id))

    async def refresh(self, run_id: str) -> RunDoc:
        return await self.run(self.protocol.refresh(run_id))

    async def flows(self) -> list[FlowInfo]:
        return await self.run(self.protocol.flows())

    async def logs(self, run_id: str, step_id: str, attempt: int | None = None) -> str:
        return await self.run(self.protocol.logs(run_id, step_id, attempt))

    async def list_runs(
        self,
        *,
        status: str | None = None,
        flow: str | None = None,
        limit: int = 50,
        offset: int = 0,
        cursor: str | None = None,
    ) -> RunPage:
        return await self.run(
            self.protocol.list_runs(status=status, flow=flow, limit=limit, offset=offset, cursor=cursor)
        )

    async def runs(
        self, *, status: str | None = None, flow: str | None = None, page_size: int = 50
    ) -> AsyncIterator[RunSummary]:
        args: dict[str, Any] | None = {}
        while args is not None:
            page = await self.list_runs(status=status, flow=flow, limit=page_size, **args)
            for summary in page.runs:
                yield summary
            args = next_page(page)

    async def put(
        self,
        waiting: WaitingURL,
        path: str | os.PathLike[str],
        *,
        content_type: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        await self.run(self.protocol.put(waiting, path, content_type=content_type, progress=progress))

    async def upload(
        self,
        run: RunDoc,
        edge: str,
        path: str | os.PathLike[str],
        *,
        content_type: str | None = None,
        progress: Progress | None = None,
    ) -> RunDoc:
        return await self.run(self.protocol.upload(run, edge, path, content_type=content_type, progress=progress))

    async def upload_inputs(
        self,
        run: RunDoc,
        files: Mapping[str, str | os.PathLike[str]],
        *,
        content_types: Mapping[str, str] | None = None,
        progress: FileProgress | None = None,
    ) -> RunDoc:
        return await self.run(self.protocol.upload_inputs(run, files, content_types=content_types, progress=progress))

    async def wait(
        self, run_id: str, *, timeout: float | None = None, on_update: Callable[[RunDoc], None] | None = None
    ) -> RunDoc:
        return await self.run(self.protocol.wait(run_id, timeout=timeout, on_update=on_update))

    async def download(
        self, run: RunDoc, edge: str, dest: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> Path:
        return await self.run(self.protocol.download(run, edge, dest, progress=progress))

    async def download_outputs(
        self, run: RunDoc, out: str | os.PathLike[str], *, progress: FileProgress | None = None
    ) -> list[Path]:
        return await self.run(self.protocol.download_outputs(run, out, progress=progress))

    # the workflow/task API: see Protocol for what each does

    async def workflow(self, slug: str) -> WorkflowInfo:
        return await self.run(self.protocol.workflow(slug))

    async def upload_file(
        self, path: str | os.PathLike[str], *, content_type: str | None = None, progress: Progress | None = None
    ) -> str:
        return await self.run(self.protocol.upload_file(path, content_type=content_type, progress=progress))

    async def run_workflow(
        self, slug: str, parameters: Mapping[str, Any] | None = None, *, idempotency_key: str | None = None
    ) -> str:
        return await self.run(self.protocol.run_workflow(slug, parameters, idempotency_key=idempotency_key))

    async def task(self, task_id: str) -> TaskDoc:
        return await self.run(self.protocol.task(task_id))

    async def result(self, task_id: str) -> TaskResult:
        return await self.run(self.protocol.result(task_id))

    async def cancel_task(self, task_id: str) -> None:
        await self.run(self.protocol.cancel_task(task_id))

    async def follow(self, task_id: str, *, on_event: OnEvent | None = None) -> TaskDoc:
        return await self.run(self.protocol.follow(task_id, on_event=on_event))

    async def download_result(
        self, result: TaskResult, out: str | os.PathLike[str], *, progress: FileProgress | None = None
    ) -> list[Path]:
        return await self.run(self.protocol.download_result(result, out, progress=progress))
