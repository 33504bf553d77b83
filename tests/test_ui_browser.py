"""The dashboard in a real Chromium (Debian's, driven by Playwright): signing in, starting a run from
the form with an upload, watching it finish live, downloading its output, cancelling a run and a
task, reading a failed step's log, another team's run refused, the agents list refreshing in place, a
failed webhook delivery re-sent by keyboard; screenshots of the main pages are kept.

`.ci/run` installs Chromium and Playwright; where either is missing locally these tests skip.
Screenshots go to $UI_SCREENSHOTS, else to ui-artifacts/ under pytest's base temp dir
(the path is printed)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard import Team, install_workflows, wait_for_workflows, write_flows
from live import Server, make_key, wait_for_status
from test_agent_protocol import Agent
from test_webhooks import HELLO, make_hook, run_task, settled
from test_workflow_api import Team as WebhookTeam
from webhook_receiver import Receiver

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no chromium (apt-get install chromium)")
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run",
        "--disable-dev-shm-usage"]  # fmt: skip
WAIT = 20_000  # milliseconds Playwright waits for a page to show something
# Every element with text of its own, whose colour has less than WCAG AA's 4.5:1 contrast with the
# background it is drawn on (the first opaque one up its ancestors).
LOW_CONTRAST = """() => {
  const rgb = (s) => s.match(/[\\d.]+/g).map(Number);
  const linear = (v) => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  const lum = (c) => c.slice(0, 3).map(linear)
    .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (e) => {
    for (; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c;
    }
    return [255, 255, 255];
  };
  return [...document.querySelectorAll("body *")]
    .filter((e) => !e.closest("svg") && e.getClientRects().length
      && [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim()))
    .map((e) => {
      const [a, b] = [lum(rgb(getComputedStyle(e).color)), lum(background(e))];
      return [(Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05), e.tagName, e.textContent.trim().slice(0, 40)];
    })
    .filter(([ratio]) => ratio < 4.5);
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def watched(page: Any) -> list[str]:
    """What went wrong in the page's scripts: uncaught errors, and anything the Content-Security-Policy blocked."""
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: "Content Security Policy" in m.text and problems.append(m.text))
    page.set_default_timeout(WAIT)
    return problems


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    problems = watched(page)
    yield page
    context.close()
    assert problems == []


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    path = Path(os.environ.get("UI_SCREENSHOTS") or tmp_path_factory.getbasetemp() / "ui-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\ndashboard screenshots: {path}")  # shown whatever the capture mode
    return path


def shot(page: Any, artifacts: Path, name: str) -> None:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000


@pytest.fixture
def keyed(start_server, flows_dir: Path) -> Server:
    write_flows(flows_dir)
    return start_server(auth="keys")


@pytest.fixture
def open_engine(start_server, flows_dir: Path) -> Server:
    write_flows(flows_dir)
    install_workflows(flows_dir)
    return start_server()


def sign_in(page: Any, server: Server, key: str, then: str = "/ui/runs") -> None:
    page.goto(f"{server.url}{then}")
    assert "/ui/sign-in" in page.url  # no page without signing in
    page.get_by_label("Key or session token").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server.url}{then}")


def started_and_uploaded(server: Server, flow: str, content: bytes) -> str:
    run = httpx.post(f"{server.url}/api/v1/flow/{flow}").json()
    assert httpx.put(run["WaitingURLs"][0]["PutURL"], content=content).status_code == 200
    return run["ID"]


def test_sign_in_start_a_run_with_an_upload_watch_it_complete_live_and_download_it(
    keyed: Server, page: Any, artifacts: Path, tmp_path: Path
):
    key = make_key(keyed, "alpha")
    page.goto(f"{keyed.url}/ui/flows")
    shot(page, artifacts, "sign-in")
    sign_in(page, keyed, key, "/ui/flows")
    upload = tmp_path / "notes.txt"
    upload.write_bytes(b"line one\nline two\n" * 1000)
    form = page.locator("#flow-copy form.start")
    form.get_by_label("in any file").set_input_files(str(upload))
    shot(page, artifacts, "flows")
    form.get_by_role("button", name="Start run").click()
    page.wait_for_url(f"{keyed.url}/ui/runs/*")
    run_id = page.url.rsplit("/", 1)[1]
    assert form.count() == 0  # the flows page is gone: we are on the run's page
    page.evaluate("window.notReloaded = true")
    first = page.locator("#run-status").inner_text()
    assert first in ("WAITING", "RUNNING"), first  # the step takes 1.5 s: the page opens before it ends
    page.locator("#log-copy pre", has_text="copying").wait_for()  # its log tail, while it runs
    page.locator("#run-status", has_text="COMPLETE").wait_for()
    assert page.evaluate("window.notReloaded") is True  # it changed in place, over SSE
    assert page.locator("#announce").inner_text() == "Run COMPLETE"  # what a screen reader hears
    assert page.locator("#node-copy.s-complete").count() == 1  # the graph shows the step's new state
    shot(page, artifacts, "run-complete")
    with page.expect_download() as downloading:
        page.locator("#download-out").click()
    download = downloading.value
    assert download.suggested_filename == "copied.txt"
    assert Path(download.path()).read_bytes() == upload.read_bytes()
    status = httpx.get(f"{keyed.url}/api/v1/flow/status/{run_id}", headers={"Authorization": f"Bearer {key}"})
    assert status.json()["Status"] == "COMPLETE"  # the run is the signed-in team's
    page.goto(f"{keyed.url}/ui/runs")
    assert page.locator(f"#run-{run_id}").count() == 1
    shot(page, artifacts, "runs")
    page.goto(f"{keyed.url}/ui")
    shot(page, artifacts, "overview")


def test_cancel_a_run_and_read_a_failed_steps_log(open_engine: Server, page: Any, artifacts: Path):
    slow = started_and_uploaded(open_engine, "slow", b"zzz")
    page.goto(f"{open_engine.url}/ui/runs/{slow}")
    page.locator("#log-nap pre", has_text="napping").wait_for()
    page.get_by_role("button", name="Cancel run").click()
    page.locator("#run-status", has_text="STOPPED").wait_for()
    assert page.get_by_role("button", name="Cancel run").count() == 0
    with httpx.Client(base_url=open_engine.url) as client:
        assert wait_for_status(client, slow, {"STOPPED"})["Status"] == "STOPPED"
    failing = started_and_uploaded(open_engine, "failing", b"no header")
    page.goto(f"{open_engine.url}/ui/runs/{failing}")
    page.locator("#run-status", has_text="ERROR").wait_for()
    assert "in step parse" in page.locator("#run-error").inner_text()
    log = page.locator("#log-parse pre")
    assert "fatal: no header on line 1" in log.inner_text() and log.is_visible()  # open, not hidden in a fold
    shot(page, artifacts, "run-failed")
    page.get_by_role("link", name="#1").click()
    assert "reading the input" in page.locator("body").inner_text()


def test_open_a_task_from_the_list_and_cancel_it(open_engine: Server, page: Any, artifacts: Path):
    team = Team(open_engine, "alpha")
    wait_for_workflows(team)
    slow = team.slow()
    page.goto(f"{open_engine.url}/ui/tasks")
    shot(page, artifacts, "tasks")
    page.locator(f"#task-{slow} a").click()
    page.wait_for_url(f"{open_engine.url}/ui/tasks/{slow}")
    status = page.locator("#task-live .status")
    assert status.inner_text() == "running"
    shot(page, artifacts, "task-running")
    page.evaluate("window.notReloaded = true")
    team.api.post(f"/r/tasks/{slow}/cancel")  # cancelled elsewhere: the open page shows it by itself
    status.filter(has_text="cancelled").wait_for()
    assert page.evaluate("window.notReloaded") is True
    page.goto(f"{open_engine.url}/ui/tasks/{team.slow()}")
    page.get_by_role("button", name="Cancel task").click()
    status.filter(has_text="cancelled").wait_for()
    assert page.get_by_role("button", name="Cancel task").count() == 0
    task = page.url.rsplit("/", 1)[1]
    assert team.status(task) == "cancelled"
    shot(page, artifacts, "task-cancelled")
    page.get_by_role("link", name="its run (graph, timeline, logs)").click()
    page.locator("#run-status", has_text="STOPPED").wait_for()
    page.goto(f"{open_engine.url}/ui/workflows")
    shot(page, artifacts, "workflows")
    page.get_by_role("link", name="img2img").click()
    page.get_by_role("heading", name="Parameters").wait_for()
    shot(page, artifacts, "workflow")


def test_the_runs_list_refreshes_in_place_and_a_waiting_inputs_time_counts_down(open_engine: Server, page: Any):
    page.goto(f"{open_engine.url}/ui/runs")
    page.evaluate("window.notReloaded = true")
    run = httpx.post(f"{open_engine.url}/api/v1/flow/copy").json()["ID"]
    page.locator(f"#run-{run}").wait_for()  # htmx polled the rows in
    assert page.evaluate("window.notReloaded") is True
    page.locator(f"#run-{run} a").click()
    countdown = page.locator(".countdown")
    first = countdown.inner_text()
    page.wait_for_function("(before) => document.querySelector('.countdown').textContent !== before", arg=first)
    assert 3500 < seconds(countdown.inner_text()) < seconds(first) <= 3600  # the well's TTL: upload_ttl, an hour


def seconds(shown: str) -> int:
    """ "59 min 58 s" -> 3598"""
    minutes, rest = re.fullmatch(r"(?:(\d+) min )?(\d+) s", shown).groups()  # type: ignore[union-attr]
    return int(minutes or 0) * 60 + int(rest)


def test_a_team_cannot_open_another_teams_run(keyed: Server, page: Any, artifacts: Path):
    mine, theirs = make_key(keyed, "alpha"), make_key(keyed, "beta")
    run = httpx.post(f"{keyed.url}/api/v1/flow/copy", headers={"Authorization": f"Bearer {theirs}"}).json()["ID"]
    sign_in(page, keyed, mine)
    answer = page.goto(f"{keyed.url}/ui/runs/{run}")
    assert answer.status == 404
    assert page.get_by_role("heading", name="Not found").is_visible() and run in page.locator("body").inner_text()
    assert page.locator(f"#run-{run}").count() == 0
    shot(page, artifacts, "not-found")


def test_pages_fit_a_narrow_screen_and_label_every_field(open_engine: Server, browser: Any, artifacts: Path):
    run = started_and_uploaded(open_engine, "failing", b"x")
    team = Team(open_engine, "alpha")
    workflows = wait_for_workflows(team)
    task = team.start("greet")
    context = browser.new_context(viewport={"width": 375, "height": 800})
    page = context.new_page()
    problems = watched(page)
    try:
        for name, path in [
            ("overview", "/ui"),
            ("runs", "/ui/runs"),
            ("flows", "/ui/flows"),
            ("run", f"/ui/runs/{run}"),
            ("tasks", "/ui/tasks"),
            ("task", f"/ui/tasks/{task}"),
            ("workflows", "/ui/workflows"),
            ("workflow", f"/ui/workflows/{workflows['img2img']}"),
        ]:
            page.goto(f"{open_engine.url}{path}")
            page.wait_for_load_state("networkidle") if name != "run" else page.locator("#run-status").wait_for()
            # The page itself never scrolls sideways (wide tables and graphs scroll in their own boxes).
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), name
            unlabelled = page.evaluate("""[...document.querySelectorAll('input:not([type=hidden]), select')]
                .filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.outerHTML)""")
            assert unlabelled == [], name
            assert page.evaluate(LOW_CONTRAST) == [], name
            shot(page, artifacts, f"narrow-{name}")
        page.keyboard.press("Tab")  # the first stop is the skip link, and it shows
        assert page.evaluate("document.activeElement.className") == "skip"
    finally:
        context.close()
    assert problems == []


def test_the_agents_and_webhooks_pages_refresh_in_place_resend_by_keyboard_and_fit_a_narrow_screen(
    start_server, flows_dir: Path, browser: Any, page: Any, artifacts: Path
):
    (flows_dir / "hello.yaml").write_text(HELLO)
    server = start_server(heartbeat_interval=5, webhook_allow_private="true", webhook_retry_delays="0:0.1:0.1:0.1",
                          webhook_timeout=1)  # fmt: skip
    team = WebhookTeam(server, "alpha")
    hooked = Receiver()
    try:
        with server.client() as api:
            hook = make_hook(api, team, hooked.url, display_name="lab notifier")
            hooked.script = [500] * 5  # the first attempt and every retry fail
            run_task(api, team)
            settled(api, team, hook, 1)
        Agent(server, team.ak, "gpu-box", labels=["gpu"], region="eu-west", system={"gpu": "A100", "vram_gb": 80})
        page.goto(f"{server.url}/ui/agents")
        page.locator("tr", has_text="gpu-box").wait_for()
        page.evaluate("window.notReloaded = true")
        Agent(server, team.ak, "cpu-box")
        page.locator("tr", has_text="cpu-box").wait_for()  # htmx polled the rows in
        assert page.evaluate("window.notReloaded") is True
        shot(page, artifacts, "agents")
        page.goto(f"{server.url}/ui/webhooks")
        page.get_by_role("link", name="lab notifier").click()
        delivery = page.locator("section.delivery")
        assert delivery.locator(".status").inner_text() == "failed" and delivery.locator("tbody tr").count() == 5
        shot(page, artifacts, "webhook")
        page.evaluate("window.notReloaded = true")
        resend = page.get_by_role("button", name="Re-send")
        resend.focus()  # by keyboard: the button takes focus and Enter sends its form
        assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
        page.keyboard.press("Enter")
        delivery.locator(".status", has_text="delivered").wait_for()
        assert delivery.locator("tbody tr").count() == 6 and page.get_by_role("button", name="Re-send").count() == 0
        context = browser.new_context(viewport={"width": 375, "height": 800})
        narrow = context.new_page()
        problems = watched(narrow)
        try:
            for name, path in [("agents", "/ui/agents"), ("webhooks", "/ui/webhooks"),
                               ("webhook", f"/ui/webhooks/{hook['id']}")]:  # fmt: skip
                narrow.goto(f"{server.url}{path}")
                narrow.wait_for_load_state("networkidle")
                assert narrow.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), name
                unlabelled = narrow.evaluate("""[...document.querySelectorAll('input:not([type=hidden]), select')]
                    .filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.outerHTML)""")
                assert unlabelled == [], name
                assert narrow.evaluate(LOW_CONTRAST) == [], name
                shot(narrow, artifacts, f"narrow-{name}")
        finally:
            context.close()
        assert problems == []
    finally:
        hooked.close()
