"""The dashboard's tasks and workflows pages over plain HTTP: who sees what (another team's task or
workflow is a not-found page, its forms refused the same way), the CSRF token on their forms, the
tasks list's filters and pages, a task's details and result links, and a workflow's versions and
its disable and enable buttons. (tests/test_ui_browser.py cancels a task in Chromium.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dashboard import HELLO, Team, csrf_of, install_workflows, sign_in, wait_for_workflows
from live import Server

pytestmark = pytest.mark.backends("sqlite", "postgres")  # the lists' queries are each backend's


@pytest.fixture
def keyed(start_server, flows_dir: Path) -> Server:
    install_workflows(flows_dir)
    return start_server(auth="keys")


@pytest.fixture
def teams(keyed: Server) -> Iterator[tuple[Team, Team]]:
    alpha, beta = Team(keyed, "alpha"), Team(keyed, "beta")
    wait_for_workflows(alpha)
    yield alpha, beta
    alpha.api.close()
    beta.api.close()


def listed(page: httpx.Response) -> set[str]:
    """The IDs of the tasks (or workflows) a list page shows."""
    assert page.status_code == 200, page.text
    return set(re.findall(r'<tr id="(?:task|workflow)-([^"]+)"', page.text))


def test_a_team_sees_its_own_tasks_and_workflows_and_another_teams_are_not_found(keyed: Server, teams):
    alpha, beta = teams
    ours, theirs = alpha.start("greet"), beta.start("greet")
    their_workflow = beta.create({**HELLO, "workflow_slug": "beta-hello"})
    their_own_task = beta.start("beta-hello")
    with httpx.Client(base_url=keyed.url) as visitor:  # no page without signing in
        for path in ["/ui/tasks", f"/ui/tasks/{ours}", "/ui/workflows", f"/ui/workflows/{their_workflow}"]:
            assert visitor.get(path).status_code == 303, path
        assert visitor.post(f"/ui/tasks/{ours}/cancel").status_code == 401
    with sign_in(keyed, alpha.key) as client:
        assert listed(client.get("/ui/tasks")) == {ours}
        assert listed(client.get("/ui/tasks/rows")) == {ours}
        assert listed(client.get(f"/ui/tasks?workflow={their_workflow}")) == set()
        token = csrf_of(client.get("/ui/tasks").text)
        for path in [f"/ui/tasks/{theirs}", f"/ui/tasks/{theirs}/live", f"/ui/tasks/{their_own_task}",
                     f"/ui/workflows/{their_workflow}", f"/ui/workflows/{their_workflow}?version=1"]:  # fmt: skip
            answer = client.get(path)
            assert answer.status_code == 404 and "Not found" in answer.text, path
            assert "beta-hello" not in answer.text and "hi there" not in answer.text
        for path in [f"/ui/tasks/{theirs}/cancel", f"/ui/workflows/{their_workflow}/disable"]:
            assert client.post(path, data={"csrf": token}).status_code == 404, path
        assert client.get(f"/ui/tasks?id={theirs}").headers["location"] == f"/ui/tasks/{theirs}"
        workflows = client.get("/ui/workflows")
        assert their_workflow not in listed(workflows) and "beta-hello" not in workflows.text
        assert {"greet", "img2img"} <= set(re.findall(r"<code>([a-z0-9-]+)</code></a>", workflows.text))
    assert beta.workflow(their_workflow)["workflow_status"] == "active"
    beta.wait(theirs, {"completed"})
    with sign_in(keyed, beta.key) as client:
        assert listed(client.get("/ui/tasks")) == {theirs, their_own_task}
        assert client.get(f"/ui/tasks/{theirs}").status_code == 200


def test_the_operator_sees_every_teams_tasks_and_workflows(start_server, flows_dir: Path):
    install_workflows(flows_dir)
    server = start_server()  # auth: open: the dashboard's viewer is the operator
    alpha, beta = Team(server, "alpha"), Team(server, "beta")
    operators = wait_for_workflows(alpha)
    tasks = {alpha.start("greet"), beta.start("greet")}
    theirs = beta.create({**HELLO, "workflow_slug": "beta-hello"})
    with server.client() as client:
        page = client.get("/ui/tasks")
        assert listed(page) == tasks
        assert ">alpha</td>" in page.text and ">beta</td>" in page.text  # the Team column
        assert all(client.get(f"/ui/tasks/{task}").status_code == 200 for task in tasks)
        assert listed(client.get("/ui/workflows")) == {*operators.values(), theirs}
        assert "team beta's" in client.get(f"/ui/workflows/{theirs}").text
    alpha.api.close()
    beta.api.close()


def test_the_tasks_list_filters_by_status_and_workflow_and_pages(keyed: Server, teams):
    alpha, _ = teams
    operators = wait_for_workflows(alpha)
    own = alpha.create(HELLO)
    greeted, hello = alpha.start("greet"), alpha.start("team-hello")
    slow = alpha.slow()
    assert alpha.api.post(f"/r/tasks/{slow}/cancel").status_code == 200
    for task in (greeted, hello, slow):
        alpha.wait(task, {"completed", "cancelled"})
    with sign_in(keyed, alpha.key) as client:
        assert listed(client.get("/ui/tasks")) == {greeted, hello, slow}
        done = client.get("/ui/tasks?status=completed")
        assert listed(done) == {greeted, hello} and "2 tasks match." in done.text
        assert '<option value="completed" selected>' in done.text
        assert listed(client.get("/ui/tasks?status=cancelled")) == {slow}
        assert listed(client.get(f"/ui/tasks?workflow={operators['greet']}")) == {greeted}
        assert listed(client.get(f"/ui/tasks?workflow={own}")) == {hello}
        assert listed(client.get(f"/ui/tasks?workflow={operators['img2img']}&status=cancelled")) == {slow}
        assert listed(client.get(f"/ui/tasks?workflow={operators['greet']}&status=cancelled")) == set()
        # the rows the page polls keep its filters; only the first page refreshes by itself
        rows = client.get("/ui/tasks/rows?status=cancelled")
        assert listed(rows) == {slow} and 'hx-get="/ui/tasks/rows?status=cancelled"' in rows.text
        second = client.get("/ui/tasks?status=completed&page=2")
        assert listed(second) == set() and "hx-get" not in second.text.split('id="tasks"')[1].split(">")[0]
        assert 'href="/ui/tasks?status=completed" rel="prev"' in second.text
        for query, field in [("status=lost", "query.status"), ("page=0", "query.page"), ("page=x", "query.page")]:
            refused = client.get(f"/ui/tasks?{query}")
            assert refused.status_code == 400 and field in refused.text, query


def test_a_task_page_shows_its_run_and_result_and_cancels_with_the_forms_token(keyed: Server, teams):
    alpha, _ = teams
    operators = wait_for_workflows(alpha)
    greeted = alpha.start("greet", {"name": "dash"})
    failed = alpha.start("img2img", {"input_image": alpha.upload(), "fail": True})
    slow = alpha.slow()
    alpha.wait(greeted, {"completed"})
    alpha.wait(failed, {"failed"})
    with sign_in(keyed, alpha.key) as client:
        page = client.get(f"/ui/tasks/{greeted}")
        assert f'href="/ui/runs/{greeted}"' in page.text
        assert f'href="/ui/workflows/{operators["greet"]}?version=1"' in page.text
        assert "<code>name</code></dt><dd><code>dash</code>" in page.text
        assert "cancel-task" not in page.text and "hx-get" not in page.text  # it has ended: nothing to refresh
        link = re.search(r'<a href="([^"]+)" download>text</a>', page.text)
        assert link, page.text
        assert httpx.get(link.group(1).replace("&amp;", "&")).content == b"hello dash"
        failure = client.get(f"/ui/tasks/{failed}")
        assert 's-failed">failed' in failure.text and 'role="alert"' in failure.text and "download>" not in failure.text
        assert "<code>fail</code></dt><dd><code>true</code>" in failure.text  # as JSON writes it, not Python
        running = client.get(f"/ui/tasks/{slow}")
        assert 'id="cancel-task"' in running.text and f'hx-get="/ui/tasks/{slow}/live"' in running.text
        token = csrf_of(running.text)
        for data in [{}, {"csrf": "forged"}, {"csrf": token[:-2]}]:
            refused = client.post(f"/ui/tasks/{slow}/cancel", data=data)
            assert refused.status_code == 403 and "csrf" in refused.text, data
        assert alpha.status(slow) == "running"
        cancelled = client.post(f"/ui/tasks/{slow}/cancel", data={"csrf": token})
        assert cancelled.status_code == 303 and cancelled.headers["location"] == f"/ui/tasks/{slow}"
        alpha.wait(slow, {"cancelled"}, timeout=10)
        live = client.get(f"/ui/tasks/{slow}/live")
        assert 's-cancelled">cancelled' in live.text and "cancel-task" not in live.text and "hx-get" not in live.text
        # htmx sends the token as a header
        assert client.post(f"/ui/tasks/{slow}/cancel", headers={"X-CSRF-Token": token}).status_code == 303


def test_a_workflow_page_shows_each_version_and_the_teams_own_can_be_disabled(keyed: Server, teams):
    alpha, _ = teams
    operators = wait_for_workflows(alpha)
    own = alpha.create(HELLO)
    who = {"key": "who", "type": "string", "step": "hi", "flag": "name", "default": "everyone"}
    updated = alpha.api.put(f"/workflows/{own}", json={**HELLO, "parameters": [who]})
    assert updated.status_code == 200 and updated.json()["version"] == 2, updated.text
    with sign_in(keyed, alpha.key) as client:
        current = client.get(f"/ui/workflows/{own}")
        assert "Version 2 (current)" in current.text and "<code>who</code>" in current.text
        assert f'href="/ui/workflows/{own}?version=1"' in current.text
        first = client.get(f"/ui/workflows/{own}?version=1")
        assert "Version 1</h2>" in first.text and "<code>who</code>" not in first.text
        assert "flag <code>hi.name</code>" in first.text
        assert client.get(f"/ui/workflows/{own}?version=3").status_code == 400
        img2img = client.get(f"/ui/workflows/{operators['img2img']}").text
        assert "well <code>input_image</code>" in img2img and "16 to 4096" in img2img and "fit, fill" in img2img
        assert "disable-workflow" not in img2img  # the operator's: read-only
        token = csrf_of(current.text)
        refused = client.post(f"/ui/workflows/{operators['greet']}/disable", data={"csrf": token})
        assert refused.status_code == 403 and "read_only" in refused.text
        for data in [{}, {"csrf": "forged"}]:
            assert client.post(f"/ui/workflows/{own}/disable", data=data).status_code == 403
        assert alpha.workflow(own)["workflow_status"] == "active"
        done = client.post(f"/ui/workflows/{own}/disable", data={"csrf": token})
        assert done.status_code == 303 and done.headers["location"] == f"/ui/workflows/{own}"
        assert alpha.workflow(own)["workflow_status"] == "disabled"
        assert alpha.api.post("/r/workflows/slug/team-hello/run", json={}).status_code == 400
        page = client.get(f"/ui/workflows/{own}").text
        assert 'id="enable-workflow"' in page and 's-disabled">disabled' in page
        assert 's-disabled">disabled' in client.get("/ui/workflows").text
        assert client.post(f"/ui/workflows/{own}/enable", data={"csrf": token}).status_code == 303
        assert alpha.workflow(own)["workflow_status"] == "active"
