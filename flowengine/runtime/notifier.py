"""The one way waiting work wakes up: an SSE stream, an agent's long poll, a dashboard page.

A writer calls `notify(topic)` after it commits a change; whoever waits on that topic wakes and
reads the change from the database. A topic is a string: `run:<id>` (every commit that changes a
run; see `run_topic`), `agents`, ... A notification carries nothing but its topic: the database is
the truth, the notifier only says when to look.

Checking and then waiting without a race: a notification that comes after the check and before the
wait must not be lost. So a waiter subscribes first, then checks, then waits on its subscription,
which remembers a notification that came in between:

    with notifier.subscribe(run_topic(run_id)) as changes:
        while not done(await read()):
            await changes.wait(timeout)   # True: notified; False: timed out. Read again either way.

`notifier.wait(topic, timeout)` is the short form for a waiter that checks nothing first.

A wake is a hint, a timeout is a poll. Waiters read again after every `wait`, whatever it answers:
a notification may wake them for a change they have already seen, and a timeout must be treated
as a poll (something may have changed unnoticed). That rule is what lets a notifier that can lose
notifications serve all the same.

Across replicas. With several engines on one PostgreSQL, a change committed by one must wake
waiters on the others: `SharedNotifier` keeps a `LocalNotifier` for the waiters of its own process;
its `notify` delivers locally at once and queues the topic; `send` (a loop of the engine's) sends
what was queued a moment later (debounced: a burst of commits costs one `NOTIFY`, and no transaction
ever waits for one) to the other engines, whose `listen` loop (one connection per engine, LISTEN)
delivers it to their local waiters. NOTIFY is a hint, not a guarantee (it is lost while that
connection is down), so on reconnecting it wakes every local waiter, and each waiter's timeout is its
polling fallback (the interval at which it reads the database when nothing wakes it).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

DEBOUNCE = 0.002  # seconds topics are gathered before they go to the other engines in one message
MESSAGE_BYTES = 7900  # the most a message carries (PostgreSQL's NOTIFY takes 8,000 bytes)


def run_topic(run_id: str) -> str:
    """The topic notified after every commit that changes the run."""
    return f"run:{run_id}"


class Subscription:
    """Notifications on one topic from the moment it is made until it is closed (use `with`).

    It remembers a notification that comes while nobody waits on it: the next `wait` returns at once.
    Any number of notifications between two waits wake one wait. One task waits on it at a time."""

    __slots__ = ("_closed", "_hub", "_notified", "_waiter", "topic")

    def __init__(self, hub: LocalNotifier, topic: str) -> None:
        self.topic = topic
        self._hub = hub
        self._notified = False
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    async def wait(self, timeout: float) -> bool:
        """Until the topic is notified (True) or `timeout` seconds pass (False). A notification that
        came since the subscription was made, or since the last wait, returns True at once."""
        if self._closed:
            raise RuntimeError(f"subscription to {self.topic!r} is closed")
        if self._waiter is not None:
            raise RuntimeError(f"subscription to {self.topic!r} is already waited on")
        if not self._notified and timeout > 0:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        # A notification that came after the timer fired, before this task ran again, counts too.
        notified, self._notified = self._notified, False
        return notified

    def close(self) -> None:
        """Stop receiving notifications (idempotent). A task waiting on it wakes with False."""
        if not self._closed:
            self._closed = True
            self._hub._remove(self)
            if self._waiter is not None:
                _resolve(self._waiter)

    def _notify(self) -> None:
        self._notified = True
        if self._waiter is not None:
            _resolve(self._waiter)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Notifier(Protocol):
    """What waking up needs from a notifier, in one process or across replicas (see the module's doc)."""

    def notify(self, topic: str) -> None:
        """Wake every subscription to `topic`. Call it after the change is committed, never before."""
        ...

    def subscribe(self, topic: str) -> Subscription:
        """A subscription to `topic`, receiving from now on: make it before checking what to wait for."""
        ...

    async def wait(self, topic: str, timeout: float) -> bool:
        """The next notification on `topic` (True) or a timeout (False). For a waiter that checks
        nothing first: one that does must use `subscribe`."""
        ...


class LocalNotifier:
    """The notifier of one process. Everything runs on the event loop's thread (another thread
    notifies with `loop.call_soon_threadsafe(notifier.notify, topic)`).

    It holds nothing for a topic nobody subscribes to, so run ids do not pile up in it; a closed
    subscription (a waiter cancelled, a client gone) is forgotten at once."""

    def __init__(self) -> None:
        self._topics: dict[str, set[Subscription]] = {}

    def notify(self, topic: str) -> None:
        for subscription in self._topics.get(topic, ()):
            subscription._notify()

    def subscribe(self, topic: str) -> Subscription:
        subscription = Subscription(self, topic)
        self._topics.setdefault(topic, set()).add(subscription)
        return subscription

    async def wait(self, topic: str, timeout: float) -> bool:
        with self.subscribe(topic) as subscription:
            return await subscription.wait(timeout)

    def notify_all(self) -> None:
        """Wake every subscription, whatever its topic (notifications may have been lost)."""
        for subscribed in list(self._topics.values()):
            for subscription in list(subscribed):
                subscription._notify()

    def subscriptions(self, topic: str | None = None) -> int:
        """Open subscriptions: to `topic`, or to any topic."""
        if topic is not None:
            return len(self._topics.get(topic, ()))
        return sum(len(subscribed) for subscribed in self._topics.values())

    def topics(self) -> int:
        """Topics with at least one open subscription."""
        return len(self._topics)

    def _remove(self, subscription: Subscription) -> None:
        subscribed = self._topics.get(subscription.topic)
        if subscribed is not None:
            subscribed.discard(subscription)
            if not subscribed:
                del self._topics[subscription.topic]


class Channel(Protocol):
    """Messages between the engines on one database (persistence: Database.publish and listen)."""

    async def publish(self, messages: list[str]) -> None: ...

    async def listen(self, heard: Callable[[str], None], listening: Callable[[], None]) -> None: ...


class SharedNotifier:
    """The notifier of one engine among several on one database (see the module's doc). A message is
    the sending engine's origin and topics, one a line; an engine skips its own."""

    def __init__(self, channel: Channel, debounce: float = DEBOUNCE) -> None:
        self.local = LocalNotifier()
        self.debounce = debounce
        self.origin = uuid.uuid4().hex[:16]
        self._channel = channel
        self._queued: dict[str, None] = {}  # topics to send, in the order notified, once each
        self._wanted = asyncio.Event()

    def notify(self, topic: str) -> None:
        self.local.notify(topic)
        self._queued[topic] = None
        self._wanted.set()

    def subscribe(self, topic: str) -> Subscription:
        return self.local.subscribe(topic)

    async def wait(self, topic: str, timeout: float) -> bool:
        return await self.local.wait(topic, timeout)

    async def pending(self) -> None:
        """Until something is queued, and a moment more (what comes meanwhile goes with it)."""
        await self._wanted.wait()
        await asyncio.sleep(self.debounce)

    async def send(self) -> None:
        """Send what is queued to the other engines; should the database refuse it, it is dropped (a
        hint: their waiters poll)."""
        topics, self._queued = list(self._queued), {}
        self._wanted.clear()
        if topics:
            await self._channel.publish(pack(self.origin, topics))

    async def listen(self) -> None:
        """Deliver the other engines' topics to this one's waiters until the connection ends."""
        await self._channel.listen(self._heard, self.local.notify_all)

    def _heard(self, message: str) -> None:
        origin, _, topics = message.partition("\n")
        if origin != self.origin:
            for topic in topics.split("\n"):
                self.local.notify(topic)


def pack(origin: str, topics: list[str]) -> list[str]:
    """Topics in as few messages as fit (a topic longer than a message is dropped: none is)."""
    messages: list[str] = []
    lines: list[str] = []
    size = len(origin.encode())
    for topic in topics:
        grown = size + 1 + len(topic.encode())
        if grown > MESSAGE_BYTES and lines:
            messages.append("\n".join([origin, *lines]))
            lines, grown = [], len(origin.encode()) + 1 + len(topic.encode())
        if grown <= MESSAGE_BYTES:
            lines.append(topic)
            size = grown
    if lines:
        messages.append("\n".join([origin, *lines]))
    return messages
