"""What keeps the run list fast on a large database, checked without timing anything.

The figures are in ``benchmarks/db_scale.py`` (100,000 flow runs, 1,000,000 task runs);
these tests catch the regressions that would undo them:

- the migrations create the indexes of the list's order and of a run tree's task runs
  (on SQLite, and on PostgreSQL when ORCHESTRATOR_TEST_DATABASE_URL names one);
- SQLite's plan for each list query walks one of them: no scan of the whole table and,
  for the filters an index covers, no sort of every match (``EXPLAIN QUERY PLAN`` does
  not depend on how many rows there are);
- a page still comes newest first with ties by id, ``total`` counts every match, and
  every answer says its server time (``Server-Timing``, which the benchmark reads).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, Select, inspect
from sqlmodel import Session, col, select

from api.db import engine_for, migrate
from api.models import FlowRun, TaskRun, in_run_tree
from api.run_list import RunFilters, count_query, page_ids_query, page_query
from api.timing import server_ms
from orchestrator.config.settings import reset_settings
from orchestrator.devstack.databases import fresh_postgres_database

LIST_INDEXES = {
    "ix_flow_run_created_id": ["created", "id", "name"],
    "ix_flow_run_state_created": ["state", "created", "id"],
    "ix_flow_run_flow_created": ["flow_name", "created", "id"],
    "ix_flow_run_deployment_created": ["deployment_id", "created", "id"],
    "ix_flow_run_ended": ["ended"],  # the retention service's walk, oldest end first
}
REPLACED = {"ix_flow_run_created", "ix_flow_run_state", "ix_flow_run_flow_name"}  # prefixes of the above
WEEK_AGO = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

# filters -> whether the page's ids come off the index already in order (no sort of all matches)
FILTERS = {
    "none": (RunFilters(), True),
    "one state": (RunFilters(states=["Failed"]), True),
    "one flow": (RunFilters(flow="etl"), True),
    "flow and state": (RunFilters(flow="etl", states=["Failed"]), True),
    "since": (RunFilters(since=WEEK_AGO), True),
    "since and until": (RunFilters(since=WEEK_AGO, until=WEEK_AGO + dt.timedelta(days=1)), True),
    "several states": (RunFilters(states=["Running", "Pending"]), False),  # one seek per state, then a sort
    "name": (RunFilters(name="nightly"), True),  # a substring: every name is read, on the index
    "parent": (RunFilters(parent="p"), False),  # a parent's few subflow runs, sorted
    "deployment": (RunFilters(deployment_id="d"), True),
    "deployment since": (RunFilters(deployment_id="d", since=WEEK_AGO), True),
}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'list.db'}"
    migrate(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite file, and a migrated PostgreSQL database when ORCHESTRATOR_TEST_DATABASE_URL names one."""
    admin_url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'any.db'}"
    elif not admin_url:
        pytest.skip("ORCHESTRATOR_TEST_DATABASE_URL is not set (a PostgreSQL URL to create test databases from)")
    else:
        with fresh_postgres_database(admin_url) as url:
            yield url
            engine_for(url).dispose()


def test_migrations_create_the_list_indexes(any_database_url: str) -> None:
    migrate(any_database_url)
    found = inspect(engine_for(any_database_url))
    flow_run = {ix["name"]: ix["column_names"] for ix in found.get_indexes("flow_run")}
    for name, columns in LIST_INDEXES.items():
        assert flow_run.get(name) == columns, (name, flow_run)
    assert not REPLACED & set(flow_run), "the single-column indexes are prefixes of the list's: one write more each"
    task_run = {ix["name"]: ix["column_names"] for ix in found.get_indexes("task_run")}
    assert task_run.get("ix_task_run_root_id") == ["root_id"], task_run
    assert task_run.get("ix_task_run_flow_run_id") == ["flow_run_id"], task_run


def sqlite_plan(connection: Connection, query: Select[Any] | Any) -> list[str]:
    """The lines of SQLite's plan for ``query`` (its parameters inlined)."""
    sql = str(query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
    return [str(row[3]) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]


def whole_table_scans(plan: list[str], table: str) -> list[str]:
    """Lines that read every row of ``table`` (a scan of a covering index is no such line)."""
    return [line for line in plan if line == f"SCAN {table}" or line.startswith(f"SCAN {table} USING INDEX")]


@pytest.mark.parametrize("case", list(FILTERS))
def test_each_list_query_walks_an_index(database_url: str, case: str) -> None:
    filters, in_order = FILTERS[case]
    with engine_for(database_url).connect() as connection:
        ids = sqlite_plan(connection, page_ids_query(filters, 100, 5000))
        count = sqlite_plan(connection, count_query(filters))
        page = sqlite_plan(connection, page_query(filters, 100, 5000))
    assert not whole_table_scans(ids, "flow_run"), ids
    if in_order:
        assert not [line for line in ids if "TEMP B-TREE" in line], f"{case}: every match sorted: {ids}"
    assert not whole_table_scans(count, "flow_run"), count
    assert any("USING INDEX sqlite_autoindex_flow_run_1 (id=?)" in line for line in page), page  # rows by id


def test_the_retention_pass_walks_finished_runs_by_their_end(database_url: str) -> None:
    """A batch of the server-wide policy reads the oldest ends first and stops: no scan of every run,
    no sort of every finished one (each pass of the services runs it, on a table that only grows).
    A per-flow or per-deployment override seeks that flow's or deployment's runs, then sorts them."""
    from api.services.retention import expired_query

    with engine_for(database_url).connect() as connection:
        plan = sqlite_plan(connection, expired_query(WEEK_AGO.timestamp(), 500))
        by_flow = sqlite_plan(connection, expired_query(WEEK_AGO.timestamp(), 500, col(FlowRun.flow_name) == "etl"))
    assert not whole_table_scans(plan, "flow_run"), plan
    assert any("ix_flow_run_ended" in line for line in plan), plan
    assert not [line for line in plan if "TEMP B-TREE" in line], plan
    assert not whole_table_scans(by_flow, "flow_run"), by_flow


def test_task_runs_of_a_tree_are_found_by_index(database_url: str) -> None:
    with engine_for(database_url).connect() as connection:
        plan = sqlite_plan(connection, select(TaskRun.id).where(in_run_tree("root-1")))
    assert not whole_table_scans(plan, "task_run"), plan
    assert any("ix_task_run_root_id" in line for line in plan), plan


def add_runs(url: str, rows: list[tuple[str, str, str, float]]) -> None:
    """Flow runs as (id, flow, state, created), with a plan each (which the list must not need)."""
    with Session(engine_for(url)) as session:
        for run_id, flow, state, created in rows:
            plan = {"nodes": [{"id": f"{run_id}-t"}]}
            name = f"{flow}-{run_id}"
            session.add(FlowRun(id=run_id, flow_name=flow, name=name, state=state, created=created, plan=plan))
        session.commit()


@pytest.fixture
def app(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The API's ASGI app (routes only, no services) on a fresh migrated SQLite file."""
    from api.app import create_app

    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", database_url)
    reset_settings()
    try:
        yield create_app(services=False)
    finally:
        reset_settings()


def get(app: Any, path: str, **params: Any) -> httpx.Response:
    """One GET straight into the ASGI app (no server process, no lifespan)."""

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.get(path, params=params)

    return asyncio.run(call())


def test_pages_come_newest_first_with_ties_by_id_and_count_every_match(app: Any, database_url: str) -> None:
    base = WEEK_AGO.timestamp()
    add_runs(
        database_url,
        [
            ("b", "etl", "Completed", base + 2),
            ("a", "etl", "Failed", base + 2),  # same time as b: a first
            ("c", "report", "Failed", base + 3),
            ("d", "etl", "Failed", base + 1),
            ("e", "etl", "Running", base + 4),
        ],
    )

    def ids(**params: Any) -> tuple[list[str], int]:
        response = get(app, "/api/flow-runs", **params)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]], response.json()["total"]

    assert ids() == (["e", "c", "a", "b", "d"], 5)
    assert ids(limit=2, offset=2) == (["a", "b"], 5)
    assert ids(offset=5) == ([], 5)
    assert ids(state="Failed") == (["c", "a", "d"], 3)
    assert ids(state=["Failed", "Running"], limit=2) == (["e", "c"], 4)
    assert ids(flow="etl", state="Failed") == (["a", "d"], 2)
    assert ids(since=dt.datetime.fromtimestamp(base + 2, dt.UTC).isoformat()) == (["e", "c", "a", "b"], 4)
    item = get(app, "/api/flow-runs", flow="report").json()["items"][0]
    assert item["name"] == "report-c" and "plan" not in item
    with Session(engine_for(database_url)) as session:  # the rows keep their plans: only the list leaves them
        kept = session.exec(select(FlowRun.plan).where(col(FlowRun.id) == "c")).one()
    assert kept == {"nodes": [{"id": "c-t"}]}


def test_every_answer_says_its_server_time(app: Any) -> None:
    listed = get(app, "/api/flow-runs")
    assert listed.status_code == 200 and listed.json()["total"] == 0
    refused = get(app, "/api/flow-runs", limit=0)
    assert refused.status_code == 422
    for response in (listed, refused):
        spent = server_ms(response.headers.get("server-timing"))
        assert spent is not None and spent >= 0, response.headers


def test_server_timing_is_read_from_a_header_with_other_metrics() -> None:
    assert server_ms("db;dur=3.5, app;dur=12.0;desc=orchestrator") == 12.0
    assert server_ms("db;dur=3.5") is None
    assert server_ms(None) is None
