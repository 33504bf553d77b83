"""What `/metrics` shows, in the Prometheus text format (the `prometheus_client` library).

Each engine has a registry of its own (tests run several engines in one process). Counters move
where things happen: transitions after each commit, landings as they are noticed, loop failures in
the supervisor. Gauges that summarise the database are read when Prometheus scrapes (read_database).
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from flowengine.core.machine import COMPLETE, ERROR, RUNNING, STOPPED, WAITING, Transition
from flowengine.persistence.base import Queries

LAG_INTERVAL = 0.25  # seconds between event-loop lag samples
_DURATIONS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
_LAGS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # memory, CPU, open descriptors
        self.runs = Gauge("flowengine_runs", "Runs in the database by status", ["status"], registry=registry)
        self.waiting = Gauge("flowengine_waiting_uploads", "Wells waiting for an object", registry=registry)
        self.transitions = Counter(
            "flowengine_transitions", "Run and step transitions, by kind (run.created, step.failed, ...)",
            ["kind"], registry=registry,
        )  # fmt: skip
        self.step_seconds = Histogram(
            "flowengine_step_duration_seconds", "Step attempts from start to end, by outcome",
            ["outcome"], buckets=_DURATIONS, registry=registry,
        )  # fmt: skip
        self.upload_bytes = Counter(
            "flowengine_upload_bytes", "Bytes of objects that filled a waiting well, by source", ["source"],
            registry=registry,
        )  # fmt: skip
        self.reconciler_checks = Counter(
            "flowengine_reconciler_checks", "Store requests the reconciler made to find waiting objects",
            registry=registry,
        )  # fmt: skip
        self.landing_lag = Histogram(
            "flowengine_landing_lag_seconds", "From an object's last-modified time to its run noticing it, by way",
            ["via"], buckets=_LAGS, registry=registry,
        )  # fmt: skip
        self.loop_failures = Counter(
            "flowengine_loop_failures", "Failed turns of background loops, by loop", ["loop"], registry=registry
        )
        self.event_loop_lag = Histogram(
            "flowengine_event_loop_lag_seconds", "How late the event loop runs a timer: time it spends blocked",
            buckets=_LAGS, registry=registry,
        )  # fmt: skip

    async def read_database(self, db: Queries) -> None:
        """The gauges that summarise the database, read when Prometheus scrapes."""
        counts = await db.count_by_status()
        for status in (STOPPED, WAITING, RUNNING, COMPLETE, ERROR):
            self.runs.labels(status).set(counts.get(status, 0))
        self.waiting.set(await db.count_waits())

    def observe(self, transitions: list[Transition]) -> None:
        for t in transitions:
            self.transitions.labels(t.kind).inc()
            if t.kind in ("step.succeeded", "step.failed") and t.duration is not None:
                self.step_seconds.labels("succeeded" if t.kind == "step.succeeded" else "failed").observe(t.duration)
            elif t.kind == "edge.filled" and t.source in ("upload", "webhook") and t.size is not None:
                self.upload_bytes.labels(t.source).inc(t.size)

    async def sample_event_loop_lag(self) -> None:
        """One sample: sleep a fixed time and see how much later than that the loop woke us."""
        started = time.monotonic()
        await asyncio.sleep(LAG_INTERVAL)
        self.event_loop_lag.observe(max(0.0, time.monotonic() - started - LAG_INTERVAL))
