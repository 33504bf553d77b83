"""What `flowengine run` shows while it works, on stderr: transfers and the run's steps.

On a terminal, one live view redrawn in place (rich): a progress bar per file (bytes, rate, time
left) and a table of the steps. Elsewhere (a pipe, a CI log), plain lines: a transfer's start, a
line every few seconds while it lasts, its end, and one line per change of a step. `--quiet` shows
nothing. rich is imported only here, and only for the live view.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import IO, Any, Protocol

from flowengine.client.documents import RunDoc, StepDoc

LINE_EVERY = 5.0  # seconds between progress lines of a long transfer, when not on a terminal
STYLES = {"COMPLETE": "green", "ERROR": "bold red", "RUNNING": "cyan", "RETRYING": "yellow", "STOPPED": "magenta"}


class Transfer(Protocol):
    def update(self, done: int, total: int) -> None: ...

    def finish(self) -> None: ...


class Display(Protocol):
    def note(self, text: str) -> None:
        """A line of news."""

    def transfer(self, label: str, total: int, upload: bool) -> Transfer:
        """A file about to move: `update` as its bytes go, `finish` once it is through."""

    def show(self, run: RunDoc) -> None:
        """The run as it is now."""

    def close(self) -> None:
        """Stop drawing; what was drawn last stays."""


def make_display(quiet: bool, stream: IO[str] | None = None) -> Display:
    stream = stream or sys.stderr
    if quiet:
        return Quiet()
    return LiveView(stream) if stream.isatty() else Lines(stream)


def size(n: float) -> str:
    from rich.filesize import decimal

    return decimal(int(n))


def seconds(t: float) -> str:
    return f"{t:.1f}s" if t < 60 else f"{int(t // 60)}m{int(t % 60):02d}s"


def _time(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp() if stamp else None
    except ValueError:
        return None


def step_time(step: StepDoc, now: float) -> str:
    """How long the step ran (so far, while it runs)."""
    started, finished = _time(step.started), _time(step.finished)
    if started is None:
        return ""
    return seconds(max(0.0, (finished or now) - started))


def step_note(step: StepDoc) -> str:
    if step.status == "RETRYING":
        return f"retrying: {step.error}" if step.error else "retrying"
    return step.error


_CONTROLS = {
    c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if c not in (0x09, 0x0A)
}  # tabs and line ends stay


def printable(text: str) -> str:
    """Text from the engine (errors, a step's log) with its control characters shown, not obeyed:
    a log line cannot move the cursor or clear the screen."""
    return text.translate(_CONTROLS)


class _Nothing:
    def update(self, done: int, total: int) -> None:
        pass

    def finish(self) -> None:
        pass


class Quiet:
    def note(self, text: str) -> None:
        pass

    def transfer(self, label: str, total: int, upload: bool) -> Transfer:
        return _Nothing()

    def show(self, run: RunDoc) -> None:
        pass

    def close(self) -> None:
        pass


class _LineTransfer:
    def __init__(self, out: IO[str], label: str, total: int, verb: str) -> None:
        self.out, self.label, self.total, self.verb = out, label, total, verb
        self.done = 0
        self.started = self.last = time.monotonic()
        print(f"{verb} {label} ({size(total)})", file=out, flush=True)

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        now = time.monotonic()
        if now - self.last >= LINE_EVERY and 0 < done < total:
            self.last = now
            rate = done / (now - self.started)
            left = (total - done) / rate if rate else 0.0
            print(f"  {self.label}: {done * 100 // total}% of {size(total)}, {size(rate)}/s, {seconds(left)} left",
                  file=self.out, flush=True)  # fmt: skip

    def finish(self) -> None:
        took = time.monotonic() - self.started
        rate = f", {size(self.done / took)}/s" if took > 0 else ""
        print(f"  {self.label}: {size(self.done)} in {seconds(took)}{rate}", file=self.out, flush=True)


class Lines:
    """Plain lines, for a stream that is not a terminal."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.seen: dict[str, tuple[str, int]] = {}
        self.status = ""

    def note(self, text: str) -> None:
        print(printable(text), file=self.out, flush=True)

    def transfer(self, label: str, total: int, upload: bool) -> Transfer:
        return _LineTransfer(self.out, label, total, "uploading" if upload else "downloading")

    def show(self, run: RunDoc) -> None:
        # The run's news first, unless it is its end: that comes after the steps that led to it.
        if not run.done:
            self._status(run)
        now = time.time()
        for step in run.steps:
            state = (step.status, step.attempts)
            if self.seen.get(step.id, ("IDLE", 0)) == state:
                continue
            self.seen[step.id] = state
            took = step_time(step, now) if step.status in ("COMPLETE", "ERROR") else ""
            attempt = f"attempt {step.attempts}" if step.attempts else ""
            details = ", ".join(part for part in (attempt, took, step_note(step)) if part)
            self.note(f"step {step.id}: {step.status}" + (f" ({details})" if details else ""))
        self._status(run)

    def _status(self, run: RunDoc) -> None:
        if run.status != self.status:
            self.note(f"run {run.id}" + ("" if self.status else f" of {run.flow}") + f": {run.status}")
            self.status = run.status

    def close(self) -> None:
        pass


class _BarTransfer:
    def __init__(self, progress: Any, label: str, total: int) -> None:
        self.progress = progress
        self.total = total
        self.task = progress.add_task(printable(label), total=total)

    def update(self, done: int, total: int) -> None:
        self.total = total
        self.progress.update(self.task, completed=done, total=total)

    def finish(self) -> None:
        self.progress.update(self.task, completed=self.total)
        self.progress.stop_task(self.task)  # its time and rate stop where they were


class LiveView:
    """One view redrawn in place on a terminal: upload bars, the steps, download bars."""

    def __init__(self, out: IO[str]) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.console = Console(file=out)
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn())  # fmt: skip
        self.uploads = Progress(*columns, console=self.console)
        self.downloads = Progress(*columns, console=self.console)
        self.run: RunDoc | None = None
        self.live = Live(self, console=self.console, refresh_per_second=8, redirect_stdout=False,
                         redirect_stderr=False)  # fmt: skip
        self.live.start()

    def __rich__(self) -> Any:
        from rich.console import Group

        parts: list[Any] = []
        if self.uploads.tasks:
            parts.append(self.uploads)
        if self.run is not None:
            parts.append(self._steps(self.run))
        if self.downloads.tasks:
            parts.append(self.downloads)
        return Group(*parts)

    def _steps(self, run: RunDoc) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text.assemble(f"run {run.id} ", (run.status, STYLES.get(run.status, ""))),
                      title_justify="left", box=None, pad_edge=False, expand=False)  # fmt: skip
        for column in ("step", "task", "status", "attempt", "time", ""):
            table.add_column(column, no_wrap=column != "", overflow="ellipsis", max_width=None if column else 60)
        now = time.time()
        for step in run.steps:
            status = Text(step.status, STYLES.get(step.status, "dim"))
            table.add_row(printable(step.id), printable(step.uses), status, str(step.attempts or ""),
                          step_time(step, now), printable(step_note(step)))  # fmt: skip
        return table

    def note(self, text: str) -> None:
        self.live.console.print(printable(text), markup=False, highlight=False)

    def transfer(self, label: str, total: int, upload: bool) -> Transfer:
        return _BarTransfer(self.uploads if upload else self.downloads, label, total)

    def show(self, run: RunDoc) -> None:
        self.run = run

    def close(self) -> None:
        self.live.stop()
