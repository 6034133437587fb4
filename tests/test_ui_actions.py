"""The web UI's actions in a real browser: cancel, retry and rename a run, start one from a flow's form,
the CSRF token every action needs, and each task run's link to its Celery task in Flower.

Real processes, as tests/test_ui.py has them: the fleet worker runs ``tests/flows.py``, the API
(``python -m api.server``) records the runs and serves ``/ui``, and Flower (``workers.flower``)
watches the same broker; the API knows Flower's URL (ORCHESTRATOR_FLOWER_URL). Headless Chromium
drives the pages; httpx plays the other site's page that has no token.
"""

from __future__ import annotations

import enum
import re
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import pytest
import redis
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from api.ui.flows_page import form_fields
from orchestrator import flow
from orchestrator.authoring.schema import parameters_schema
from orchestrator.devstack.localstack import ApiProcess, api_server, flower
from tests.api_support import api_database, cli, eventually, submit, wait_final
from tests.test_ui import (
    StripPrefixProxy,
    browser,
    click,
    keep_screenshot,
    refreshed,
    seed_run,
    site,
    text_of,
    texts,
    until,
)

__all__ = ["browser"]  # the module-scoped Chromium fixture of tests/test_ui.py, one of this module's own

FLOWER_LOGIN = ("ops", secrets.token_urlsafe(16))


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@flow
def every_kind(
    n: int,
    mode: Literal["fast", "slow"] = "fast",
    color: Color = Color.RED,
    on: bool = True,
    ratio: float = 0.5,
    tags: list[str] = ["a"],  # noqa: B006  (a default the schema shows)
    limit: int | None = None,
    note: str = "<b>x</b>",
) -> None:
    """Every kind of parameter the start form has a field for (never run: its schema is what counts)."""


@pytest.fixture(scope="module")
def flower_url(redis_url: str, worker_logs: Path) -> Iterator[str]:
    """Flower on the session's broker, started before any run of this module (it sees their events)."""
    with flower(redis_url, basic_auth=":".join(FLOWER_LOGIN), log_path=worker_logs / "ui-actions-flower.log") as url:
        yield url


@pytest.fixture(scope="module")
def api(
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    fleet: subprocess.Popen[bytes],
    worker_logs: Path,
    flower_url: str,
) -> Iterator[ApiProcess]:
    """The API with its recorder on an SQLite file, next to the fleet worker, linking to Flower."""
    env = {"ORCHESTRATOR_FLOWER_URL": flower_url + "/"}  # the trailing slash is dropped
    with (
        api_database(tmp_path_factory.mktemp("ui-actions-db"), None) as url,
        api_server(redis_url, url, log_path=worker_logs / "ui-actions-api.log", extra_env=env) as server,
    ):
        yield server


@pytest.fixture
def http(api: ApiProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=15) as client:
        yield client


def state_of(http: httpx.Client, run_id: str) -> str:
    return str(http.get(f"/flow-runs/{run_id}").json()["state"])


def page_token(page: httpx.Response) -> str:
    """The CSRF token a page of the UI carries (its csrf-token meta tag)."""
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page.text)
    assert found, page.text[:500]
    return found.group(1)


def enabled(driver: WebDriver, element_id: str) -> bool:
    return bool(driver.find_element(By.ID, element_id).is_enabled())


def test_cancel_on_the_run_page_cancels_a_running_run(api: ApiProcess, http: httpx.Client, browser: WebDriver) -> None:
    run_id = submit(http, "api-sleepy-flow", parameters={"seconds": 120, "width": 1})["id"]
    until(browser, lambda _: http.get(f"/flow-runs/{run_id}").status_code == 200, "the run recorded")
    browser.get(f"{site(api)}/ui/runs/{run_id}")
    until(browser, lambda d: text_of(d, "run-state") == "Running", "the run shown Running")
    until(browser, lambda d: texts(d, "#task-rows .state") == ["Running"], "its task shown Running")
    assert not enabled(browser, "action-retry")  # a run under way is not retried
    keep_screenshot(browser, "ui-run-actions.png")

    until(browser, lambda d: enabled(d, "action-cancel"), "the cancel button enabled")
    click(browser, "#action-cancel")
    until(browser, lambda d: text_of(d, "run-state") == "Cancelled", "the run shown Cancelled without a reload")
    assert state_of(http, run_id) == "Cancelled"
    assert "cancel" in text_of(browser, "action-status").lower()
    until(browser, lambda d: not enabled(d, "action-cancel"), "cancel disabled once the run ended")


def test_retry_on_the_run_page_reruns_a_failed_run_to_its_end(
    api: ApiProcess, http: httpx.Client, browser: WebDriver, redis_url: str
) -> None:
    label = f"uiretry{uuid.uuid4().hex[:6]}"
    run = wait_final(http, submit(http, "api-flow", parameters={"n": 2, "label": label})["id"])
    assert run["state"] == "Failed", run
    browser.get(f"{site(api)}/ui/runs/{run['id']}")
    until(browser, lambda d: not d.find_element(By.ID, "root-cause").get_attribute("hidden"), "the failure shown")
    until(browser, lambda d: enabled(d, "action-retry"), "the retry button enabled for a failed run")
    assert not enabled(browser, "action-cancel")

    client = redis.Redis.from_url(redis_url)
    client.set(f"test:fixed:{label}", 1)  # the bug fix between the two attempts
    click(browser, "#action-retry")
    until(browser, lambda d: text_of(d, "run-state") == "Completed", "the retried run shown Completed")
    assert text_of(browser, "run-attempt") == "2"
    until(browser, lambda d: text_of(d, "result-value") == "4", "the new attempt's result shown")
    assert browser.find_element(By.ID, "root-cause").get_attribute("hidden")  # no failure left to show
    run = http.get(f"/flow-runs/{run['id']}").json()
    assert (run["state"], run["attempt"]) == ("Completed", 2)
    counts = [int(client.get(f"test:count:{label}-{k}") or 0) for k in ("a", "c", "fix")]
    assert counts == [1, 1, 2]  # the completed task runs kept their results: only the failed one ran again


def test_rename_on_the_run_page_shows_the_new_name(api: ApiProcess, http: httpx.Client, browser: WebDriver) -> None:
    run = wait_final(http, submit(http, "chain-flow", parameters={"x": 2})["id"])
    browser.get(f"{site(api)}/ui/runs/{run['id']}")
    until(browser, refreshed, "the page read by its script")
    new_name = f"<b>renamed</b> {uuid.uuid4().hex[:6]}"
    field = browser.find_element(By.ID, "rename-name")
    field.clear()
    field.send_keys(new_name)
    click(browser, "#action-rename")
    until(browser, lambda d: text_of(d, "run-name") == new_name, "the new name shown")
    assert new_name in browser.title
    eventually(lambda: http.get(f"/flow-runs/{run['id']}").json()["name"] == new_name, 30, what="the API's name")
    browser.refresh()
    until(browser, lambda d: text_of(d, "run-name") == new_name, "the new name after a reload")
    assert not browser.find_elements(By.CSS_SELECTOR, "main b")  # text, not markup

    field = browser.find_element(By.ID, "rename-name")
    field.clear()
    field.send_keys("   ")
    browser.execute_script("document.getElementById('rename-name').required = false;")  # past the browser's check
    click(browser, "#action-rename")
    until(browser, lambda d: "give the run's new name" in text_of(d, "action-status"), "the empty name refused")
    assert text_of(browser, "run-name") == new_name


def test_an_action_without_the_csrf_token_is_refused_and_changes_nothing(api: ApiProcess, http: httpx.Client) -> None:
    run_id = submit(http, "api-sleepy-flow", parameters={"seconds": 120, "width": 1})["id"]
    eventually(lambda: state_of(http, run_id) == "Running", 60, what="the run Running")
    page = httpx.get(f"{site(api)}/ui/runs/{run_id}")
    token, session = page_token(page), page.cookies["orchestrator_csrf"]
    flows_before = http.get("/flow-runs", params={"flow": "chain-flow"}).json()["total"]

    jar = {"orchestrator_csrf": session}
    refused = [
        httpx.post(f"{site(api)}/ui/runs/{run_id}/cancel"),  # another site's page: neither cookie nor token
        httpx.post(f"{site(api)}/ui/runs/{run_id}/cancel", cookies=jar),  # no token
        httpx.post(  # a session of its own with another session's token
            f"{site(api)}/ui/runs/{run_id}/cancel",
            cookies={"orchestrator_csrf": "forged"},
            headers={"X-CSRF-Token": token},
        ),
        httpx.post(
            f"{site(api)}/ui/runs/{run_id}/retry", data={"csrf": "0" * 64}, cookies={"orchestrator_csrf": session}
        ),
        httpx.post(f"{site(api)}/ui/runs/{run_id}/rename", json={"name": "forged"}),
        httpx.post(f"{site(api)}/ui/flows/chain-flow/runs", json={"parameters": {"x": 1}}),
    ]
    for response in refused:
        assert response.status_code == 403, (response.request.url, response.text)
        assert "CSRF token" in response.json()["detail"]
    assert state_of(http, run_id) == "Running"
    assert http.get(f"/flow-runs/{run_id}").json()["name"] != "forged"
    assert http.get("/flow-runs", params={"flow": "chain-flow"}).json()["total"] == flows_before

    # the page's own token, sent as a form field, with its session: done
    done = httpx.post(
        f"{site(api)}/ui/runs/{run_id}/cancel", data={"csrf": token}, cookies={"orchestrator_csrf": session}
    )
    assert done.status_code == 202, done.text
    assert wait_final(http, run_id)["state"] == "Cancelled"


def test_with_an_api_key_an_action_needs_the_login_cookie_and_the_token(
    redis_url: str, tmp_path: Path, worker_logs: Path
) -> None:
    env = {"ORCHESTRATOR_API_KEY": "s3cret-actions", "ORCHESTRATOR_API_SERVICES": "false"}
    with (
        api_database(tmp_path, None) as url,
        api_server(redis_url, url, log_path=worker_logs / "ui-actions-key.log", extra_env=env) as server,
        httpx.Client(base_url=site(server), timeout=15, follow_redirects=False) as browser_like,
    ):
        run_id = seed_run(url, "keyed-action")
        rename = f"/ui/runs/{run_id}/rename"
        assert browser_like.post(rename, json={"name": "x"}).status_code == 303  # no cookie: to the login form
        assert browser_like.post("/ui/login", data={"key": "s3cret-actions"}).status_code == 303
        page = browser_like.get(f"/ui/runs/{run_id}")
        assert page.status_code == 200 and 'data-flower=""' in page.text  # no Flower URL here: no links
        token = page_token(page)
        assert browser_like.post(rename, json={"name": "x"}).status_code == 403  # the cookie alone: refused
        bearer = {"Authorization": "Bearer s3cret-actions"}
        assert httpx.post(f"{site(server)}{rename}", json={"name": "x"}, headers=bearer).status_code == 403
        done = browser_like.post(rename, json={"name": "renamed-with-key"}, headers={"X-CSRF-Token": token})
        assert done.status_code == 200 and done.json()["name"] == "renamed-with-key", done.text


def test_behind_a_proxy_with_a_path_prefix_an_action_and_its_token_work(
    redis_url: str, tmp_path: Path, worker_logs: Path, browser: WebDriver
) -> None:
    """The script posts under the prefix, and the session cookie's path is the prefix's."""
    env = {"ORCHESTRATOR_API_ROOT_PATH": "/orch", "ORCHESTRATOR_API_SERVICES": "false"}
    with (
        api_database(tmp_path, None) as url,
        api_server(redis_url, url, log_path=worker_logs / "ui-actions-prefix.log", extra_env=env) as server,
        StripPrefixProxy("/orch", server.port) as proxy,
    ):
        run_id = seed_run(url, "before-the-rename")
        browser.get(f"{proxy.url}/ui/runs/{run_id}")
        browser.delete_all_cookies()  # those of the other APIs on this host (any port): a session of its own
        browser.get(f"{proxy.url}/ui/runs/{run_id}")
        until(browser, refreshed, "the run page's script reading the API through the proxy")
        field = browser.find_element(By.ID, "rename-name")
        field.clear()
        field.send_keys("renamed-behind-a-proxy")
        click(browser, "#action-rename")
        until(browser, lambda d: text_of(d, "run-name") == "renamed-behind-a-proxy", "the rename done through it")
        session = browser.get_cookie("orchestrator_csrf")
        assert session is not None and session["path"] == "/orch/" and session["httpOnly"], session


def test_the_start_form_refuses_a_bad_parameter_beside_its_field_and_starts_a_run_with_good_ones(
    api: ApiProcess, http: httpx.Client, browser: WebDriver
) -> None:
    browser.get(f"{site(api)}/ui/flows")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-flow="api-flow"]'), "api-flow listed")
    keep_screenshot(browser, "ui-flows.png")
    click(browser, 'tr[data-flow="api-flow"] a.start-link')
    until(browser, lambda d: d.current_url.endswith("/ui/flows/api-flow"), "the flow's start form")

    def field(name: str) -> object:
        return browser.find_element(By.CSS_SELECTOR, f'[data-param="{name}"]')

    def error(name: str) -> str:
        return str(browser.find_element(By.CSS_SELECTOR, f'[data-error-for="{name}"]').text)

    labels = texts(browser, ".field label")
    assert labels[:3] == ["n *", "label", "day"], labels  # n is required, the others have defaults
    assert field("label").get_attribute("value") == "x"  # type: ignore[attr-defined]
    assert "date.today() when the run is created" in texts(browser, '[data-field="day"] .hint')[0]

    field("n").send_keys("abc")  # type: ignore[attr-defined]
    field("day").send_keys("yesterday")  # type: ignore[attr-defined]
    click(browser, "#start-submit")
    until(browser, lambda _: error("n"), "the error beside n")
    assert error("n") == "parameter 'n': 'abc' is not of type 'integer'"
    assert "'yesterday' is not a valid date" in error("day")
    assert error("label") == ""
    assert browser.current_url.endswith("/ui/flows/api-flow")  # nothing started
    keep_screenshot(browser, "ui-start-form.png")

    label = f"form{uuid.uuid4().hex[:6]}"
    for name, text in (("n", "3"), ("day", "2026-01-02"), ("label", label)):
        field(name).clear()  # type: ignore[attr-defined]
        field(name).send_keys(text)  # type: ignore[attr-defined]
    browser.find_element(By.ID, "run-name-input").send_keys(f"from-the-form-{label}")
    click(browser, "#start-submit")
    until(browser, lambda d: "/ui/runs/" in d.current_url, "the new run's page")
    run_id = browser.current_url.rsplit("/", 1)[-1]
    run = http.get(f"/flow-runs/{run_id}").json()
    assert run["parameters"] == {"n": 3, "label": label, "day": "2026-01-02"}, run
    assert run["name"] == f"from-the-form-{label}"
    until(browser, lambda d: text_of(d, "run-name") == f"from-the-form-{label}", "the run's page shows it")


def test_a_json_parameter_is_read_as_json_and_the_run_it_starts_completes(
    api: ApiProcess, http: httpx.Client, browser: WebDriver
) -> None:
    browser.get(f"{site(api)}/ui/flows/map-param-flow")
    values = until(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-param="values"]'), "the values field")
    values.send_keys("[1, 2")
    click(browser, "#start-submit")
    box = '[data-error-for="values"]'
    until(browser, lambda d: "not valid JSON" in d.find_element(By.CSS_SELECTOR, box).text, "the JSON error")
    values.clear()
    values.send_keys('[1, "two"]')
    click(browser, "#start-submit")
    until(browser, lambda d: "'two' is not of type 'integer'" in d.find_element(By.CSS_SELECTOR, box).text, "the 422")
    values.clear()
    values.send_keys("[1, 2, 3]")
    click(browser, "#start-submit")
    until(browser, lambda d: "/ui/runs/" in d.current_url, "the new run's page")
    until(browser, lambda d: text_of(d, "result-value") == "12", "the run's result: 2 + 4 + 6")

    browser.get(f"{site(api)}/ui/flows/no-such-flow")
    assert "no worker has registered a flow named 'no-such-flow'" in text_of(browser, "flow-problem")


def test_each_task_run_links_to_its_celery_task_in_flower(
    api: ApiProcess, http: httpx.Client, browser: WebDriver, flower_url: str
) -> None:
    run = wait_final(http, submit(http, "chain-flow", parameters={"x": 5})["id"])
    tasks = http.get(f"/flow-runs/{run['id']}/task-runs").json()
    browser.get(f"{site(api)}/ui/runs/{run['id']}")
    links = until(
        browser,
        lambda d: (
            d.execute_script(
                "return [...document.querySelectorAll('#task-rows a.flower-link')].map(a => [a.textContent, a.href]);"
            )
            or None
        ),
        "the task runs linked",
    )
    assert sorted(links) == sorted([t["label"], f"{flower_url}/task/{t['id']}"] for t in tasks)
    for task in tasks:  # each link opens that very Celery task in Flower
        href = f"{flower_url}/task/{task['id']}"

        def shown(href: str = href) -> str | None:
            page = httpx.get(href, auth=FLOWER_LOGIN, timeout=15)
            return page.text if page.status_code == 200 else None

        page = eventually(shown, 60, interval=0.5, what=f"Flower's page of {task['label']}")
        assert task["task_name"] in page and task["id"] in page


def test_the_cli_renames_a_run_as_the_ui_does(api: ApiProcess, http: httpx.Client) -> None:
    """``orchestrator flow-run rename ID NAME``: the CLI's side of the rename action (PATCH /api/flow-runs/{id})."""
    run = wait_final(http, submit(http, "chain-flow", parameters={"x": 1})["id"])
    done = cli(api, "flow-run", "rename", run["id"][:8], "renamed-by-cli")
    assert done.returncode == 0, done.stderr
    assert f"flow run {run['id']} renamed renamed-by-cli" in done.stdout
    eventually(lambda: http.get(f"/flow-runs/{run['id']}").json()["name"] == "renamed-by-cli", 30, what="the name")
    refused = cli(api, "flow-run", "rename", run["id"], "")
    assert refused.returncode == 2 and "the new name is empty" in refused.stdout, refused


def test_the_start_form_gives_each_json_schema_type_its_field() -> None:
    """The field of each kind of parameter a flow can have, from the schema the SDK announces (no services)."""
    fields = {f.name: f for f in form_fields(parameters_schema(every_kind))}
    shown = {name: (f.kind, f.required, f.value) for name, f in fields.items()}
    assert shown == {
        "n": ("integer", True, ""),
        "mode": ("enum", False, '"fast"'),
        "color": ("enum", False, ""),  # an Enum member is no JSON: empty means the flow's default
        "on": ("boolean", False, "true"),
        "ratio": ("number", False, "0.5"),
        "tags": ("json", False, '[\n  "a"\n]'),
        "limit": ("json", False, "null"),
        "note": ("string", False, "<b>x</b>"),  # the template escapes it
    }
    assert fields["mode"].options == [('"fast"', "fast"), ('"slow"', "slow")]
    assert "the flow's default, <Color.RED: 'red'>" in fields["color"].hint
    assert fields["on"].options == [("true", "true"), ("false", "false")]
    assert fields["tags"].hint == "array of string (JSON)"
    assert fields["limit"].hint == "integer or null (JSON)"
