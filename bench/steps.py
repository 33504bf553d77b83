"""What a step costs: whole runs of one trivial step through the engine, beside what starting the
same process costs alone; and what confining a step's process costs.

    python bench/steps.py [--runs 300] [--rounds 3]              # runs through the engine (default)
    python bench/steps.py --process [--count 500] [--concurrency 1]

Runs: an engine in this process (`Engine`, as `flowengine serve` makes it, SQLite in a temp data
dir, `concurrency` 4) is handed `--runs` runs at once of a flow with one step and no inputs, and
timed from the first creation to the last run COMPLETE (creation, dispatch, the step in its scratch
dir with its log, its commits). Figures, in alternating rounds (the best round of each is shown):

- `exec step`: the step runs `/bin/true`; its ceiling, `fork+exec`, starts `/bin/true` with
  asyncio's subprocess support (fork or vfork, exec, wait), 4 at a time.
- `python task (warm)`: the step's task is `Python: trivial:noop` (returns nothing), served by warm
  workers (README, "Warm Python workers"); `python task (cold)` is the same with
  `python_workers: 0`, an interpreter per step (as before warm workers); their ceiling,
  `python -c pass`, starts this Python with `-c pass`, 4 at a time. A warm worker is started in the
  first round's first steps: its import is in the figures.

Beside each rate, the CPU time per step (this process, the engine's, and its children's: the
steps, workers, and the reaper), the least of the rounds: it moves much less than the rates when
other work shares the machine.

--process: `/bin/true` started one after another (or N at a time), `raw` through asyncio's own
subprocess support (the ceiling), `sandboxed` the way the engine starts an exec step's process
(run_process: a fresh thread confined with Landlock and, as root, the step user and namespaces of
its own; vfork and exec; the reaper told; the process group killed and reaped; its log read).
Scratch dirs, input copies and the run's database commits are left out: this is the process alone.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import resource
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from flowengine.config import Config
from flowengine.core import machine
from flowengine.core.spec import Flow
from flowengine.runtime.engine import Engine
from flowengine.runtime.executors.process import run_process
from flowengine.runtime.executors.reaper import Reaper
from flowengine.runtime.executors.sandbox import Sandbox

ARGV = ["/bin/true"]
CONCURRENCY = 4  # the engine's default `concurrency`
TRIVIAL = "def noop(inputs, flags, workdir):\n    return {}\n"
_PR_SET_DUMPABLE = 4


def one_step_flow(task: dict) -> Flow:
    return msgspec.convert({"Name": "bench", "Steps": [{"ID": "s", "Uses": "t"}], "Tasks": [{"Name": "t", **task}]},
                           Flow)  # fmt: skip


async def through_engine(root: Path, runs: int, task: dict, python_workers: int) -> tuple[float, float]:
    """Runs of one step per second, all handed to the engine at once, and CPU seconds per run."""
    flows = root / "flows"
    flows.mkdir()
    (flows / "trivial.py").write_text(TRIVIAL)
    config = Config(data_dir=str(root / "data"), flows_dir=str(flows), work_dir=str(root / "work"),
                    python_workers=python_workers, concurrency=CONCURRENCY)  # fmt: skip
    engine = Engine(config)
    await engine.start()
    try:
        plan = engine.plan(one_step_flow(task))
        begun, cpu = time.perf_counter(), _cpu()
        ids = [(await engine.create_run(plan)).id for _ in range(runs)]
        for run_id in ids:
            while (run := (await engine.get_run(run_id))[0]).status not in machine.TERMINAL:
                await asyncio.sleep(0.005)
            assert run.status == machine.COMPLETE, run
        return runs / (time.perf_counter() - begun), (_cpu() - cpu) / runs
    finally:
        await engine.stop()
        ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # the engine made this process undumpable


async def started(argv: list[str], count: int) -> tuple[float, float]:
    """Processes started, CONCURRENCY at a time, per second (a step's ceiling), and CPU seconds each."""

    async def one() -> None:
        proc = await asyncio.create_subprocess_exec(*argv, start_new_session=True)
        await proc.wait()

    return await _rate(one, count, CONCURRENCY)


async def runs_main(args: argparse.Namespace) -> None:
    figures = {
        "exec step": lambda root: through_engine(root, args.runs, {"Exec": ARGV}, 4),
        "fork+exec /bin/true": lambda root: started(ARGV, args.runs),
        "python task (warm)": lambda root: through_engine(root, args.runs, {"Python": "trivial:noop"}, 4),
        "python task (cold)": lambda root: through_engine(root, args.runs, {"Python": "trivial:noop"}, 0),
        "python -c pass": lambda root: started([sys.executable, "-c", "pass"], args.runs),
    }
    rates: dict[str, list[float]] = {name: [] for name in figures}
    cpus: dict[str, list[float]] = {name: [] for name in figures}
    for _ in range(args.rounds):
        for name, figure in figures.items():
            with tempfile.TemporaryDirectory() as tmp:
                rate, cpu = await figure(Path(tmp))
            rates[name].append(rate)
            cpus[name].append(cpu)
    best = {name: max(values) for name, values in rates.items()}
    least = {name: min(values) for name, values in cpus.items()}
    for name, ceiling in (("exec step", "fork+exec /bin/true"), ("python task (warm)", "python -c pass"),
                          ("python task (cold)", "python -c pass")):  # fmt: skip
        ratio = best[name] / best[ceiling]
        print(
            f"{name:18} {best[name]:5.0f} steps/s {least[name] * 1e3:5.1f} ms CPU each | {ceiling:19} "
            f"{best[ceiling]:5.0f}/s {least[ceiling] * 1e3:5.1f} ms CPU each | ratio {ratio:.2f}"
        )
    print("rounds (steps/s):", {name: [round(r) for r in values] for name, values in rates.items()})


async def raw(count: int, concurrency: int) -> tuple[float, float]:
    async def one() -> None:
        proc = await asyncio.create_subprocess_exec(*ARGV, start_new_session=True)
        await proc.wait()

    return await _rate(one, count, concurrency)


async def sandboxed(count: int, concurrency: int, root: Path) -> tuple[float, float]:
    data, work = root / "data", root / "work"
    data.mkdir(mode=0o700)
    work.mkdir(mode=0o711)
    sandbox = Sandbox.prepare(data, work, root, "nobody", [])
    reaper = Reaper()
    reaper.start()
    scratches = []
    for i in range(concurrency):
        scratch = work / f"s.{i}"
        scratch.mkdir(mode=0o777)
        scratches.append(scratch)
    free = asyncio.Queue()
    for scratch in scratches:
        free.put_nowait(scratch)

    async def one() -> None:
        scratch = await free.get()
        result = await run_process(ARGV, scratch, {"PATH": "/usr/bin:/bin"}, scratch.parent / f"{scratch.name}.log",
                                   60, 20, sandbox, reaper)  # fmt: skip
        assert result.returncode == 0, result
        free.put_nowait(scratch)

    try:
        return await _rate(one, count, concurrency)
    finally:
        reaper.stop()
        sandbox.close()


async def _rate(one, count: int, concurrency: int) -> tuple[float, float]:
    """Steps per second, and CPU seconds per step (this process and its children: less noisy)."""
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    start, cpu = time.perf_counter(), _cpu()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - start), (_cpu() - cpu) / count


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def process_main(args: argparse.Namespace) -> None:
    rates: dict[str, list[float]] = {"raw": [], "sandboxed": []}
    cpus: dict[str, list[float]] = {"raw": [], "sandboxed": []}
    for _ in range(args.rounds):
        for name in rates:
            with tempfile.TemporaryDirectory() as tmp:
                rate, cpu = await (raw(args.count, args.concurrency) if name == "raw" else
                                   sandboxed(args.count, args.concurrency, Path(tmp)))  # fmt: skip
            rates[name].append(rate)
            cpus[name].append(cpu)
    for name in rates:
        print(f"{name:10} {max(rates[name]):8.0f} exec steps/s (best round)   "
              f"{min(cpus[name]) * 1e6:6.0f} us CPU per step (least)")  # fmt: skip
    print(
        f"sandboxed / raw: {max(rates['sandboxed']) / max(rates['raw']):.2f} in rate, "
        f"{min(cpus['raw']) / min(cpus['sandboxed']):.2f} in CPU per step"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--process", action="store_true", help="the process alone, raw and sandboxed")
    parser.add_argument("--runs", type=int, default=300, help="runs per round through the engine")
    parser.add_argument("--count", type=int, default=500, help="--process: processes per round")
    parser.add_argument("--concurrency", type=int, default=1, help="--process: processes at a time")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is shown")
    args = parser.parse_args()
    await (process_main(args) if args.process else runs_main(args))


if __name__ == "__main__":
    asyncio.run(main())
