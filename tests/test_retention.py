"""Retention: finished runs past their limit are deleted in batches, recent and unfinished ones kept,
deployment and flow overrides honoured; through a real API process, its services loop deletes what
time has aged (rows and Redis keys) and counts it in /metrics."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import update
from sqlmodel import Session, col, select

from api.db import engine_for, migrate
from api.models import Deployment, FlowRun, LogLine, StateEvent, TaskRun
from api.services.retention import Policy, apply_retention
from orchestrator.devstack.localstack import ApiProcess, api_server
from orchestrator.runstate import keys
from orchestrator.runstate.store import RunStore
from tests.api_support import api_database, cli, eventually, submit, wait_final

DAY = 86400.0


def new_run(
    session: Session,
    flow: str,
    *,
    ended_days_ago: float | None,
    state: str = "Completed",
    deployment_id: str | None = None,
    parent: FlowRun | None = None,
    own_root: bool = False,
) -> FlowRun:
    """A flow run row as the recorder leaves it (ended ``ended_days_ago``; None: still under way)."""
    now = time.time()
    run_id = str(uuid.uuid4())
    ended = None if ended_days_ago is None else now - ended_days_ago * DAY
    root = run_id if parent is None or own_root else (parent.root_id or parent.id)
    row = FlowRun(
        id=run_id, flow_name=flow, name=f"{flow}-{run_id[:6]}", state=state, created=(ended or now) - 60,
        started=(ended or now) - 50, ended=ended, deployment_id=deployment_id,
        parent_id=parent.id if parent else None, root_id=root,
    )  # fmt: skip
    session.add(row)
    return row


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite file, or a fresh PostgreSQL database when ORCHESTRATOR_TEST_DATABASE_URL names one."""
    with api_database(tmp_path, os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")) as url:
        migrate(url)
        yield url
        engine_for(url).dispose()  # PostgreSQL: no connection left to the database being dropped


def test_a_pass_deletes_a_batch_of_old_finished_runs_and_honours_overrides(database: str, redis_url: str) -> None:
    store = RunStore(redis_url)
    policy = Policy(days=2, by_flow={"long-lived": 10})
    with Session(engine_for(database)) as session:
        monthly = Deployment(id="d-30", name="monthly", flow_name="etl", created=0, updated=0, retention_days=30)
        brief = Deployment(id="d-1", name="brief", flow_name="long-lived", created=0, updated=0, retention_days=1)
        session.add_all([monthly, brief])
        doomed = [new_run(session, "etl", ended_days_ago=3 + i) for i in range(4)]
        doomed.append(new_run(session, "long-lived", ended_days_ago=11))  # past its flow's 10 days
        doomed.append(new_run(session, "etl", ended_days_ago=31, deployment_id="d-30"))  # past its deployment's 30
        doomed.append(new_run(session, "long-lived", ended_days_ago=3, deployment_id="d-1"))  # deployment wins
        parent = new_run(session, "etl", ended_days_ago=5, state="Failed")
        doomed.append(parent)
        traced = new_run(session, "child", ended_days_ago=5, parent=parent)  # goes with its parent
        kept = [
            new_run(session, "etl", ended_days_ago=1),  # recent
            new_run(session, "etl", ended_days_ago=None, state="Running"),  # under way
            new_run(session, "long-lived", ended_days_ago=3),  # its flow keeps 10 days
            new_run(session, "etl", ended_days_ago=3, deployment_id="d-30"),  # its deployment keeps 30
        ]
        busy_parent = new_run(session, "etl", ended_days_ago=6, state="Cancelled")
        busy_child = new_run(session, "etl", ended_days_ago=None, state="Running", parent=busy_parent, own_root=True)
        kept += [busy_parent, busy_child]  # a run of its own still under way keeps its parent's tree
        session.commit()
        target = doomed[0].id
        task_id = f"{target}-task"
        session.add(TaskRun(id=task_id, flow_run_id=target, root_id=target, state="Completed"))
        session.add(StateEvent(event_id=f"e-{target}", kind="task_run", run_id=task_id, flow_run_id=target,
                               state="Completed", ts=1, recorded=1))  # fmt: skip
        session.add(LogLine(event_id=f"l-{target}", flow_run_id=target, task_run_id=task_id, message="hi", ts=1))
        session.add(TaskRun(id=f"{traced.id}-task", flow_run_id=traced.id, root_id=parent.id, state="Completed"))
        session.commit()
        doomed_ids, kept_ids = {r.id for r in doomed} | {traced.id}, {r.id for r in kept}
    store.redis.hset(keys.flow_run(target), "state", "Completed")
    store.redis.hset(keys.task_run(task_id), "state", "Completed")
    store.redis.set(keys.result(task_id), "1")
    store.redis.sadd(keys.flow_tasks(target), task_id)

    passes = []
    for _ in range(6):
        done = apply_retention(engine_for(database), store, policy, batch=3)
        passes.append((done.flow_runs, done.full))
    # 8 roots in batches of 3 (the parent takes its traced subflow along): full, full, then the rest
    assert [full for _, full in passes] == [True, True, False, False, False, False], passes
    assert sum(n for n, _ in passes) == len(doomed_ids), passes
    with Session(engine_for(database)) as session:
        left = set(session.exec(select(FlowRun.id)).all())
        assert left == kept_ids, (left - kept_ids, kept_ids - left)
        assert session.exec(select(TaskRun).where(col(TaskRun.flow_run_id).in_(doomed_ids))).all() == []
        assert session.exec(select(StateEvent).where(StateEvent.flow_run_id == target)).all() == []
        assert session.exec(select(LogLine).where(LogLine.flow_run_id == target)).all() == []
    assert store.redis.exists(keys.flow_run(target), keys.task_run(task_id), keys.result(task_id)) == 0
    assert store.redis.exists(keys.flow_tasks(target)) == 0


def test_no_policy_deletes_nothing(database: str, redis_url: str) -> None:
    with Session(engine_for(database)) as session:
        new_run(session, "etl", ended_days_ago=3650)
        session.commit()
    done = apply_retention(engine_for(database), RunStore(redis_url), Policy(), batch=10)
    assert done.flow_runs == 0
    with Session(engine_for(database)) as session:
        assert len(session.exec(select(FlowRun)).all()) == 1


@pytest.fixture(scope="module")
def api(
    redis_url: str, fleet: subprocess.Popen[bytes], worker_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    """An API that keeps finished runs 2 days, looks every second, and deletes 2 runs per transaction."""
    database = f"sqlite:///{tmp_path_factory.mktemp('retention-api') / 'api.db'}"
    env = {
        "ORCHESTRATOR_RETENTION_DAYS": "2",
        "ORCHESTRATOR_RETENTION_INTERVAL_SECONDS": "1",
        "ORCHESTRATOR_RETENTION_BATCH_SIZE": "2",
    }
    with api_server(redis_url, database, log_path=worker_logs / "retention-api.log", extra_env=env) as server:
        server.database_url = database  # type: ignore[attr-defined]
        yield server


def test_the_api_services_delete_what_has_aged_and_keep_the_rest(
    api: ApiProcess, http: httpx.Client, redis_url: str
) -> None:
    runs = [submit(http, "logging-flow")["id"] for _ in range(4)]
    finished = [wait_final(http, run_id, timeout=90) for run_id in runs]
    assert {run["state"] for run in finished} == {"Completed"}
    running = submit(http, "api-sleepy-flow", parameters={"seconds": 60, "width": 1})["id"]
    eventually(lambda: http.get(f"/flow-runs/{running}").json()["state"] == "Running", 30, what="Running")
    tasks = {run_id: [t["id"] for t in http.get(f"/flow-runs/{run_id}/task-runs").json()] for run_id in runs}
    rds: Any = redis.Redis.from_url(redis_url, decode_responses=True)
    aged, fresh = runs[:3], runs[3]
    assert all(rds.exists(keys.flow_run(r)) for r in aged)

    engine = engine_for(api.database_url)  # type: ignore[attr-defined]
    with Session(engine) as session:  # three days pass for three of them (and the running one's start)
        session.execute(update(FlowRun).where(col(FlowRun.id).in_(aged)).values(ended=time.time() - 3 * DAY))
        session.execute(update(FlowRun).where(col(FlowRun.id) == running).values(created=time.time() - 3 * DAY))
        session.commit()

    def all_gone() -> bool:
        return all(http.get(f"/flow-runs/{r}").status_code == 404 for r in aged)

    eventually(all_gone, 30, what="the aged runs deleted by the services")
    for run_id in aged:
        assert rds.exists(keys.flow_run(run_id), *(keys.task_run(t) for t in tasks[run_id])) == 0
    assert http.get(f"/flow-runs/{fresh}").json()["state"] == "Completed"
    assert rds.exists(keys.flow_run(fresh)) == 1
    assert http.get(f"/flow-runs/{running}").json()["state"] == "Running"
    metrics = httpx.get(api.url.removesuffix("/api") + "/metrics").text
    assert 'orchestrator_flow_runs_deleted_total{reason="retention"} 3.0' in metrics, metrics
    assert 'orchestrator_task_runs_deleted_total{reason="retention"} 3.0' in metrics, metrics
    assert http.post(f"/flow-runs/{running}/cancel").status_code == 202
    wait_final(http, running, timeout=30)
    rds.close()


def test_a_deployment_keeps_its_own_retention_and_a_bad_one_is_refused(api: ApiProcess, http: httpx.Client) -> None:
    name = f"kept-{uuid.uuid4().hex[:6]}"
    done = cli(api, "deploy", "tests.flows:chain_flow", "--name", name, "--retention-days", "30")
    assert done.returncode == 0, done.stdout + done.stderr
    assert http.get(f"/deployments/{name}").json()["retention_days"] == 30
    shown = cli(api, "deployment", "inspect", name)
    assert "retention: 30 days" in shown.stdout, shown.stdout
    refused = http.post("/deployments", json={"name": name, "flow_name": "chain-flow", "retention_days": 0})
    assert refused.status_code == 422 and "retention_days" in refused.text, refused.text
    assert http.get(f"/deployments/{name}").json()["retention_days"] == 30


def test_a_flow_retention_of_zero_days_is_refused_when_the_settings_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.config.settings import Settings

    monkeypatch.setenv("ORCHESTRATOR_RETENTION_DAYS_BY_FLOW", '{"etl": 0}')
    with pytest.raises(ValueError, match="retention days must be more than 0"):
        Settings()
    monkeypatch.setenv("ORCHESTRATOR_RETENTION_DAYS_BY_FLOW", '{"etl": 0.5}')
    assert Settings().retention_days_by_flow == {"etl": 0.5}


def test_a_batch_stops_at_its_task_run_budget_but_always_takes_one_whole_tree(database: str, redis_url: str) -> None:
    with Session(engine_for(database)) as session:
        big = [new_run(session, "backfill", ended_days_ago=10 - i) for i in range(3)]  # oldest first
        session.commit()
        for run in big:
            session.add_all(
                TaskRun(id=f"{run.id}-{n}", flow_run_id=run.id, state="Completed", created=1) for n in range(4)
            )
        session.commit()
        ids = [run.id for run in big]
    store, policy, engine = RunStore(redis_url), Policy(days=1), engine_for(database)
    first = apply_retention(engine, store, policy, batch=10, task_budget=6)  # 4 + 4 is past 6: one tree
    assert (first.flow_runs, first.task_runs, first.full) == (1, 4, True), first
    second = apply_retention(engine, store, policy, batch=10, task_budget=8)  # 4 + 4 fits: both
    assert (second.flow_runs, second.task_runs, second.full) == (2, 8, False), second
    tiny = apply_retention(engine, store, policy, batch=10, task_budget=1)
    assert tiny.flow_runs == 0
    with Session(engine) as session:
        assert session.exec(select(FlowRun).where(col(FlowRun.id).in_(ids))).all() == []
        assert session.exec(select(TaskRun)).all() == []
