"""Everyday use through the real API process and the real CLI: ids by any unique prefix, whole ids
in every table, ``--json`` on the listing commands, map children named by their labels in a run's
history, and ``/docs`` and ``/redoc`` that need nothing but the API itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from sqlmodel import Session

from api.db import engine_for
from api.id_prefix import prefix_query
from api.models import FlowRun
from orchestrator.devstack.localstack import ApiProcess, api_server
from tests import flows
from tests.api_support import api_database, cli, wait_final


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLite, and PostgreSQL too when ORCHESTRATOR_TEST_DATABASE_URL names one (a prefix is a range there)."""
    admin_url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    if request.param == "postgresql" and not admin_url:
        pytest.skip("ORCHESTRATOR_TEST_DATABASE_URL is not set (a PostgreSQL URL to create test databases from)")
    with api_database(tmp_path_factory.mktemp("ids-db"), admin_url if request.param == "postgresql" else None) as url:
        yield url


@pytest.fixture(scope="module")
def api(redis_url: str, database_url: str, fleet: subprocess.Popen[bytes], worker_logs: Path) -> Iterator[ApiProcess]:
    """The API with its recorder, on the session's Redis, next to the fleet worker."""
    with api_server(redis_url, database_url, log_path=worker_logs / "ids-api.log") as server:
        yield server


# ---- /docs and /redoc without internet ---------------------------------------------------------

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
JS_TYPES = ("application/javascript", "text/javascript")


def page_assets(base: str, page: str) -> tuple[str, list[str]]:
    """A docs page's HTML and every URL its script, stylesheet and icon tags name (absolute)."""
    response = httpx.get(f"{base}{page}")
    assert response.status_code == 200, response.text
    return response.text, [urljoin(f"{base}{page}", found) for found in ASSET.findall(response.text)]


def assert_served_here(base: str, page: str, api_port: int) -> None:
    """Every URL the page loads is on this API (same host and port) and answers 200 with its type."""
    html, urls = page_assets(base, page)
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, f"{page} names no script: {html[:500]}"
    for url in urls:
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == ("127.0.0.1", api_port), f"{page} loads {url} from elsewhere"
        fetched = httpx.get(url)
        assert fetched.status_code == 200, (url, fetched.status_code)
        kind = fetched.headers["content-type"]
        if url.endswith(".js"):
            assert kind.startswith(JS_TYPES) and len(fetched.content) > 100_000, (url, kind)
        elif url.endswith(".css"):
            assert kind.startswith("text/css"), (url, kind)
    assert "fonts.googleapis.com" not in html and "cdn.jsdelivr.net" not in html


def test_docs_pages_load_their_scripts_from_the_api(api: ApiProcess) -> None:
    base = f"http://127.0.0.1:{api.port}"
    for page in ("/docs", "/redoc"):
        assert_served_here(base, page, api.port)


def test_docs_assets_follow_the_root_path_and_need_no_key(redis_url: str, database_url: str, worker_logs: Path) -> None:
    env = {
        "ORCHESTRATOR_API_ROOT_PATH": "/orchestrator",
        "ORCHESTRATOR_API_KEY": "s3cret",
        "ORCHESTRATOR_API_SERVICES": "false",
    }
    with api_server(redis_url, database_url, log_path=worker_logs / "ids-docs.log", extra_env=env) as server:
        # behind a proxy that keeps the prefix in the path: every URL the page names carries it
        base = f"http://127.0.0.1:{server.port}/orchestrator"
        for page in ("/docs", "/redoc"):
            _, urls = page_assets(base, page)
            assert all(urlsplit(u).path.startswith("/orchestrator/") for u in urls), urls
            assert_served_here(base, page, server.port)
        # the files hold no data: open without the key, as the pages are; the data still is not
        direct = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{direct}/docs-assets/swagger-ui-bundle.js").status_code == 200
        assert httpx.get(f"{direct}/api/flow-runs").status_code == 401


# ---- ids by any unique prefix ------------------------------------------------------------------


def seed_runs(database_url: str, *run_ids: str) -> None:
    """Flow runs written straight into the API's database (ids chosen to share a prefix, which
    random ids almost never do): the API reads them like any recorded run."""
    with Session(engine_for(database_url)) as session:
        for run_id in run_ids:
            session.add(
                FlowRun(id=run_id, flow_name="seeded", name=f"seeded-{run_id[:8]}", state="Completed", created=1)
            )
        session.commit()


def test_a_unique_prefix_names_the_run_an_ambiguous_one_is_a_409_listing_them(
    database_url: str, api: ApiProcess, http: httpx.Client
) -> None:
    stem = f"0000{uuid.uuid4().hex[:4]}"
    first, second = f"{stem}-1111-4111-8111-111111111111", f"{stem}-2222-4222-8222-222222222222"
    seed_runs(database_url, first, second)

    assert http.get(f"/flow-runs/{stem}-1").json()["id"] == first
    assert http.get(f"/flow-runs/{stem.upper()}-2").json()["id"] == second  # as a document may show it
    assert http.get(f"/flow-runs/{first}").json()["id"] == first
    ambiguous = http.get(f"/flow-runs/{stem}")
    assert ambiguous.status_code == 409, ambiguous.text
    assert first in ambiguous.text and second in ambiguous.text and "give more of the id" in ambiguous.text
    missing = http.get(f"/flow-runs/{stem}-3")
    assert missing.status_code == 404 and "no flow run" in missing.text
    assert http.get(f"/flow-runs/{stem[:3]}").status_code == 404  # too short to be meant as an id
    assert http.get(f"/flow-runs/{stem}%25").status_code == 404  # a LIKE wildcard is a character here
    listed = http.get("/flow-runs", params={"parent": stem}).status_code
    assert listed == 409  # the parent filter takes a prefix too

    # every route that takes a run's id takes the prefix: they act on (and name) the whole id
    for route in ("", "/task-runs", "/states", "/graph", "/logs", "/diagnosis"):
        response = http.get(f"/flow-runs/{stem}-1{route}")
        assert response.status_code == 200, (route, response.text)
        assert http.get(f"/flow-runs/{stem}{route}").status_code == 409, route
    cancelled = http.post(f"/flow-runs/{stem}-1/cancel")
    assert cancelled.status_code == 409 and f"flow run {first} already ended" in cancelled.text

    # the CLI passes what it is given: the API's answer is its answer
    shown = cli(api, "flow-run", "inspect", f"{stem}-1")
    assert shown.returncode == 0 and first in shown.stdout, shown.stdout + shown.stderr
    refused = cli(api, "flow-run", "inspect", stem)
    assert refused.returncode == 2 and "ambiguous" in refused.stdout and second in refused.stdout


def test_prefix_lookup_walks_the_primary_key(database_url: str, api: ApiProcess) -> None:
    """A range on the key, not a LIKE: both databases read the index (PostgreSQL's LIKE needs a C collation)."""
    query = prefix_query(FlowRun, "d9d8e642", 6)
    with engine_for(database_url).connect() as connection:
        if connection.dialect.name == "sqlite":
            sql = str(query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
            plan = [str(row[3]) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
            assert any("sqlite_autoindex_flow_run_1 (id>? AND id<?)" in line for line in plan), plan
        else:  # a small table is cheaper to scan: forbid that, and see that the index can serve it
            connection.exec_driver_sql("SET enable_seqscan = off")
            compiled = query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})
            plan = [str(row[0]) for row in connection.exec_driver_sql(f"EXPLAIN {compiled}")]
            assert any("flow_run_pkey" in line for line in plan) and not any("Seq Scan" in p for p in plan), plan


# ---- whole ids in tables, labels in the history, --json --------------------------------------


def cli_in(api: ApiProcess, columns: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``orchestrator ARGS`` in a terminal ``columns`` wide."""
    env = os.environ.copy() | {"ORCHESTRATOR_API_URL": api.url, "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True, text=True, timeout=90
    )


def test_map_children_are_named_by_label_and_ids_are_never_cut(api: ApiProcess, http: httpx.Client) -> None:
    run = flows.map_upstream_flow.delay(n=3)
    assert wait_final(http, run.id)["state"] == "Completed"
    children = {f"double-0[{i}]" for i in range(3)}

    states = http.get(f"/flow-runs/{run.id}/states").json()
    by_label = {s["label"] for s in states if s["kind"] == "task_run"}
    assert children <= by_label, by_label
    name = http.get(f"/flow-runs/{run.id}").json()["name"]
    assert {s["label"] for s in states if s["run_id"] == run.id} == {name}

    shown = cli_in(api, 80, "flow-run", "inspect", run.id[:8])
    assert shown.returncode == 0, shown.stdout + shown.stderr
    history = shown.stdout[shown.stdout.index("state history") :]
    assert all(child in history for child in children), history

    listed = cli_in(api, 80, "flow-run", "ls", "--limit", "5")
    assert listed.returncode == 0 and run.id in listed.stdout, listed.stdout  # whole, in 80 columns


def test_listing_commands_print_the_apis_json(api: ApiProcess, http: httpx.Client) -> None:
    run = flows.chain_flow.delay(x=1)
    assert wait_final(http, run.id)["state"] == "Completed"
    tag = f"json{uuid.uuid4().hex[:6]}"
    assert http.post("/concurrency-limits", json={"tag": tag, "limit": 2}).status_code == 200
    deployment = {"name": f"dep-{tag}", "flow_name": "chain-flow", "paused": True}
    assert http.post("/deployments", json=deployment).status_code == 201

    def as_json(*args: str) -> object:
        done = cli_in(api, 40, *args, "--json")  # narrow: JSON is never wrapped to the terminal
        assert done.returncode == 0, done.stdout + done.stderr
        assert "\x1b" not in done.stdout  # no Rich colours or markup
        return json.loads(done.stdout)

    page = as_json("flow-run", "ls", "--limit", "50")
    assert set(page) == {"items", "total", "limit", "offset"} and run.id in {r["id"] for r in page["items"]}
    inspected = as_json("flow-run", "inspect", run.id[:8])
    assert inspected["run"]["id"] == run.id
    assert {t["label"] for t in inspected["task_runs"]} == {
        t["label"] for t in http.get(f"/flow-runs/{run.id}/task-runs").json()
    }
    assert inspected["states"] == http.get(f"/flow-runs/{run.id}/states").json()
    assert deployment["name"] in {d["name"] for d in as_json("deployment", "ls")}
    limits = as_json("concurrency-limit", "ls")
    assert {"tag": tag, "limit": 2} in [{"tag": x["tag"], "limit": x["limit"]} for x in limits]
    assert as_json("concurrency-limit", "inspect", tag)["tag"] == tag
    assert "chain-flow" in {f["name"] for f in as_json("flow", "ls")}
    assert any("default" in w["queues"] for w in as_json("worker", "ls"))
