"""What a flow definition fixes about every run of it, worked out once per definition.

Creating a run is then only filling in what differs per run: its ID, its keys' per-run
variables, its deadlines. Everything else (which store, which source, size limits, whether
a key template can ever escape its store) was decided when the definition was first seen.
"""

from __future__ import annotations

import math

import msgspec

from flowengine.config import Config
from flowengine.core import keys, machine
from flowengine.core.durations import parse_duration
from flowengine.core.machine import EdgeState
from flowengine.core.spec import DataWell, Flow
from flowengine.errors import Error
from flowengine.stores.base import Store
from flowengine.stores.registry import Stores

# Per-run values have fixed widths and safe characters, so a key expanded with these has the same
# problems, if any, as every key a run will ever get from the template.
_SAMPLE_RUN = "00000000-0000-7000-8000-000000000000"


class EdgePlan(msgspec.Struct, frozen=True):
    name: str
    place: str  # where the edge is defined, for errors: "DataWells[0]", or "Flow" for a step output's default
    store_name: str
    store: Store
    key: str  # the Key template with ${FLOW_NAME} and ${EDGE} expanded; the per-run variables remain
    source: str  # upload | webhook | static | step
    ttl: float | None = None  # seconds an upload or webhook well waits
    expect_size: int | None = None
    max_size: int | None = None
    content_type: str | None = None
    accept: tuple[str, ...] = ()

    def state(self, run_id: str, now: float) -> EdgeState:
        return EdgeState(
            self.store_name,
            keys.expand(self.key, run_id=run_id, now=now),
            self.source,
            math.ceil(now + self.ttl) if self.ttl is not None else None,  # whole seconds, like the URL's expiry
            self.expect_size,
            self.max_size,
            self.content_type,
            self.accept,
        )


class Plan(msgspec.Struct, frozen=True):
    flow: Flow
    digest: str  # names the definition in the database
    definition: bytes  # the flow, encoded as stored
    edges: list[EdgePlan]  # wells in DataWells order, then the step outputs no well names
    statics: list[EdgePlan]  # static wells: their object is looked up for every run
    s3_stores: list[Store]  # each prepared on first use (bucket, lifecycle rules)


def make_plan(flow: Flow, digest: str, definition: bytes, stores: Stores, config: Config) -> Plan:
    """The plan of a valid flow; 422 if one of its keys could leave its store."""
    wells = {w.edge: (i, w) for i, w in enumerate(flow.data_wells)}
    outputs = [b.edge for s in flow.steps for b in s.outputs if b.edge not in wells]
    edges = [_well_plan(flow, i, w, stores, config) for i, w in enumerate(flow.data_wells)]
    edges += [_output_plan(flow, edge, stores) for edge in dict.fromkeys(outputs)]
    statics = [e for e in edges if e.source == "static"]
    s3_stores = {id(e.store): e.store for e in edges if e.store.kind == "s3"}
    return Plan(flow, digest, definition, edges, statics, list(s3_stores.values()))


def _well_plan(flow: Flow, index: int, well: DataWell, stores: Stores, config: Config) -> EdgePlan:
    place = f"DataWells[{index}]"
    source = well.source or machine.FROM_STEP
    template = well.key or (keys.DEFAULT_OUTPUT_KEY if source == machine.FROM_STEP else keys.DEFAULT_INPUT_KEY)
    key = _bind(flow, well.edge, template, place)
    waiting = source in machine.WAITING_SOURCES  # only these have a TTL and an upload limit
    return EdgePlan(
        well.edge, place, well.store, stores.resolve(flow, well.store), key, source,
        ttl=well_ttl(well, config) if waiting else None,
        expect_size=well.size,
        max_size=min(well.max_size or config.max_upload_size, config.max_upload_size) if waiting else None,
        content_type=well.content_type,
        accept=tuple(well.accept),
    )  # fmt: skip


def well_ttl(well: DataWell, config: Config) -> float:
    """Seconds an upload or webhook well waits for its object."""
    return parse_duration(well.ttl) if well.ttl is not None else config.upload_ttl


def _output_plan(flow: Flow, edge: str, stores: Stores) -> EdgePlan:
    key = _bind(flow, edge, keys.DEFAULT_OUTPUT_KEY, "Flow")
    return EdgePlan(edge, "Flow", "default", stores.resolve(flow, "default"), key, machine.FROM_STEP)


def _bind(flow: Flow, edge: str, template: str, place: str) -> str:
    key = keys.bind(template, flow_name=flow.name, edge=edge)
    problem = keys.key_problem(keys.expand(key, run_id=_SAMPLE_RUN, now=0.0, new_uuid=lambda: _SAMPLE_RUN))
    if problem:
        raise Error("invalid", "invalid_key", f"{place}.Key: key {key!r} {problem}", f"{place}.Key")
    return key
