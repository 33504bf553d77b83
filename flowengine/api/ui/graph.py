"""A flow drawn as a graph: where each data edge and each step goes on a page. Pure: a flow in,
coordinates out; the template draws them as SVG and colours them with the run's states.

Columns follow the data: an edge no step writes (an input) is in column 0, a step one column right
of the furthest edge it reads, and an edge a step writes one column right of that step. So the
drawing reads left to right, inputs to outputs, with no JavaScript to lay it out.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from flowengine.core.spec import Flow

NODE_W, NODE_H = 150, 34
GAP_X, GAP_Y = 50, 14
PAD = 8


class Node(msgspec.Struct, frozen=True):
    id: str  # a step's ID or an edge's name
    kind: Literal["edge", "step"]
    label: str  # an edge's name, a step's task
    x: int
    y: int
    w: int = NODE_W
    h: int = NODE_H


class Link(msgspec.Struct, frozen=True):
    path: str  # an SVG path: a curve from the right side of one node to the left side of another


class Graph(msgspec.Struct, frozen=True):
    nodes: list[Node]
    links: list[Link]
    width: int
    height: int


def layout(flow: Flow) -> Graph:
    producer = {b.edge: s.id for s in flow.steps for b in s.outputs}
    edges = list(dict.fromkeys([*(w.edge for w in flow.data_wells),
                                *(b.edge for s in flow.steps for b in [*s.inputs, *s.outputs])]))  # fmt: skip
    column: dict[tuple[str, str], int] = {}

    def edge_column(edge: str, seen: frozenset[str] = frozenset()) -> int:
        if ("edge", edge) not in column:
            step = producer.get(edge)
            column["edge", edge] = 0 if step is None or step in seen else step_column(step, seen) + 1
        return column["edge", edge]

    def step_column(step_id: str, seen: frozenset[str] = frozenset()) -> int:
        if ("step", step_id) not in column:
            reads = [b.edge for b in flow.step(step_id).inputs]
            column["step", step_id] = 1 + max((edge_column(e, seen | {step_id}) for e in reads), default=-1)
        return column["step", step_id]

    keys = [("edge", e) for e in edges] + [("step", s.id) for s in flow.steps]
    for kind, name in keys:
        (edge_column if kind == "edge" else step_column)(name)
    rows: dict[int, int] = {}
    nodes: dict[tuple[str, str], Node] = {}
    for kind, name in sorted(keys, key=lambda k: column[k]):
        col = column[kind, name]
        row = rows.get(col, 0)
        rows[col] = row + 1
        label = name if kind == "edge" else flow.step(name).uses
        nodes[kind, name] = Node(name, kind, label, PAD + col * (NODE_W + GAP_X), PAD + row * (NODE_H + GAP_Y))  # type: ignore[arg-type]
    links = [_link(nodes["edge", b.edge], nodes["step", s.id]) for s in flow.steps for b in s.inputs]
    links += [_link(nodes["step", s.id], nodes["edge", b.edge]) for s in flow.steps for b in s.outputs]
    width = PAD * 2 + (max(rows, default=0) + 1) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + max(rows.values(), default=0) * (NODE_H + GAP_Y) - GAP_Y
    return Graph(list(nodes.values()), links, width, max(height, NODE_H + 2 * PAD))


def _link(a: Node, b: Node) -> Link:
    x1, y1, x2, y2 = a.x + a.w, a.y + a.h // 2, b.x, b.y + b.h // 2
    bend = (x2 - x1) // 2
    return Link(f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}")
