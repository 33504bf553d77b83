"""Semantic checks of a flow definition: every problem at once, each with a path.

`spec.py` has already checked types and field names. Here we check what the fields mean
together: names, references between stores, wells, steps and tasks, that every edge is filled
exactly once, that steps do not wait on each other in a cycle, keys, TTLs and MIME types.

Each concern is one generator of `Problem`s; `validate` chains them, so nothing stops at the
first problem. `mime_matches` is reused by the engine.
"""

from __future__ import annotations

import re
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice

from flowengine.core import keys
from flowengine.core.durations import Duration, parse_duration
from flowengine.core.spec import Binding, DataWell, Flow, Slot, Step, Store, Task
from flowengine.core.webhooks import url_problem
from flowengine.errors import Problem

Problems = Iterator[Problem]

STORE_TYPES = ("local", "s3")
S3_REQUIRED_PARAMS = ("bucket", "endpoint")
SECRET_WORDS = ("accesskey", "secretkey", "secret", "password", "passwd", "token")
SOURCES = ("upload", "webhook", "static")
RUN_SPECIFIC_VARS = ("RUN_ID", "UUID", "TIMESTAMP", "DATE")  # a static object cannot depend on the run
PYTHON_TARGET = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_MIME_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*"  # RFC 6838 restricted-name
MIME_TYPE = re.compile(rf"{_MIME_NAME}/{_MIME_NAME}")
MIME_PATTERN = re.compile(rf"\*/\*|{_MIME_NAME}/(\*|{_MIME_NAME})")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_ENV = "FLOWENGINE_"


# Limits on one definition. Validation is linear in a flow's size, but every event on a run walks
# its steps, and a definition is kept in memory per run; these keep both small (README, "Limits").
MAX_STEPS = 1000
MAX_WELLS = 1000
MAX_TASKS = 1000
MAX_STORES = 100
MAX_BINDINGS = 100  # inputs and outputs of one step
MAX_PROBLEMS = 100  # reported at once; the rest are counted


def validate(flow: Flow, known_stores: Collection[str] = (), *, private_webhooks: bool = False) -> list[Problem]:
    """Everything wrong with `flow` (up to MAX_PROBLEMS); empty when it can run.
    `known_stores`: the operator's stores; `private_webhooks`: the operator's webhook_allow_private."""
    too_big = list(_check_size(flow))
    if too_big:
        return too_big
    tasks = _tasks_by_name(flow.tasks)
    stores = {"default", *known_stores, *(store.name for store in flow.stores)}
    problems = list(
        islice(
            chain(
                _check_flow_name(flow.name),
                _check_webhook(flow.webhook, private_webhooks),
                _check_stores(flow.stores),
                _check_tasks(flow.tasks),
                _check_steps(flow.steps, tasks),
                _check_wells(flow.data_wells, stores),
                _check_edge_names(flow),
                _check_edges(flow),
                _check_cycles(flow.steps),
                _check_mime_flow(flow, tasks),
            ),
            MAX_PROBLEMS + 1,
        )
    )
    if len(problems) > MAX_PROBLEMS:
        problems[MAX_PROBLEMS:] = [Problem("", f"more problems not shown: the first {MAX_PROBLEMS} are listed")]
    return problems


def validate_tasks(tasks: list[Task]) -> list[Problem]:
    """Everything wrong with a list of task definitions (a file of the task library)."""
    return list(_check_tasks(tasks))


def _check_size(flow: Flow) -> Problems:
    for path, count, limit in (
        ("Steps", len(flow.steps), MAX_STEPS),
        ("DataWells", len(flow.data_wells), MAX_WELLS),
        ("Tasks", len(flow.tasks), MAX_TASKS),
        ("Stores", len(flow.stores), MAX_STORES),
    ):
        if count > limit:
            yield Problem(path, f"{count} {path} is over the limit of {limit} in one flow")
    for i, step in enumerate(flow.steps):
        if len(step.inputs) + len(step.outputs) > MAX_BINDINGS:
            yield Problem(f"Steps[{i}]", f"a step may bind at most {MAX_BINDINGS} inputs and outputs")


# --- reusable helpers --------------------------------------------------------------------------


MAX_TTL = 7 * 86400.0  # SigV4 presigned URLs live 7 days at most
MAX_TIMEOUT = 7 * 86400.0
MAX_BACKOFF = 86400.0
MAX_ATTEMPTS = 100
MAX_OBJECT = 5 << 40  # S3's largest object
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def mime_matches(mime: str, pattern: str) -> bool:
    """Whether `mime` is one of the types `pattern` names: `image/png`, `image/*` or `*/*`."""
    kind, _, sub = _bare(mime).partition("/")
    pattern_kind, _, pattern_sub = _bare(pattern).partition("/")
    if pattern_kind == "*" and pattern_sub in ("*", ""):
        return True
    return kind == pattern_kind and (pattern_sub == "*" or sub == pattern_sub)


def _bare(mime: str) -> str:
    """A MIME type without parameters, lower case: `Text/CSV; charset=utf-8` -> `text/csv`."""
    return mime.split(";", 1)[0].strip().lower()


def _overlap(a: str, b: str) -> bool:
    """Whether two types or patterns share a type: image/* and image/png do, image/* and text/* not."""
    return mime_matches(a, b) or mime_matches(b, a)


def is_mime_type(text: str) -> bool:
    return MIME_TYPE.fullmatch(_bare(text)) is not None


def _is_mime_pattern(text: str) -> bool:
    return MIME_PATTERN.fullmatch(_bare(text)) is not None


def _quoted(names: Iterable[str], most: int = 20) -> str:
    """Names for a message, at most `most` of them (a flow may have a thousand)."""
    listed = list(islice(names, most + 1))
    more = ", ..." if len(listed) > most else ""
    return ", ".join(repr(name) for name in listed[:most]) + more or "none"


def _tasks_by_name(tasks: list[Task]) -> dict[str, Task]:
    """The first task of each name (a repeated name is reported by `_check_tasks`)."""
    by_name: dict[str, Task] = {}
    for task in tasks:
        by_name.setdefault(task.name, task)
    return by_name


def _duplicates(names: Iterable[str], path: Callable[[int], str], what: str) -> Problems:
    """A problem at each repeat of a name, pointing back at its first use."""
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            yield Problem(path(i), f"{what} {name!r} is used twice (first at {path(first[name])})")
        else:
            first[name] = i


def _check_identifier(path: str, what: str, value: str) -> Problems:
    if not value:
        yield Problem(path, f"{what} is empty")
    elif not keys.is_name(value):
        yield Problem(path, f"{what} {value!r} {keys.NAME_RULE}")


# --- name and stores ---------------------------------------------------------------------------


def _check_flow_name(name: str) -> Problems:
    yield from _check_identifier("Name", "flow name", name)


def _check_webhook(url: str, allow_private: bool) -> Problems:
    problem = url and url_problem(url, allow_private)
    if problem:
        yield Problem("Webhook", f"the webhook URL {problem}")


def _check_stores(stores: list[Store]) -> Problems:
    yield from _duplicates((store.name for store in stores), lambda i: f"Stores[{i}].Name", "store name")
    for i, store in enumerate(stores):
        yield from _check_store(f"Stores[{i}]", store)


def _check_store(path: str, store: Store) -> Problems:
    yield from _check_identifier(f"{path}.Name", "store name", store.name)  # it names a directory and a URL
    if store.type not in STORE_TYPES:
        yield Problem(f"{path}.Type", f"unknown store type {store.type!r}; use 'local' or 's3'")
    if store.type == "s3":
        for param in S3_REQUIRED_PARAMS:
            if param not in store.params:
                yield Problem(f"{path}.Params", f"an s3 store needs Params {param!r}")
        bucket = store.params.get("bucket")
        if bucket is not None and not BUCKET.fullmatch(str(bucket)):
            yield Problem(f"{path}.Params.bucket", f"{bucket!r} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
    for param in store.params:
        if _looks_secret(param):
            yield Problem(
                f"{path}.Params.{param}",
                f"{param!r} must not be in a flow file: credentials come from the environment or config",
            )


def _looks_secret(param: str) -> bool:
    normal = param.lower().replace("_", "").replace("-", "")
    return any(word in normal for word in SECRET_WORDS)


# --- tasks -------------------------------------------------------------------------------------


def _check_tasks(tasks: list[Task]) -> Problems:
    yield from _duplicates((task.name for task in tasks), lambda i: f"Tasks[{i}].Name", "task name")
    for i, task in enumerate(tasks):
        path = f"Tasks[{i}]"
        yield from _check_runner(path, task)
        yield from _check_limits(path, task)
        yield from _check_task_names(path, task)
        yield from _check_slot_types(path, task)
        yield from _check_exec_vars(path, task)
        yield from _check_env(path, task)


def _check_runner(path: str, task: Task) -> Problems:
    """Exactly one of Exec (argv), Python ("module:function") or Tool (run by an agent that has it)."""
    runners = [name for name, value in (("Exec", task.exec), ("Python", task.python), ("Tool", task.tool))
               if value is not None]  # fmt: skip
    if len(runners) > 1:
        both = "both " if len(runners) == 2 else ""
        yield Problem(path, f"task {task.name!r} sets {both}{', '.join(runners[:-1])} and {runners[-1]}; choose one")
    elif not runners:
        yield Problem(path, f"task {task.name!r} needs Exec (an argv list), Python ('module:function') "
                            "or Tool (run by an agent that has it, like 'comfyui')")  # fmt: skip
    if task.exec is not None and (not task.exec or not task.exec[0]):
        yield Problem(f"{path}.Exec", "Exec must be a non-empty argv list starting with the program")
    if task.python is not None and not PYTHON_TARGET.fullmatch(task.python):
        yield Problem(f"{path}.Python", f"Python {task.python!r} is not in the form 'module:function'")
    if task.tool is not None:
        yield from _check_identifier(f"{path}.Tool", "tool", task.tool)
        if task.env:
            yield Problem(f"{path}.Env", "Env is for commands the engine runs; an agent runs a Tool task")
    yield from check_labels(f"{path}.Labels", task.labels)


def check_labels(path: str, labels: list[str]) -> Problems:
    """Agent labels: names, each once."""
    for k, label in enumerate(labels):
        yield from _check_identifier(f"{path}[{k}]", "label", label)
    yield from _duplicates(labels, lambda k: f"{path}[{k}]", "label")


def _check_limits(path: str, task: Task) -> Problems:
    if not 1 <= task.max_attempts <= MAX_ATTEMPTS:
        yield Problem(f"{path}.MaxAttempts", f"MaxAttempts must be from 1 to {MAX_ATTEMPTS}, got {task.max_attempts}")
    yield from _check_duration(f"{path}.Timeout", task.timeout, MAX_TIMEOUT, "7 days", zero=False)
    yield from _check_duration(f"{path}.Backoff", task.backoff, MAX_BACKOFF, "1 day", zero=True)


def _check_task_names(path: str, task: Task) -> Problems:
    """Slot and flag names are unique; they share one namespace, as `${Name}` in Exec."""
    yield from _duplicates((s.name for s in task.inputs), lambda j: f"{path}.Inputs[{j}].Name", "input slot")
    yield from _duplicates((s.name for s in task.outputs), lambda j: f"{path}.Outputs[{j}].Name", "output slot")
    yield from _duplicates((f.name for f in task.flags), lambda j: f"{path}.Flags[{j}].Name", "flag")
    inputs = {slot.name for slot in task.inputs}
    for j, slot in enumerate(task.outputs):
        if slot.name in inputs:
            yield Problem(f"{path}.Outputs[{j}].Name", f"{slot.name!r} is already an input slot of this task")
    for j, flag in enumerate(task.flags):
        if flag.name in inputs or flag.name in {slot.name for slot in task.outputs}:
            yield Problem(f"{path}.Flags[{j}].Name", f"flag {flag.name!r} has the name of a slot of this task")
        if flag.type is None:
            continue
        if flag.type not in FLAG_TYPES:
            yield Problem(f"{path}.Flags[{j}].Type", f"unknown flag type {flag.type!r} (one of {_quoted(FLAG_TYPES)})")
        elif flag.default is not None and not flag_fits(flag.type, flag.default):
            yield Problem(f"{path}.Flags[{j}].Default", f"default {flag.default!r} is not {_A[flag.type]}")


def _check_slot_types(path: str, task: Task) -> Problems:
    for j, slot in enumerate(task.inputs):
        yield from _check_accept(f"{path}.Inputs[{j}].Accept", slot.accept)
    for j, slot in enumerate(task.outputs):
        if slot.content_type is not None:
            yield from _check_content_type(f"{path}.Outputs[{j}].ContentType", slot.content_type)


def _check_exec_vars(path: str, task: Task) -> Problems:
    """Every `${X}` in Exec names an input slot, an output slot or a flag of the task."""
    known = {s.name for s in task.inputs} | {s.name for s in task.outputs} | {f.name for f in task.flags}
    for k, arg in enumerate(task.exec or []):
        for name in dict.fromkeys(keys.template_vars(arg)):
            if name not in known:
                yield Problem(
                    f"{path}.Exec[{k}]",
                    f"unknown variable ${{{name}}}: not an input slot, output slot or flag "
                    f"of task {task.name!r} (known: {_quoted(sorted(known))})",
                )


def _check_env(path: str, task: Task) -> Problems:
    """Names a shell can use; values execve can pass; the ids the engine sets are its own."""
    for name, value in task.env.items():
        where = f"{path}.Env.{name}"
        if not ENV_NAME.fullmatch(name):
            yield Problem(where, f"environment variable name {name!r} may only use letters, digits and '_', "
                                 "and may not start with a digit")  # fmt: skip
        elif name.startswith(RESERVED_ENV):
            yield Problem(where, f"{RESERVED_ENV}* variables are set by the engine (run, step and attempt ids)")
        if "\0" in value:
            yield Problem(where, "an environment value may not contain a NUL character")


# --- steps -------------------------------------------------------------------------------------


def _check_steps(steps: list[Step], tasks: dict[str, Task]) -> Problems:
    yield from _duplicates((step.id for step in steps), lambda i: f"Steps[{i}].ID", "step ID")
    for i, step in enumerate(steps):
        path = f"Steps[{i}]"
        yield from _check_identifier(f"{path}.ID", "step ID", step.id)
        task = tasks.get(step.uses)
        if task is None:
            yield Problem(f"{path}.Uses", f"unknown task {step.uses!r} (tasks: {_quoted(tasks)})")
            continue
        yield from _check_bindings(f"{path}.Inputs", step.inputs, task.inputs, "input", task.name)
        yield from _check_bindings(f"{path}.Outputs", step.outputs, task.outputs, "output", task.name)
        yield from _check_step_flags(f"{path}.Flags", step, task)


def _check_bindings(path: str, bindings: list[Binding], slots: list[Slot], kind: str, task: str) -> Problems:
    """Each binding names a slot of the task, at most once; every slot that must be bound is."""
    names = [slot.name for slot in slots]
    bound: set[str] = set()
    for j, binding in enumerate(bindings):
        if binding.slot not in names:
            yield Problem(
                f"{path}[{j}].Slot",
                f"task {task!r} has no {kind} slot {binding.slot!r} (its {kind}s: {_quoted(names)})",
            )
        elif binding.slot in bound:
            yield Problem(f"{path}[{j}].Slot", f"{kind} slot {binding.slot!r} is bound twice")
        bound.add(binding.slot)
    for slot in slots:
        needed = kind == "output" or not slot.optional
        if needed and slot.name not in bound:
            yield Problem(path, f"{kind} slot {slot.name!r} of task {task!r} is not bound to an edge")


def _check_step_flags(path: str, step: Step, task: Task) -> Problems:
    defined = {flag.name for flag in task.flags}
    for name in step.flags:
        if name not in defined:
            yield Problem(
                f"{path}.{name}",
                f"task {task.name!r} has no flag {name!r} (its flags: {_quoted(sorted(defined))})",
            )
    for flag in task.flags:
        if flag.required and flag.default is None and flag.name not in step.flags:
            yield Problem(path, f"required flag {flag.name!r} of task {task.name!r} is not set")
        value = step.flags.get(flag.name)
        if value is not None and flag.type is not None and flag.type in FLAG_TYPES and not flag_fits(flag.type, value):
            yield Problem(f"{path}.{flag.name}", f"{value!r} is not {_A[flag.type]} (flag {flag.name!r})")


FLAG_TYPES = ("string", "number", "integer", "boolean")
_A = {"string": "a string", "number": "a number", "integer": "an integer", "boolean": "a boolean"}


def flag_fits(flag_type: str, value: object) -> bool:
    """Whether a flag value has its declared type (a boolean is not a number here, as in JSON)."""
    if flag_type == "boolean":
        return isinstance(value, bool)
    if flag_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if flag_type == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


# --- data wells --------------------------------------------------------------------------------


def _check_wells(wells: list[DataWell], stores: set[str]) -> Problems:
    for i, well in enumerate(wells):
        path = f"DataWells[{i}]"
        yield from _check_source_and_store(path, well, stores)
        if well.key is not None:
            yield from _check_key(f"{path}.Key", well.key, well.source)
        elif well.source == "static":
            yield Problem(f"{path}.Key", "a static well needs a Key naming the existing object")
        if well.ttl is not None:
            longest = "7 days, the longest a presigned URL lives"
            yield from _check_duration(f"{path}.TTL", well.ttl, MAX_TTL, longest, zero=False)
        yield from _check_sizes(path, well)
        if well.content_type is not None:
            yield from _check_content_type(f"{path}.ContentType", well.content_type)
        yield from _check_accept(f"{path}.Accept", well.accept)


def _check_source_and_store(path: str, well: DataWell, stores: set[str]) -> Problems:
    if well.source is not None and well.source not in SOURCES:
        yield Problem(
            f"{path}.Source",
            f"unknown Source {well.source!r}; use 'upload', 'webhook' or 'static', "
            "or leave it out where a step's output is written",
        )
    if well.store not in stores:
        yield Problem(f"{path}.Store", f"unknown store {well.store!r} (known: {_quoted(sorted(stores))})")


def _check_key(path: str, key: str, source: str | None) -> Problems:
    """Known variables only; none that change per run in a static key; literal parts kept safe."""
    names = list(dict.fromkeys(keys.template_vars(key)))
    for name in names:
        if name not in keys.TEMPLATE_VARS:
            known = ", ".join(f"${{{var}}}" for var in sorted(keys.TEMPLATE_VARS))
            yield Problem(path, f"unknown variable ${{{name}}} in Key {key!r} (known: {known})")
        elif source == "static" and name in RUN_SPECIFIC_VARS:
            yield Problem(path, f"a static well's Key must name an existing object, but ${{{name}}} changes every run")
    literal = keys.VAR.sub("x", key)
    if "${" in literal:
        yield Problem(path, f"Key {key!r} has a '${{' with no closing '}}'")
    problem = keys.key_problem(literal)
    if problem:
        yield Problem(path, f"Key {key!r} {problem}")


def _check_duration(path: str, value: Duration, most: float, human: str, *, zero: bool) -> Problems:
    """A duration (seconds, or "15m") of at most `most` seconds, and more than 0 unless `zero`."""
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        yield Problem(path, str(exc))
        return
    if seconds < 0 or (seconds == 0 and not zero) or seconds > most:
        bounds = f"from 0 to {most:g}" if zero else f"more than 0 and at most {most:g}"
        yield Problem(path, f"duration {value!r} must be {bounds} seconds ({human})")


def _check_sizes(path: str, well: DataWell) -> Problems:
    if well.size is not None and not 0 <= well.size <= MAX_OBJECT:
        yield Problem(f"{path}.Size", f"Size must be from 0 bytes to 5 TiB, got {well.size}")
    if well.max_size is not None and not 0 < well.max_size <= MAX_OBJECT:
        yield Problem(f"{path}.MaxSize", f"MaxSize must be more than 0 bytes and at most 5 TiB, got {well.max_size}")
    if well.size is not None and well.max_size is not None and well.size > well.max_size:
        yield Problem(f"{path}.Size", f"Size {well.size} is larger than MaxSize {well.max_size}")


def _check_content_type(path: str, content_type: str) -> Problems:
    if not is_mime_type(content_type):
        yield Problem(path, f"{content_type!r} is not a MIME type like 'text/csv' or 'image/png'")


def _check_accept(path: str, patterns: list[str]) -> Problems:
    for k, pattern in enumerate(patterns):
        if not _is_mime_pattern(pattern):
            yield Problem(f"{path}[{k}]", f"{pattern!r} is not a MIME pattern like 'image/png', 'image/*' or '*/*'")


# --- edges -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Use:
    """One place that names an edge."""

    edge: str
    path: str  # e.g. Steps[1].Outputs[0].Edge


def _edge_uses(flow: Flow) -> Iterator[_Use]:
    for i, well in enumerate(flow.data_wells):
        yield _Use(well.edge, f"DataWells[{i}].Edge")
    for i, step in enumerate(flow.steps):
        for j, binding in enumerate(step.inputs):
            yield _Use(binding.edge, f"Steps[{i}].Inputs[{j}].Edge")
        for j, binding in enumerate(step.outputs):
            yield _Use(binding.edge, f"Steps[{i}].Outputs[{j}].Edge")


def _check_edge_names(flow: Flow) -> Problems:
    """Edge names end up in keys (`${EDGE}`) and URLs."""
    for use in _edge_uses(flow):
        if use.edge in (".", ".."):
            yield Problem(use.path, f"edge name {use.edge!r} is not allowed")
        else:
            yield from _check_identifier(use.path, "edge name", use.edge)


@dataclass(frozen=True)
class _Filler:
    """One thing that fills an edge: a DataWell with a Source or a step output."""

    path: str
    what: str


def _first_wells(wells: list[DataWell]) -> dict[str, int]:
    """The index of the first DataWell of each edge (a second one is reported as a duplicate)."""
    first: dict[str, int] = {}
    for i, well in enumerate(wells):
        first.setdefault(well.edge, i)
    return first


def _fillers(flow: Flow) -> dict[str, list[_Filler]]:
    """What fills each edge, wells first, then step outputs in flow order."""
    fillers: dict[str, list[_Filler]] = defaultdict(list)
    for edge, i in _first_wells(flow.data_wells).items():
        well = flow.data_wells[i]
        if well.source is not None:
            fillers[edge].append(_Filler(f"DataWells[{i}].Edge", f"DataWells[{i}] (Source {well.source!r})"))
    for i, step in enumerate(flow.steps):
        for j, binding in enumerate(step.outputs):
            fillers[binding.edge].append(_Filler(f"Steps[{i}].Outputs[{j}].Edge", f"step {step.id!r}"))
    return fillers


def _check_edges(flow: Flow) -> Problems:
    """Every edge is filled exactly once, and every edge a step reads is filled."""
    first_wells = _first_wells(flow.data_wells)
    for i, well in enumerate(flow.data_wells):
        first = first_wells[well.edge]
        if first != i:
            yield Problem(f"DataWells[{i}].Edge", f"edge {well.edge!r} already has a DataWell (DataWells[{first}])")
    fillers = _fillers(flow)
    for edge, found in fillers.items():
        for extra in found[1:]:
            yield Problem(extra.path, f"edge {edge!r} is filled twice: already by {found[0].what}")
    for edge, i in first_wells.items():
        if flow.data_wells[i].source is None and edge not in fillers:
            yield Problem(
                f"DataWells[{i}].Edge",
                f"edge {edge!r} is never filled: the well has no Source and no step writes this edge",
            )
    for i, step in enumerate(flow.steps):
        for j, binding in enumerate(step.inputs):
            if binding.edge not in fillers:
                yield Problem(
                    f"Steps[{i}].Inputs[{j}].Edge",
                    f"edge {binding.edge!r} has no producer: no DataWell with a Source and no step output fills it",
                )


# --- cycles ------------------------------------------------------------------------------------


def _step_graph(steps: list[Step]) -> list[set[int]]:
    """For each step (by index), the steps that read an edge it writes."""
    writers: dict[str, set[int]] = defaultdict(set)
    for i, step in enumerate(steps):
        for binding in step.outputs:
            writers[binding.edge].add(i)
    successors: list[set[int]] = [set() for _ in steps]
    for j, step in enumerate(steps):
        for binding in step.inputs:
            for i in writers.get(binding.edge, ()):
                successors[i].add(j)
    return successors


def _components(successors: list[set[int]]) -> list[list[int]]:
    """Strongly connected components (Tarjan's algorithm, iterative): linear in steps + edges, where
    asking each step what it can reach would be quadratic (9,000 steps took 21 s that way)."""
    index: list[int | None] = [None] * len(successors)
    low = [0] * len(successors)
    on_stack = [False] * len(successors)
    stack: list[int] = []
    components: list[list[int]] = []
    counter = 0
    for root in range(len(successors)):
        if index[root] is not None:
            continue
        work = [(root, iter(successors[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack[member] = False
                        component.append(member)
                        if member == node:
                            break
                    components.append(component)
            elif index[child] is None:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack[child] = True
                work.append((child, iter(successors[child])))
            elif on_stack[child]:
                low[node] = min(low[node], index[child])  # type: ignore[type-var]
    return components


def _shortest_cycle(successors: list[set[int]], start: int, within: set[int]) -> list[int]:
    """The shortest path from `start` back to itself inside its component, as step indices."""
    parent: dict[int, int] = {start: start}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(successors[node] & within):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return path[::-1]
            if target not in parent:
                parent[target] = node
                queue.append(target)
    return []


def _cycles(steps: list[Step]) -> list[list[int]]:
    """One cycle per group of steps that wait on each other, each starting at the group's first step."""
    successors = _step_graph(steps)
    cycles = []
    for component in _components(successors):
        first = min(component)
        if len(component) > 1 or first in successors[first]:
            cycles.append(_shortest_cycle(successors, first, set(component)))
    return sorted(cycles)


def _check_cycles(steps: list[Step]) -> Problems:
    for cycle in _cycles(steps):
        names = " -> ".join(repr(steps[i].id) for i in [*cycle, cycle[0]])
        yield Problem(f"Steps[{cycle[0]}]", f"steps wait on each other in a cycle: {names}")


# --- MIME types along edges --------------------------------------------------------------------


def _produced_types(flow: Flow, tasks: dict[str, Task]) -> dict[str, list[str]]:
    """What each edge can carry, where known: a step output's ContentType, else its well's."""
    carried: dict[str, list[str]] = {}
    for edge, i in _first_wells(flow.data_wells).items():
        well = flow.data_wells[i]
        declared = [well.content_type] if well.content_type else well.accept
        if valid := [mime for mime in declared if _is_mime_pattern(mime)]:
            carried[edge] = valid
    for bound in _bound_slots(flow.steps, tasks, "output"):
        if bound.slot.content_type and is_mime_type(bound.slot.content_type):
            carried[bound.binding.edge] = [bound.slot.content_type]
    return carried


@dataclass(frozen=True)
class _Bound:
    """A step's binding of an edge to a slot its task declares."""

    path: str  # of the binding's edge: Steps[1].Inputs[0].Edge
    step: Step
    binding: Binding
    slot: Slot


def _bound_slots(steps: list[Step], tasks: dict[str, Task], kind: str) -> Iterator[_Bound]:
    """Every input (kind "input") or output binding of a step to a slot its task declares."""
    for i, step in enumerate(steps):
        task = tasks.get(step.uses)
        if task is None:
            continue
        bindings, slots = (step.inputs, task.inputs) if kind == "input" else (step.outputs, task.outputs)
        by_name = {slot.name: slot for slot in reversed(slots)}
        for j, binding in enumerate(bindings):
            if binding.slot in by_name:
                yield _Bound(f"Steps[{i}].{kind.title()}s[{j}].Edge", step, binding, by_name[binding.slot])


def _check_mime_flow(flow: Flow, tasks: dict[str, Task]) -> Problems:
    yield from _check_outputs_fit_wells(flow, tasks)
    yield from _check_inputs_accept(flow, tasks)


def _check_inputs_accept(flow: Flow, tasks: dict[str, Task]) -> Problems:
    """A step input that accepts only some types must be able to get one of them from its edge."""
    carried = _produced_types(flow, tasks)
    for bound in _bound_slots(flow.steps, tasks, "input"):
        accept = [pattern for pattern in bound.slot.accept if _is_mime_pattern(pattern)]
        types = carried.get(bound.binding.edge)
        if accept and types and not any(_overlap(t, p) for t in types for p in accept):
            yield Problem(
                bound.path,
                f"edge {bound.binding.edge!r} carries {' or '.join(types)} but slot {bound.slot.name!r} "
                f"of task {bound.step.uses!r} accepts {', '.join(accept)}",
            )


def _check_outputs_fit_wells(flow: Flow, tasks: dict[str, Task]) -> Problems:
    """A step output with a ContentType must fit what the well it is written to declares."""
    first_wells = _first_wells(flow.data_wells)
    for bound in _bound_slots(flow.steps, tasks, "output"):
        written = bound.slot.content_type
        i = first_wells.get(bound.binding.edge)
        if i is None or flow.data_wells[i].source is not None or not written or not is_mime_type(written):
            continue
        well = flow.data_wells[i]
        declared = [well.content_type] if well.content_type else well.accept
        declared = [mime for mime in declared if _is_mime_pattern(mime)]
        if declared and not any(mime_matches(written, mime) for mime in declared):
            yield Problem(
                bound.path,
                f"slot {bound.slot.name!r} of task {bound.step.uses!r} writes {written} "
                f"but DataWells[{i}] on edge {bound.binding.edge!r} takes {', '.join(declared)}",
            )
