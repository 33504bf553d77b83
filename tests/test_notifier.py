"""The notifier: waking, timeouts, the check-then-wait race, many waiters, and cleaning up after
waiters that are cancelled or closed. Each test runs its own event loop (asyncio.run)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest

from flowengine.config import Config
from flowengine.core import machine
from flowengine.core.spec import Flow
from flowengine.runtime.engine import Engine
from flowengine.runtime.notifier import MESSAGE_BYTES, LocalNotifier, SharedNotifier, pack, run_topic


def run(scenario: Callable[[LocalNotifier], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario(LocalNotifier()))


async def settle() -> None:
    """Let every task that can run, run."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_run_topic():
    assert run_topic("0199") == "run:0199"


def test_notify_wakes_a_waiter_at_once():
    async def scenario(notifier: LocalNotifier) -> tuple[bool, float]:
        started = time.monotonic()
        waiter = asyncio.create_task(notifier.wait("run:a", 30))
        await settle()
        notifier.notify("run:a")
        return await waiter, time.monotonic() - started

    woken, took = run(scenario)
    assert woken is True
    assert took < 10  # woken by the notification, not by the 30 s timeout


def test_wait_times_out_with_false():
    async def scenario(notifier: LocalNotifier) -> tuple[bool, float]:
        started = time.monotonic()
        return await notifier.wait("run:a", 0.05), time.monotonic() - started

    woken, took = run(scenario)
    assert woken is False
    assert took >= 0.05
    assert run(lambda n: n.wait("run:a", 0)) is False


def test_a_notification_before_any_subscription_wakes_nobody():
    async def scenario(notifier: LocalNotifier) -> bool:
        notifier.notify("run:a")
        return await notifier.wait("run:a", 0.05)

    assert run(scenario) is False


def test_notify_between_check_and_wait_is_not_lost():
    """The race a subscription exists for: the change commits (and notifies) while the waiter is
    still reading the state, before it starts waiting."""

    async def scenario(notifier: LocalNotifier) -> tuple[bool, float]:
        state = {"status": "RUNNING"}

        async def writer() -> None:
            state["status"] = "COMPLETE"
            notifier.notify("run:a")

        started = time.monotonic()
        with notifier.subscribe("run:a") as changes:
            seen = state["status"]  # the check...
            await writer()  # ...the change lands before the wait starts
            assert seen == "RUNNING"
            woken = await changes.wait(30)
        return woken, time.monotonic() - started

    woken, took = run(scenario)
    assert woken is True
    assert took < 10


def test_notifications_between_two_waits_wake_one_wait():
    async def scenario(notifier: LocalNotifier) -> list[bool]:
        with notifier.subscribe("run:a") as changes:
            for _ in range(3):
                notifier.notify("run:a")
            return [await changes.wait(30), await changes.wait(0.02)]

    assert run(scenario) == [True, False]


def test_a_notification_after_the_timeout_fired_still_counts():
    """The timer resolved the wait, then a notification came before the waiting task ran again: the
    wait answers True rather than losing it."""

    async def scenario(notifier: LocalNotifier) -> tuple[bool, bool]:
        with notifier.subscribe("run:a") as changes:
            waiting = asyncio.create_task(changes.wait(30))
            await settle()
            changes._waiter.set_result(None)  # what the timer does when it fires
            notifier.notify("run:a")  # in the same turn of the loop, before the task resumes
            return await waiting, await changes.wait(0)

    assert run(scenario) == (True, False)


def test_topics_are_separate():
    async def scenario(notifier: LocalNotifier) -> list[bool]:
        with notifier.subscribe("run:a") as a, notifier.subscribe("run:b") as b:
            notifier.notify("run:b")
            return [await a.wait(0.02), await b.wait(0.02)]

    assert run(scenario) == [False, True]


def test_every_subscriber_of_a_topic_wakes():
    async def scenario(notifier: LocalNotifier) -> list[bool]:
        waiters = [asyncio.create_task(notifier.wait("agents", 30)) for _ in range(1000)]
        await settle()
        assert notifier.subscriptions("agents") == 1000
        notifier.notify("agents")
        woken = await asyncio.gather(*waiters)
        assert (notifier.subscriptions(), notifier.topics()) == (0, 0)
        return woken

    assert run(scenario) == [True] * 1000


def test_a_thousand_topics_each_wakes_only_its_waiter_and_nothing_is_left():
    async def scenario(notifier: LocalNotifier) -> None:
        waiters = {i: asyncio.create_task(notifier.wait(run_topic(str(i)), 30)) for i in range(1000)}
        await settle()
        assert (notifier.topics(), notifier.subscriptions()) == (1000, 1000)
        for i in range(0, 1000, 2):
            notifier.notify(run_topic(str(i)))
        await settle()
        assert all(waiters[i].done() and waiters[i].result() is True for i in range(0, 1000, 2))
        assert not any(waiters[i].done() for i in range(1, 1000, 2))
        assert (notifier.topics(), notifier.subscriptions()) == (500, 500)
        for i in range(1, 1000, 2):
            notifier.notify(run_topic(str(i)))
        assert all(await asyncio.gather(*waiters.values()))
        assert (notifier.topics(), notifier.subscriptions()) == (0, 0)

    run(scenario)


def test_timed_out_waiters_leave_nothing_behind():
    async def scenario(notifier: LocalNotifier) -> None:
        woken = await asyncio.gather(*(notifier.wait(f"run:{i}", 0.01) for i in range(1000)))
        assert not any(woken)
        assert (notifier.topics(), notifier.subscriptions()) == (0, 0)

    run(scenario)


def test_cancelled_waiters_are_removed():
    async def scenario(notifier: LocalNotifier) -> None:
        short = [asyncio.create_task(notifier.wait(f"run:{i}", 30)) for i in range(500)]
        held = []

        async def hold(topic: str) -> None:
            with notifier.subscribe(topic) as changes:
                await changes.wait(30)

        held = [asyncio.create_task(hold("agents")) for _ in range(500)]
        await settle()
        assert notifier.subscriptions() == 1000
        for task in [*short, *held]:
            task.cancel()
        results = await asyncio.gather(*short, *held, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert (notifier.topics(), notifier.subscriptions()) == (0, 0)
        notifier.notify("agents")  # nobody left to wake: no error

    run(scenario)


def test_closing_a_subscription_wakes_its_waiter_with_false_and_forbids_more_waits():
    async def scenario(notifier: LocalNotifier) -> None:
        changes = notifier.subscribe("run:a")
        waiting = asyncio.create_task(changes.wait(30))
        await settle()
        changes.close()
        changes.close()  # idempotent
        assert await waiting is False
        assert notifier.subscriptions() == 0
        with pytest.raises(RuntimeError, match="closed"):
            await changes.wait(1)

    run(scenario)


def test_one_waiter_per_subscription():
    async def scenario(notifier: LocalNotifier) -> None:
        with notifier.subscribe("run:a") as changes:
            first = asyncio.create_task(changes.wait(30))
            await settle()
            with pytest.raises(RuntimeError, match="already waited on"):
                await changes.wait(1)
            notifier.notify("run:a")
            assert await first is True

    run(scenario)


def test_a_subscription_keeps_receiving_across_waits():
    """A stream subscribes once and waits many times: each notification wakes the wait after it."""

    async def scenario(notifier: LocalNotifier) -> list[bool]:
        woken = []
        with notifier.subscribe("run:a") as changes:
            for _ in range(3):
                waiting = asyncio.create_task(changes.wait(30))
                await settle()
                notifier.notify("run:a")
                woken.append(await waiting)
        return woken

    assert run(scenario) == [True, True, True]


def test_the_engine_notifies_a_run_after_each_commit_that_changes_it(tmp_path):
    wells = [{"Edge": "a", "Source": "upload"}, {"Edge": "b", "Source": "upload"}]
    flow = msgspec.convert({"Name": "two", "DataWells": wells}, Flow)
    engine = Engine(Config(data_dir=str(tmp_path), flows_dir=str(tmp_path)), new_id=lambda: "run-1")
    obj = machine.ObjectMeta(1, "text/plain", "e")

    async def scenario() -> list[bool]:
        woken = []
        with engine.notifier.subscribe(run_topic("run-1")) as changes:
            await engine.create_run(engine.plan(flow))
            woken.append(await changes.wait(0))  # created
            await engine.apply("run-1", machine.Landed("a", obj))
            woken.append(await changes.wait(0))  # a filled
            await engine.apply("run-1", machine.Landed("a", obj))
            woken.append(await changes.wait(0))  # a duplicate: nothing changed, nothing committed
            run = await engine.apply("run-1", machine.Landed("b", obj))
            woken.append(await changes.wait(0) and run.status == machine.COMPLETE)
        await engine.db.close()
        return woken

    assert asyncio.run(scenario()) == [True, True, False, True]


# Across engines: SharedNotifier over a channel (here an in-memory one; test_replicas.py has PostgreSQL's)


class Channel:
    """Messages between notifiers, as Database.publish and listen carry them."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []
        self.listeners: list[Callable[[str], None]] = []

    async def publish(self, messages: list[str]) -> None:
        self.sent.append(messages)
        for heard in self.listeners:
            for message in messages:
                heard(message)

    async def listen(self, heard: Callable[[str], None], listening: Callable[[], None]) -> None:
        self.listeners.append(heard)
        listening()
        await asyncio.Event().wait()


def test_a_burst_of_notifications_reaches_the_other_engines_in_one_message_and_not_this_one_twice():
    async def scenario() -> tuple[list[list[str]], list[bool], int]:
        channel = Channel()
        one, other = SharedNotifier(channel), SharedNotifier(channel)
        listeners = [asyncio.create_task(n.listen()) for n in (one, other)]
        sender = asyncio.create_task(_send_loop(one))
        await settle()
        with other.subscribe("run:a") as a, other.subscribe("run:b") as b, one.subscribe("run:a") as mine:
            for topic in ("run:a", "run:b", "run:a"):
                one.notify(topic)
            assert await mine.wait(0) is True  # this engine's own waiters at once, before anything is sent
            woken = [await a.wait(5), await b.wait(5), await mine.wait(0.1)]  # mine: not again from the channel
        for task in [*listeners, sender]:
            task.cancel()
        return channel.sent, woken, other.local.subscriptions()

    sent, woken, left = asyncio.run(scenario())
    assert len(sent) == 1 and len(sent[0]) == 1 and sent[0][0].split("\n")[1:] == ["run:a", "run:b"]
    assert woken == [True, True, False] and left == 0


async def _send_loop(notifier: SharedNotifier) -> None:
    while True:
        await notifier.pending()
        await notifier.send()


def test_a_reconnected_listener_wakes_every_waiter_for_what_it_missed():
    async def scenario() -> list[bool]:
        channel = Channel()
        notifier = SharedNotifier(channel)
        with notifier.subscribe("run:a") as a, notifier.subscribe("agents") as b:
            listener = asyncio.create_task(notifier.listen())
            woken = [await a.wait(5), await b.wait(5)]
            listener.cancel()
            return woken

    assert asyncio.run(scenario()) == [True, True]


def test_topics_are_packed_into_messages_that_fit_a_notify():
    topics = [f"run:{i:036}" for i in range(1000)]
    messages = pack("origin", topics)
    assert all(len(m.encode()) <= MESSAGE_BYTES for m in messages) and len(messages) == 6
    assert [t for m in messages for t in m.split("\n")[1:]] == topics
    assert all(m.startswith("origin\n") for m in messages)
