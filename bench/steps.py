"""What confining a step costs: exec steps started one after another, raw and through the sandbox.

    python bench/steps.py [--count 500] [--concurrency 1]

`raw` starts `/bin/true` with asyncio's own subprocess support (fork or vfork, then exec, then
wait): the ceiling. `sandboxed` starts it the way the engine starts an exec step's process
(run_process: a fresh thread confined with Landlock and, as root, the step user and namespaces of
its own; vfork and exec; the reaper told; the process group killed and reaped; its log read).
Scratch dirs, input copies and the run's database commits are left out: this is the process alone.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

from flowengine.runtime.executors.process import run_process
from flowengine.runtime.executors.reaper import Reaper
from flowengine.runtime.executors.sandbox import Sandbox

ARGV = ["/bin/true"]


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


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is shown")
    args = parser.parse_args()
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


if __name__ == "__main__":
    asyncio.run(main())
