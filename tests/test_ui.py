"""The web UI in a real browser: Debian's headless Chromium, driven through its chromedriver.

Against real processes: the fleet worker runs ``tests/flows.py``, the API (``python -m
api.server``) records the runs and serves ``/ui``. Nothing downloads a browser: the driver
is named by path (``Service``), so Selenium Manager never runs. ``scripts/setup.sh --dev``
installs ``chromium`` and ``chromium-driver`` where they are missing; without them the
tests skip locally and fail in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait
from sqlmodel import Session

from api.db import engine_for
from api.models import FlowRun
from orchestrator.devstack.localstack import ApiProcess, api_server, free_port
from tests.api_support import api_database, submit, wait_final

WAIT = 60  # an upper bound for the slow shared machine, not a timing assertion


def browser_paths() -> tuple[str, str]:
    """Debian's chromium and chromedriver, or a skip (a failure in CI) naming how to install them."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    why = "chromium and chromedriver are needed: scripts/setup.sh --dev installs them (apt-get)"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One headless Chromium for the module (each API runs on its own port: cookies do not mix)."""
    binary, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_window_size(1280, 900)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def api(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, fleet: subprocess.Popen[bytes], worker_logs: Path
) -> Iterator[ApiProcess]:
    """The API with its recorder on an SQLite file, next to the fleet worker."""
    with (
        api_database(tmp_path_factory.mktemp("ui-db"), None) as url,
        api_server(redis_url, url, log_path=worker_logs / "ui-api.log") as server,
    ):
        yield server


@pytest.fixture
def http(api: ApiProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=15) as client:
        yield client


def site(api: ApiProcess) -> str:
    return f"http://127.0.0.1:{api.port}"


def until(driver: WebDriver, check: Callable[[WebDriver], Any], what: str) -> Any:
    """Poll ``check`` until it is truthy. The script re-draws the tables every few seconds: an element
    found just before a re-draw is gone a moment later (stale), and the check is simply asked again.
    Chromedriver reports some of those as a plain WebDriverException ("Node with given id does not
    belong to the document"): that one is asked again too; any other error still fails the test."""

    def asked_again_when_stale(d: WebDriver) -> Any:
        try:
            return check(d)
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc.msg):
                return False
            raise

    waiting = WebDriverWait(driver, WAIT, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))
    return waiting.until(asked_again_when_stale, message=what)


def text_of(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def row_of(driver: WebDriver, run_id: str) -> list[str] | None:
    """The text of each cell of the run's row in the list (read in one go: the script may re-draw it), or None."""
    cells: list[str] | None = driver.execute_script(
        "const row = [...document.querySelectorAll('#run-rows tr')].find(r => r.dataset.runId === arguments[0]);"
        "return row ? [...row.cells].map(c => c.textContent.trim()) : null;",
        run_id,
    )
    return cells


def texts(driver: WebDriver, selector: str) -> list[str]:
    """The text of every element the selector finds, read in one go."""
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent);", selector
    )
    return found


def click(driver: WebDriver, selector: str) -> None:
    """Click what the selector finds (again, if the script re-drew it between finding and clicking)."""

    def clicked(d: WebDriver) -> bool:
        d.find_element(By.CSS_SELECTOR, selector).click()
        return True

    until(driver, clicked, f"a click on {selector}")


def refreshed(driver: WebDriver) -> bool:
    """The page's script has read the API at least once (it says so under the page)."""
    return text_of(driver, "live-status").startswith(("Live: updated", "The run ended"))


def keep_screenshot(driver: WebDriver, name: str) -> None:
    """With ORCHESTRATOR_UI_SCREENSHOTS=<folder> (docs/images for the README), save what the page shows."""
    folder = os.environ.get("ORCHESTRATOR_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def assert_no_alert(driver: WebDriver) -> None:
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return
    shown = alert.text
    alert.dismiss()
    raise AssertionError(f"the page ran injected script: an alert says {shown!r}")


def test_the_server_prints_where_the_ui_is(api: ApiProcess, worker_logs: Path) -> None:
    """``orchestrator server start`` runs ``python -m api.server``: its banner names the UI's URL."""
    assert f"web UI at http://127.0.0.1:{api.port}/ui" in (worker_logs / "ui-api.log").read_text()


def test_list_shows_a_finished_run_and_the_state_filter_hides_and_shows_it(
    api: ApiProcess, http: httpx.Client, browser: WebDriver
) -> None:
    name = f"ui-list-{uuid.uuid4().hex[:8]}"
    run = wait_final(http, submit(http, "chain-flow", name=name)["id"])
    assert run["state"] == "Completed", run

    browser.get(f"{site(api)}/ui?name={name}")
    cells = until(browser, lambda d: row_of(d, run["id"]), "the finished run in the list")
    assert cells[0] == "Completed" and cells[1] == "chain-flow" and cells[2] == name, cells
    assert cells[4] and cells[5] and cells[6] == "default" and cells[7] == "1", cells  # start, duration, queue
    until(browser, refreshed, "a live refresh")
    keep_screenshot(browser, "ui-runs.png")

    Select(browser.find_element(By.ID, "filter-state")).select_by_value("Failed")
    browser.find_element(By.ID, "filter-apply").click()
    until(browser, lambda d: "state=Failed" in d.current_url, "the filtered page")
    assert row_of(browser, run["id"]) is None
    assert text_of(browser, "run-count") == "No flow runs match."
    until(browser, refreshed, "a live refresh of the filtered list")
    assert row_of(browser, run["id"]) is None  # the script reads the same filter

    Select(browser.find_element(By.ID, "filter-state")).select_by_value("Completed")
    browser.find_element(By.ID, "filter-apply").click()
    until(browser, lambda d: "state=Completed" in d.current_url, "the page filtered by Completed")
    assert row_of(browser, run["id"]) is not None
    until(browser, refreshed, "a live refresh")
    assert row_of(browser, run["id"]) is not None

    click(browser, f'#run-rows tr[data-run-id="{run["id"]}"] a.run-link')
    until(browser, lambda d: d.current_url.endswith(f"/ui/runs/{run['id']}"), "the run's page")
    until(browser, lambda d: not d.find_element(By.ID, "result").get_attribute("hidden"), "the result shown")
    assert text_of(browser, "result-value") == json.dumps(http.get(f"/flow-runs/{run['id']}/result").json(), indent=2)


def test_a_failed_run_shows_its_root_cause_task_and_traceback_at_the_top(
    api: ApiProcess, http: httpx.Client, browser: WebDriver
) -> None:
    run = wait_final(http, submit(http, "failing-flow")["id"])
    assert run["state"] == "Failed", run

    browser.get(f"{site(api)}/ui/runs/{run['id']}")
    until(browser, lambda d: not d.find_element(By.ID, "root-cause").get_attribute("hidden"), "the root cause shown")
    assert text_of(browser, "run-state") == "Failed"
    assert text_of(browser, "root-cause-task") == "explode-0"  # not inc-0, the UpstreamFailed leaf
    assert "ValueError: boom" in text_of(browser, "root-cause-message")
    traceback = text_of(browser, "root-cause-traceback")
    assert "Traceback" in traceback and "ValueError: boom" in traceback and "explode" in traceback, traceback
    assert "1 did not run because of it" in text_of(browser, "root-cause-more")
    # the root cause comes before the task runs on the page
    sections = [s.get_attribute("id") for s in browser.find_elements(By.CSS_SELECTOR, "#run > section")]
    assert sections.index("root-cause") == 0, sections
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#task-rows tr")) == 2, "both task runs listed")
    keep_screenshot(browser, "ui-failed-run.png")


def test_a_run_page_takes_a_unique_prefix_and_says_when_no_run_is_recorded(api: ApiProcess, http: httpx.Client) -> None:
    run = wait_final(http, submit(http, "chain-flow")["id"])
    page = httpx.get(f"{site(api)}/ui/runs/{run['id'][:8]}", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == f"/ui/runs/{run['id']}"
    missing = httpx.get(f"{site(api)}/ui/runs/{uuid.uuid4()}")
    assert missing.status_code == 404 and "No such flow run" in missing.text
    shown = httpx.get(f"{site(api)}/ui/runs/{run['id']}")
    assert shown.status_code == 200 and "script-src 'self'" in shown.headers["content-security-policy"]


def release(redis_url: str, marker: str) -> None:
    """Lets ``held-flow``'s task with this marker end (it runs until this key exists)."""
    with redis.Redis.from_url(redis_url) as client:
        client.set(f"test:release:{marker}", 1, ex=300)


def open_held_run(api: ApiProcess, http: httpx.Client, browser: WebDriver) -> str:
    """Submit a ``held-flow`` run (its task runs until :func:`release`), open its page once it is
    recorded and mark the document (``window.__sameDocument``, gone if the page reloads); its marker."""
    marker = uuid.uuid4().hex
    run_id = submit(http, "held-flow", parameters={"marker": marker})["id"]
    until(browser, lambda _: http.get(f"/flow-runs/{run_id}").status_code == 200, "the run recorded")
    browser.get(f"{site(api)}/ui/runs/{run_id}")
    browser.execute_script("window.__sameDocument = 'yes';")
    return marker


def test_a_running_run_turns_completed_on_the_page_without_a_reload(
    api: ApiProcess, http: httpx.Client, browser: WebDriver, redis_url: str
) -> None:
    marker = open_held_run(api, http, browser)
    until(browser, lambda d: text_of(d, "run-state") == "Running", "the run shown Running")
    task_state = "#task-rows tr td:nth-child(2) .state"
    until(browser, lambda d: texts(d, task_state) == ["Running"], "its task shown Running")
    until(browser, lambda d: not d.find_element(By.ID, "diagnosis").get_attribute("hidden"), "its diagnosis shown")

    release(redis_url, marker)
    until(browser, lambda d: text_of(d, "run-state") == "Completed", "the run shown Completed")
    done = ["Completed"]
    until(browser, lambda d: texts(d, task_state) == done, "the task shown Completed")
    assert browser.execute_script("return window.__sameDocument;") == "yes"  # no reload happened
    until(browser, lambda d: text_of(d, "result-value") == '"released"', "the result shown")
    assert browser.find_element(By.ID, "diagnosis").get_attribute("hidden")  # nothing waits any more


def test_a_run_named_like_a_script_is_shown_as_text(api: ApiProcess, http: httpx.Client, browser: WebDriver) -> None:
    name = f"<script>alert(1)</script><img src=x onerror=alert(2)> {uuid.uuid4().hex[:6]}"
    run = wait_final(http, submit(http, "chain-flow", name=name, parameters={"x": 3})["id"])

    browser.get(f"{site(api)}/ui?name={name.split()[-1]}")
    assert until(browser, lambda d: texts(d, "#run-rows a.run-link"), "the run listed") == [name]
    until(browser, refreshed, "the list re-drawn by the script")
    assert texts(browser, "#run-rows a.run-link") == [name]
    assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script")
    assert_no_alert(browser)

    browser.get(f"{site(api)}/ui/runs/{run['id']}")
    until(browser, refreshed, "the run page re-drawn by the script")
    assert text_of(browser, "run-name") == name
    assert name in browser.title
    history = until(browser, lambda d: texts(d, "#history-rows td"), "the state history")
    assert name in history, history
    assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script")
    assert_no_alert(browser)


# ---- with an API key, and behind a path prefix ------------------------------------------------


def seed_run(database_url: str, name: str) -> str:
    """A finished flow run written straight into the API's database (the API below records nothing)."""
    run_id = str(uuid.uuid4())
    with Session(engine_for(database_url)) as session:
        session.add(
            FlowRun(id=run_id, flow_name="seeded", name=name, state="Completed", created=time.time(), queue="default")
        )
        session.commit()
    return run_id


def test_with_an_api_key_the_ui_asks_for_it_once_then_shows_the_list(
    redis_url: str, tmp_path: Path, worker_logs: Path, browser: WebDriver
) -> None:
    env = {"ORCHESTRATOR_API_KEY": "s3cret-ui", "ORCHESTRATOR_API_SERVICES": "false"}
    with (
        api_database(tmp_path, None) as url,
        api_server(redis_url, url, log_path=worker_logs / "ui-key.log", extra_env=env) as server,
    ):
        run_id = seed_run(url, "keyed-run")
        browser.get(f"{site(server)}/ui")
        until(browser, lambda d: d.current_url.endswith("/ui/login"), "the login form")
        assert "keyed-run" not in browser.page_source
        browser.get(f"{site(server)}/ui/runs/{run_id}")
        until(browser, lambda d: d.current_url.endswith("/ui/login"), "the login form for a run's page too")

        browser.find_element(By.ID, "login-key").send_keys("wrong")
        browser.find_element(By.ID, "login-submit").click()
        assert "not this server's key" in until(browser, lambda d: d.find_element(By.ID, "login-problem"), "").text

        browser.find_element(By.ID, "login-key").send_keys("s3cret-ui")
        browser.find_element(By.ID, "login-submit").click()
        until(browser, lambda d: row_of(d, run_id), "the list after logging in")
        until(browser, refreshed, "the script reading the JSON API with the cookie")
        assert row_of(browser, run_id) is not None
        assert "orchestrator_ui" not in browser.execute_script("return document.cookie;")  # HttpOnly

        cookie = browser.get_cookie("orchestrator_ui")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        jar = {"orchestrator_ui": cookie["value"]}
        assert "s3cret-ui" not in cookie["value"]
        api_url = f"{site(server)}/api"
        assert httpx.get(f"{api_url}/flow-runs").status_code == 401  # nothing readable without it
        assert httpx.get(f"{site(server)}/ui", follow_redirects=False).status_code == 303
        assert httpx.get(f"{api_url}/flow-runs", cookies=jar).status_code == 200
        # the cookie opens reads only: no write is done on a cookie alone
        assert httpx.post(f"{api_url}/flow-runs/{run_id}/retry", cookies=jar).status_code == 401

        browser.find_element(By.ID, "logout").click()  # and logging out forgets it
        until(browser, lambda d: d.current_url.endswith("/ui/login"), "the login form after logging out")
        assert browser.get_cookie("orchestrator_ui") is None
        browser.get(f"{site(server)}/ui")
        until(browser, lambda d: d.current_url.endswith("/ui/login"), "the list asking for the key again")


class StripPrefixProxy:
    """A reverse proxy in a thread: ``/orch/...`` on its port goes to ``/...`` on the API's."""

    def __init__(self, prefix: str, upstream_port: int) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.forward(self)

            def do_POST(self) -> None:
                owner.forward(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.prefix = prefix
        self.upstream_port = upstream_port
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{prefix}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        if not handler.path.startswith(self.prefix + "/"):
            handler.send_error(404, "not under the proxy's prefix")
            return
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else None
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in {"connection", "keep-alive"}}
        upstream = HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        try:
            upstream.request(handler.command, handler.path[len(self.prefix) :], body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        handler.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in {"connection", "keep-alive", "transfer-encoding", "content-length"}:
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def __enter__(self) -> StripPrefixProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_behind_a_proxy_with_a_path_prefix_every_page_link_and_script_works(
    redis_url: str, tmp_path: Path, worker_logs: Path, browser: WebDriver
) -> None:
    env = {"ORCHESTRATOR_API_ROOT_PATH": "/orch", "ORCHESTRATOR_API_SERVICES": "false"}
    with (
        api_database(tmp_path, None) as url,
        api_server(redis_url, url, log_path=worker_logs / "ui-prefix.log", extra_env=env) as server,
        StripPrefixProxy("/orch", server.port) as proxy,
    ):
        run_id = seed_run(url, "behind-a-proxy")
        browser.get(f"{proxy.url}/ui")
        until(browser, lambda d: row_of(d, run_id), "the list through the proxy")
        until(browser, refreshed, "the script (loaded through the proxy) reading the API through it")
        for attribute, selector in (("href", "a"), ("src", "script"), ("href", "link"), ("action", "form")):
            targets = browser.execute_script(  # as the browser resolved them, read in one go
                "return [...document.querySelectorAll(arguments[0])].map(e => e[arguments[1]]);", selector, attribute
            )
            assert targets, selector
            for target in targets:
                assert target and target.startswith(proxy.url + "/"), (selector, target)
        click(browser, f'#run-rows tr[data-run-id="{run_id}"] a.run-link')
        until(browser, lambda d: d.current_url == f"{proxy.url}/ui/runs/{run_id}", "the run's page through the proxy")
        until(browser, refreshed, "the run page's script reading the API through the proxy")
        assert text_of(browser, "run-state") == "Completed"
        assert text_of(browser, "run-name") == "behind-a-proxy"
