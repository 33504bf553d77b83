"""The dashboard, under /ui: server-rendered pages (jinja2), vendored htmx, no JavaScript build.

Every page goes through `page`: it finds the viewer (sessions.py), sends a visitor to the sign-in
page where the engine requires credentials, checks the CSRF token of every form it takes, and
turns domain errors into an HTML page with the status api/errors.py gives their kind. A team sees
its own runs and tasks only, and its own workflows and the operator's (another team's is "not
found", as in the API); the operator sees all.

The pages are listed in NAV: a new page is a route, a template and a NAV entry; base.html draws
the navigation from it. The operator's lists (runs, tasks, agents, webhooks) have a team column and
a team filter (`?team=<id>`, `-` for no team); a team's viewer's `team` parameter is ignored.
"""

from __future__ import annotations

import datetime
import hashlib
import reprlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import jinja2
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from flowengine.api import documents
from flowengine.api import flow as flow_api
from flowengine.api.errors import STATUS, error_response
from flowengine.api.http import base_url, query_int, whole_number
from flowengine.api.r.common import public_base
from flowengine.api.r.tasks import task_detail, task_result, team_task, team_task_row
from flowengine.api.sse import Event, EventStream
from flowengine.api.ui import sessions, views
from flowengine.api.ui.sessions import CSRF_FIELD, CSRF_HEADER, SignInRequired, Viewer
from flowengine.api.ui.stats import step_stats
from flowengine.core import machine
from flowengine.core.ids import uuid7_floor
from flowengine.core.tasks import TASK_STATUSES, TERMINAL_TASK
from flowengine.core.workflows import WorkflowStatus
from flowengine.errors import Error, bad_request
from flowengine.identity import tokens
from flowengine.identity.directory import unauthorized
from flowengine.runtime import webhooks
from flowengine.runtime.agents import AGENT_STATUSES
from flowengine.runtime.engine import Engine
from flowengine.runtime.notifier import run_topic
from flowengine.runtime.tasks import TaskBody

PREFIX = "/ui"
NAV = [
    ("Overview", "/ui"),
    ("Runs", "/ui/runs"),
    ("Tasks", "/ui/tasks"),
    ("Flows", "/ui/flows"),
    ("Workflows", "/ui/workflows"),
    ("Agents", "/ui/agents"),
    ("Webhooks", "/ui/webhooks"),
]
PAGE_SIZE = 50
ROWS_REFRESH = 5  # seconds between refreshes of a list's first page (runs, tasks, agents, a webhook's deliveries)
TASK_REFRESH = 2  # seconds between refreshes of an unfinished task's page
MAX_LISTED = 500  # workflows at most a tasks list offers to filter by
LIVE_POLL = 1.0  # seconds: a run page's stream looks again this often while a step works (its log grows)
IDLE_POLL = 15.0  # otherwise, when nothing notified it (the polling fallback)
OVERVIEW_WINDOW = 3600.0  # seconds of step history the overview sums up
OVERVIEW_SCAN = 2000  # runs at most it reads for that (the newest of the last day)
MAX_FORM = 65_536  # bytes of a form body
DELIVERIES_PAGE = 20  # deliveries a webhook's page shows at once, each with its attempts
HERE = Path(__file__).parent
# Pages may load only the engine's own scripts and styles; uploads go to presigned URLs, which may be
# on an S3 store's host (connect-src); no page may be framed (clickjacking).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self' http: https:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")  # fmt: skip
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}  # fmt: skip


MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".txt": "text/plain; charset=utf-8"}  # fmt: skip


class Asset(msgspec.Struct, frozen=True):
    body: bytes
    media_type: str
    version: str  # a hash of the body: in the URL, so a cached copy is never stale


def _assets() -> dict[str, Asset]:
    found = {}
    for path in sorted((HERE / "static").iterdir()):
        body = path.read_bytes()
        media_type = MEDIA_TYPES[path.suffix]
        found[path.name] = Asset(body, media_type, hashlib.sha256(body).hexdigest()[:12])
    return found


ASSETS = _assets()
templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
)
templates.filters.update(views.FILTERS)
templates.globals.update(nav=NAV, static=lambda name: f"{PREFIX}/static/{name}?v={ASSETS[name].version}",
                         statuses=flow_api.STATUSES)  # fmt: skip


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


def render(request: Request, viewer: Viewer | None, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    engine = engine_of(request)
    session = viewer.session if viewer else context.pop("session")
    html = templates.get_template(template).render(
        request=request, viewer=viewer, csrf=sessions.csrf_token(engine, session), **context
    )
    return HTMLResponse(html, status, headers=PAGE_HEADERS)


Handler = Callable[[Request, Viewer], Awaitable[Response]]


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A dashboard endpoint: the viewer found (or the visitor sent to sign in), forms' CSRF tokens
    checked, errors shown as pages."""

    async def endpoint(request: Request) -> Response:
        engine = engine_of(request)
        try:
            viewer = await sessions.viewer_of(request, engine)
        except SignInRequired:
            return _to_sign_in(request)
        try:
            if request.method == "POST":
                sent = request.headers.get(CSRF_HEADER) or (await form(request)).get(CSRF_FIELD)
                if not sessions.csrf_ok(engine, viewer.session, sent):
                    raise Error("forbidden", "csrf_failed", "this form has expired or did not come from this "
                                "dashboard: reload the page and try again", f"body.{CSRF_FIELD}")  # fmt: skip
            response = await handler(request, viewer)
        except Error as exc:
            response = error_page(request, viewer, exc)
        if viewer.fresh:
            sessions.set_cookie(response, request, engine, viewer.session)
        return response

    endpoint.__name__ = handler.__name__
    return endpoint


def _to_sign_in(request: Request) -> Response:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = f"{PREFIX}/sign-in?{urlencode({'next': here})}"
    if request.headers.get("hx-request"):  # htmx follows this header rather than swapping in the sign-in page
        return Response(status_code=401, headers={"HX-Redirect": target})
    if request.method != "GET":
        return error_response(unauthorized("sign in to the dashboard first"))
    return RedirectResponse(target, 303)


def error_page(request: Request, viewer: Viewer | None, error: Error, session: Any = None) -> Response:
    context = {"session": session} if viewer is None else {}
    if error.location.partition(".")[0] == "path":  # to the viewer, the page's address (not the API's field name)
        error = Error(error.kind, error.code, error.message, request.url.path)
    return render(request, viewer, "error.html", STATUS[error.kind], error=error, **context)


async def form(request: Request) -> dict[str, str]:
    """A url-encoded form's fields (the first value of each), at most MAX_FORM bytes."""
    if "form_fields" not in request.scope:
        fields: dict[str, str] = {}
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type == "application/x-www-form-urlencoded":
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_FORM:
                    raise Error("too_large", "too_large", f"the form is over {MAX_FORM} bytes", "body")
            for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
                fields.setdefault(name, value)
        request.scope["form_fields"] = fields
    return request.scope["form_fields"]


def _next(value: str | None) -> str:
    """Where to go after signing in: a dashboard path of this engine, never another site."""
    if value and (value == PREFIX or value.startswith(f"{PREFIX}/")) and "\\" not in value:
        return value
    return f"{PREFIX}/runs"


# Signing in and out.


async def sign_in_page(request: Request) -> Response:
    engine = engine_of(request)
    session, fresh = sessions.visitor_session(request, engine)
    response = render(request, None, "sign_in.html", session=session, error=None,
                      next=_next(request.query_params.get("next")), team="")  # fmt: skip
    if fresh:
        sessions.set_cookie(response, request, engine, session)
    return response


async def sign_in(request: Request) -> Response:
    engine = engine_of(request)
    session, fresh = sessions.visitor_session(request, engine)
    fields = await form(request)
    target, team_field = _next(fields.get("next")), fields.get("team", "").strip()

    def refused(error: Error) -> Response:
        response = render(request, None, "sign_in.html", STATUS[error.kind], session=session, error=error,
                          next=target, team=team_field)  # fmt: skip
        if fresh:
            sessions.set_cookie(response, request, engine, session)
        return response

    if fresh or not sessions.csrf_ok(engine, session, fields.get(CSRF_FIELD)):
        return refused(Error("forbidden", "csrf_failed", "the sign-in form expired: try again", f"body.{CSRF_FIELD}"))
    credential = fields.get("credential", "").strip()
    if not credential:
        return refused(Error("bad_request", "missing_field", "enter a key or a session token", "body.credential"))
    try:
        principal, expires = await _sign_in_principal(engine, credential, team_field)
    except Error as exc:
        return refused(exc)
    who = {"kind": principal.kind, "credential": principal.credential or "", "user": principal.user or "",
           "team": principal.team}  # fmt: skip
    signed = sessions.new_session(engine, min(engine.config.session_ttl, expires - engine.clock()), **who)
    response = RedirectResponse(target, 303)
    sessions.set_cookie(response, request, engine, signed)
    return response


async def _sign_in_principal(engine: Engine, credential: str, team_field: str) -> tuple[Any, float]:
    """Who a credential typed into the sign-in form is, and until when it holds."""
    team = team_field
    if team_field and not _is_uuid(team_field):
        found = await engine.db.team(name=team_field)
        if found is None:
            raise Error("bad_request", "unknown_team", f"there is no team {reprlib.repr(team_field)}", "body.team")
        team = found.id
    principal = await engine.directory.authenticate(credential, team or None)
    if principal is None or principal.kind == "agent":
        raise unauthorized("an agent's key cannot sign in to the dashboard")
    if principal.kind == "user" and not principal.team:
        raise Error("bad_request", "team_required", "a session token needs the team you sign in for", "body.team")
    expires = engine.clock() + engine.config.session_ttl
    if principal.kind == "user":  # authenticate has just verified the token: its expiry is the session's end
        expires = min(expires, tokens.verify(engine.directory.jwt_secret, credential, engine.clock()).exp)
    elif principal.credential:
        found = await engine.db.credential(id=principal.credential)
        if found is not None and found.expires is not None:
            expires = min(expires, found.expires)
    return principal, expires


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def sign_out(request: Request, viewer: Viewer) -> Response:
    response = RedirectResponse(f"{PREFIX}/sign-in" if engine_of(request).config.auth == "keys" else PREFIX, 303)
    sessions.clear_cookie(response, request, engine_of(request))
    return response


# Runs.


class RunQuery(msgspec.Struct):
    status: str | None = None
    flow: str | None = None
    team: str | None = None  # a team's ID, '' for runs of no team; None: the viewer's (an operator's: all)
    since: float | None = None
    until: float | None = None
    cursor: str | None = None

    def args(self, **changes: Any) -> str:
        """The query string of this list (as the form writes it), with changes."""
        values = {"status": self.status, "flow": self.flow, "team": team_arg(self.team),
                  "since": _local(self.since), "until": _local(self.until), "cursor": self.cursor,
                  **changes}  # fmt: skip
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})


def _local(t: float | None) -> str | None:
    return None if t is None else datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M")


def _time(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise bad_request("invalid_query", f"{name} must be a date and time (2026-01-31T13:45), in UTC",
                          f"query.{name}") from None  # fmt: skip
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)).timestamp()


def run_query(request: Request, viewer: Viewer) -> RunQuery:
    params = request.query_params
    status = params.get("status", "").strip().upper() or None
    if status is not None and status not in flow_api.STATUSES:
        raise bad_request("invalid_query", f"status must be one of {', '.join(flow_api.STATUSES)}", "query.status")
    team = team_filter(request, viewer)
    cursor = params.get("cursor") or None
    if cursor:
        flow_api.decode_cursor(cursor)
    return RunQuery(status, params.get("flow", "").strip() or None, team, _time(request, "since"),
                    _time(request, "until"), cursor)  # fmt: skip


def team_filter(request: Request, viewer: Viewer) -> str | None:
    """The team an operator's list shows (`?team=`: a team's ID, `-` for none, which is ''); None: the
    viewer's own scope (an operator's: every team's). Only an operator may choose."""
    team = request.query_params.get("team", "").strip() or None
    return None if not viewer.operator or team is None else "" if team == "-" else team


def team_arg(team: str | None) -> str | None:
    """A team filter as the query string writes it."""
    return "-" if team == "" else team


def scope(viewer: Viewer, chosen: str | None) -> str | None:
    """The team a list reads: the one an operator chose, else the viewer's (None: every team's)."""
    return viewer.team if chosen is None else chosen


async def list_page(engine: Engine, viewer: Viewer, query: RunQuery) -> dict[str, Any]:
    team = scope(viewer, query.team)
    bounds = [flow_api.decode_cursor(query.cursor)] if query.cursor else []
    if query.until is not None:
        bounds.append(uuid7_floor(query.until))
    after = uuid7_floor(query.since) if query.since is not None else None
    runs = await engine.db.list_runs(team, query.status, query.flow, PAGE_SIZE + 1,
                                     before=min(bounds) if bounds else None, after=after)  # fmt: skip
    older = flow_api.encode_cursor(runs[PAGE_SIZE - 1].id) if len(runs) > PAGE_SIZE else None
    timed = query.since is not None or query.until is not None
    total = None if timed else await engine.db.count_runs(team, query.status, query.flow)
    return {"runs": runs[:PAGE_SIZE], "older": older, "total": total, "query": query,
            "teams": await _team_names(engine, viewer),
            "refresh": ROWS_REFRESH if query.cursor is None else None}  # fmt: skip


async def runs_page(request: Request, viewer: Viewer) -> Response:
    wanted = request.query_params.get("id", "").strip()
    if wanted:  # a search by ID opens that run (or its not-found page)
        return RedirectResponse(f"{PREFIX}/runs/{quote(wanted, safe='')}", 303)
    engine = engine_of(request)
    query = run_query(request, viewer)
    flows = [entry.name for entry in await engine.catalog.entries()]
    return render(request, viewer, "runs.html", flows=flows, **await list_page(engine, viewer, query))


async def run_rows(request: Request, viewer: Viewer) -> Response:
    """The runs list's rows alone, which the list page polls (htmx) to refresh without a reload."""
    context = await list_page(engine_of(request), viewer, run_query(request, viewer))
    return render(request, viewer, "runs_rows.html", **context)


async def _run_view(request: Request, viewer: Viewer) -> views.RunView:
    engine = engine_of(request)
    run, flow = await engine.get_run(request.path_params["run_id"], viewer.team)
    return views.run_view(engine, run, flow, await engine.db.run_attempts(run.id), base_url(request.scope))


async def run_page(request: Request, viewer: Viewer) -> Response:
    view = await _run_view(request, viewer)
    return render(request, viewer, "run.html", view=view, graph=view.graph)


async def run_events(request: Request, viewer: Viewer) -> Response:
    """The run page's live part, re-rendered after every change of the run (and each second while
    a step works, for its log), as server-sent events; the stream ends once the run has ended."""
    engine = engine_of(request)
    view = await _run_view(request, viewer)  # a 404 before the stream starts
    run_id = view.run.id

    async def events() -> AsyncIterator[Event]:
        sent, number = "", 0
        with engine.notifier.subscribe(run_topic(run_id)) as changes:
            while True:
                if viewer.signed_in and await sessions.principal_of(engine, viewer.session) is None:
                    return  # the key was revoked meanwhile: the page's next request signs in again
                live = await _run_view(request, viewer)
                html = templates.get_template("run_live.html").render(
                    viewer=viewer, view=live, graph=live.graph, csrf=sessions.csrf_token(engine, viewer.session)
                )
                if html != sent:
                    number += 1
                    sent = html
                    yield Event(number, "live", msgspec.json.encode(html))
                if live.terminal:
                    yield Event(number + 1, "end", b"{}")
                    return
                await changes.wait(LIVE_POLL if live.active else IDLE_POLL)

    return EventStream(events())


async def step_log(request: Request, viewer: Viewer) -> Response:
    engine = engine_of(request)
    run, _ = await engine.get_run(request.path_params["run_id"], viewer.team)
    step_id = request.path_params["step_id"]
    state = run.steps.get(step_id)
    if state is None:
        raise Error("not_found", "not_found", f"run {run.id} has no step {reprlib.repr(step_id)}", "path.step")
    attempt = whole_number(request.query_params.get("attempt")) or state.attempts
    path = views.log_path(engine, run.id, step_id, attempt)
    if not 1 <= attempt <= state.attempts or not path.is_file():
        raise Error("not_found", "not_found", f"step {step_id} has no log for attempt {attempt}", "query.attempt")
    return FileResponse(path, media_type="text/plain; charset=utf-8", headers={"X-Content-Type-Options": "nosniff"})


async def cancel_run(request: Request, viewer: Viewer) -> Response:
    run_id = request.path_params["run_id"]
    await engine_of(request).cancel(run_id, viewer.team)
    return RedirectResponse(f"{PREFIX}/runs/{run_id}", 303)


async def refresh_run(request: Request, viewer: Viewer) -> Response:
    run_id = request.path_params["run_id"]
    await engine_of(request).refresh(run_id, viewer.team)
    return RedirectResponse(f"{PREFIX}/runs/{run_id}", 303)


# Flows.


async def flows_page(request: Request, viewer: Viewer) -> Response:
    entries = await engine_of(request).catalog.entries()
    return render(request, viewer, "flows.html", entries=entries, waiting_sources=machine.WAITING_SOURCES)


async def start_run(request: Request, viewer: Viewer) -> Response:
    """Start a run of a flow file for the viewer's team; the answer is the run document (JSON), whose
    upload URLs the page's script PUTs the chosen files to, straight from the browser."""
    engine = engine_of(request)
    try:
        plan = engine.plan(await engine.catalog.get(request.path_params["name"]))
        run = await engine.create_run(plan, viewer.principal.team)
    except Error as exc:
        return error_response(exc)
    doc = documents.run_document(engine, run, plan.flow, base_url(request.scope))
    return Response(msgspec.json.encode(doc), 201, media_type="application/json")


# Tasks: runs started through the workflow/task API (api/r/tasks.py reads them the same way).


class TaskQuery(msgspec.Struct):
    status: str | None = None  # a task status (core/tasks.TASK_STATUSES)
    workflow: str | None = None  # a workflow's ID
    team: str | None = None  # as RunQuery's
    page: int = 1

    def args(self, **changes: Any) -> str:
        """The query string of this list (as the form writes it), with changes."""
        values = {"status": self.status, "workflow": self.workflow, "team": team_arg(self.team), "page": self.page,
                  **changes}  # fmt: skip
        return urlencode({k: v for k, v in values.items() if v not in (None, "") and (k, v) != ("page", 1)})


def task_query(request: Request, viewer: Viewer) -> TaskQuery:
    params = request.query_params
    status = params.get("status", "").strip().lower() or None
    if status is not None and status not in TASK_STATUSES:
        raise bad_request("invalid_query", f"status must be one of {', '.join(TASK_STATUSES)}", "query.status")
    return TaskQuery(status, params.get("workflow", "").strip() or None, team_filter(request, viewer),
                     query_int(request, "page", 1, 1, 10**9))  # fmt: skip


async def task_list(engine: Engine, viewer: Viewer, query: TaskQuery) -> dict[str, Any]:
    team = scope(viewer, query.team)
    rows = await engine.db.list_tasks(team, query.status, PAGE_SIZE + 1, (query.page - 1) * PAGE_SIZE,
                                      workflow=query.workflow)  # fmt: skip
    # The counters know a team's tasks by status only: a total by workflow would scan the tasks.
    total = None if query.workflow else await engine.db.count_tasks(team, query.status)
    workflows, _ = await engine.workflows.page(viewer.team, MAX_LISTED, 0)
    return {"tasks": [(row.task, task_detail(row)) for row in rows[:PAGE_SIZE]],
            "more": len(rows) > PAGE_SIZE, "total": total, "query": query,
            "workflows": {stored.record.id: stored.record.slug for stored in workflows},
            "teams": await _team_names(engine, viewer),
            "refresh": ROWS_REFRESH if query.page == 1 else None}  # fmt: skip


async def _team_names(engine: Engine, viewer: Viewer) -> dict[str, str]:
    """The teams' names by ID, for an operator's lists (a team sees its own only: none needed)."""
    return {t.id: t.name for t in await engine.db.teams()} if viewer.operator else {}


async def tasks_page(request: Request, viewer: Viewer) -> Response:
    wanted = request.query_params.get("id", "").strip()
    if wanted:  # a search by ID opens that task (or its not-found page)
        return RedirectResponse(f"{PREFIX}/tasks/{quote(wanted, safe='')}", 303)
    context = await task_list(engine_of(request), viewer, task_query(request, viewer))
    return render(request, viewer, "tasks.html", task_statuses=TASK_STATUSES, **context)


async def task_rows(request: Request, viewer: Viewer) -> Response:
    """The tasks list's rows alone, which the list page polls (htmx) to refresh without a reload."""
    context = await task_list(engine_of(request), viewer, task_query(request, viewer))
    return render(request, viewer, "tasks_rows.html", **context)


async def _task_context(request: Request, viewer: Viewer) -> dict[str, Any]:
    engine = engine_of(request)
    row = await team_task_row(engine, request.path_params["task_id"], viewer.team)
    task, run, flow = row.task, row.run, (await engine.get_run(row.task.id))[1]
    detail = task_detail(row)
    return {"task": task, "detail": detail, "body": msgspec.json.decode(task.body, type=TaskBody),
            "workflow": await engine.db.workflow(id=task.workflow),
            "result": task_result(engine, task, run, flow, public_base(request)),
            "terminal": detail.task_status in TERMINAL_TASK, "refresh": TASK_REFRESH}  # fmt: skip


async def task_page(request: Request, viewer: Viewer) -> Response:
    return render(request, viewer, "task.html", **await _task_context(request, viewer))


async def task_live(request: Request, viewer: Viewer) -> Response:
    """The task page's changing part, which the page polls (htmx) until the task has ended."""
    return render(request, viewer, "task_live.html", **await _task_context(request, viewer))


async def cancel_task(request: Request, viewer: Viewer) -> Response:
    engine = engine_of(request)
    task = await team_task(engine, request.path_params["task_id"], viewer.team)
    await engine.cancel(task.id)  # a task that has ended stays as it ended
    return RedirectResponse(f"{PREFIX}/tasks/{task.id}", 303)


# Workflows: the operator's (flow files) and the teams' own (api/r/workflows.py reads them the same way).


async def workflows_page(request: Request, viewer: Viewer) -> Response:
    engine = engine_of(request)
    number = query_int(request, "page", 1, 1, 10**9)
    found, total = await engine.workflows.page(viewer.team, PAGE_SIZE, (number - 1) * PAGE_SIZE)
    return render(request, viewer, "workflows.html", workflows=found, total=total, page_number=number,
                  more=number * PAGE_SIZE < total, teams=await _team_names(engine, viewer),
                  problems=engine.workflows.problems)  # fmt: skip


async def workflow_page(request: Request, viewer: Viewer) -> Response:
    """A workflow at its current version, or at `?version=N`; every version stays readable."""
    workflows = engine_of(request).workflows
    current = await workflows.get(viewer.team, id=request.path_params["workflow_id"])
    version = query_int(request, "version", current.version, 1, current.version)
    shown = current if version == current.version else await workflows.get(
        viewer.team, slug=f"{current.record.slug}@{version}")  # fmt: skip
    return render(request, viewer, "workflow.html", stored=shown, current=current,
                  teams=await _team_names(engine_of(request), viewer))  # fmt: skip


async def _set_workflow_status(request: Request, viewer: Viewer, status: WorkflowStatus) -> Response:
    stored = await engine_of(request).workflows.set_status(viewer.team, request.path_params["workflow_id"], status)
    return RedirectResponse(f"{PREFIX}/workflows/{stored.record.id}", 303)


async def disable_workflow(request: Request, viewer: Viewer) -> Response:
    return await _set_workflow_status(request, viewer, "disabled")


async def enable_workflow(request: Request, viewer: Viewer) -> Response:
    return await _set_workflow_status(request, viewer, "active")


# Agents: the machines that lease steps (runtime/agents.py), as `GET /api/v1/agents` lists them.


class AgentQuery(msgspec.Struct):
    status: str | None = None  # idle | busy | offline
    team: str | None = None  # as RunQuery's

    def args(self) -> str:
        values = {"status": self.status, "team": team_arg(self.team)}
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})


def agent_query(request: Request, viewer: Viewer) -> AgentQuery:
    status = request.query_params.get("status", "").strip().lower() or None
    if status is not None and status not in AGENT_STATUSES:
        raise bad_request("invalid_query", f"status must be one of {', '.join(AGENT_STATUSES)}", "query.status")
    return AgentQuery(status, team_filter(request, viewer))


async def agent_list(engine: Engine, viewer: Viewer, query: AgentQuery) -> dict[str, Any]:
    found = [a for a in await engine.agents.states(scope(viewer, query.team)) if query.status in (None, a.status)]
    runs = {step.run_id for agent in found for step in agent.running}
    tasks = {run for run in runs if await engine.db.task(run) is not None}  # a lease of a task links to its page
    return {"agents": found, "tasks": tasks, "query": query, "now": engine.clock(),
            "teams": await _team_names(engine, viewer), "refresh": ROWS_REFRESH}  # fmt: skip


async def agents_page(request: Request, viewer: Viewer) -> Response:
    context = await agent_list(engine_of(request), viewer, agent_query(request, viewer))
    return render(request, viewer, "agents.html", agent_statuses=AGENT_STATUSES, **context)


async def agent_rows(request: Request, viewer: Viewer) -> Response:
    """The agents list's rows alone, which the page polls (htmx) to refresh without a reload."""
    context = await agent_list(engine_of(request), viewer, agent_query(request, viewer))
    return render(request, viewer, "agents_rows.html", **context)


# Webhooks: the teams' (runtime/webhooks.py), their deliveries with every attempt, and re-sending one.


async def webhooks_page(request: Request, viewer: Viewer) -> Response:
    engine = engine_of(request)
    team = team_filter(request, viewer)
    found = await engine.db.webhooks(scope(viewer, team))
    return render(request, viewer, "webhooks.html", webhooks=found, team=team,
                  teams=await _team_names(engine, viewer))  # fmt: skip


async def _webhook_context(request: Request, viewer: Viewer) -> dict[str, Any]:
    engine = engine_of(request)
    webhook = await webhooks.team_webhook(engine, viewer.team, request.path_params["webhook_id"])
    number = query_int(request, "page", 1, 1, 10**9)
    found, total = await webhooks.deliveries(engine, webhook, DELIVERIES_PAGE, (number - 1) * DELIVERIES_PAGE)
    # It refreshes while a delivery is being sent: its attempts show as they come (a re-sent one's too).
    sending = any(d.status == "pending" for d, _ in found)
    return {"webhook": webhook, "deliveries": found, "total": total,
            "page_number": number, "more": number * DELIVERIES_PAGE < total, "now": engine.clock(),
            "teams": await _team_names(engine, viewer),
            "refresh": ROWS_REFRESH if number == 1 and sending else None}  # fmt: skip


async def webhook_page(request: Request, viewer: Viewer) -> Response:
    return render(request, viewer, "webhook.html", **await _webhook_context(request, viewer))


async def delivery_rows(request: Request, viewer: Viewer) -> Response:
    """A webhook's deliveries alone, which its page polls (htmx) to show new attempts without a reload."""
    return render(request, viewer, "deliveries_rows.html", **await _webhook_context(request, viewer))


async def resend_delivery(request: Request, viewer: Viewer) -> Response:
    engine = engine_of(request)
    webhook = await webhooks.team_webhook(engine, viewer.team, request.path_params["webhook_id"])
    await webhooks.resend(engine, webhook, request.path_params["delivery_id"])
    return RedirectResponse(f"{PREFIX}/webhooks/{webhook.id}", 303)


# The overview.


async def overview(request: Request, viewer: Viewer) -> Response:
    engine = engine_of(request)
    counts = {status: await engine.db.count_runs(viewer.team, status, None) for status in flow_api.STATUSES}
    now = engine.clock()
    recent = await engine.db.list_runs(viewer.team, None, None, OVERVIEW_SCAN, after=uuid7_floor(now - 86_400))
    return render(request, viewer, "overview.html", counts=counts, stats=step_stats(recent, now - OVERVIEW_WINDOW),
                  scanned=len(recent), capped=len(recent) == OVERVIEW_SCAN)  # fmt: skip


# Static files and errors.


async def static(request: Request) -> Response:
    """A vendored or own file, cached for a year when asked for by its version (base.html's URLs)."""
    asset = ASSETS.get(request.path_params["name"])
    if asset is None:
        raise HTTPException(404, "no such file")
    etag = f'"{asset.version}"'
    current = request.query_params.get("v") == asset.version
    cache = "public, max-age=31536000, immutable" if current else "no-cache"
    headers = {"ETag": etag, "Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> Response:
    """An error outside `page` (the sign-in form's): a page without navigation."""
    assert isinstance(exc, Error)
    return error_page(request, None, exc, session=sessions.new_session(engine_of(request)))


async def _not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found" if exc.status_code == 404 else "bad_request"
    error = Error(kind, "not_found" if exc.status_code == 404 else "http_error", str(exc.detail), "path")
    response = error_page(request, None, error, session=sessions.new_session(engine_of(request)))
    response.status_code = exc.status_code
    return response


routes = [
    Route(PREFIX, page(overview)),
    Route(f"{PREFIX}/", page(overview)),
    Route(f"{PREFIX}/sign-in", sign_in_page, methods=["GET"]),
    Route(f"{PREFIX}/sign-in", sign_in, methods=["POST"]),
    Route(f"{PREFIX}/sign-out", page(sign_out), methods=["POST"]),
    Route(f"{PREFIX}/runs", page(runs_page)),
    Route(f"{PREFIX}/runs/rows", page(run_rows)),
    Route(f"{PREFIX}/runs/{{run_id}}", page(run_page)),
    Route(f"{PREFIX}/runs/{{run_id}}/events", page(run_events)),
    Route(f"{PREFIX}/runs/{{run_id}}/logs/{{step_id}}", page(step_log)),
    Route(f"{PREFIX}/runs/{{run_id}}/cancel", page(cancel_run), methods=["POST"]),
    Route(f"{PREFIX}/runs/{{run_id}}/refresh", page(refresh_run), methods=["POST"]),
    Route(f"{PREFIX}/tasks", page(tasks_page)),
    Route(f"{PREFIX}/tasks/rows", page(task_rows)),
    Route(f"{PREFIX}/tasks/{{task_id}}", page(task_page)),
    Route(f"{PREFIX}/tasks/{{task_id}}/live", page(task_live)),
    Route(f"{PREFIX}/tasks/{{task_id}}/cancel", page(cancel_task), methods=["POST"]),
    Route(f"{PREFIX}/flows", page(flows_page)),
    Route(f"{PREFIX}/flows/{{name}}/runs", page(start_run), methods=["POST"]),
    Route(f"{PREFIX}/workflows", page(workflows_page)),
    Route(f"{PREFIX}/workflows/{{workflow_id}}", page(workflow_page)),
    Route(f"{PREFIX}/workflows/{{workflow_id}}/disable", page(disable_workflow), methods=["POST"]),
    Route(f"{PREFIX}/workflows/{{workflow_id}}/enable", page(enable_workflow), methods=["POST"]),
    Route(f"{PREFIX}/agents", page(agents_page)),
    Route(f"{PREFIX}/agents/rows", page(agent_rows)),
    Route(f"{PREFIX}/webhooks", page(webhooks_page)),
    Route(f"{PREFIX}/webhooks/{{webhook_id}}", page(webhook_page)),
    Route(f"{PREFIX}/webhooks/{{webhook_id}}/rows", page(delivery_rows)),
    Route(
        f"{PREFIX}/webhooks/{{webhook_id}}/deliveries/{{delivery_id}}/resend", page(resend_delivery), methods=["POST"]
    ),
    Route(f"{PREFIX}/static/{{name}}", static),
]


def is_dashboard(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def create_dashboard() -> Starlette:
    """The dashboard's app; its `state.engine` is set by the API app's lifespan."""
    return Starlette(routes=routes, exception_handlers={Error: _domain_error, HTTPException: _not_found})
