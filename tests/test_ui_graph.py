"""The web UI's run graph, timeline, deployments and workers pages, in a real browser.

Against real processes, as ``tests/test_ui.py`` (whose browser and helpers this module
reuses): the fleet worker runs ``tests/flows.py``, the API records the runs and serves
``/ui``. One API and one browser for the module.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select
from sqlmodel import Session

from api.db import engine_for
from api.models import FlowRun
from api.schemas import GraphNode
from api.ui.graph_page import LEVEL_CAP, lay_out
from orchestrator.devstack.localstack import ApiProcess, api_server
from tests.api_support import api_database, submit, wait_final
from tests.test_ui import browser, click, keep_screenshot, open_held_run, release, row_of, site, text_of, texts, until

__all__ = ["browser"]  # the module-scoped browser fixture of test_ui, one for this module too


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with api_database(tmp_path_factory.mktemp("ui-graph-db"), None) as url:
        yield url


@pytest.fixture(scope="module")
def api(redis_url: str, database: str, fleet: subprocess.Popen[bytes], worker_logs: Path) -> Iterator[ApiProcess]:
    """The API with its recorder and services on an SQLite file, next to the fleet worker."""
    with api_server(redis_url, database, log_path=worker_logs / "ui-graph-api.log") as server:
        yield server


@pytest.fixture
def http(api: ApiProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=15) as client:
        yield client


CHILD_LINKS = "#graph a.child-run"


def box_states(driver: WebDriver) -> dict[str, str]:
    """Each graph box's label -> the state it is painted with, read in one go."""
    found: dict[str, str] = driver.execute_script(
        "const out = {}; for (const g of document.querySelectorAll('#graph g.node'))"
        " out[g.querySelector('.node-label').textContent] = g.dataset.state; return out;"
    )
    return found


# ---- the run graph ----------------------------------------------------------------------------


def test_a_running_runs_graph_turns_its_node_completed_without_a_reload(
    api: ApiProcess, http: httpx.Client, browser: WebDriver, redis_url: str
) -> None:
    marker = open_held_run(api, http, browser)
    node = "held_until_released-0"
    until(browser, lambda d: box_states(d) == {node: "Running"}, "the task's node drawn Running")
    release(redis_url, marker)
    until(browser, lambda d: box_states(d) == {node: "Completed"}, "the node turned Completed")
    assert browser.execute_script("return window.__sameDocument;") == "yes"  # no reload happened
    until(browser, lambda d: text_of(d, "run-state") == "Completed", "the run shown Completed")
    # once the run has ended the page stops asking the API for changes
    until(browser, lambda d: "1 node(s)" in text_of(d, "graph-note"), "the graph's note")


def test_a_parents_graph_links_each_child_run_to_its_page(
    api: ApiProcess, http: httpx.Client, browser: WebDriver
) -> None:
    run = wait_final(http, submit(http, "parent-flow")["id"])
    assert run["state"] == "Completed", run
    children = {c["id"] for c in http.get("/flow-runs", params={"parent": run["id"]}).json()["items"]}
    assert len(children) == 3, children

    browser.get(f"{site(api)}/ui/runs/{run['id']}")
    until(browser, lambda d: box_states(d) and set(box_states(d).values()) == {"Completed"}, "every node Completed")
    linked = until(
        browser,
        lambda d: {
            a.get_attribute("data-child-run-id") for a in d.find_elements(By.CSS_SELECTOR, "#graph a.child-run")
        },
        "child run links",
    )
    assert linked == children, (linked, children)
    # the subflows' end nodes name their child runs (the graph route says so too)
    ends = [a for a in browser.find_elements(By.CSS_SELECTOR, CHILD_LINKS) if "subflow-" in a.text]
    assert {a.get_attribute("data-child-run-id") for a in ends} == children, [a.text for a in ends]
    nodes = http.get(f"/flow-runs/{run['id']}/graph").json()["nodes"]
    assert {n["child_run_id"] for n in nodes if n["kind"] == "subflow"} == children
    browser.execute_script("document.getElementById('graph-section').scrollIntoView();")
    keep_screenshot(browser, "ui-graph.png")

    child = sorted(children)[0]
    click(browser, f'#graph a.child-run[data-child-run-id="{child}"]')
    until(browser, lambda d: d.current_url.endswith(f"/ui/runs/{child}"), "the child run's page")
    until(browser, lambda d: box_states(d) and set(box_states(d).values()) == {"Completed"}, "the child's own graph")


def test_a_large_map_is_folded_into_one_box_with_counts(
    api: ApiProcess, http: httpx.Client, browser: WebDriver
) -> None:
    run = wait_final(http, submit(http, "map-param-flow", parameters={"values": list(range(120))})["id"])
    assert run["state"] == "Completed", run

    browser.get(f"{site(api)}/ui/runs/{run['id']}")
    until(browser, lambda d: "double x120" in box_states(d), "the 120 mapped nodes as one box")
    assert len(box_states(browser)) == 2  # the fold and the reducing task
    sub = browser.execute_script(
        "return [...document.querySelectorAll('#graph g.node')].find(g => g.dataset.kind === 'fold')"
        ".querySelector('.node-state').textContent;"
    )
    assert sub == "120 Completed"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#graph path.edge")) == 1  # 120 edges drawn as one


def test_a_runtime_maps_expanded_task_runs_show_inside_its_box(
    api: ApiProcess, http: httpx.Client, browser: WebDriver
) -> None:
    run = wait_final(http, submit(http, "map-upstream-flow", parameters={"n": 5})["id"])
    assert run["state"] == "Completed", run

    browser.get(f"{site(api)}/ui/runs/{run['id']}")
    chips = "#graph g.node[data-kind='map'] rect.chip"
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, chips)) == 5, "the map's 5 task runs as chips")
    assert {c.get_attribute("data-state") for c in browser.find_elements(By.CSS_SELECTOR, chips)} == {"Completed"}
    assert len(box_states(browser)) == 3  # numbers, the map, total


def test_a_dynamic_runs_graph_shows_the_task_runs_it_made(
    api: ApiProcess, http: httpx.Client, browser: WebDriver
) -> None:
    """A run without a plan: its own task runs are its graph (no edges), each with its final state."""
    run = wait_final(http, submit(http, "dynamic-fan-flow", parameters={"n": 3})["id"])
    own = [t for t in http.get(f"/flow-runs/{run['id']}/task-runs").json() if t["flow_run_id"] == run["id"]]
    expected = {t["label"]: t["state"] for t in own}
    assert "explode-0" in expected and len(expected) >= 5, expected

    browser.get(f"{site(api)}/ui/runs/{run['id']}")
    until(browser, lambda d: box_states(d) == expected, "every task run of the run as a box, in its state")
    assert not browser.find_elements(By.CSS_SELECTOR, "#graph path.edge")


def test_the_timeline_shows_one_bar_per_task_run_with_its_worker(
    api: ApiProcess, http: httpx.Client, browser: WebDriver
) -> None:
    run = wait_final(http, submit(http, "fan-flow", parameters={"n": 5})["id"])
    tasks = http.get(f"/flow-runs/{run['id']}/task-runs").json()
    assert len(tasks) == 6

    browser.get(f"{site(api)}/ui/runs/{run['id']}")
    bars = until(
        browser,
        lambda d: (found := d.find_elements(By.CSS_SELECTOR, "#timeline g.bar-row")) and len(found) == 6 and found,
        "six bars",
    )
    assert {b.get_attribute("data-task-run-id") for b in bars} == {t["id"] for t in tasks}
    labels = texts(browser, "#timeline .bar-label")
    assert all(" · fleet@" in label for label in labels), labels  # each bar names its worker
    widths = browser.execute_script(
        "return [...document.querySelectorAll('#timeline rect.bar')].map(r => r.width.baseVal.value);"
    )
    assert all(w >= 2 for w in widths), widths


def test_the_task_runs_table_is_paged(api: ApiProcess, http: httpx.Client, browser: WebDriver) -> None:
    run = wait_final(http, submit(http, "map-param-flow", parameters={"values": list(range(130))})["id"])
    browser.get(f"{site(api)}/ui/runs/{run['id']}")
    until(browser, lambda d: text_of(d, "task-count") == "1\u2013100 of 131", "the first page of task runs")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#task-rows tr")) == 100
    click(browser, "#task-older")
    until(browser, lambda d: text_of(d, "task-count") == "101\u2013131 of 131", "the second page")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#task-rows tr")) == 31


def plan_node(node_id: str, name: str, upstream: list[str]) -> GraphNode:
    return GraphNode(
        id=node_id, kind="task", name=name, label=f"{name}-0", flow_run_id="r", upstream=upstream, state="Completed"
    )


def test_the_layout_stays_bounded_however_large_the_plan() -> None:
    """5,000 nodes draw as a few boxes: one task's map folds, a wide level is capped; every node is in one box."""
    source = plan_node("s", "source", [])
    items = [plan_node(f"i{k}", "work", ["s"]) for k in range(5000)]
    folded = lay_out("r", "static", [source, *items, plan_node("t", "total", [i.id for i in items])], 5002, {}, 0)
    assert [b.label for b in folded.boxes] == ["source-0", "work x5000", "total-0"]
    assert len(folded.edges) == 2 and folded.states["i4999"] == "Completed"

    wide = [
        plan_node(f"{lvl}-{k}", f"step{lvl}_{k}", [f"{lvl - 1}-{k}"] if lvl else [])
        for lvl in range(50)
        for k in range(100)
    ]
    view = lay_out("r", "static", wide, 5000, {}, 0)
    assert len(view.boxes) == 50 * LEVEL_CAP
    members = [m for b in view.boxes for m in b.members]
    assert sorted(members) == sorted(n.id for n in wide)  # each node in exactly one box
    assert {b.label for b in view.boxes if b.kind == "fold"} == {f"{100 - LEVEL_CAP + 1} more tasks"}
    assert all(b.y + b.h <= view.height and b.x < view.width for b in view.boxes)

    maps = [plan_node(f"m{k}", f"mapped{k}", []).model_copy(update={"kind": "map"}) for k in range(LEVEL_CAP + 5)]
    assert len(lay_out("r", "static", maps, len(maps), {}, 0).boxes) == LEVEL_CAP + 5  # maps are never folded


def test_task_states_answers_only_what_changed_since(api: ApiProcess, http: httpx.Client) -> None:
    run = wait_final(http, submit(http, "chain-flow")["id"])
    every = http.get(f"/flow-runs/{run['id']}/task-states").json()
    assert sorted(i["state"] for i in every["items"]) == ["Completed"] * 3 and not every["truncated"]
    assert every["until"] == max(i["updated"] for i in every["items"])
    later = http.get(f"/flow-runs/{run['id']}/task-states", params={"since": every["until"] + 0.001}).json()
    assert later["items"] == [] and later["until"] == every["until"] + 0.001  # nothing changed since
    page = http.get(f"/flow-runs/{run['id']}/task-states", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["truncated"]
    assert http.get(f"/flow-runs/{uuid.uuid4()}/task-states").status_code == 404
    assert http.get(f"/flow-runs/{run['id']}/task-states", params={"since": -1}).status_code == 422


def test_graph_json_of_an_unknown_run_is_a_404(api: ApiProcess) -> None:
    answer = httpx.get(f"{site(api)}/ui/runs/{uuid.uuid4()}/graph.json")
    assert answer.status_code == 404 and "no flow run" in answer.json()["detail"]


# ---- deployments, the list's filters, workers ---------------------------------------------


def seed_late(database_url: str, deployment_id: str, n: int) -> list[str]:
    """Late runs of a deployment, written straight into the API's database (a backlog after an outage)."""
    now = time.time()
    ids = [str(uuid.uuid4()) for _ in range(n)]
    with Session(engine_for(database_url)) as session:
        for i, run_id in enumerate(ids):
            start = now - 3600 + i * 60
            session.add(
                FlowRun(
                    id=run_id,
                    flow_name="chain-flow",
                    name=f"late-{i}",
                    state="Late",
                    created=start,
                    scheduled_start=start,
                    queue="default",
                    deployment_id=deployment_id,
                    root_id=run_id,
                )
            )
        session.commit()
    return ids


def test_the_deployments_page_shows_schedule_runs_and_acts_with_a_csrf_token(
    api: ApiProcess, http: httpx.Client, browser: WebDriver, database: str
) -> None:
    name = f"hourly-{uuid.uuid4().hex[:6]}"
    made = http.post(
        "/deployments", json={"name": name, "flow_name": "chain-flow", "interval_seconds": 3600, "parameters": {"x": 2}}
    )
    assert made.status_code == 201, made.text
    late = seed_late(database, made.json()["id"], 3)
    planned = until(browser, lambda _: http.get(f"/deployments/{name}").json()["next_runs"], "runs planned")

    browser.get(f"{site(api)}/ui/deployments")
    row = f'#deployment-rows tr[data-deployment="{name}"]'
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row), "the deployment listed")
    assert browser.find_element(By.CSS_SELECTOR, f"{row} .schedule").text == "every 3600 s"
    shown = browser.find_element(By.CSS_SELECTOR, f"{row} .next-runs").text.splitlines()
    assert shown[0] == planned[0][:19].replace("T", " "), (shown, planned)
    assert browser.find_element(By.CSS_SELECTOR, f"{row} .late-count").text == "3"
    keep_screenshot(browser, "ui-deployments.png")

    # pause, then resume, from the page
    browser.find_element(By.CSS_SELECTOR, f"{row} button.pause").click()
    until(browser, lambda d: "paused" in text_of(d, "action-done"), "the pause done")
    assert http.get(f"/deployments/{name}").json()["paused"] is True
    browser.find_element(By.CSS_SELECTOR, f"{row} button.resume").click()
    # the pause's own message says "... until it is resumed.": wait for the resume's, not a word of it
    until(browser, lambda d: text_of(d, "action-done") == f"Deployment {name} resumed.", "the resume done")
    assert http.get(f"/deployments/{name}").json()["paused"] is False

    # the late backlog: newest_only keeps the newest
    Select(browser.find_element(By.CSS_SELECTOR, f"{row} .late-cleanup select")).select_by_value("newest_only")
    browser.find_element(By.CSS_SELECTOR, f"{row} .late-cleanup button").click()
    until(browser, lambda d: "2 cancelled, 1 kept" in text_of(d, "action-done"), "the cleanup done")
    states = {r: http.get(f"/flow-runs/{r}").json()["state"] for r in late}
    assert states == {late[0]: "Cancelled", late[1]: "Cancelled", late[2]: "Late"}, states

    # a form without the page's token changes nothing
    forged = httpx.post(f"{site(api)}/ui/deployments/{name}/pause", data={"csrf": "guess"})
    assert forged.status_code == 403 and "CSRF" in forged.json()["detail"]
    assert httpx.post(f"{site(api)}/ui/deployments/{name}/pause").status_code == 403
    assert http.get(f"/deployments/{name}").json()["paused"] is False

    # run now: to the new run's page, and the list filtered by the deployment shows it alone
    browser.get(f"{site(api)}/ui/deployments")
    browser.find_element(By.CSS_SELECTOR, f"{row} button.run-now").click()
    until(browser, lambda d: "/ui/runs/" in d.current_url, "the new run's page")
    run_id = browser.current_url.rsplit("/", 1)[1]
    until(browser, lambda d: text_of(d, "run-state") == "Completed", "the run done")
    other = wait_final(http, submit(http, "chain-flow")["id"])

    browser.get(f"{site(api)}/ui")
    Select(browser.find_element(By.ID, "filter-deployment")).select_by_value(name)
    browser.find_element(By.ID, "filter-apply").click()
    until(browser, lambda d: f"deployment={name}" in d.current_url, "the list filtered by deployment")
    until(browser, lambda d: row_of(d, run_id), "the deployment's run listed")
    assert row_of(browser, other["id"]) is None
    assert row_of(browser, run_id)[3] == name  # type: ignore[index]
    listed = {r["id"] for r in http.get("/flow-runs", params={"deployment": name, "limit": 1000}).json()["items"]}
    assert run_id in listed and other["id"] not in listed and late[2] in listed
    missing = http.get("/flow-runs", params={"deployment": "no-such-deployment"})
    assert missing.status_code == 404 and "no deployment named" in missing.json()["detail"]


def test_the_run_list_filters_by_creation_time(api: ApiProcess, http: httpx.Client, browser: WebDriver) -> None:
    run = wait_final(http, submit(http, "chain-flow")["id"])
    created = run["created"][:19]  # YYYY-MM-DDTHH:MM:SS, UTC
    browser.get(f"{site(api)}/ui?since={created}")
    until(browser, lambda d: row_of(d, run["id"]), "the run created at that second listed")
    browser.get(f"{site(api)}/ui?until={created}")
    until(browser, lambda d: d.find_element(By.ID, "run-count"), "the page")
    assert row_of(browser, run["id"]) is None
    bad = httpx.get(f"{site(api)}/ui?since=yesterday")
    assert bad.status_code == 422 and "YYYY-MM-DDTHH:MM" in bad.json()["detail"]


def test_the_workers_page_shows_the_live_worker_its_queue_and_limits(
    api: ApiProcess, http: httpx.Client, browser: WebDriver
) -> None:
    tag = f"ui-tag-{uuid.uuid4().hex[:6]}"
    assert http.post("/concurrency-limits", json={"tag": tag, "limit": 2}).status_code == 200
    browser.get(f"{site(api)}/ui/workers")
    hosts = until(browser, lambda d: texts(d, "#worker-rows .hostname"), "a live worker")
    assert any(h.startswith("fleet@") for h in hosts), hosts
    worker = next(
        r
        for r in browser.find_elements(By.CSS_SELECTOR, "#worker-rows tr")
        if r.get_attribute("data-hostname").startswith("fleet@")
    )
    assert "default" in worker.find_element(By.CSS_SELECTOR, ".queues").text
    assert "chain-flow" in worker.find_element(By.CSS_SELECTOR, ".flows").text
    queue = browser.find_element(By.CSS_SELECTOR, '#queue-rows tr[data-queue="default"]')
    assert queue.find_element(By.CSS_SELECTOR, ".length").text.isdigit()
    assert browser.find_element(By.CSS_SELECTOR, f'#limit-rows tr[data-tag="{tag}"] .used').text == "0 / 2"
    http.delete(f"/concurrency-limits/{tag}")


def test_the_workers_page_names_the_task_run_holding_a_slot(
    api: ApiProcess, http: httpx.Client, browser: WebDriver
) -> None:
    assert http.post("/concurrency-limits", json={"tag": "test-db", "limit": 1}).status_code == 200
    try:
        run_id = submit(http, "db-fan-flow", parameters={"marker": uuid.uuid4().hex[:8], "n": 12})["id"]

        def holder_shown(d: WebDriver) -> list[str]:
            d.get(f"{site(api)}/ui/workers")
            return [
                a.get_attribute("href")
                for a in d.find_elements(By.CSS_SELECTOR, '#limit-rows tr[data-tag="test-db"] a')
                if (a.text or "").startswith("uses_the_db-")
            ]

        links = until(browser, holder_shown, "a task run holding the test-db slot")
        assert links == [f"{site(api)}/ui/runs/{run_id}"], links  # one slot, one holder, linked to its run
        assert browser.find_element(By.CSS_SELECTOR, '#limit-rows tr[data-tag="test-db"] .used').text == "1 / 1"
        keep_screenshot(browser, "ui-workers.png")
        wait_final(http, run_id)
    finally:
        http.delete("/concurrency-limits/test-db")


def test_with_an_api_key_the_deployments_forms_work_after_logging_in(
    redis_url: str, tmp_path: Path, worker_logs: Path, browser: WebDriver
) -> None:
    """The forms post with the UI's cookie (no Bearer key in a browser) and the page's token."""
    env = {"ORCHESTRATOR_API_KEY": "s3cret-ops", "ORCHESTRATOR_API_SERVICES": "false"}
    with (
        api_database(tmp_path, None) as url,
        api_server(redis_url, url, log_path=worker_logs / "ui-graph-key.log", extra_env=env) as server,
        httpx.Client(base_url=server.url, headers={"Authorization": "Bearer s3cret-ops"}, timeout=15) as keyed,
    ):
        name = "keyed-deployment"
        assert keyed.post("/deployments", json={"name": name, "flow_name": "chain-flow"}).status_code == 201
        browser.get(f"{site(server)}/ui/deployments")
        until(browser, lambda d: d.current_url.endswith("/ui/login"), "the login form")
        browser.find_element(By.ID, "login-key").send_keys("s3cret-ops")
        browser.find_element(By.ID, "login-submit").click()
        until(browser, lambda d: d.current_url.endswith("/ui"), "the list after logging in")

        browser.get(f"{site(server)}/ui/deployments")
        row = f'#deployment-rows tr[data-deployment="{name}"]'
        until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"{row} button.pause"), "the deployment's form")
        browser.find_element(By.CSS_SELECTOR, f"{row} button.pause").click()
        until(browser, lambda d: "paused" in text_of(d, "action-done"), "the pause done")
        assert keyed.get(f"/deployments/{name}").json()["paused"] is True

        cookie = browser.get_cookie("orchestrator_ui")
        assert cookie is not None
        forged = httpx.post(  # the login cookie alone (a forged form) does nothing
            f"{site(server)}/ui/deployments/{name}/resume", cookies={"orchestrator_ui": cookie["value"]}
        )
        assert forged.status_code == 403
        bare = httpx.post(f"{site(server)}/ui/deployments/{name}/resume")  # no key, no cookie: to the login form
        assert bare.status_code == 303 and bare.headers["location"].endswith("/ui/login")
        assert keyed.get(f"/deployments/{name}").json()["paused"] is True
        browser.find_element(By.ID, "logout").click()
        until(browser, lambda d: d.current_url.endswith("/ui/login"), "logged out")
