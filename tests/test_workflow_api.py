"""The workflows of the workflow/task API over real HTTP: a team's own, managed at `/api/v1/workflows`
(create, update into immutable versions, disable, enable), and every workflow a team sees, read at
`/api/v1/r/workflows` (the operator's from flow files, and its own; never another team's)."""

from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import Server, admin, make_key
from test_workflows import COMFY

pytestmark = pytest.mark.backends("sqlite", "postgres")

LIBRARY = """
Tasks:
  - Name: stamp
    Exec: [cp, "${image}", "${out}"]
    Inputs: [{Name: image}]
    Outputs: [{Name: out}]
    Flags: [{Name: text, Type: string, Default: ""}]
"""
OPERATORS = """
Name: shrink
Description: The operator's shrinking.
DataWells:
  - {Edge: photo, Source: upload}
  - {Edge: small}
Steps:
  - {ID: shrink, Uses: shrink, Inputs: [{Slot: image, Edge: photo}], Outputs: [{Slot: out, Edge: small}]}
Tasks:
  - Name: shrink
    Exec: [cp, "${image}", "${out}"]
    Inputs: [{Name: image}]
    Outputs: [{Name: out}]
    Flags: [{Name: width, Type: integer, Default: 64}]
Workflow:
  Slug: shrink
  Parameters:
    - {Key: photo, Type: file, Required: true, Edge: photo}
    - {Key: width, Type: number, Step: shrink, Flag: width, Min: 1, Max: 100}
"""
# A team's workflow with a flow: a task of the operator's library, then a step that runs on an agent.
UPSCALE: dict[str, Any] = {
    "workflow_slug": "stamp-and-upscale",
    "display_name": "Stamp, then upscale",
    "required_labels": ["gpu"],
    "parameters": [
        {"key": "photo", "type": "file", "required": True, "edge": "photo", "accept": ["image/*"]},
        {"key": "text", "type": "string", "step": "stamp", "flag": "text"},
        {"key": "scale", "type": "number", "step": "upscale", "flag": "scale", "min": 1, "max": 8, "default": 2},
    ],
    "flow": {
        "DataWells": [{"Edge": "photo", "Source": "upload"}, {"Edge": "stamped"}, {"Edge": "big"}],
        "Steps": [
            {"ID": "stamp", "Uses": "stamp", "Inputs": [{"Slot": "image", "Edge": "photo"}],
             "Outputs": [{"Slot": "out", "Edge": "stamped"}]},
            {"ID": "upscale", "Uses": "upscale", "Inputs": [{"Slot": "image", "Edge": "stamped"}],
             "Outputs": [{"Slot": "out", "Edge": "big"}]},
        ],
        "Tasks": [{"Name": "upscale", "Tool": "esrgan", "Inputs": [{"Name": "image"}], "Outputs": [{"Name": "out"}],
                   "Flags": [{"Name": "scale", "Type": "integer", "Default": 2}]}],
    },
}  # fmt: skip


class Team:
    """A team on the server, and its credentials of every kind."""

    def __init__(self, server: Server, name: str) -> None:
        self.sk = make_key(server, name)
        self.ak = make_key(server, name, "agent")
        self.id = next(line.split()[0] for line in admin(server, "teams", "list").splitlines() if line.endswith(name))
        email = f"{name}@example.com"
        admin(server, "users", "add", email, "--team", name)
        self.dk = admin(server, "keys", "create", "--team", name, "--kind", "device", "--user", email)
        self.jwt = admin(server, "token", "--user", email)

    def headers(self, kind: str = "sk") -> dict[str, str]:
        if kind == "jwt":
            return {"Authorization": f"Bearer {self.jwt}", "X-Team-ID": self.id}
        return {"Authorization": f"Bearer {getattr(self, kind)}"}


@pytest.fixture
def engine(start_server, flows_dir: Path) -> Server:
    """An engine with auth: keys and the defaults for clients' flows (no commands or stores of their own),
    the operator's workflow `shrink` and a task library."""
    (flows_dir / "tasks").mkdir()
    (flows_dir / "tasks" / "lib.yaml").write_text(LIBRARY)
    (flows_dir / "shrink.yaml").write_text(OPERATORS)
    return start_server(auth="keys", inline_commands=False, inline_stores=False)


@pytest.fixture
def client(engine: Server) -> httpx.Client:
    with engine.client() as client:
        yield client


def body(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(doc), **changes}


def create(client: httpx.Client, team: Team, doc: dict[str, Any], kind: str = "sk") -> str:
    answer = client.post("/api/v1/workflows", json=doc, headers=team.headers(kind))
    assert answer.status_code == 201, answer.text
    assert answer.json()["version"] == 1
    return answer.json()["id"]


def operator_workflow(client: httpx.Client, team: Team) -> dict[str, Any]:
    """The operator's workflow, once the engine has taken it from its flow file."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = client.get("/api/v1/r/workflows/slug/shrink", headers=team.headers())
        if answer.status_code == 200:
            return answer.json()
        time.sleep(0.1)
    raise AssertionError(f"the operator's workflow never appeared: {answer.text}")


def refused(answer: httpx.Response, status: int, code: str, field: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert (error["error_code"], error["field"]) == (code, field), error
    assert error["error_message"]
    return error


# --- creating and reading ------------------------------------------------------------------------


def test_a_created_workflow_reads_back_in_the_references_shape(client: httpx.Client, engine: Server):
    team = Team(engine, "alpha")
    comfy = create(client, team, COMFY)
    detail = client.get(f"/api/v1/r/workflows/{comfy}", headers=team.headers("jwt")).json()
    assert detail["id"] == comfy and detail["workflow_slug"] == "sd-portrait" and detail["version"] == 1
    assert detail["workflow_status"] == "active" and detail["tool_type"] == "comfyui"
    assert detail["display_name"] == COMFY["display_name"] and detail["required_labels"] == ["gpu", "sd15"]
    assert detail["task_timeout"] == 300 and detail["max_retries"] == 2 and detail["default_dispatch_target"] == "agent"
    assert detail["parameters"] == COMFY["parameters"] and detail["workflow_json"] == COMFY["workflow_json"]
    assert detail["created_at"].endswith("Z") and detail["updated_at"] == detail["created_at"]
    assert "flow" not in detail
    # The same object by slug, and from the management API.
    assert client.get("/api/v1/r/workflows/slug/sd-portrait", headers=team.headers("jwt")).json() == detail
    assert client.get(f"/api/v1/workflows/{comfy}", headers=team.headers("dk")).json() == detail
    # A flow using the operator's library and an agent step: its tool is the agent's.
    upscale = create(client, team, UPSCALE, "jwt")
    detail = client.get(f"/api/v1/r/workflows/{upscale}", headers=team.headers("dk")).json()
    assert detail["tool_type"] == "esrgan" and detail["workflow_json"] is None


def test_sk_callers_get_no_workflow_json(client: httpx.Client, engine: Server):
    team = Team(engine, "alpha")
    comfy = create(client, team, COMFY)
    for path in [f"/api/v1/r/workflows/{comfy}", "/api/v1/r/workflows/slug/sd-portrait", f"/api/v1/workflows/{comfy}"]:
        assert "workflow_json" not in client.get(path, headers=team.headers("sk")).json(), path
        for kind in ("jwt", "dk"):
            assert client.get(path, headers=team.headers(kind)).json()["workflow_json"] == COMFY["workflow_json"]
    for path in ["/api/v1/r/workflows", "/api/v1/workflows"]:
        (mine,) = [w for w in client.get(path, headers=team.headers()).json()["workflow_list"] if w["id"] == comfy]
        assert "workflow_json" not in mine
        (mine,) = [w for w in client.get(path, headers=team.headers("jwt")).json()["workflow_list"] if w["id"] == comfy]
        assert mine["workflow_json"] == COMFY["workflow_json"]
    disabled = client.post(f"/api/v1/workflows/{comfy}/disable", headers=team.headers()).json()
    assert "workflow_json" not in disabled


def test_a_team_sees_the_operators_workflows_and_its_own(client: httpx.Client, engine: Server):
    team = Team(engine, "alpha")
    shrink = operator_workflow(client, team)
    assert shrink["description"] == "The operator's shrinking." and shrink["tool_type"] == "exec"
    assert [p["key"] for p in shrink["parameters"]] == ["photo", "width"]
    mine = create(client, team, COMFY)
    listed = client.get("/api/v1/r/workflows", headers=team.headers()).json()
    assert [w["workflow_slug"] for w in listed["workflow_list"]] == ["sd-portrait", "shrink"]  # by slug
    assert listed["page_meta"] == {"current_page": 1, "per_page": 20, "total_count": 2}
    assert client.get(f"/api/v1/r/workflows/{mine}", headers=team.headers()).status_code == 200


# --- what a workflow may be ----------------------------------------------------------------------


def test_every_problem_of_a_workflow_is_a_400_naming_its_field(client: httpx.Client, engine: Server):
    team = Team(engine, "alpha")
    broken = body(COMFY)
    broken["parameters"][1]["node_id"] = "99"  # no such node
    broken["parameters"][2]["default"] = "heun"  # not one of its options
    answer = client.post("/api/v1/workflows", json=broken, headers=team.headers())
    error = refused(answer, 400, "invalid_workflow", answer.json()["problems"][0]["field"])
    problems = {p["field"]: p["message"] for p in error["problems"]}
    assert set(problems) == {"parameters[1].node_id", "parameters[2].default"}
    assert (
        "the graph has no node '99'" in problems["parameters[1].node_id"] and "(and 1 more)" in error["error_message"]
    )
    # Structural problems, every one at once too.
    shapeless = body(COMFY, max_retries="two", parameters=[{"key": "a", "type": "colour"}, {"type": "string"}])
    error = refused(client.post("/api/v1/workflows", json=shapeless, headers=team.headers()), 400, "invalid_field",
                    "max_retries")  # fmt: skip
    assert {p["field"] for p in error["problems"]} >= {"max_retries", "parameters[0].type", "parameters[1]"}
    error = refused(client.post("/api/v1/workflows", json={}, headers=team.headers()), 400, "invalid_workflow",
                    "workflow_slug")  # fmt: skip
    error = refused(client.post("/api/v1/workflows", json=body(COMFY, colour=1), headers=team.headers()), 400,
                    "invalid_field", "body")  # fmt: skip
    assert "unknown key 'colour'" in error["problems"][0]["message"]
    bad_json = client.post(
        "/api/v1/workflows", content=b"{", headers={**team.headers(), "Content-Type": "application/json"}
    )
    refused(bad_json, 400, "malformed_json", "body")
    # Nothing was stored by any of them.
    assert client.get("/api/v1/r/workflows/slug/sd-portrait", headers=team.headers()).status_code == 404


def test_a_teams_flow_follows_the_rules_of_inline_flows(client: httpx.Client, engine: Server):
    team = Team(engine, "alpha")
    commands = body(UPSCALE)
    commands["flow"]["Tasks"][0] |= {"Exec": ["rm", "-rf", "/"], "Tool": None}
    error = refused(client.post("/api/v1/workflows", json=commands, headers=team.headers()), 403,
                    "inline_commands_disabled", "flow.Tasks[0]")  # fmt: skip
    assert "use a task the operator installed (stamp)" in error["error_message"]
    stores = body(UPSCALE)
    stores["flow"]["Stores"] = [{"Name": "mine", "Type": "local", "Params": {"root": "/tmp/x"}}]
    refused(client.post("/api/v1/workflows", json=stores, headers=team.headers()), 403, "inline_stores_disabled",
            "flow.Stores[0]")  # fmt: skip
    python = body(UPSCALE)
    python["flow"]["Tasks"][0] |= {"Python": "os:system", "Tool": None}
    refused(client.post("/api/v1/workflows", json=python, headers=team.headers()), 403, "inline_commands_disabled",
            "flow.Tasks[0]")  # fmt: skip
    unknown = body(UPSCALE)
    unknown["flow"]["Steps"][0]["Uses"] = "nope"
    error = refused(client.post("/api/v1/workflows", json=unknown, headers=team.headers()), 400, "invalid_workflow",
                    "flow.Steps[0].Uses")  # fmt: skip
    create(client, team, UPSCALE)  # the library's task and an agent's step


def test_slugs_are_unique_across_teams_and_the_operators(client: httpx.Client, engine: Server):
    alpha, beta = Team(engine, "alpha"), Team(engine, "beta")
    mine = create(client, alpha, COMFY)
    error = refused(client.post("/api/v1/workflows", json=COMFY, headers=alpha.headers()), 409, "slug_taken",
                    "workflow_slug")  # fmt: skip
    assert f"PUT /api/v1/workflows/{mine}" in error["error_message"]
    error = refused(client.post("/api/v1/workflows", json=COMFY, headers=beta.headers()), 409, "slug_taken",
                    "workflow_slug")  # fmt: skip
    assert "another team" in error["error_message"] and mine not in error["error_message"]
    operator_workflow(client, beta)
    error = refused(client.post("/api/v1/workflows", json=body(COMFY, workflow_slug="shrink"), headers=beta.headers()),
                    409, "slug_taken", "workflow_slug")  # fmt: skip
    assert "the operator's flow file shrink.yaml" in error["error_message"]


# --- versions and status -------------------------------------------------------------------------


def test_every_change_is_a_new_version_and_old_ones_stay_readable(client: httpx.Client, engine: Server):
    team = Team(engine, "alpha")
    id = create(client, team, COMFY)
    first = client.get(f"/api/v1/r/workflows/{id}", headers=team.headers("jwt")).json()
    changed = body(COMFY, display_name="Portraits, now better", max_retries=3)
    changed["parameters"][1]["max"] = 1024
    answer = client.put(f"/api/v1/workflows/{id}", json=changed, headers=team.headers("jwt"))
    assert answer.status_code == 200 and answer.json() == {"id": id, "version": 2}
    # The same body again changes nothing; without a slug, the slug is the workflow's.
    again = body(changed, workflow_slug="")
    assert client.put(f"/api/v1/workflows/{id}", json=again, headers=team.headers()).json()["version"] == 2
    current = client.get(f"/api/v1/r/workflows/{id}", headers=team.headers("jwt")).json()
    assert current["version"] == 2 and current["display_name"] == "Portraits, now better"
    assert current["parameters"][1]["max"] == 1024 and current["created_at"] == first["created_at"]
    assert current["updated_at"] >= first["updated_at"]
    pinned = client.get("/api/v1/r/workflows/slug/sd-portrait@1", headers=team.headers("jwt")).json()
    assert pinned == {**first, "updated_at": current["updated_at"]}  # version 1 as it was; the workflow's time
    assert client.get("/api/v1/r/workflows/slug/sd-portrait@2", headers=team.headers("jwt")).json() == current
    assert client.get("/api/v1/r/workflows/slug/sd-portrait", headers=team.headers("jwt")).json() == current
    for missing in ["sd-portrait@3", "sd-portrait@0", "sd-portrait@99999999999999999999", "nope@1"]:
        answer = client.get(f"/api/v1/r/workflows/slug/{missing}", headers=team.headers())
        refused(answer, 404, "not_found", "path.workflowSlug")
    for bad in ["sd-portrait@two", "sd-portrait@", "sd-portrait@-1", "sd-portrait@²"]:
        refused(client.get(f"/api/v1/r/workflows/slug/{bad}", headers=team.headers()), 400, "invalid_version",
                "path.workflowSlug")  # fmt: skip
    # A problem in an update stores nothing; the slug never changes.
    broken = body(changed, max_retries=-1)
    refused(client.put(f"/api/v1/workflows/{id}", json=broken, headers=team.headers()), 400, "invalid_workflow",
            "max_retries")  # fmt: skip
    renamed = body(changed, workflow_slug="portraits")
    refused(client.put(f"/api/v1/workflows/{id}", json=renamed, headers=team.headers()), 400, "slug_immutable",
            "workflow_slug")  # fmt: skip
    assert client.get(f"/api/v1/r/workflows/{id}", headers=team.headers("jwt")).json() == current


def test_disable_and_enable(client: httpx.Client, engine: Server):
    team = Team(engine, "alpha")
    id = create(client, team, COMFY)
    disabled = client.post(f"/api/v1/workflows/{id}/disable", headers=team.headers("jwt"))
    assert disabled.status_code == 200 and disabled.json()["workflow_status"] == "disabled"
    assert disabled.json()["version"] == 1  # the status is the workflow's: no new version
    assert client.get(f"/api/v1/r/workflows/{id}", headers=team.headers()).json()["workflow_status"] == "disabled"
    assert client.get("/api/v1/r/workflows/slug/sd-portrait@1", headers=team.headers()).json()["workflow_status"] == (
        "disabled"
    )
    assert client.post(f"/api/v1/workflows/{id}/disable", headers=team.headers()).status_code == 200  # idempotent
    enabled = client.post(f"/api/v1/workflows/{id}/enable", headers=team.headers("dk")).json()
    assert enabled["workflow_status"] == "active"
    # A PUT may set the status too, as the reference's does; leaving it out keeps it.
    answer = client.put(f"/api/v1/workflows/{id}", json=body(COMFY, workflow_status="disabled"), headers=team.headers())
    assert answer.json() == {"id": id, "version": 1}
    assert client.get(f"/api/v1/r/workflows/{id}", headers=team.headers()).json()["workflow_status"] == "disabled"
    client.put(f"/api/v1/workflows/{id}", json=body(COMFY, description="new"), headers=team.headers())
    detail = client.get(f"/api/v1/r/workflows/{id}", headers=team.headers()).json()
    assert (detail["workflow_status"], detail["version"]) == ("disabled", 2)
    # Created disabled.
    other = create(client, team, body(COMFY, workflow_slug="drafted", workflow_status="disabled"))
    assert client.get(f"/api/v1/r/workflows/{other}", headers=team.headers()).json()["workflow_status"] == "disabled"


def test_the_operators_workflows_are_read_only_to_teams(client: httpx.Client, engine: Server):
    team = Team(engine, "alpha")
    shrink = operator_workflow(client, team)["id"]
    for method, path in [
        ("POST", f"/api/v1/workflows/{shrink}/disable"), ("POST", f"/api/v1/workflows/{shrink}/enable"),
        ("PUT", f"/api/v1/workflows/{shrink}"),
    ]:  # fmt: skip
        answer = client.request(method, path, json=COMFY if method == "PUT" else None, headers=team.headers("jwt"))
        error = refused(answer, 403, "read_only", "path.workflowId")
        assert "flow file shrink.yaml" in error["error_message"]
    assert operator_workflow(client, team)["workflow_status"] == "active"


# --- who may ---------------------------------------------------------------------------------------


def test_a_team_never_sees_another_teams_workflows(client: httpx.Client, engine: Server):
    teams = {"alpha": Team(engine, "alpha"), "beta": Team(engine, "beta")}
    docs = {"alpha": COMFY, "beta": UPSCALE}
    ids = {name: create(client, teams[name], docs[name]) for name in teams}
    for me, other in [("alpha", "beta"), ("beta", "alpha")]:
        id, slug = ids[other], docs[other]["workflow_slug"]
        for kind in ("sk", "dk", "jwt"):
            headers = teams[me].headers(kind)
            for method, path in [
                ("GET", f"/api/v1/r/workflows/{id}"), ("GET", f"/api/v1/workflows/{id}"),
                ("GET", f"/api/v1/r/workflows/slug/{slug}"), ("GET", f"/api/v1/r/workflows/slug/{slug}@1"),
                ("POST", f"/api/v1/workflows/{id}/disable"), ("POST", f"/api/v1/workflows/{id}/enable"),
                ("PUT", f"/api/v1/workflows/{id}"),
            ]:  # fmt: skip
                answer = client.request(method, path, json=docs[other] if method == "PUT" else None, headers=headers)
                error = refused(
                    answer, 404, "not_found", "path.workflowSlug" if "/slug/" in path else "path.workflowId"
                )
                assert error["error_message"] in (f"workflow {id!r} not found", f"workflow {slug!r} not found")
            for path in ["/api/v1/r/workflows", "/api/v1/workflows"]:
                listed = client.get(path, headers=headers).json()
                assert [w["workflow_slug"] for w in listed["workflow_list"]] == sorted(
                    [docs[me]["workflow_slug"], "shrink"]
                )
                assert listed["page_meta"]["total_count"] == 2
    # A session token's team is the one X-Team-ID names; a key's is its own, whatever X-Team-ID says.
    beta, alpha = teams["beta"], teams["alpha"]
    assert (
        client.get(f"/api/v1/r/workflows/{ids['alpha']}", headers={**beta.headers(), "X-Team-ID": alpha.id}).status_code
        == 404
    )
    assert (
        client.get(f"/api/v1/r/workflows/{ids['beta']}", headers={**beta.headers(), "X-Team-ID": alpha.id}).status_code
        == 200
    )
    assert client.get(f"/api/v1/r/workflows/{ids['alpha']}", headers=alpha.headers("jwt")).status_code == 200


def test_credentials(client: httpx.Client, engine: Server):
    alpha, beta = Team(engine, "alpha"), Team(engine, "beta")
    id = create(client, alpha, COMFY)
    routes = [
        ("GET", "/api/v1/r/workflows"), ("GET", f"/api/v1/r/workflows/{id}"), ("GET", "/api/v1/r/workflows/slug/x"),
        ("GET", "/api/v1/workflows"), ("GET", f"/api/v1/workflows/{id}"), ("POST", "/api/v1/workflows"),
        ("PUT", f"/api/v1/workflows/{id}"), ("POST", f"/api/v1/workflows/{id}/disable"),
        ("POST", f"/api/v1/workflows/{id}/enable"),
    ]  # fmt: skip
    for method, path in routes:
        doc = COMFY if method == "PUT" else None
        for headers in [{}, alpha.headers("ak"), {"Authorization": "Bearer sk-not-ours"}]:
            answer = client.request(method, path, json=doc, headers=headers)
            refused(answer, 401, "unauthorized", "header.Authorization")
            assert answer.headers["www-authenticate"] == "Bearer"
        no_team = client.request(method, path, json=doc, headers={"Authorization": f"Bearer {alpha.jwt}"})
        refused(no_team, 400, "team_required", "header.X-Team-ID")
        not_member = client.request(method, path, json=doc, headers={"Authorization": f"Bearer {alpha.jwt}",
                                                                      "X-Team-ID": beta.id})  # fmt: skip
        assert not_member.status_code == 403 and not_member.json()["error_code"] == "not_a_member"
    # Every kind of team credential manages: a session token for its team, sk- and dk- keys.
    for kind, slug in [("jwt", "by-token"), ("sk", "by-key"), ("dk", "by-device")]:
        create(client, alpha, body(COMFY, workflow_slug=slug), kind)


def test_racing_writes_are_each_whole_or_a_clear_409(client: httpx.Client, engine: Server):
    """Writes at once (on PostgreSQL, in transactions side by side): one create of a slug wins, the others
    are told the slug is taken; updates each make the next version, or are told to try again."""
    team = Team(engine, "alpha")

    def post(_: int) -> httpx.Response:
        with engine.client() as own:
            return own.post("/api/v1/workflows", json=COMFY, headers=team.headers())

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert sorted(a.status_code for a in answers) == [201] + [409] * 7, [a.text for a in answers]
    assert {a.json()["error_code"] for a in answers if a.status_code == 409} == {"slug_taken"}
    (id,) = [a.json()["id"] for a in answers if a.status_code == 201]

    def put(i: int) -> httpx.Response:
        with engine.client() as own:
            return own.put(f"/api/v1/workflows/{id}", json=body(COMFY, description=f"take {i}"), headers=team.headers())

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(put, range(8)))
    assert {a.status_code for a in answers} <= {200, 409}, [a.text for a in answers]
    assert {a.json()["error_code"] for a in answers if a.status_code == 409} <= {"workflow_changed"}
    made = sorted(a.json()["version"] for a in answers if a.status_code == 200)
    assert made == list(range(2, 2 + len(made)))  # each its own version, none lost or made twice
    for version in made:
        pinned = client.get(f"/api/v1/r/workflows/slug/sd-portrait@{version}", headers=team.headers()).json()
        assert pinned["version"] == version and pinned["description"].startswith("take ")


# --- pages ---------------------------------------------------------------------------------------


def test_lists_are_paged(client: httpx.Client, engine: Server):
    team = Team(engine, "alpha")
    operator_workflow(client, team)
    for i in range(4):
        create(client, team, body(COMFY, workflow_slug=f"w{i}"))
    slugs = ["shrink", "w0", "w1", "w2", "w3"]

    def page(**query: Any) -> dict[str, Any]:
        answer = client.get("/api/v1/r/workflows", params=query, headers=team.headers())
        assert answer.status_code == 200, answer.text
        return answer.json()

    seen = []
    for n in (1, 2, 3):
        listed = page(current_page=n, per_page=2)
        assert listed["page_meta"] == {"current_page": n, "per_page": 2, "total_count": 5}
        seen += [w["workflow_slug"] for w in listed["workflow_list"]]
    assert seen == slugs
    assert page(current_page=4, per_page=2)["workflow_list"] == []
    assert page(per_page=100)["page_meta"]["per_page"] == 100
    assert page()["page_meta"] == {"current_page": 1, "per_page": 20, "total_count": 5}
    for name, value in [("per_page", 0), ("per_page", 101), ("per_page", "ten"), ("current_page", 0),
                        ("current_page", -1), ("current_page", "1.5")]:  # fmt: skip
        for path in ["/api/v1/r/workflows", "/api/v1/workflows"]:
            answer = client.get(path, params={name: value}, headers=team.headers())
            refused(answer, 400, "invalid_query", f"query.{name}")
