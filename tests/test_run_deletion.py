"""``DELETE /api/flow-runs/{id}`` and ``orchestrator flow-run delete`` through a real API process and a
real worker: a deleted run's rows and Redis keys are gone, other runs are untouched; a run under way
is refused (409) and one never sent is deleted at once; Redis away is a 503 that changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, or_, text
from sqlmodel import Session, col, select

from api.db import engine_for
from api.models import FlowRun, LogLine, StateEvent, TaskRun
from orchestrator.devstack.localstack import ApiProcess, api_server, free_port
from tests.api_support import api_database, cli, eventually, submit, wait_final


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLite, or a fresh PostgreSQL database when ORCHESTRATOR_TEST_DATABASE_URL names one."""
    with api_database(tmp_path_factory.mktemp("deletion"), os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")) as url:
        yield url


@pytest.fixture(scope="module")
def api(redis_url: str, database: str, fleet: subprocess.Popen[bytes], worker_logs: Path) -> Iterator[ApiProcess]:
    with api_server(redis_url, database, log_path=worker_logs / "deletion-api.log") as server:
        yield server


@pytest.fixture(scope="module")
def rds(redis_url: str) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def rows_of(database: str, run_id: str) -> dict[str, int]:
    """How many rows of each table belong to this flow run (read from the API's database)."""
    with Session(engine_for(database)) as session:

        def count(table: Any, *where: Any) -> int:
            return int(session.exec(select(func.count()).select_from(table).where(*where)).one())

        return {
            "flow_run": count(FlowRun, col(FlowRun.id) == run_id),
            "task_run": count(TaskRun, col(TaskRun.flow_run_id) == run_id),
            "state_event": count(StateEvent, or_(StateEvent.run_id == run_id, StateEvent.flow_run_id == run_id)),
            "log_line": count(LogLine, col(LogLine.flow_run_id) == run_id),
        }


def redis_keys_of(rds: Any, ids: list[str]) -> list[str]:
    """Every key of the run store that names one of these ids."""
    return sorted({key for some in ids for key in rds.scan_iter(f"*{some}*", count=1000)})


def finished(http: httpx.Client, flow: str, **parameters: Any) -> tuple[str, list[str]]:
    """A run of ``flow`` that completed, with its task run ids, once its log lines are recorded too."""
    run_id = submit(http, flow, parameters=parameters)["id"]
    assert wait_final(http, run_id, timeout=90)["state"] == "Completed"
    tasks = [t["id"] for t in http.get(f"/flow-runs/{run_id}/task-runs").json()]
    return run_id, tasks


def test_delete_removes_the_run_everywhere_and_leaves_other_runs_alone(
    api: ApiProcess, http: httpx.Client, database: str, rds: Any
) -> None:
    doomed, doomed_tasks = finished(http, "logging-flow")
    kept, kept_tasks = finished(http, "logging-flow")
    for run_id in (doomed, kept):  # chatty logs three lines: recorded shortly after the run's end
        eventually(lambda r=run_id: len(http.get(f"/flow-runs/{r}/logs").json()) >= 3, 30, what="log lines recorded")
    before = rows_of(database, doomed)
    assert before["task_run"] == 1 and before["state_event"] >= 5 and before["log_line"] >= 3, before
    assert redis_keys_of(rds, [doomed, *doomed_tasks]), "the run left nothing in Redis to remove"
    kept_rows, kept_keys = rows_of(database, kept), redis_keys_of(rds, [kept, *kept_tasks])

    response = http.delete(f"/flow-runs/{doomed[:8]}")  # a unique prefix names it, as everywhere
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["id"] == doomed and done["flow_runs"] == [doomed], done
    assert done["task_runs"] == 1 and done["state_events"] == before["state_event"], done
    assert done["log_lines"] == before["log_line"] and done["redis_keys"] > 0 and done["results"] is None, done

    assert rows_of(database, doomed) == {"flow_run": 0, "task_run": 0, "state_event": 0, "log_line": 0}
    assert redis_keys_of(rds, [doomed, *doomed_tasks]) == []
    assert http.get(f"/flow-runs/{doomed}").status_code == 404
    assert http.delete(f"/flow-runs/{doomed}").status_code == 404
    assert rows_of(database, kept) == kept_rows  # the other run: every row and key still there
    assert redis_keys_of(rds, [kept, *kept_tasks]) == kept_keys
    assert http.get(f"/flow-runs/{kept}/result").json() == 3

    metrics = httpx.get(api.url.removesuffix("/api") + "/metrics").text
    assert 'orchestrator_flow_runs_deleted_total{reason="request"} 1.0' in metrics, metrics


def test_cli_delete_asks_first_and_removes_persisted_results_when_told(
    api: ApiProcess, http: httpx.Client, database: str
) -> None:
    run_id, tasks = finished(http, "kept-flow")
    stored = Path(os.environ["ORCHESTRATOR_RESULT_STORAGE"]) / f"{tasks[0]}.json"
    assert stored.exists()

    env = os.environ.copy() | {"ORCHESTRATOR_API_URL": api.url, "COLUMNS": "200"}
    declined = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "flow-run", "delete", run_id],
        env=env, input="n\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert declined.returncode == 1 and "Delete flow run" in declined.stdout and "Completed" in declined.stdout
    assert rows_of(database, run_id)["flow_run"] == 1 and stored.exists()

    done = cli(api, "flow-run", "delete", run_id, "--yes", "--results")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"flow run {run_id} deleted with 1 task runs" in done.stdout and "1 persisted results" in done.stdout
    assert not stored.exists() and rows_of(database, run_id)["flow_run"] == 0

    missing = cli(api, "flow-run", "delete", run_id, "--yes")
    assert missing.returncode == 2 and "no flow run" in missing.stdout, missing.stdout


def test_a_run_under_way_is_refused_and_a_run_never_sent_is_deleted_at_once(
    api: ApiProcess, http: httpx.Client, database: str
) -> None:
    running = submit(http, "api-sleepy-flow", parameters={"seconds": 60, "width": 1})["id"]
    eventually(lambda: http.get(f"/flow-runs/{running}").json()["state"] == "Running", 30, what="Running")
    refused = http.delete(f"/flow-runs/{running}")
    assert refused.status_code == 409 and "is Running" in refused.text and "cancel it first" in refused.text
    said = cli(api, "flow-run", "delete", running, "--yes")
    assert said.returncode == 2 and "cancel it first" in said.stdout, said.stdout
    assert rows_of(database, running)["flow_run"] == 1

    assert http.post(f"/flow-runs/{running}/cancel").status_code == 202
    assert wait_final(http, running, timeout=30)["state"] == "Cancelled"
    assert http.delete(f"/flow-runs/{running}").status_code == 200

    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    scheduled = submit(http, "chain-flow", parameters={"x": 1}, scheduled_start=later)["id"]
    assert http.get(f"/flow-runs/{scheduled}").json()["state"] == "Scheduled"
    gone = http.delete(f"/flow-runs/{scheduled}")
    assert gone.status_code == 200 and gone.json()["flow_runs"] == [scheduled], gone.text
    assert rows_of(database, scheduled) == {"flow_run": 0, "task_run": 0, "state_event": 0, "log_line": 0}


def test_a_parent_goes_with_its_subflow_runs_which_are_not_deleted_alone(
    http: httpx.Client, database: str, rds: Any
) -> None:
    parent, _ = finished(http, "parent-flow")
    children = [r["id"] for r in http.get("/flow-runs", params={"parent": parent}).json()["items"]]
    assert len(children) == 3, children
    refused = http.delete(f"/flow-runs/{children[0]}")
    assert refused.status_code == 409 and f"DELETE /api/flow-runs/{parent}" in refused.text, refused.text

    done = http.delete(f"/flow-runs/{parent}").json()
    assert sorted(done["flow_runs"]) == sorted([parent, *children]) and done["task_runs"] >= 3, done
    for run_id in (parent, *children):
        assert http.get(f"/flow-runs/{run_id}").status_code == 404
        assert rows_of(database, run_id) == {"flow_run": 0, "task_run": 0, "state_event": 0, "log_line": 0}
    assert redis_keys_of(rds, [parent, *children]) == []


def test_redis_away_is_a_503_that_deletes_nothing(http: httpx.Client, database: str, worker_logs: Path) -> None:
    run_id, _ = finished(http, "chain-flow", x=2)
    before = rows_of(database, run_id)
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with api_server(
        nowhere, database, log_path=worker_logs / "deletion-no-redis-api.log",
        extra_env={"ORCHESTRATOR_API_SERVICES": "false"},
    ) as lost:  # fmt: skip
        response = httpx.delete(f"{lost.url}/flow-runs/{run_id}", timeout=30)
    assert response.status_code == 503 and "cannot reach Redis" in response.text, response.text
    assert rows_of(database, run_id) == before
    assert http.get(f"/flow-runs/{run_id}/result").json() == 8


def test_the_database_keeps_only_what_differs_and_shows_the_same(http: httpx.Client, database: str) -> None:
    """The byte cuts (benchmarks/db_bytes.py): a plan node without the defaults a reader assumes, a task
    run's root only on a subflow's task runs, JSON without spaces; /graph and /task-runs answer as before."""
    parent, _ = finished(http, "parent-flow")
    children = {r["id"] for r in http.get("/flow-runs", params={"parent": parent}).json()["items"]}
    with Session(engine_for(database)) as session:
        plan = session.exec(select(FlowRun.plan).where(FlowRun.id == parent)).one()
        raw = session.execute(text("SELECT plan FROM flow_run WHERE id = :id"), {"id": parent}).scalar_one()
        roots = dict(session.exec(select(TaskRun.id, TaskRun.root_id).where(col(TaskRun.flow_run_id) == parent)).all())
        sub_roots = set(session.exec(select(TaskRun.root_id).where(col(TaskRun.flow_run_id).in_(children))).all())
    assert plan is not None and '": ' not in str(raw) and '", "' not in str(raw), raw
    assert all("queue" not in n and "trigger" not in n and n.get("kind") != "task" for n in plan["nodes"]), plan
    assert {n.get("flow_run_id") for n in plan["nodes"]} == {None} | children, plan
    assert roots and set(roots.values()) == {""}, roots  # its own task runs: found by flow_run_id
    assert sub_roots == {parent}, sub_roots  # its subflows' task runs carry it as their root

    tree = http.get(f"/flow-runs/{parent}/task-runs").json()
    assert {t["flow_run_id"] for t in tree} == {parent} | children, tree
    graph = http.get(f"/flow-runs/{parent}/graph").json()["nodes"]
    assert {n["flow_run_id"] for n in graph} == {parent} | children and {n["kind"] for n in graph} >= {"task"}
    assert all(n["state"] == "Completed" for n in graph), graph
    upstream = [n for n in graph if n["upstream"]]
    assert upstream and all(set(n["upstream"]) <= {m["id"] for m in graph} for n in upstream), graph
